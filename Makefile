# make demo: run the example ML pipeline under Airflow and print its CMF lineage.
# make test: run the test suite under Airflow 3 and again under Airflow 2.
# Both install what they need first: uv (with pip, if missing), then the locked environments.

PYTHON ?= python3
UV := $(PYTHON) -m uv
# The Airflow 3 environment is uv's default .venv; the Airflow 2 one lives beside it.
AIRFLOW2_ENV := .venv-airflow2

.PHONY: uv setup setup-airflow2 browser demo test test-airflow3 test-airflow2 bench clean

uv:
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv>=0.9"

setup: uv
	$(UV) sync --locked --extra airflow3 --extra examples

setup-airflow2: uv
	UV_PROJECT_ENVIRONMENT=$(AIRFLOW2_ENV) $(UV) sync --locked --extra airflow2 --extra examples

# The UI tests drive Debian's Chromium through Playwright, so that Playwright never downloads a browser.
# Installing it needs root (apt-get). Nothing happens when /usr/bin/chromium is already there.
browser:
	@if [ ! -x /usr/bin/chromium ]; then apt-get update && apt-get install -y chromium; fi

demo: setup
	$(UV) run --no-sync cmf-airflow demo

test: test-airflow3 test-airflow2

test-airflow3: setup browser
	@echo "== test suite under Airflow 3 =="
	$(UV) run --no-sync pytest

test-airflow2: setup-airflow2
	@echo "== test suite under Airflow 2 =="
	UV_PROJECT_ENVIRONMENT=$(AIRFLOW2_ENV) $(UV) run --no-sync pytest

bench: setup
	$(UV) run --no-sync python benchmarks/bench_hashing.py
	$(UV) run --no-sync python benchmarks/bench_listener.py
	$(UV) run --no-sync python benchmarks/bench_logging.py
	$(UV) run --no-sync python benchmarks/bench_versioning.py
	$(UV) run --no-sync python benchmarks/bench_server.py
	$(UV) run --no-sync python benchmarks/bench_sync.py
	$(UV) run --no-sync python benchmarks/bench_ui.py
	$(UV) run --no-sync python benchmarks/bench_backends.py
	$(UV) run --no-sync python benchmarks/bench_store_open.py

clean:
	rm -rf .cmf-demo .venv $(AIRFLOW2_ENV) .pytest_cache
