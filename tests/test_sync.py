"""The sync client against the real CMF server on a loopback port, with real local MLMD stores.

Local stores are written by real DAG runs (dag.test) or by the Recorder. The server runs as a subprocess
(tests/server_utils.py), on PostgreSQL for the two-site test and on SQLite elsewhere.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from conftest import REPO_ROOT, load_dag, write_dag
from ml_metadata.proto import metadata_store_pb2 as mlmd
from server_utils import free_port, postgres_database, running_server, server_process

from cmf_airflow.model import ArtifactRecord, HashState, TaskOutcome, TaskRun, artifact_external_id
from cmf_airflow.recorder import Recorder
from cmf_airflow.sync import (
    AuthenticationError,
    CmfClient,
    RequestRejectedError,
    ServerTimeoutError,
    ServerUnreachableError,
    export_document,
    outstanding_count,
    pull,
    push,
)
from cmf_airflow.sync.local import open_local_store
from cmf_airflow.sync.state import SAFETY_WINDOW_MS, SYNC_CONTEXT_TYPE, AckState, AckStore, next_watermark
from cmf_airflow.wire import push_request_body

START = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)

TWO_SITE_DAG = '''
import os
from datetime import datetime
from pathlib import Path

from cmf_airflow.compat import DAG, task

from cmf_airflow import File

# Other tests parse this bundle too, without the variable: the file must import there as well.
DATA = Path(os.environ.get("CMF_SYNC_TEST_DATA", "/nonexistent/cmf-sync-test-data"))

with DAG("sync_two_sites", schedule=None, start_date=datetime(2026, 1, 1), tags=["sync-test"]) as dag:

    @task(outlets=[File(str(DATA / "raw.csv"))])
    def produce():
        DATA.mkdir(parents=True, exist_ok=True)
        (DATA / "raw.csv").write_text("a,b\\n1,2\\n")

    @task(inlets=[File(str(DATA / "raw.csv"))], outlets=[File(str(DATA / "count.txt"))])
    def count():
        rows = (DATA / "raw.csv").read_text().splitlines()
        (DATA / "count.txt").write_text(str(len(rows)))

    produce() >> count()
'''


# ---------------------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(scope="module")
def server_url(tmp_path_factory) -> str:
    """One CMF server on SQLite for the module. Each test uses its own pipeline names."""
    with running_server(str(tmp_path_factory.mktemp("server") / "mlmd.sqlite")) as url:
        yield url


def _run(dag_id: str, task_id: str, *, site: str = "site-a", run_id: str = "manual__1", try_number: int = 1) -> TaskRun:
    return TaskRun(
        site=site,
        dag_id=dag_id,
        task_id=task_id,
        run_id=run_id,
        map_index=-1,
        try_number=try_number,
        operator="PythonOperator",
        hostname="worker-1",
        airflow_version="3.3.2",
        start_time=START,
    )


def _dataset(path: str, md5: str) -> ArtifactRecord:
    return ArtifactRecord(uri=f"file://{path}", path=path, md5=md5, hash_state=HashState.HASHED, size=4)


def _recorder(path: Path) -> Recorder:
    return Recorder(open_local_store(str(path)))


def _record_runs(recorder: Recorder, dag_id: str, count: int, *, site: str = "site-a", finish: bool = True) -> None:
    for index in range(count):
        run = _run(dag_id, "train", site=site, run_id=f"manual__{index}")
        recorder.record_start(run, [_dataset("/data/in.csv", "1" * 32)], None)
        if finish:
            outcome = TaskOutcome(state="success", end_time=START + timedelta(seconds=2))
            recorder.record_end(run, outcome, [_dataset(f"/data/out-{index}.csv", f"{index:032x}")], None)


def _server_executions(url: str, pipeline: str) -> list[dict]:
    items: list[dict] = []
    after = 0
    while True:
        answer = httpx.get(f"{url}/api/pipelines/{pipeline}/executions", params={"after": after, "limit": 100}).json()
        items.extend(answer["executions"])
        if answer["next_after"] is None:
            return items
        after = answer["next_after"]


def _server_artifacts(url: str, pipeline: str) -> list[dict]:
    answer = httpx.get(f"{url}/api/pipelines/{pipeline}/artifacts", params={"limit": 1000}).json()
    return answer["artifacts"]


class _ResponseLostTransport(httpx.HTTPTransport):
    """Delivers the request to the real server, then raises a read timeout in place of the response.

    A lost response cannot be produced on loopback on demand, so this transport replaces the network.
    """

    def __init__(self, lose_responses: int) -> None:
        super().__init__()
        self.lose_responses = lose_responses

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if self.lose_responses > 0:
            self.lose_responses -= 1
            response.read()
            response.close()
            raise httpx.ReadTimeout("the response was lost", request=request)
        return response


# ---------------------------------------------------------------------------------------------------------
# Two sites, real DAG runs, PostgreSQL server


def _run_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dag_file: Path, site: str) -> Path:
    store = tmp_path / site / "mlmd.sqlite"
    monkeypatch.setenv("AIRFLOW__CMF__STORE", str(store))
    monkeypatch.setenv("AIRFLOW__CMF__HASH_CACHE", str(tmp_path / site / "hash_cache.sqlite"))
    monkeypatch.setenv("AIRFLOW__CMF__SITE", site)
    monkeypatch.setenv("AIRFLOW__CMF__CAPTURE_ENVIRONMENT", "False")
    monkeypatch.setenv("CMF_SYNC_TEST_DATA", str(tmp_path / site / "data"))
    dag_run = load_dag(dag_file, "sync_two_sites").test()
    assert str(dag_run.state) == "success"
    return store


def test_two_sites_merge_into_one_lineage_on_postgresql(tmp_path, monkeypatch, cmf_store):
    dag_file = write_dag(TWO_SITE_DAG, "sync_two_sites", in_git=False)
    with postgres_database("cmf_sync") as database, running_server(database) as url:
        sent = {}
        for site in ("site-a", "site-b"):
            store = _run_site(tmp_path, monkeypatch, dag_file, site)
            with CmfClient(url) as client:
                sent[site] = push(str(store), client).executions_sent
        executions = _server_executions(url, "sync_two_sites")
        artifacts = _server_artifacts(url, "sync_two_sites")
        raw = [a for a in artifacts if a["name"].split(":")[0].endswith("raw.csv")]
        lineage = httpx.get(f"{url}/api/artifacts/{raw[0]['id']}/lineage", params={"depth": 1}).json()

    sites = sorted(execution["custom_properties"]["site"] for execution in executions)
    producers = sorted(e["custom_properties"]["site"] for e in lineage["upstream"]["executions"])
    consumers = sorted(e["custom_properties"]["site"] for e in lineage["downstream"]["executions"])
    assert sent == {"site-a": 2, "site-b": 2}
    assert sites == ["site-a", "site-a", "site-b", "site-b"]
    assert len({execution["execution_uuid"] for execution in executions}) == 4
    assert len(raw) == 1
    assert raw[0]["external_id"] == artifact_external_id("Dataset", raw[0]["uri"])
    assert producers == ["site-a", "site-b"]
    assert consumers == ["site-a", "site-b"]


# ---------------------------------------------------------------------------------------------------------
# Incremental push


def test_second_push_sends_nothing(tmp_path, server_url):
    path = tmp_path / "mlmd.sqlite"
    _record_runs(_recorder(path), "sync_second_push", 3)

    with CmfClient(server_url) as client:
        first = push(str(path), client)
        second = push(str(path), client)

    assert first.executions_sent == 3
    assert first.batches_merged == 1
    assert second.executions_sent == 0
    assert second.requests == 0
    assert second.bytes_sent == 0
    assert outstanding_count(str(path), server_url) == 0
    assert len(_server_executions(server_url, "sync_second_push")) == 3


def test_batch_holds_one_stage_up_to_size(tmp_path, server_url):
    path = tmp_path / "mlmd.sqlite"
    recorder = _recorder(path)
    _record_runs(recorder, "sync_batches", 5)
    recorder.record_start(_run("sync_batches", "evaluate"), [], None)

    with CmfClient(server_url) as client:
        result = push(str(path), client, batch_size=2)

    assert result.executions_sent == 6
    assert result.requests == 4  # train: 2 + 2 + 1, evaluate: 1
    assert result.batches_merged == 4
    assert len(_server_executions(server_url, "sync_batches")) == 6


def test_changed_execution_is_pushed_again(tmp_path, server_url):
    path = tmp_path / "mlmd.sqlite"
    recorder = _recorder(path)
    _record_runs(recorder, "sync_changed", 2, finish=False)
    with CmfClient(server_url) as client:
        first = push(str(path), client)
        run = _run("sync_changed", "train", run_id="manual__0")
        recorder.record_end(run, TaskOutcome("success", START + timedelta(seconds=2)), [_dataset("/o", "f" * 32)], None)
        second = push(str(path), client)
        third = push(str(path), client)
    states = sorted(execution["state"] for execution in _server_executions(server_url, "sync_changed"))

    assert first.executions_sent == 2
    assert second.executions_sent == 1
    assert second.batches_merged == 1
    assert third.executions_sent == 0
    assert states == ["COMPLETE", "RUNNING"]


def test_push_limited_to_one_pipeline_leaves_others_outstanding(tmp_path, server_url):
    path = tmp_path / "mlmd.sqlite"
    recorder = _recorder(path)
    _record_runs(recorder, "sync_only_this", 2)
    _record_runs(recorder, "sync_not_this", 1)

    with CmfClient(server_url) as client:
        limited = push(str(path), client, pipelines=["sync_only_this"])
        outstanding = outstanding_count(str(path), server_url)
        rest = push(str(path), client)

    assert limited.executions_sent == 2
    assert limited.pipelines == ("sync_only_this",)
    assert outstanding == 1
    assert rest.executions_sent == 1
    assert rest.pipelines == ("sync_not_this",)


def test_acknowledgements_are_kept_per_server_in_the_store(tmp_path, server_url):
    path = tmp_path / "mlmd.sqlite"
    _record_runs(_recorder(path), "sync_state", 2)
    with CmfClient(server_url) as client:
        push(str(path), client)

    store = open_local_store(str(path))
    [context] = store.get_contexts_by_type(SYNC_CONTEXT_TYPE)
    recent = json.loads(context.custom_properties["recent"].string_value)
    executions = store.get_executions()
    assert context.name == server_url
    assert context.custom_properties["watermark"].int_value == max(e.last_update_time_since_epoch for e in executions)
    assert recent == {str(e.id): e.last_update_time_since_epoch for e in executions}


def test_push_reads_only_executions_inside_window(tmp_path, server_url):
    path = tmp_path / "mlmd.sqlite"
    _record_runs(_recorder(path), "sync_window", 3)
    with CmfClient(server_url) as client:
        first = push(str(path), client)
        # A watermark two windows ahead puts every execution behind the window, as in a store whose
        # executions are older than the window: the indexed query then returns none of them.
        acks = AckStore(open_local_store(str(path)), client.base_url)
        acks.update(lambda state: state.advanced(state.watermark + 2 * SAFETY_WINDOW_MS))
        second = push(str(path), client)

    assert first.executions_scanned == 3
    assert second.executions_scanned == 0
    assert second.requests == 0


def test_execution_without_stage_is_skipped_once(tmp_path, server_url):
    path = tmp_path / "mlmd.sqlite"
    _record_runs(_recorder(path), "sync_foreign", 1)
    store = open_local_store(str(path))
    foreign_type = store.put_execution_type(mlmd.ExecutionType(name="foreign_writer"))
    store.put_executions([mlmd.Execution(type_id=foreign_type, name="written-by-another-tool")])

    with CmfClient(server_url) as client:
        first = push(str(path), client)
        second = push(str(path), client)

    assert first.executions_sent == 1
    assert first.executions_skipped == 1
    assert "1 execution(s) without a stage or Execution_uuid skipped" in first.summary
    assert second.executions_skipped == 0
    assert second.requests == 0


def test_watermark_stops_at_earliest_pending_execution():
    assert next_watermark([10, 20, 30], []) == 30
    assert next_watermark([10, 20, 30], [20, 25]) == 20
    assert next_watermark([], []) == 0


def test_ack_state_prunes_pairs_behind_the_window():
    state = AckState("http://127.0.0.1:1", 0, {1: 100, 2: 5_000_000}).advanced(5_000_000)

    assert dict(state.recent) == {2: 5_000_000}
    assert state.is_acknowledged(1, 100)
    assert state.is_acknowledged(2, 5_000_000)
    assert not state.is_acknowledged(2, 5_000_001)
    assert not state.is_acknowledged(3, 4_900_000)


# ---------------------------------------------------------------------------------------------------------
# Failures: server down, lost responses, rejected requests


def test_push_while_server_down_loses_nothing(tmp_path):
    path = tmp_path / "mlmd.sqlite"
    _record_runs(_recorder(path), "sync_down", 3)
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    with CmfClient(url, max_attempts=2, backoff=0.05) as client:
        with pytest.raises(ServerUnreachableError) as raised:
            push(str(path), client)
        attempts = client.requests_sent
    outstanding = outstanding_count(str(path), url)
    with server_process(str(tmp_path / "server.sqlite"), port=port), CmfClient(url) as client:
        later = push(str(path), client)
        executions = _server_executions(url, "sync_down")

    assert str(raised.value).startswith(f"cannot reach the CMF server at {url}: ")
    assert str(raised.value).endswith("; nothing was lost, the next push sends it")
    assert attempts == 2
    assert outstanding == 3
    assert later.executions_sent == 3
    assert len(executions) == 3


def test_push_after_lost_response_creates_nothing(tmp_path, server_url):
    path = tmp_path / "mlmd.sqlite"
    _record_runs(_recorder(path), "sync_lost_answer", 2)

    with CmfClient(server_url, transport=_ResponseLostTransport(lose_responses=1)) as client:
        with pytest.raises(ServerTimeoutError) as raised:
            push(str(path), client)
    after_lost = _server_executions(server_url, "sync_lost_answer")
    artifacts_after_lost = _server_artifacts(server_url, "sync_lost_answer")
    with CmfClient(server_url) as client:
        repeated = push(str(path), client)
    after_repeat = _server_executions(server_url, "sync_lost_answer")

    assert "nothing was lost" in str(raised.value)
    assert len(after_lost) == 2
    assert repeated.executions_sent == 2
    assert repeated.batches_known == 1
    assert repeated.batches_merged == 0
    assert [e["id"] for e in after_repeat] == [e["id"] for e in after_lost]
    assert _server_artifacts(server_url, "sync_lost_answer") == artifacts_after_lost


def test_wrong_token_is_rejected_without_retry(tmp_path):
    path = tmp_path / "mlmd.sqlite"
    _record_runs(_recorder(path), "sync_token", 1)
    with running_server(str(tmp_path / "server.sqlite"), token="right-token") as url:
        with CmfClient(url, token="wrong-token") as client:
            with pytest.raises(AuthenticationError) as raised:
                push(str(path), client)
            attempts = client.requests_sent
        with CmfClient(url, token="right-token") as client:
            accepted = push(str(path), client)

    assert "HTTP 401" in str(raised.value)
    assert "--token" in str(raised.value)
    assert attempts == 1
    assert accepted.executions_sent == 1


def test_rejected_request_names_the_servers_detail_without_retry(server_url):
    body = {"pipeline_name": "sync_bad", "exec_uuid": None, "json_payload": "{not json"}

    with CmfClient(server_url) as client:
        with pytest.raises(RequestRejectedError) as raised:
            client.post("/api/mlmd_push", body)
        attempts = client.requests_sent

    assert raised.value.status_code == 400
    assert "json_payload is not valid JSON" in raised.value.detail
    assert attempts == 1


# ---------------------------------------------------------------------------------------------------------
# Pull and export


def test_pulled_executions_are_not_pushed_back(tmp_path, server_url):
    site_a = tmp_path / "a" / "mlmd.sqlite"
    site_b = tmp_path / "b" / "mlmd.sqlite"
    _record_runs(_recorder(site_a), "sync_pull", 2, site="site-a")
    _record_runs(_recorder(site_b), "sync_pull", 1, site="site-b")

    with CmfClient(server_url) as client:
        push(str(site_a), client)
        pulled = pull(str(site_b), client, pipelines=["sync_pull"])
        after_pull = push(str(site_b), client)
        again = pull(str(site_b), client, pipelines=["sync_pull"])
    sites = sorted(e.custom_properties["site"].string_value for e in open_local_store(str(site_b)).get_executions())

    assert pulled.executions_received == 2
    assert pulled.merge.executions_created == 2
    assert sites == ["site-a", "site-a", "site-b"]
    assert after_pull.executions_sent == 1  # only site-b's own execution
    assert after_pull.pipelines == ("sync_pull",)
    assert again.merge.executions_created == 0
    assert outstanding_count(str(site_b), server_url) == 0


def test_pull_of_unknown_pipeline_is_clear(tmp_path, server_url):
    with CmfClient(server_url) as client:
        with pytest.raises(Exception) as raised:
            pull(str(tmp_path / "mlmd.sqlite"), client, pipelines=["no_such_pipeline"])

    assert "has no pipeline 'no_such_pipeline'" in str(raised.value)


def test_exported_document_is_accepted_by_the_server(tmp_path, server_url):
    path = tmp_path / "mlmd.sqlite"
    recorder = _recorder(path)
    _record_runs(recorder, "sync_export", 2)
    recorder.record_start(_run("sync_export", "evaluate"), [_dataset("/data/out-0.csv", f"{0:032x}")], None)
    document = export_document(str(path), ["sync_export"])

    with CmfClient(server_url) as client:
        first = client.push(push_request_body("sync_export", document))
        second = client.push(push_request_body("sync_export", document))

    assert document.execution_count == 3
    assert [stage.name for stage in document.pipelines[0].stages] == ["sync_export/train", "sync_export/evaluate"]
    assert first == "success"
    assert second == "exists"
    assert len(_server_executions(server_url, "sync_export")) == 3


def test_push_request_matches_cmf_client_shape(tmp_path):
    path = tmp_path / "mlmd.sqlite"
    _record_runs(_recorder(path), "sync_shape", 1)
    fixture = json.loads((REPO_ROOT / "tests" / "fixtures" / "cmf_client_push.json").read_text())
    body = push_request_body("sync_shape", export_document(str(path)))
    ours = json.loads(body["json_payload"])["Pipeline"][0]
    theirs = json.loads(fixture["json_payload"])["Pipeline"][0]

    # type_id is the sending store's own type id, which no CMF server reads. The wire value objects have no
    # field for it, so it is the one key of a CMF client's document that this document lacks.
    def keys(node: dict) -> set[str]:
        return set(node) - {"type_id"}

    assert set(body) == set(fixture)
    assert isinstance(body["json_payload"], str)
    assert keys(theirs) <= set(ours)
    assert keys(theirs["stages"][0]) <= set(ours["stages"][0])
    assert keys(theirs["stages"][0]["executions"][0]) <= set(ours["stages"][0]["executions"][0])
    their_event = theirs["stages"][0]["executions"][0]["events"][0]
    our_event = ours["stages"][0]["executions"][0]["events"][0]
    assert set(their_event) == set(our_event)
    assert keys(their_event["artifact"]) <= set(our_event["artifact"])
