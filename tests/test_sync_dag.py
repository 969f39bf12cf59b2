"""The example sync DAG (dags_examples/cmf_sync.py) in real DAG runs, pushing to the real server on loopback."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from conftest import REPO_ROOT, commit_all, load_dag, make_git_repo, open_read_only, write_dag
from server_utils import free_port, server_process

from cmf_airflow.sync import outstanding_count

SYNC_DAG_FILE = REPO_ROOT / "dags_examples" / "cmf_sync.py"

SOURCE_DAG = '''
from datetime import datetime
from pathlib import Path

from cmf_airflow.compat import DAG, task

from cmf_airflow import File

DATA = Path({data!r})

with DAG("sync_source", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

    @task(outlets=[File(str(DATA / "raw.txt"))])
    def produce():
        DATA.mkdir(parents=True, exist_ok=True)
        (DATA / "raw.txt").write_text("1,2,3\\n")

    @task(inlets=[File(str(DATA / "raw.txt"))])
    def consume():
        assert (DATA / "raw.txt").read_text() == "1,2,3\\n"

    produce() >> consume()
'''


def _use_server(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    connection = {"conn_type": "cmf", "host": host, "port": int(port), "schema": "http"}
    monkeypatch.setenv("AIRFLOW_CONN_CMF_DEFAULT", json.dumps(connection))


def _record_source_run(tmp_path: Path) -> None:
    dag_file = write_dag(SOURCE_DAG.format(data=str(tmp_path / "data")), "sync_source", in_git=False)
    assert str(load_dag(dag_file, "sync_source").test().state) == "success"


def _task_states(dag_run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def _server_execution_count(url: str, pipeline: str) -> int:
    answer = httpx.get(f"{url}/api/pipelines/{pipeline}/executions", params={"limit": 1000})
    return len(answer.json()["executions"]) if answer.status_code == 200 else 0


def test_sync_dag_schedule_and_tags():
    dag = load_dag(SYNC_DAG_FILE, "cmf_sync")

    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert "cmf:no-lineage" in dag.tags
    # Airflow 3 keeps the schedule on the DAG, Airflow 2 only in its timetable.
    assert getattr(dag, "schedule", None) == timedelta(minutes=15) or dag.timetable._delta == timedelta(minutes=15)
    assert [task.task_id for task in dag.topological_sort()] == ["push_artifacts", "push_metadata"]


def _dvc_workspace(folder: Path, remote: Path) -> str:
    """Create a git+DVC workspace with a local-folder remote and one versioned file; return the file's md5."""
    from dvc.repo import Repo

    from cmf_airflow.versioning import version_file

    make_git_repo(folder)
    Repo.init(str(folder)).close()
    with Repo(str(folder)) as repo, repo.config.edit() as config:
        config["remote"]["local"] = {"url": str(remote)}
        config["core"]["remote"] = "local"
    commit_all(folder, "dvc init with a local remote")
    (folder / "data.csv").write_text("x,y\n1,2\n")
    return version_file(str(folder / "data.csv")).md5


def test_sync_dag_pushes_without_own_lineage(tmp_path, monkeypatch, cmf_store):
    _record_source_run(tmp_path)
    remote = tmp_path / "dvc-remote"
    md5 = _dvc_workspace(tmp_path / "workspace", remote)
    with server_process(str(tmp_path / "server.sqlite")) as server:
        _use_server(monkeypatch, server.base_url)
        dag = load_dag(SYNC_DAG_FILE, "cmf_sync")
        dag_run = dag.test(run_conf={"dvc_workspace": str(tmp_path / "workspace")})
        pushed = _server_execution_count(server.base_url, "sync_source")
        outstanding = outstanding_count(str(cmf_store), server.base_url)
    types = sorted(execution.type for execution in open_read_only(cmf_store).get_executions())

    assert _task_states(dag_run) == {"push_artifacts": "success", "push_metadata": "success"}
    assert (remote / "files" / "md5" / md5[:2] / md5[2:]).read_text() == "x,y\n1,2\n"
    assert pushed == 2
    assert outstanding == 0
    assert types == ["sync_source/consume", "sync_source/produce"]


def test_sync_dag_catches_up_after_outage(tmp_path, monkeypatch, cmf_store):
    _record_source_run(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    _use_server(monkeypatch, url)
    monkeypatch.setenv("AIRFLOW__CMF__SYNC_TIMEOUT", "5")

    failed_run = load_dag(SYNC_DAG_FILE, "cmf_sync").test()
    outstanding = outstanding_count(str(cmf_store), url)
    with server_process(str(tmp_path / "server.sqlite"), port=int(url.rsplit(":", 1)[1])):
        next_run = load_dag(SYNC_DAG_FILE, "cmf_sync").test()
        pushed = _server_execution_count(url, "sync_source")

    assert _task_states(failed_run) == {"push_artifacts": "success", "push_metadata": "failed"}
    assert outstanding == 2
    assert _task_states(next_run)["push_metadata"] == "success"
    assert pushed == 2
