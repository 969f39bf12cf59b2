# make demo: run the example ML pipeline under Airflow and print its CMF lineage.
# make test: run the test suite. Both install what they need first (uv, then the locked environment).

PYTHON ?= python3
UV := $(PYTHON) -m uv
SYNC_FLAGS := --locked --extra examples

.PHONY: setup demo test bench clean

setup:
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv>=0.9"
	$(UV) sync $(SYNC_FLAGS)

demo: setup
	$(UV) run --no-sync cmf-airflow demo

test: setup
	$(UV) run --no-sync pytest

bench: setup
	$(UV) run --no-sync python benchmarks/bench_hashing.py
	$(UV) run --no-sync python benchmarks/bench_listener.py

clean:
	rm -rf .cmf-demo .venv .pytest_cache
