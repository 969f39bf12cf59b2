"""Merging CMF documents into real MLMD stores (SQLite and the local PostgreSQL), without the server."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from ml_metadata.proto import metadata_store_pb2 as mlmd

from cmf_airflow.merge import ORIGINAL_NAME, MergeResult, merge_document
from cmf_airflow.model import ArtifactRecord, HashState, TaskOutcome, TaskRun
from cmf_airflow.recorder import Recorder
from cmf_airflow.server.queries import read_document
from cmf_airflow.store import open_store
from cmf_airflow.wire import (EVENT_INPUT, EVENT_OUTPUT, WireArtifact, WireDocument, WireError, WireEvent,
                              WireExecution, WirePipeline, WireStage)
from server_utils import build_document, mysql_database, open_store_for_test, postgres_database, store_snapshot

START = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def store(request, tmp_path):
    """A fresh MLMD store on SQLite, or on a new database of the local PostgreSQL or MariaDB."""
    if request.param == "sqlite":
        yield open_store(str(tmp_path / "server.sqlite"))
        return
    database = postgres_database if request.param == "postgresql" else mysql_database
    with database() as url:
        yield open_store_for_test(url)


@pytest.fixture
def sqlite_store(tmp_path):
    return open_store(str(tmp_path / "server.sqlite"))


def _dataset(name: str, md5: str) -> WireArtifact:
    return WireArtifact("Dataset", f"{name}:{md5}", md5, {"url": f"file://{name}"}, {"size": 3})


def _one_execution_document(execution_uuid: str, state: str, events: tuple[WireEvent, ...],
                            name: str = "", execution_type: str = "daily/train") -> WireDocument:
    execution = WireExecution(execution_type, name or execution_uuid, {"Execution_uuid": execution_uuid},
                              {"site": "site-a"}, events, last_known_state=state)
    stage = WireStage("daily/train", {"Pipeline_Stage": "daily/train"}, {}, (execution,))
    return WireDocument((WirePipeline("daily", {"Pipeline": "daily"}, {}, (stage,)),))


def test_same_document_twice_changes_nothing(store):
    document = build_document("daily", stages=2, executions_per_stage=3)

    first = merge_document(store, document)
    before = store_snapshot(store)
    second = merge_document(store, document)

    assert first.executions_created == 6
    assert first.contexts_created == 3
    assert second == MergeResult()
    assert not second.changed
    assert store_snapshot(store) == before


def test_running_then_complete_updates_execution_and_adds_events(store):
    raw = _dataset("/d/raw.csv", "1" * 32)
    model = _dataset("/d/model.pkl", "2" * 32)
    running = _one_execution_document("u-1", "RUNNING", (WireEvent(EVENT_INPUT, raw),))
    complete = _one_execution_document("u-1", "COMPLETE", (WireEvent(EVENT_INPUT, raw), WireEvent(EVENT_OUTPUT, model)))

    merge_document(store, running)
    result = merge_document(store, complete)
    [execution] = store.get_executions()
    events = store.get_events_by_execution_ids([execution.id])

    assert result == MergeResult(executions_updated=1, artifacts_created=1, events_created=1)
    assert execution.last_known_state == mlmd.Execution.COMPLETE
    assert sorted(event.type for event in events) == [EVENT_INPUT, EVENT_OUTPUT]
    assert len(store.get_artifacts()) == 2


def test_late_running_copy_keeps_final_state(sqlite_store):
    raw = _dataset("/d/raw.csv", "1" * 32)
    merge_document(sqlite_store, _one_execution_document("u-1", "COMPLETE", (WireEvent(EVENT_INPUT, raw),)))

    result = merge_document(sqlite_store, _one_execution_document("u-1", "RUNNING", (WireEvent(EVENT_INPUT, raw),)))
    [execution] = sqlite_store.get_executions()

    assert not result.changed
    assert execution.last_known_state == mlmd.Execution.COMPLETE


def test_same_content_at_two_sites_is_one_artifact(store):
    merge_document(store, build_document("daily", site="site-a", stages=1, executions_per_stage=2))
    merge_document(store, build_document("daily", site="site-b", stages=1, executions_per_stage=2))
    [shared] = [artifact for artifact in store.get_artifacts() if artifact.uri == "0" * 32]
    events = store.get_events_by_artifact_ids([shared.id])
    sites = {execution.custom_properties["site"].string_value
             for execution in store.get_executions_by_id([event.execution_id for event in events])}

    assert len(store.get_executions()) == 4
    assert shared.external_id == "Dataset:" + "0" * 32
    assert len(events) == 4
    assert sites == {"site-a", "site-b"}


def test_stage_linked_to_pipeline_with_attributions(sqlite_store):
    merge_document(sqlite_store, build_document("daily", stages=1, executions_per_stage=2))
    pipeline = sqlite_store.get_context_by_type_and_name("Parent_Context", "daily")
    stage = sqlite_store.get_context_by_type_and_name("Pipeline_Stage", "daily/task_0")

    assert [parent.id for parent in sqlite_store.get_parent_contexts_by_context(stage.id)] == [pipeline.id]
    assert len(sqlite_store.get_executions_by_context(stage.id)) == 2
    assert len(sqlite_store.get_executions_by_context(pipeline.id)) == 2
    # one shared input, and a dataset and a model per execution
    assert len(sqlite_store.get_artifacts_by_context(stage.id)) == 5
    assert len(sqlite_store.get_artifacts_by_context(pipeline.id)) == 5


def test_execution_name_collision_renamed_to_uuid(store):
    raw = _dataset("/d/raw.csv", "1" * 32)
    merge_document(store, _one_execution_document("u-site-a", "COMPLETE", (WireEvent(EVENT_INPUT, raw),), name="train"))
    result = merge_document(
        store, _one_execution_document("u-site-b", "COMPLETE", (WireEvent(EVENT_INPUT, raw),), name="train")
    )
    by_uuid = {execution.external_id: execution for execution in store.get_executions()}

    assert result.executions_created == 1
    assert by_uuid["u-site-a"].name == "train"
    assert by_uuid["u-site-b"].name == "u-site-b"
    assert by_uuid["u-site-b"].custom_properties[ORIGINAL_NAME].string_value == "train"


def test_unknown_types_registered_with_their_properties(sqlite_store):
    metrics = WireArtifact("Step_Metrics", "loss:uuid-1:1", "uuid-1", {"metrics_name": "loss"}, {"step": 3})
    document = _one_execution_document("u-1", "COMPLETE", (WireEvent(EVENT_OUTPUT, metrics),),
                                       execution_type="Custom Stage Type")
    merge_document(sqlite_store, document)
    artifact_type = sqlite_store.get_artifact_type("Step_Metrics")
    [artifact] = sqlite_store.get_artifacts()

    assert sqlite_store.get_execution_type("Custom Stage Type").name == "Custom Stage Type"
    assert artifact_type.properties["metrics_name"] == mlmd.STRING
    assert artifact.custom_properties["step"].int_value == 3


def test_property_type_conflict_rejected_before_any_write(sqlite_store):
    merge_document(sqlite_store, build_document("daily", stages=1, executions_per_stage=1))
    before = store_snapshot(sqlite_store)
    good = build_document("other", stages=1, executions_per_stage=1)
    pipeline = good.pipelines[0]
    stage = pipeline.stages[0]
    bad_execution = replace(stage.executions[0], type="daily/task_0",
                            properties={**stage.executions[0].properties, "Pipeline_Type": 7})
    bad = WireDocument((replace(pipeline, stages=(stage, replace(stage, name="other/x", executions=(bad_execution,)))),))

    with pytest.raises(WireError) as raised:
        merge_document(sqlite_store, bad)

    assert raised.value.status_code == 422
    assert "Pipeline_Type" in str(raised.value)
    assert store_snapshot(sqlite_store) == before


def test_lock_is_held_around_the_merge(sqlite_store):
    entered = []

    @contextlib.contextmanager
    def lock():
        entered.append("acquire")
        yield
        entered.append("release")

    merge_document(sqlite_store, build_document("daily", stages=1, executions_per_stage=1), lock=lock())

    assert entered == ["acquire", "release"]


def test_recorder_store_round_trips_through_a_document(tmp_path):
    local = Recorder(open_store(str(tmp_path / "local.sqlite")))
    run = TaskRun(site="site-a", dag_id="daily", task_id="train", run_id="scheduled__2026-03-01", map_index=-1,
                  try_number=1, operator="PythonOperator", hostname="worker-1", airflow_version="3.3.2",
                  start_time=START)
    data = ArtifactRecord(uri="file:///d/in.csv", path="/d/in.csv", md5="1" * 32, hash_state=HashState.HASHED)
    model = ArtifactRecord(uri="file:///d/model.pkl", path="/d/model.pkl", md5="2" * 32, hash_state=HashState.HASHED)
    local.record_start(run, [data], None)
    local.record_end(run, TaskOutcome("success", START + timedelta(seconds=2)), [model], None, [data])
    server = open_store(str(tmp_path / "server.sqlite"))

    document = read_document(local.store, "daily")
    first = merge_document(server, document)
    second = merge_document(server, read_document(local.store, "daily"))
    [execution] = server.get_executions()

    assert first.executions_created == 1
    assert first.events_created == 2
    assert not second.changed
    assert execution.external_id == run.execution_uuid
    assert execution.last_known_state == mlmd.Execution.COMPLETE
    assert sorted(artifact.uri for artifact in server.get_artifacts()) == ["1" * 32, "2" * 32]


def test_concurrent_merges_of_two_pipelines_share_one_artifact(tmp_path):
    with postgres_database() as url:
        first_store = open_store_for_test(url)
        merge_document(first_store, build_document("warmup", stages=1, executions_per_stage=1,
                                                   shared_input_md5="f" * 32))
        stores = [first_store, open_store_for_test(url)]
        errors: list[BaseException] = []

        def push(index: int) -> None:
            try:
                merge_document(stores[index], build_document(f"pipeline_{index}", site=f"site-{index}",
                                                             stages=2, executions_per_stage=20))
            except BaseException as error:  # collected for the assertion below
                errors.append(error)

        threads = [threading.Thread(target=push, args=(index,)) for index in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        shared = [artifact for artifact in first_store.get_artifacts() if artifact.uri == "0" * 32]

        assert errors == []
        assert len(first_store.get_executions()) == 81
        assert len(shared) == 1
        assert len(first_store.get_events_by_artifact_ids([shared[0].id])) == 80


def test_long_artifact_uri_gets_hashed_external_id(sqlite_store):
    long_uri = "s3://bucket/" + "deep/" * 60 + "file.csv"
    artifact = WireArtifact("Dataset", "file.csv", long_uri, {}, {"hash_state": "unhashed"})
    document = _one_execution_document("u-1", "COMPLETE", (WireEvent(EVENT_INPUT, artifact),))

    first = merge_document(sqlite_store, document)
    second = merge_document(sqlite_store, document)
    [stored] = sqlite_store.get_artifacts()

    assert first.artifacts_created == 1
    assert stored.uri == long_uri
    assert stored.external_id.startswith("Dataset:sha256:")
    assert len(stored.external_id) <= 255
    assert not second.changed