"""The pure domain package never imports dagster (checked on the source and in a fresh interpreter)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import quant_assets

LIB = Path(quant_assets.__file__).parent / "lib"


def test_lib_sources_never_import_dagster() -> None:
    offenders = []
    for path in sorted(LIB.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(LIB)}:{node.lineno} imports {n}"
                for n in names
                if n.split(".")[0].startswith("dagster")
            ]
    assert len(list(LIB.rglob("*.py"))) > 10
    assert offenders == []


def test_importing_every_lib_module_loads_no_dagster() -> None:
    modules = sorted(
        "quant_assets.lib." + ".".join(p.relative_to(LIB).with_suffix("").parts)
        for p in LIB.rglob("*.py")
        if p.name != "__init__.py"
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0].startswith('dagster'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_loading_the_definitions_imports_no_heavy_library() -> None:
    """Every process that loads the code location (the daemon's code server, each run worker)
    pays its imports: scikit-learn, LightGBM, MLflow, matplotlib, pandas and SQLAlchemy are imported
    where they are used (measured: 1.8 s of CPU for the definitions instead of 8.7 s)."""
    # celery/dagster_celery: only the celery deployment loads them (defs/executor.py)
    heavy = (
        "sklearn", "lightgbm", "xgboost", "optuna", "mlflow", "matplotlib", "pandas", "scipy",
        "celery", "dagster_celery",
    )  # fmt: skip
    code = (
        "import sys, quant_assets.definitions\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == ""
