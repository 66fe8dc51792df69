# `make demo` and `make test` each set up .venv when it is missing, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow setup clean bench

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) pipelines/demo.py --out demo_out

# the everyday suite; tests marked `slow` (long end-to-end runs) are `make test-slow`, and CI runs both
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m slow

bench: $(STAMP)
	$(PY) pipelines/bench.py data

clean:
	rm -rf demo_out mlflow.db mlruns
