"""Benchmark of the task-level API: the cost of logging 1,000 step metrics, per step and for the commit.

A generated DAG runs one task under ``dag.test()`` with the CMF listener enabled. The task measures, with
``time.perf_counter`` inside the running task, for each of ``--rounds`` rounds:

- ``log_step_metrics`` called ``--steps`` times with three values each (buffered in memory),
- ``commit_step_metrics``, which writes the rows file and one ``Step_Metrics`` artifact under the store lock,
- ``log_metrics`` called ``--writes`` times, each a write to the store, for comparison: what logging every
  step as its own artifact would cost.

The task writes its figures to a JSON file, and this script prints medians. It exits with status 1 when the
DAG run fails or the store lacks the committed steps, never because of the timings.

Usage: ``uv run --no-sync python benchmarks/bench_logging.py [--steps N] [--rounds N] [--writes N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DAG_ID = "cmf_bench_logging"

DAG_TEMPLATE = '''"""Benchmark DAG written by benchmarks/bench_logging.py."""
import json
import time
from datetime import datetime

from cmf_airflow.compat import DAG
from cmf_airflow.operators import cmf_task

STEPS = {steps}
ROUNDS = {rounds}
WRITES = {writes}
RESULT = {result!r}

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1)) as dag:

    @cmf_task
    def log_steps(cmf):
        figures = []
        for round_number in range(ROUNDS):
            name = f"training-{{round_number}}"
            started = time.perf_counter()
            for step in range(STEPS):
                cmf.log_step_metrics(name, {{"loss": 1.0 / (step + 1), "accuracy": step / STEPS, "epoch": step}})
            logged = time.perf_counter()
            cmf.commit_step_metrics(name)
            committed = time.perf_counter()
            for write in range(WRITES):
                cmf.log_metrics(f"separate-{{round_number}}", {{"loss": 1.0 / (write + 1)}})
            written = time.perf_counter()
            figures.append(
                {{"log_s": logged - started, "commit_s": committed - logged, "writes_s": written - committed}}
            )
        with open(RESULT, "w", encoding="utf-8") as file:
            json.dump(figures, file)

    log_steps()
'''


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description="Measure the cost of logging step metrics from a task.")
    parser.add_argument("--steps", type=int, default=1000, help="steps logged per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds in the one task (default 5)")
    parser.add_argument("--writes", type=int, default=100,
                        help="separate log_metrics calls per round, for comparison (default 100)")
    arguments = parser.parse_args(argv)
    for name in ("steps", "rounds", "writes"):
        if getattr(arguments, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(arguments, name)}")
    return arguments


def configure_environment(root: Path) -> Path:
    """Point Airflow at a throw-away home, database, DAG bundle and CMF store; return the DAG folder."""
    for name in [name for name in os.environ if name.startswith("AIRFLOW__CMF__")]:
        del os.environ[name]
    dags = root / "dags"
    dags.mkdir(parents=True)
    bundles = [
        {
            "name": "bench",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(dags), "refresh_interval": 0},
        }
    ]
    os.environ.update(
        {
            "AIRFLOW_HOME": str(root / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{root / 'airflow' / 'airflow.db'}",
            "AIRFLOW__CMF__STORE": str(root / "cmf" / "mlmd.sqlite"),
            "AIRFLOW__CMF__SITE": "bench-site",
        }
    )
    return dags


@contextlib.contextmanager
def output_redirected(log_path: Path) -> Iterator[None]:
    """Send this process's standard output and error (file descriptors 1 and 2) to ``log_path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for descriptor in saved:
                os.close(descriptor)


def run_dag(dag_file: Path, log_path: Path) -> Any:
    """Import the DAG file and run its DAG with ``dag.test()``; return the DAG run."""
    from cmf_airflow.compat import DAG

    with output_redirected(log_path):
        spec = importlib.util.spec_from_file_location("cmf_bench_logging_dag", dag_file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        [dag] = [value for value in vars(module).values() if isinstance(value, DAG)]
        return dag.test()


def check_store(store: Path, arguments: argparse.Namespace) -> int:
    """Return the size in bytes of the ``steps`` property of one committed artifact; raise when steps are missing."""
    from cmf_airflow.lineage import step_metrics_rows
    from cmf_airflow.store import open_store

    artifacts = open_store(str(store), read_only=True).get_artifacts_by_type("Step_Metrics")
    if len(artifacts) != arguments.rounds:
        raise RuntimeError(f"store {store} contains {len(artifacts)} Step_Metrics artifact(s), not {arguments.rounds}")
    for artifact in artifacts:
        rows = step_metrics_rows(artifact)
        if [row["step"] for row in rows] != list(range(arguments.steps)):
            raise RuntimeError(f"artifact {artifact.name} does not contain steps 0 to {arguments.steps - 1} in order")
    return len(artifacts[0].custom_properties["steps"].string_value) if "steps" in artifacts[0].custom_properties else 0


def print_figures(figures: list[dict[str, float]], arguments: argparse.Namespace, steps_bytes: int) -> None:
    """Print the per-round table and the medians."""
    print(f"{'round':>5} {'log_step_metrics x' + str(arguments.steps):>24} {'commit':>10} "
          f"{'log_metrics x' + str(arguments.writes):>20}")
    for number, figure in enumerate(figures, start=1):
        print(f"{number:>5} {figure['log_s'] * 1000:>21.2f} ms {figure['commit_s'] * 1000:>7.2f} ms "
              f"{figure['writes_s'] * 1000:>17.2f} ms")

    log_s = statistics.median(figure["log_s"] for figure in figures)
    commit_s = statistics.median(figure["commit_s"] for figure in figures)
    write_s = statistics.median(figure["writes_s"] for figure in figures) / arguments.writes
    print()
    print(f"median per step, log_step_metrics (buffered):  {log_s / arguments.steps * 1e6:.1f} us")
    print(f"median commit of {arguments.steps} steps:               {commit_s * 1000:.2f} ms "
          f"(steps property {steps_bytes / 1024:.1f} KiB)")
    print(f"median total, {arguments.steps} steps + commit:          {(log_s + commit_s) * 1000:.2f} ms")
    print(f"median per log_metrics call (one store write): {write_s * 1000:.2f} ms, so {arguments.steps} steps "
          f"written one by one would take about {write_s * arguments.steps:.2f} s")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures; return 0 when the DAG run and the store check succeeded."""
    arguments = parse_arguments(argv)
    root = Path(tempfile.mkdtemp(prefix="cmf-bench-logging-"))
    log_path = root / "airflow-output.log"
    try:
        dags = configure_environment(root)
        result = root / "figures.json"
        dag_file = dags / "bench_logging_dag.py"
        dag_file.write_text(DAG_TEMPLATE.format(steps=arguments.steps, rounds=arguments.rounds,
                                                writes=arguments.writes, result=str(result), dag_id=DAG_ID))
        print(f"Setting up Airflow in {root} ...", flush=True)
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
        print(f"Running {arguments.rounds} round(s) of {arguments.steps} steps in one task ...", flush=True)
        dag_run = run_dag(dag_file, log_path)
        if str(dag_run.state) != "success":
            print(f"bench_logging: the DAG run ended in state {dag_run.state}; see {log_path}", file=sys.stderr)
            return 1
        steps_bytes = check_store(root / "cmf" / "mlmd.sqlite", arguments)
        print_figures(json.loads(result.read_text()), arguments, steps_bytes)
    except (RuntimeError, subprocess.CalledProcessError) as error:
        print(f"bench_logging: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
