"""The local store on PostgreSQL and MariaDB: URLs, the store connection, bounded opens and DAG runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from conftest import load_dag, write_dag
from ml_metadata.proto import metadata_store_pb2 as mlmd
from server_utils import free_port, mysql_database, open_store_for_test, postgres_database

from cmf_airflow.store import StoreError, StoreUnavailable, open_store
from cmf_airflow.store_url import ConnectionFields, connection_config, redact

DAG_SOURCE = '''
from datetime import datetime
from pathlib import Path

from cmf_airflow import File
from cmf_airflow.compat import DAG, task

OUT = Path({out!r})

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1)) as dag:

    @task(outlets=[File(str(OUT))])
    def produce():
        OUT.write_text("x,y\\n")

    @task(inlets=[File(str(OUT))])
    def consume():
        return OUT.read_text()

    produce() >> consume()
'''


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Count only the DAG's artifacts, and keep the spool of each test apart."""
    monkeypatch.setenv("AIRFLOW__CMF__CAPTURE_ENVIRONMENT", "False")
    monkeypatch.setenv("AIRFLOW__CMF__SPOOL_FOLDER", str(tmp_path / "spool"))


def test_connection_fields_fill_what_the_url_leaves_out():
    fields = ConnectionFields(login="cmf", password="from-conn", host="db.internal", port=6543, schema="lineage")
    config = connection_config("postgresql://", fields, create_database=False)

    assert config.postgresql.user == "cmf"
    assert config.postgresql.password == "from-conn"
    assert config.postgresql.host == "db.internal"
    assert config.postgresql.port == "6543"
    assert config.postgresql.dbname == "lineage"
    assert config.postgresql.skip_db_creation is True


def test_url_parts_win_over_the_connection():
    fields = ConnectionFields(login="other", password="from-conn", host="elsewhere", port=1, schema="other")
    config = connection_config("mysql://cmf@127.0.0.1:3306/lineage", fields)

    assert (config.mysql.user, config.mysql.host, config.mysql.port, config.mysql.database) == (
        "cmf", "127.0.0.1", 3306, "lineage")
    assert config.mysql.password == "from-conn"


def test_url_without_database_is_invalid():
    with pytest.raises(StoreError, match=r"postgresql://cmf:\*\*\*@127.0.0.1/ names no database"):
        open_store("postgresql://cmf:pw@127.0.0.1/")


def test_closed_port_is_unavailable_without_password():
    url = f"mysql://root:top-secret@127.0.0.1:{free_port()}/cmf"
    with pytest.raises(StoreUnavailable) as raised:
        open_store(url, connect_timeout=2.0)

    assert "connection refused" in str(raised.value)
    assert "top-secret" not in str(raised.value)
    assert redact(url) in str(raised.value)


def test_silent_server_times_out():
    # A socket that accepts connections but never responds, as a hung database server would.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        for backend in ("postgresql", "mysql"):
            with pytest.raises(StoreUnavailable, match="no response within 1 s"):
                open_store(f"{backend}://root@127.0.0.1:{port}/cmf", connect_timeout=1.0)


def test_missing_postgresql_database_is_unavailable():
    with postgres_database("cmf_missing") as url:
        missing = url + "_not_created"
        with pytest.raises(StoreUnavailable, match="the database exists"):
            open_store(missing, connect_timeout=2.0)


def _run_dag(tmp_path, dag_id: str) -> dict[str, str]:
    dag_file = write_dag(DAG_SOURCE.format(dag_id=dag_id, out=str(tmp_path / f"{dag_id}.csv")), dag_id)
    dag_run = load_dag(dag_file, dag_id).test()
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def _check_recorded(url: str, dag_id: str) -> None:
    store = open_store_for_test(url)
    executions = sorted(store.get_executions(), key=lambda execution: execution.id)
    [artifact] = store.get_artifacts()
    events = store.get_events_by_artifact_ids([artifact.id])

    assert [e.type for e in executions] == [f"{dag_id}/produce", f"{dag_id}/consume"]
    assert all(e.last_known_state == mlmd.Execution.COMPLETE for e in executions)
    assert sorted((e.execution_id, e.type) for e in events) == [
        (executions[0].id, mlmd.Event.OUTPUT), (executions[1].id, mlmd.Event.INPUT)]
    assert [c.name for c in store.get_contexts_by_type("Parent_Context")] == [dag_id]


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_dag_run_records_into_database_store(tmp_path, cmf_store, monkeypatch, backend):
    database = postgres_database if backend == "postgresql" else mysql_database
    dag_id = f"database_store_{backend}"
    with database("cmf_local") as url:
        monkeypatch.setenv("AIRFLOW__CMF__STORE", url)
        states = _run_dag(tmp_path, dag_id)

        assert states == {"produce": "success", "consume": "success"}
        _check_recorded(url, dag_id)
        assert not (tmp_path / "spool" / "pending.jsonl").exists()

        lineage = subprocess.run([sys.executable, "-m", "cmf_airflow.cli", "lineage", "--store", url],
                                 capture_output=True, text=True, timeout=120, env=os.environ.copy())
        assert lineage.returncode == 0, lineage.stderr
        assert f"{dag_id}/consume" in lineage.stdout


def test_password_comes_from_store_connection(tmp_path, cmf_store, monkeypatch):
    with postgres_database("cmf_conn") as url:
        database = url.rsplit("/", 1)[1]
        # Local PostgreSQL trusts every password: the test proves the connection's fields are used, since
        # the URL names neither the user nor the database.
        monkeypatch.setenv("AIRFLOW_CONN_CMF_STORE",
                           f"postgres://postgres:from-connection@127.0.0.1:5432/{database}")
        monkeypatch.setenv("AIRFLOW__CMF__STORE", "postgresql://")
        monkeypatch.setenv("AIRFLOW__CMF__STORE_CONN_ID", "cmf_store")
        states = _run_dag(tmp_path, "store_from_connection")

        assert states == {"produce": "success", "consume": "success"}
        _check_recorded(url, "store_from_connection")
