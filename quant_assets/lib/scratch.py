"""Scratch files of a process: plots and tables a step writes before it logs them to MLflow and
embeds them in Dagster metadata. Every scratch directory lives under one temporary root per
process, removed when the process exits: at interpreter exit, and in multiprocessing children
(Dagster's run and step processes), which end with `os._exit` and skip `atexit`, through
multiprocessing's own exit finalizers. So a nightly pipeline leaves nothing behind in /tmp."""

from __future__ import annotations

import multiprocessing.util
import os
import shutil
import tempfile
from pathlib import Path

_ROOT: dict[int, Path] = {}


def scratch_dir(prefix: str) -> Path:
    """A new directory under this process's scratch root (created on first use)."""
    root = _ROOT.get(os.getpid())
    if root is None or not root.exists():
        root = Path(tempfile.mkdtemp(prefix="quant_assets_scratch_"))
        _ROOT[os.getpid()] = root
        # run by multiprocessing's exit function: registered with atexit in a parent process and
        # called explicitly by a multiprocessing child before its os._exit
        multiprocessing.util.Finalize(
            None, shutil.rmtree, args=(str(root),), kwargs={"ignore_errors": True}, exitpriority=0
        )
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))
