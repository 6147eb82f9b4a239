# Two commands on a fresh machine with Python 3.11+ and git:
#   make demo   install everything, then run the main job on the embedded defaults
#   make test   install everything (with test extras), then run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
UV      = $(VENV)/bin/uv
PYTEST_ARGS ?=

.PHONY: demo test test-demo install dev bench lint clean

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check "uv==0.13.8"

# uv sync installs exactly the versions in uv.lock (--inexact keeps uv itself in the venv) and
# compiles every installed module to bytecode once: where PYTHONDONTWRITEBYTECODE is set (this
# CI's machines) nothing is cached on import, so each process (CLI, daemon, code server, run
# worker, test worker) would otherwise compile SciPy, scikit-learn, MLflow, matplotlib and
# Dagster from source again: 3.1-3.4 instead of 1.3-1.4 CPU-s to `import quant_assets.definitions`.
$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --quiet --frozen --inexact --extra test --compile-bytecode
	touch $@

# the project's own modules (an editable install, so not uv's): only files changed since run
install: $(VENV)/.installed
	$(VENV)/bin/python -m compileall -q quant_assets

demo: install
	$(VENV)/bin/quant-assets demo

# every test, the README's first command included (the demo in a fresh directory ends with its
# champions and their signals in SQL; alone: make test-demo), on a worker process per core
test: install
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-demo: install
	$(VENV)/bin/python -m pytest -m demo

dev: install
	$(VENV)/bin/quant-assets dev

bench: install
	$(VENV)/bin/python benchmarks/bench_features_labels.py
	$(VENV)/bin/python benchmarks/bench_backtest.py
	$(VENV)/bin/python benchmarks/bench_meta.py
	$(VENV)/bin/python benchmarks/bench_retrain.py
	$(VENV)/bin/python benchmarks/bench_charts.py

lint: install
	$(VENV)/bin/ruff check quant_assets quant_assets_tests benchmarks
	$(VENV)/bin/ruff format --check quant_assets quant_assets_tests benchmarks

clean:
	rm -rf $(VENV) .dagster_home artifacts/*/ artifacts/mlflow
