# Two entry points on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
STAMP := $(VENV)/.installed
# uv when it is on PATH; otherwise the copy `pip install uv` puts next to $(PYTHON).
UV ?= $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")

.PHONY: demo test lint typecheck unit venv sysdeps clean bench compat compat-pins uv

venv: $(STAMP)

# mysqlclient (the MySQL provider's driver) compiles against libmariadb; install it where missing.
sysdeps:
	@if ! pkg-config --exists libmariadb 2>/dev/null && ! pkg-config --exists mysqlclient 2>/dev/null; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			echo "Installing libmariadb-dev and pkg-config (needed to build mysqlclient)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libmariadb-dev pkg-config >/dev/null; \
		else \
			echo "Missing libmariadb-dev and pkg-config: install them (apt-get install libmariadb-dev pkg-config)"; exit 1; \
		fi; \
	fi

uv:
	@$(UV) --version >/dev/null 2>&1 || { echo "Installing uv"; $(PYTHON) -m pip install -q uv; }

$(STAMP): pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory sysdeps uv
	$(UV) venv -q --allow-existing --python $(PYTHON) $(VENV)
	$(UV) pip install -q --python $(PY) --compile-bytecode -c constraints.txt -e ".[test]"
	@touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint typecheck unit

demo: $(STAMP)
	$(PY) scripts/demo.py

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

# The Airflow version matrix (docs/deploying.md): the wheel's unit and dag.test() suites on the floor and
# latest patch of each older minor release, installed from the pins in compat/; the e2e on the floor.
# One release: `make compat AIRFLOW=3.1.8`. New pins (after a dependency change): `make compat-pins`.
AIRFLOW ?=
compat: sysdeps uv
	$(PYTHON) scripts/compat.py run $(AIRFLOW)

compat-pins: uv
	$(PYTHON) scripts/compat.py pin $(AIRFLOW)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist .compat
