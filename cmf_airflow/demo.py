"""``cmf-airflow demo``: the example ML pipeline under real Airflow, synced to an embedded CMF server.

The demo starts the CMF server on a free loopback port, with MLMD on SQLite under the demo folder. It runs
the ``ml_pipeline`` DAG and prints its lineage from the local store. Then it runs the ``cmf_sync`` DAG with
the connection ``cmf_default`` pointing at that server, and prints the lineage that the server returns over
HTTP. The server is stopped at the end, also when a step fails. The last line printed is the address of the
model's lineage page, with the command before it that serves the demo's store on that address again.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PIPELINE_DAG_ID = "ml_pipeline"
SYNC_DAG_ID = "cmf_sync"
EXPECTED_EXECUTIONS = 5
_SERVER_START_TIMEOUT_S = 60.0
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
    print(f"cmf-airflow demo: Airflow home {home / 'airflow'}, output of Airflow in {log_path}")
    try:
        with _embedded_server(home) as server_url:
            env["AIRFLOW_CONN_CMF_DEFAULT"] = json.dumps(
                {"conn_type": "cmf", "host": "127.0.0.1", "port": int(server_url.rsplit(":", 1)[1]), "schema": "http"}
            )
            write_environment_file(home, env)
            status, model_id = _run_steps(env, log_path, server_url)
    except RuntimeError as error:
        print(f"cmf-airflow demo: {error}", file=sys.stderr)
        return 1
    if status == 0 and model_id is not None:
        _print_lineage_page(home, server_url, model_id)
    return status


def model_page_url(server_url: str, artifact_id: int) -> str:
    """Return the address of an artifact's lineage page in the server's web UI."""
    return f"{server_url.rstrip('/')}/ui/artifacts/{artifact_id}"


def _print_lineage_page(home: Path, server_url: str, model_id: int) -> None:
    # The embedded server has stopped by now, so the user gets the command that serves the same store on the
    # same port, where the artifact keeps its id. Run through `uv run` (uv sets UV), the command needs it too.
    port = server_url.rsplit(":", 1)[1]
    store = home / "server" / "mlmd.sqlite"
    prefix = "uv run " if os.environ.get("UV") else ""
    print(f"\nServe the demo's CMF server again with: {prefix}cmf-airflow server --store {store} --port {port}")
    print(f"Lineage page of the model: {model_page_url(server_url, model_id)}")


def write_environment_file(home: Path, env: dict[str, str]) -> Path:
    """Write ``<home>/env.sh``, which sets the demo's Airflow variables in a shell, and return its path.

    With it, a user runs the demo's DAGs again by hand (``airflow dags test ml_pipeline``), for instance to
    have two runs to compare in the web UI.
    """
    names = sorted(name for name, value in env.items() if os.environ.get(name) != value)
    path = home / "env.sh"
    lines = [f"# Created by cmf-airflow demo: sets the demo's Airflow variables. Use: . {path}"]
    lines += [f"export {name}={shlex.quote(env[name])}" for name in names]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _run_steps(env: dict[str, str], log_path: Path, server_url: str) -> tuple[int, int | None]:
    """Run the pipeline and the sync DAG, print both lineages, return the status and the model's id on the server."""
    airflow = [sys.executable, "-m", "airflow"]
    pipeline_steps = [
        ("creating the Airflow database", [*airflow, "db", "migrate"]),
        (f"running DAG {PIPELINE_DAG_ID} with the CMF listener", [*airflow, "dags", "test", PIPELINE_DAG_ID]),
    ]
    sync_steps = [(f"running DAG {SYNC_DAG_ID}: push to the CMF server at {server_url}",
                   [*airflow, "dags", "test", SYNC_DAG_ID])]
    with open(log_path, "w", encoding="utf-8") as log:
        if not _run_commands(pipeline_steps, env, log, log_path):
            return 1, None
        status = _print_demo_lineage(Path(env["AIRFLOW__CMF__STORE"]))
        if status != 0:
            return status, None
        print()
        if not _run_commands(sync_steps, env, log, log_path):
            return 1, None
    return _print_server_lineage(server_url)


def _run_commands(steps: list[tuple[str, list[str]]], env: dict[str, str], log: Any, log_path: Path) -> bool:
    for title, command in steps:
        started = time.monotonic()
        print(f"- {title} ...", flush=True)
        result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            print(f"cmf-airflow demo: {' '.join(command[2:])} failed with exit status {result.returncode}; "
                  f"see {log_path}", file=sys.stderr)
            return False
        print(f"  done in {time.monotonic() - started:.1f} s")
    return True


@contextmanager
def _embedded_server(home: Path) -> Iterator[str]:
    """Run the CMF server on a free loopback port with an SQLite store under ``home``; yield its URL."""
    import httpx

    port = _free_loopback_port()
    url = f"http://127.0.0.1:{port}"
    store = home / "server" / "mlmd.sqlite"
    store.parent.mkdir(parents=True, exist_ok=True)
    log_path = home / "server.log"
    command = [sys.executable, "-m", "cmf_airflow.server", "--host", "127.0.0.1", "--port", str(port),
               "--store", str(store), "--log-level", "warning"]
    env = {key: value for key, value in os.environ.items() if key != "CMF_SERVER_TOKEN"}
    print(f"- starting the CMF server at {url} (store {store}, output in {log_path}) ...", flush=True)
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + _SERVER_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the CMF server exited with status {process.returncode}; see {log_path}")
            try:
                if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the CMF server did not start within {_SERVER_START_TIMEOUT_S:g} s; see {log_path}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print("- stopped the CMF server")


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
    if status != 0 or succeeded != EXPECTED_EXECUTIONS or len(executions) != EXPECTED_EXECUTIONS:
        print(f"cmf-airflow demo: expected {EXPECTED_EXECUTIONS} successful executions", file=sys.stderr)
        return 1
    return 0


def _print_server_lineage(url: str) -> tuple[int, int | None]:
    """Print the pipeline as the server returns it over HTTP and the model's upstream lineage.

    Returns the exit status and the server's id of the model artifact (None when the server has no model).
    """
    import httpx

    with httpx.Client(base_url=url, timeout=30.0) as client:
        executions = client.get(f"/api/pipelines/{PIPELINE_DAG_ID}/executions", params={"limit": 100}).json()
        artifacts = client.get(f"/api/pipelines/{PIPELINE_DAG_ID}/artifacts", params={"limit": 100}).json()
        items = executions.get("executions", [])
        print(f"\nLineage on the CMF server at {url}:\n")
        artifact_count = len(artifacts.get("artifacts", []))
        print(f"Pipeline {PIPELINE_DAG_ID}: {len(items)} execution(s), {artifact_count} artifact(s)")
        for execution in items:
            site = execution["custom_properties"].get("site", "?")
            print(f"  Execution {execution['id']} {execution['type']} {execution['state']}, site {site}")
        models = [a for a in artifacts.get("artifacts", []) if "model.pkl" in a["name"]]
        for model in models:
            lineage = client.get(f"/api/artifacts/{model['id']}/lineage", params={"depth": 10}).json()
            print(f"\nUpstream of {model['type']} {model['name']} on the server")
            for execution in lineage["upstream"]["executions"]:
                print(f"  level {execution['level']}: {execution['type']} (execution {execution['id']})")
            for artifact in lineage["upstream"]["artifacts"]:
                print(f"  level {artifact['level']}: {artifact['type']} {artifact['name']}")

    complete = sum(1 for execution in items if execution["state"] == "COMPLETE")
    print(f"\n{complete} of {len(items)} execution(s) on the server are COMPLETE.")
    if complete != EXPECTED_EXECUTIONS or len(items) != EXPECTED_EXECUTIONS or not models:
        print(f"cmf-airflow demo: expected the server to have {EXPECTED_EXECUTIONS} complete executions and the "
              "model", file=sys.stderr)
        return 1, None
    return 0, int(models[0]["id"])
