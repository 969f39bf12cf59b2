"""The central server over HTTP on loopback, with MLMD on SQLite and on the local PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from cmf_airflow.merge import merge_document
from cmf_airflow.model import ArtifactRecord, HashState, TaskOutcome, TaskRun
from cmf_airflow.recorder import Recorder
from cmf_airflow.server.queries import read_document
from cmf_airflow.store import open_store
from cmf_airflow.wire import WireDocument, parse_document, push_request_body
from server_utils import (build_document, mysql_database, open_store_for_test, postgres_database, server_process,
                          stage_documents, store_snapshot)

FIXTURE = Path(__file__).parent / "fixtures" / "cmf_client_push.json"
BODY_LIMIT = 4 * 1024 * 1024
START = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


@dataclass
class Backend:
    kind: str
    store_location: str
    base_url: str
    store: object

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=120.0, headers=headers)


@contextlib.contextmanager
def _store_location(kind: str, folder: Path):
    if kind == "sqlite":
        yield str(folder / f"server-{uuid.uuid4().hex[:6]}.sqlite")
    elif kind == "mysql":
        with mysql_database() as url:
            yield url
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mysql"])
def backend(request, tmp_path_factory):
    """One server per store kind for the module; each test uses its own pipeline names."""
    folder = tmp_path_factory.mktemp(request.param)
    with _store_location(request.param, folder) as location:
        with server_process(location, log_dir=folder, extra_args=("--max-body-bytes", str(BODY_LIMIT))) as server:
            yield Backend(request.param, location, server.base_url, open_store_for_test(location))


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _push(client: httpx.Client, document: WireDocument) -> list[str]:
    statuses = []
    for part in stage_documents(document):
        response = client.post("/api/mlmd_push", json=push_request_body(part.pipelines[0].name, part))
        assert response.status_code == 200, response.text
        statuses.append(response.json()["status"])
    return statuses


def _recorded_site(folder: Path, site: str, dag_id: str) -> WireDocument:
    """Record two task tries of one DAG run at ``site`` with the real recorder, and read them as a document."""
    recorder = Recorder(open_store(str(folder / f"{site}.sqlite")))
    shared_input = ArtifactRecord(uri="file:///data/raw.csv", path="/data/raw.csv", md5="a" * 32,
                                  hash_state=HashState.HASHED, size=10)
    features = ArtifactRecord(uri="file:///data/features.csv", path="/data/features.csv",
                              md5=f"{site}-features".encode().hex()[:32].ljust(32, "0"), hash_state=HashState.HASHED)
    for task_id, inputs, outputs in (("prepare", [shared_input], [features]), ("train", [features], [])):
        run = TaskRun(site=site, dag_id=dag_id, task_id=task_id, run_id="scheduled__2026-03-01", map_index=-1,
                      try_number=1, operator="PythonOperator", hostname=f"{site}-worker", airflow_version="3.3.2",
                      start_time=START)
        recorder.record_start(run, inputs, None)
        recorder.record_end(run, TaskOutcome("success", START + timedelta(seconds=1)), outputs, None, inputs)
    return read_document(recorder.store, dag_id)


def _pipeline_executions(backend: Backend, pipeline: str) -> list[dict]:
    with backend.client() as client:
        response = client.get(f"/api/pipelines/{pipeline}/executions", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return response.json()["executions"]


def test_two_sites_merge_into_one_graph(backend, tmp_path):
    dag_id = _name("daily")
    site_a = _recorded_site(tmp_path, "site-a", dag_id)
    site_b = _recorded_site(tmp_path, "site-b", dag_id)

    with backend.client() as client:
        first = _push(client, site_a) + _push(client, site_b)
        snapshot = store_snapshot(backend.store)
        repeated = _push(client, site_a) + _push(client, site_b)
    executions = _pipeline_executions(backend, dag_id)
    [shared] = [item for item in backend.store.get_artifacts() if item.uri == "a" * 32]
    shared_events = backend.store.get_events_by_artifact_ids([shared.id])
    sites = {item.custom_properties["site"].string_value
             for item in backend.store.get_executions_by_id([event.execution_id for event in shared_events])}

    assert first == ["success"] * 4
    assert repeated == ["exists"] * 4
    assert store_snapshot(backend.store) == snapshot
    assert len(executions) == 4
    assert {item["custom_properties"]["site"] for item in executions} == {"site-a", "site-b"}
    assert {item["state"] for item in executions} == {"COMPLETE"}
    assert len(shared_events) == 2
    assert sites == {"site-a", "site-b"}


def test_cmf_client_payload_merges_then_exists(backend):
    body = FIXTURE.read_bytes()

    with backend.client() as client:
        first = client.post("/api/mlmd_push", content=body, headers={"Content-Type": "application/json"})
        second = client.post("/api/mlmd_push", content=body, headers={"Content-Type": "application/json"})
        at_root = client.post("/mlmd_push", content=body, headers={"Content-Type": "application/json"})
        pulled = client.post("/api/mlmd_pull", json={"pipeline_name": "Test-env", "exec_uuid": None,
                                                     "last_sync_time": None})
    document = parse_document(pulled.json())
    stages = {stage.name: stage for stage in document.pipelines[0].stages}
    features = [artifact for artifact in backend.store.get_artifacts() if artifact.uri == "5de5e987eadb4b86fc47604b59cb3725"]

    assert first.json() == {"status": "success"}
    assert second.json() == {"status": "exists"}
    assert at_root.json() == {"status": "exists"}
    assert document.execution_count == 4
    assert sorted(stages) == ["Test-env/Evaluate", "Test-env/Featurize", "Test-env/Prepare", "Test-env/Train"]
    assert stages["Test-env/Train"].executions[0].custom_properties["n_est"] == 100
    assert len(features) == 1
    assert len(backend.store.get_events_by_artifact_ids([features[0].id])) == 3


def _body(document: dict, pipeline: str) -> dict:
    return {"pipeline_name": pipeline, "exec_uuid": None, "json_payload": json.dumps(document)}


def _bad_requests(pipeline: str, existing: str) -> list[tuple[str, bytes, int, str]]:
    valid = build_document(pipeline, stages=2, executions_per_stage=2).to_json()

    def variant(change) -> bytes:
        document = json.loads(json.dumps(valid))
        change(document)
        return json.dumps(_body(document, pipeline)).encode()

    def second_stage_execution(document: dict) -> dict:
        return document["Pipeline"][0]["stages"][1]["executions"][0]

    def conflict_with_stored(document: dict) -> None:
        # The execution type of the stored pipeline declares Pipeline_Type as a string.
        execution = second_stage_execution(document)
        execution["type"] = f"{existing}/task_0"
        execution["properties"]["Pipeline_Type"] = 12

    return [
        ("malformed JSON", b'{"pipeline_name": "x", ', 400, "not valid JSON"),
        ("payload not a string", json.dumps({"pipeline_name": pipeline, "json_payload": valid}).encode(), 400,
         "JSON string"),
        ("payload not JSON", json.dumps({"pipeline_name": pipeline, "json_payload": "{oops"}).encode(), 400,
         "not valid JSON"),
        ("no pipeline name", json.dumps({"json_payload": json.dumps(valid)}).encode(), 400, "pipeline_name"),
        ("execution without uuid", variant(lambda d: second_stage_execution(d)["properties"].pop("Execution_uuid")),
         422, "Execution_uuid"),
        ("invalid type name", variant(lambda d: second_stage_execution(d).update(type="")), 422, "type name"),
        ("wrong value type", variant(lambda d: second_stage_execution(d)["custom_properties"].update(bad=[1])), 422,
         "string, number or boolean"),
        ("type conflict with the store", variant(conflict_with_stored), 422, "Pipeline_Type"),
        ("oversized body", b'{"pipeline_name": "' + b"x" * (BODY_LIMIT + 10) + b'"}', 413, "exceeds the limit"),
    ]


def test_bad_input_rejected_and_store_unchanged(backend):
    existing = _name("existing")
    pipeline = _name("bad")
    with backend.client() as client:
        _push(client, build_document(existing, stages=1, executions_per_stage=1))
        before = store_snapshot(backend.store)
        results = []
        for case, body, status, message in _bad_requests(pipeline, existing):
            response = client.post("/api/mlmd_push", content=body, headers={"Content-Type": "application/json"})
            results.append((case, response.status_code, message in response.json().get("detail", "")))
            assert (case, response.status_code) == (case, status), response.text
            assert message in response.json()["detail"], (case, response.text)

    assert all(found for _, _, found in results)
    assert store_snapshot(backend.store) == before


def test_oversized_chunked_body_rejected(backend):
    def chunks():
        yield b'{"pipeline_name": "chunked", "json_payload": "'
        for _ in range(BODY_LIMIT // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    before = store_snapshot(backend.store)
    with backend.client() as client:
        # A generator body goes out with chunked transfer encoding, so the request carries no Content-Length.
        response = client.post("/api/mlmd_push", content=chunks(), headers={"Content-Type": "application/json"})

    assert response.status_code == 413
    assert f"limit of {BODY_LIMIT} bytes" in response.json()["detail"]
    assert store_snapshot(backend.store) == before


def test_pull_whole_since_and_by_uuid(backend):
    pipeline = _name("pull")
    running = build_document(pipeline, stages=1, executions_per_stage=3, state="RUNNING")
    with backend.client() as client:
        _push(client, running)
        whole = client.post("/api/mlmd_pull", json={"pipeline_name": pipeline}).json()
        # The server runs on this machine, so its clock and the test's agree.
        time.sleep(0.01)
        synced_at = int(time.time() * 1000)
        time.sleep(0.01)
        stage = running.pipelines[0].stages[0]
        finished = replace(stage.executions[1], last_known_state="COMPLETE")
        done = WireDocument((replace(running.pipelines[0], stages=(replace(stage, executions=(finished,)),)),))
        _push(client, done)
        since = client.post("/api/mlmd_pull", json={"pipeline_name": pipeline, "last_sync_time": synced_at}).json()
        by_uuid = client.post("/api/mlmd_pull", json={"pipeline_name": pipeline,
                                                      "exec_uuid": finished.execution_uuid}).json()
        unknown = client.post("/api/mlmd_pull", json={"pipeline_name": _name("missing")})

    [since_execution] = since["Pipeline"][0]["stages"][0]["executions"]
    [uuid_execution] = by_uuid["Pipeline"][0]["stages"][0]["executions"]
    assert len(whole["Pipeline"][0]["stages"][0]["executions"]) == 3
    assert since_execution["properties"]["Execution_uuid"] == finished.execution_uuid
    assert since_execution["last_known_state"] == "COMPLETE"
    assert uuid_execution["properties"]["Execution_uuid"] == finished.execution_uuid
    assert len(uuid_execution["events"]) == 3
    assert unknown.status_code == 404
    assert "not found" in unknown.json()["detail"]


def test_listings_paginate_in_stable_order(backend):
    pipeline = _name("pages")
    with backend.client() as client:
        _push(client, build_document(pipeline, stages=1, executions_per_stage=7))
        pages, after = [], 0
        while after is not None:
            page = client.get(f"/api/pipelines/{pipeline}/executions", params={"after": after, "limit": 3}).json()
            pages.append([item["id"] for item in page["executions"]])
            after = page["next_after"]
        artifacts = client.get(f"/api/pipelines/{pipeline}/artifacts", params={"limit": 1000}).json()
        listed = client.get("/api/pipelines").json()["pipelines"]
        missing = client.get(f"/api/pipelines/{_name('missing')}/executions")
        bad_limit = client.get(f"/api/pipelines/{pipeline}/executions", params={"limit": 0})

    ids = [item for page in pages for item in page]
    assert [len(page) for page in pages] == [3, 3, 1]
    assert ids == sorted(ids)
    assert len(set(ids)) == 7
    # the shared input, and a dataset and a model per execution
    assert len(artifacts["artifacts"]) == 15
    assert artifacts["next_after"] is None
    assert [item["stages"] for item in listed if item["name"] == pipeline] == [[f"{pipeline}/task_0"]]
    assert missing.status_code == 404
    assert bad_limit.status_code == 422
    assert "limit" in bad_limit.json()["detail"]


def test_lineage_walks_upstream_and_downstream(backend):
    pipeline = _name("lineage")
    document = build_document(pipeline, stages=3, executions_per_stage=1, shared_input_md5=uuid.uuid4().hex)
    [first, middle, last] = [stage.executions[0] for stage in document.pipelines[0].stages]
    middle_output = middle.events[1].artifact
    with backend.client() as client:
        _push(client, document)
        [artifact] = [item for item in backend.store.get_artifacts() if item.uri == middle_output.uri]
        full = client.get(f"/api/artifacts/{artifact.id}/lineage", params={"depth": 5}).json()
        shallow = client.get(f"/api/artifacts/{artifact.id}/lineage", params={"depth": 1}).json()
        missing = client.get("/api/artifacts/999999999/lineage")

    upstream = full["upstream"]
    downstream = full["downstream"]
    assert full["artifact"]["uri"] == middle_output.uri
    assert [(item["execution_uuid"], item["level"]) for item in upstream["executions"]] == [
        (middle.execution_uuid, 1), (first.execution_uuid, 2)]
    assert {(item["uri"], item["level"]) for item in upstream["artifacts"]} == {
        (middle.events[0].artifact.uri, 1), (first.events[1].artifact.uri, 1)}
    assert upstream["truncated"] is False
    assert [(item["execution_uuid"], item["level"]) for item in downstream["executions"]] == [(last.execution_uuid, 1)]
    assert {item["uri"] for item in downstream["artifacts"]} == {event.artifact.uri for event in last.events[1:3]}
    assert {event["type"] for event in downstream["events"]} == {"INPUT", "OUTPUT"}
    assert [item["execution_uuid"] for item in shallow["upstream"]["executions"]] == [middle.execution_uuid]
    assert shallow["upstream"]["truncated"] is True
    assert missing.status_code == 404


def test_concurrent_pushes_of_two_pipelines_both_land(backend):
    names = [_name("concurrent"), _name("concurrent")]
    statuses: dict[str, list[str]] = {}

    def push(name: str) -> None:
        with backend.client() as client:
            statuses[name] = _push(client, build_document(name, site=name, stages=3, executions_per_stage=20))

    threads = [threading.Thread(target=push, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for name in names:
        assert statuses[name] == ["success"] * 3
        assert len(_pipeline_executions(backend, name)) == 60


def test_bearer_token_guards_every_endpoint_but_health(tmp_path):
    token = "s3cret-token"
    with server_process(str(tmp_path / "server.sqlite"), token=token, log_dir=tmp_path) as server:
        body = push_request_body("guarded", build_document("guarded", stages=1, executions_per_stage=1))
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            health = client.get("/health")
            anonymous = client.post("/api/mlmd_push", json=body)
            wrong = client.post("/api/mlmd_push", json=body, headers={"Authorization": "Bearer nope"})
            other_scheme = client.get("/api/pipelines", headers={"Authorization": f"Basic {token}"})
            listing = client.get("/api/pipelines")
            accepted = client.post("/api/mlmd_push", json=body, headers={"Authorization": f"Bearer {token}"})

    assert health.status_code == 200
    for rejected in (anonymous, wrong, other_scheme, listing):
        assert rejected.status_code == 401
        assert "bearer token" in rejected.json()["detail"]
        assert rejected.headers["WWW-Authenticate"] == "Bearer"
    assert accepted.json() == {"status": "success"}
    assert token not in server.log()


PER_STAGE = 30


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_push_repeated_after_server_crash(kind, tmp_path):
    # A whole-pipeline document, as an unmodified CMF client sends it: one MLMD transaction per stage.
    document = build_document(_name("crash"), stages=20, executions_per_stage=PER_STAGE)
    body = json.dumps(push_request_body(document.pipelines[0].name, document)).encode()
    clean_store = open_store(str(tmp_path / "clean.sqlite"))
    merge_document(clean_store, document)
    clean = store_snapshot(clean_store)

    with _store_location(kind, tmp_path) as location:
        store = open_store_for_test(location)
        with server_process(location, log_dir=tmp_path) as server:
            outcome: list[object] = []

            def push() -> None:
                try:
                    outcome.append(httpx.post(f"{server.base_url}/api/mlmd_push", content=body, timeout=300,
                                              headers={"Content-Type": "application/json"}))
                except httpx.TransportError as error:
                    outcome.append(error)

            pusher = threading.Thread(target=push)
            pusher.start()
            deadline = time.monotonic() + 120
            while not store.get_executions() and time.monotonic() < deadline:
                time.sleep(0.02)
            workers = _children(server.process.pid)
            server.kill()
            pusher.join()
        partial = len(store.get_executions())
        # The UI's SQLite reader processes notice that the killed server is gone and exit.
        orphans_deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers) and time.monotonic() < orphans_deadline:
            time.sleep(0.2)
        orphans = [pid for pid in workers if _alive(pid)]

        with server_process(location, log_dir=tmp_path) as server:
            repeated = httpx.post(f"{server.base_url}/api/mlmd_push", content=body, timeout=300,
                                  headers={"Content-Type": "application/json"})
        final = store_snapshot(store)

    assert isinstance(outcome[0], httpx.TransportError)
    assert 0 < partial < document.execution_count
    assert partial % PER_STAGE == 0  # whole stages only: each stage is one transaction
    assert repeated.json() == {"status": "success"}
    assert final == clean
    assert (len(workers) > 0) == (kind == "sqlite")
    assert orphans == []


def _children(pid: int) -> list[int]:
    """Return the ids of the processes that ``pid`` started, from Linux's /proc."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return children


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited and waits only for its parent to collect it


def test_cli_options_default_from_environment(monkeypatch):
    import argparse

    from cmf_airflow.server.cli import register

    monkeypatch.setenv("CMF_SERVER_STORE", "postgresql://cmf@127.0.0.1:5432/metadata")
    monkeypatch.setenv("CMF_SERVER_TOKEN", "from-environment")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))

    defaults = parser.parse_args(["server"])
    overridden = parser.parse_args(["server", "--port", "9000", "--store", "/tmp/s.sqlite", "--token", "t"])

    assert (defaults.host, defaults.port) == ("127.0.0.1", 8080)
    assert defaults.store == "postgresql://cmf@127.0.0.1:5432/metadata"
    assert defaults.token == "from-environment"
    assert callable(defaults.run)
    assert (overridden.port, overridden.store, overridden.token) == (9000, "/tmp/s.sqlite", "t")


def test_store_url_becomes_mlmd_connection_config(monkeypatch):
    from cmf_airflow.server.stores import connection_config, is_url, redact

    monkeypatch.setenv("PGPASSWORD", "from-environment")
    with_password = connection_config("postgresql://cmf:p%40ss@127.0.0.1:5433/metadata").postgresql
    from_environment = connection_config("postgresql://cmf@127.0.0.1/metadata").postgresql
    socket_folder = connection_config("postgresql://cmf@/metadata?host=/var/run/postgresql").postgresql
    mysql = connection_config("mysql://cmf:secret@127.0.0.1:3307/metadata").mysql

    assert (with_password.host, with_password.port, with_password.dbname) == ("127.0.0.1", "5433", "metadata")
    assert (with_password.user, with_password.password) == ("cmf", "p@ss")
    assert from_environment.password == "from-environment"
    assert from_environment.port == "5432"
    assert socket_folder.host == "/var/run/postgresql"
    assert (mysql.host, mysql.port, mysql.database, mysql.password) == ("127.0.0.1", 3307, "metadata", "secret")
    assert redact("postgresql://cmf:secret@127.0.0.1/metadata") == "postgresql://cmf:***@127.0.0.1/metadata"
    assert is_url("postgres://127.0.0.1/metadata")
    assert not is_url("/var/lib/cmf/mlmd.sqlite")
    with pytest.raises(ValueError, match="names no database"):
        connection_config("postgresql://cmf@127.0.0.1:5432")


def test_push_with_exec_uuid_merges_only_that_execution(backend):
    pipeline = _name("one")
    document = build_document(pipeline, stages=1, executions_per_stage=3)
    chosen = document.pipelines[0].stages[0].executions[2]
    with backend.client() as client:
        pushed = client.post("/api/mlmd_push", json=push_request_body(pipeline, document, exec_uuid=chosen.execution_uuid))
        unknown = client.post("/api/mlmd_push", json=push_request_body(pipeline, document, exec_uuid="no-such-uuid"))

    executions = _pipeline_executions(backend, pipeline)
    assert pushed.json() == {"status": "success"}
    assert [item["execution_uuid"] for item in executions] == [chosen.execution_uuid]
    assert unknown.status_code == 404
    assert "no-such-uuid" in unknown.json()["detail"]
