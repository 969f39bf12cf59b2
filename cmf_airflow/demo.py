"""``cmf-airflow demo``: the example ML pipeline under real Airflow, then its lineage from the CMF store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PIPELINE_DAG_ID = "ml_pipeline"
# A file the demo leaves in its folder, so that a later run may replace the folder.
_HOME_MARKER = ".cmf-airflow-demo"


def find_example_dags() -> Path:
    """Return the ``dags_examples`` folder of the source checkout, which contains the demo's DAG."""
    candidates = [Path(__file__).resolve().parents[1] / "dags_examples", Path.cwd() / "dags_examples"]
    for folder in candidates:
        if (folder / "ml_pipeline.py").is_file():
            return folder
    searched = ", ".join(str(folder) for folder in candidates)
    raise FileNotFoundError(
        f"dags_examples/ml_pipeline.py not found (searched {searched}); run the demo from a cmf-airflow checkout"
    )


def demo_environment(home: Path, dags_folder: Path) -> dict[str, str]:
    """Return the environment of an isolated Airflow: its own home, SQLite database and CMF store."""
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow' / 'airflow.db'}",
            "AIRFLOW__CMF__STORE": str(home / "cmf" / "mlmd.sqlite"),
            "ML_PIPELINE_DATA_DIR": str(home / "ml_pipeline_data"),
        }
    )
    return env


def _unusable_home(home: Path) -> str | None:
    """Say why ``home`` must not be replaced, or return None: only a new, empty or earlier demo folder is."""
    if not home.exists():
        return None
    if not home.is_dir():
        return f"--home {home} is a file; pass a new folder"
    if any(home.iterdir()) and not (home / _HOME_MARKER).is_file():
        return (
            f"--home {home} is a folder with content that an earlier demo did not create; pass a new or empty "
            "folder, since the demo replaces what is in it"
        )
    return None


def run_demo(home_argument: str) -> int:
    """Run the demo in ``home_argument`` (emptied first) and print the lineage; return the exit status."""
    home = Path(home_argument).resolve()
    try:
        dags_folder = find_example_dags()
    except FileNotFoundError as error:
        print(f"cmf-airflow demo: {error}", file=sys.stderr)
        return 1
    problem = _unusable_home(home)
    if problem:
        print(f"cmf-airflow demo: {problem}", file=sys.stderr)
        return 2
    if home.exists():
        shutil.rmtree(home)
    (home / "airflow").mkdir(parents=True)
    (home / _HOME_MARKER).write_text("Created by cmf-airflow demo; the next demo run replaces this folder.\n")
    env = demo_environment(home, dags_folder)
    log_path = home / "airflow.log"
    airflow = [sys.executable, "-m", "airflow"]

    print(f"cmf-airflow demo: Airflow home {home / 'airflow'}, output of Airflow in {log_path}")
    steps = [
        ("creating the Airflow database", [*airflow, "db", "migrate"]),
        (f"running DAG {PIPELINE_DAG_ID} with the CMF listener", [*airflow, "dags", "test", PIPELINE_DAG_ID]),
    ]
    with open(log_path, "w", encoding="utf-8") as log:
        for title, command in steps:
            started = time.monotonic()
            print(f"- {title} ...", flush=True)
            result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
            if result.returncode != 0:
                print(f"cmf-airflow demo: {' '.join(command[2:])} failed with exit status {result.returncode}; "
                      f"see {log_path}", file=sys.stderr)
                return 1
            print(f"  done in {time.monotonic() - started:.1f} s")

    return _print_demo_lineage(Path(env["AIRFLOW__CMF__STORE"]))


def _print_demo_lineage(store_path: Path) -> int:
    from cmf_airflow.cli import print_lineage
    from cmf_airflow.lineage import read_pipelines
    from cmf_airflow.store import open_store

    store = open_store(str(store_path), read_only=True)
    print(f"\nLineage in {store_path}:\n")
    status = print_lineage(store, str(store_path), PIPELINE_DAG_ID, "model.pkl", sys.stdout)

    executions = [e for p in read_pipelines(store, PIPELINE_DAG_ID) for s in p.stages for e in s.executions]
    succeeded = sum(1 for execution in executions if execution.airflow_state == "success")
    print(f"\n{succeeded} of {len(executions)} execution(s) succeeded.")
    if status != 0 or succeeded != 5 or len(executions) != 5:
        print("cmf-airflow demo: expected 5 successful executions", file=sys.stderr)
        return 1
    return 0
