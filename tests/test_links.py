"""The "CMF lineage" extra link, read through Airflow's own REST API after a real DAG run.

Airflow 3 serves the links from its FastAPI API server, Airflow 2 from the Flask webserver. Both apps run in
the test process with their test clients, on the session's Airflow database.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import load_dag, write_dag

from cmf_airflow.compat import AIRFLOW_V_3_0_PLUS
from cmf_airflow.links import LINK_NAME, CmfLineageLink, task_page_url

DAG_ID = "link_dag"
LINK_DAG = f'''
from datetime import datetime

from cmf_airflow.compat import DAG, task

with DAG("{DAG_ID}", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

    @task
    def hello():
        return 1

    @task
    def square(x):
        return x * x

    hello() >> square.expand(x=[1, 2])
'''
SERVER_CONNECTION = {"conn_type": "cmf", "host": "127.0.0.1", "port": 8765, "schema": "http"}


class AirflowApi:
    """The extra-links endpoint of the running Airflow version's API, called in-process."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def links(self, run_id: str, task_id: str, map_index: int = -1) -> tuple[int, dict[str, Any]]:
        """Return the HTTP status and the extra links that Airflow's API returns for one task instance."""
        if AIRFLOW_V_3_0_PLUS:
            path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/links"
            response = self.client.get(path, params={"map_index": map_index})
            return response.status_code, response.json().get("extra_links", response.json())
        path = f"/api/v1/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/links"
        response = self.client.get(path, query_string={"map_index": map_index})
        return response.status_code, response.get_json()


@pytest.fixture(scope="module")
def link_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, AirflowApi]]:
    """Run the DAG once with an invalid server connection, then yield its run id and Airflow's API client."""
    folder = tmp_path_factory.mktemp("links")
    patch = pytest.MonkeyPatch()
    patch.setenv("AIRFLOW__CMF__STORE", str(folder / "mlmd.sqlite"))
    patch.setenv("AIRFLOW__CMF__HASH_CACHE", str(folder / "hash_cache.sqlite"))
    patch.setenv("AIRFLOW__CMF__ENABLED", "True")
    # An invalid connection during the run: the tasks must not notice it.
    patch.setenv("AIRFLOW_CONN_CMF_DEFAULT", json.dumps({**SERVER_CONNECTION, "schema": "ftp"}))
    try:
        dag = load_dag(write_dag(LINK_DAG, DAG_ID, in_git=False), DAG_ID)
        dag_run = dag.test()
        states = {(ti.task_id, ti.map_index): str(ti.state) for ti in dag_run.get_task_instances()}
        assert states == {("hello", -1): "success", ("square", 0): "success", ("square", 1): "success"}
        yield dag_run.run_id, AirflowApi(_api_client(dag, folder, patch))
    finally:
        patch.undo()


def _api_client(dag: Any, folder: Path, patch: pytest.MonkeyPatch) -> Any:
    if AIRFLOW_V_3_0_PLUS:
        from airflow.api_fastapi.app import create_app
        from fastapi.testclient import TestClient

        # The simple auth manager then treats every request as coming from an admin.
        patch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
        # A key of 64 bytes, the length RFC 7518 recommends for the HS512 tokens the API signs.
        patch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "cmf-airflow-link-tests-" + "k" * 41)
        return TestClient(create_app("core"))

    from airflow.models.dag import DAG
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.www.app import create_app as create_webserver_app

    # Airflow 2's dag.test() leaves the serialized DAG, which the webserver reads, to the DAG processor.
    DAG.bulk_write_to_db([dag])
    SerializedDagModel.write_dag(dag)
    config = folder / "webserver_config.py"
    config.write_text('AUTH_ROLE_PUBLIC = "Admin"\n')
    patch.setenv("AIRFLOW__WEBSERVER__CONFIG_FILE", str(config))
    patch.setenv("AIRFLOW__API__AUTH_BACKENDS", "airflow.api.auth.backend.default")
    return create_webserver_app(testing=True).test_client()


def _expected(task_id: str, run_id: str, map_index: int) -> str:
    return task_page_url("http://127.0.0.1:8765", DAG_ID, task_id, run_id, map_index, 1)


def test_task_page_url_encodes_every_field():
    url = task_page_url("https://cmf.example.org/prefix/", "my dag", "t&1", "manual__2026-01-01T00:00:00+00:00", 3, 2)
    parts = urlsplit(url)
    query = parse_qs(parts.query)

    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://cmf.example.org/prefix/ui/task"
    assert query == {
        "dag_id": ["my dag"],
        "task_id": ["t&1"],
        "run_id": ["manual__2026-01-01T00:00:00+00:00"],
        "map_index": ["3"],
        "try_number": ["2"],
    }
    assert "%2B00%3A00" in parts.query


def test_link_opens_the_task_try(link_run, monkeypatch):
    run_id, api = link_run
    monkeypatch.setenv("AIRFLOW_CONN_CMF_DEFAULT", json.dumps(SERVER_CONNECTION))

    status, links = api.links(run_id, "hello")

    assert status == 200
    assert links == {LINK_NAME: _expected("hello", run_id, -1)}


def test_link_of_mapped_task_names_its_index(link_run, monkeypatch):
    run_id, api = link_run
    monkeypatch.setenv("AIRFLOW_CONN_CMF_DEFAULT", json.dumps(SERVER_CONNECTION))

    status, links = api.links(run_id, "square", map_index=1)

    assert status == 200
    assert links[LINK_NAME] == _expected("square", run_id, 1)


def test_link_follows_the_conn_id_option(link_run, monkeypatch):
    run_id, api = link_run
    connection = {**SERVER_CONNECTION, "host": "localhost/cmf", "schema": "https", "port": 8443}
    monkeypatch.setenv("AIRFLOW__CMF__CONN_ID", "cmf_other")
    monkeypatch.setenv("AIRFLOW_CONN_CMF_OTHER", json.dumps(connection))

    status, links = api.links(run_id, "hello")

    assert status == 200
    assert links[LINK_NAME].startswith("https://localhost:8443/cmf/ui/task?dag_id=link_dag&task_id=hello&")


def test_missing_connection_gives_no_link(link_run, monkeypatch, caplog):
    run_id, api = link_run
    conn_id = f"cmf_missing_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AIRFLOW__CMF__CONN_ID", conn_id)
    caplog.set_level(logging.WARNING, logger="cmf_airflow.links")

    status, links = api.links(run_id, "hello")

    assert status == 200
    assert links == {LINK_NAME: None}
    assert f"cannot read the CMF server from the Airflow connection {conn_id}" in caplog.text


def test_invalid_connection_gives_no_link(link_run, monkeypatch):
    run_id, api = link_run
    monkeypatch.setenv("AIRFLOW_CONN_CMF_DEFAULT", json.dumps({**SERVER_CONNECTION, "schema": "ftp"}))

    status, links = api.links(run_id, "hello")

    assert status == 200
    assert links == {LINK_NAME: None}


def test_connection_without_host_gives_no_link(link_run, monkeypatch):
    run_id, api = link_run
    monkeypatch.setenv("AIRFLOW_CONN_CMF_DEFAULT", json.dumps({"conn_type": "cmf", "schema": "http"}))

    status, links = api.links(run_id, "hello")

    assert status == 200
    assert links == {LINK_NAME: None}


def test_try_not_started_gives_no_link(monkeypatch):
    from airflow.models.taskinstancekey import TaskInstanceKey

    monkeypatch.setenv("AIRFLOW_CONN_CMF_DEFAULT", json.dumps(SERVER_CONNECTION))
    link = CmfLineageLink()

    assert link.get_link(None, ti_key=TaskInstanceKey(DAG_ID, "hello", "run-1", 0, -1)) == ""
    assert link.get_link(None, ti_key=TaskInstanceKey(DAG_ID, "hello", "run-1", 2, -1)) == task_page_url(
        "http://127.0.0.1:8765", DAG_ID, "hello", "run-1", -1, 2
    )
