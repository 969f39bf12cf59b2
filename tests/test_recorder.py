"""The recorder against a real MLMD SQLite store, without Airflow in between."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from ml_metadata.proto import metadata_store_pb2 as mlmd

from cmf_airflow.model import ArtifactRecord, EventKind, GitInfo, HashState, TaskOutcome, TaskRun
from cmf_airflow.recorder import Recorder
from cmf_airflow.store import StoreLockTimeout, open_store, write_lock

START = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
GIT = GitInfo(remote_url="https://git.example.com/a.git", commit="a" * 40, dirty=True, root="/repo")


def _run(try_number: int = 1, site: str = "site-a") -> TaskRun:
    return TaskRun(
        site=site,
        dag_id="daily",
        task_id="train",
        run_id="scheduled__2026-03-01",
        map_index=-1,
        try_number=try_number,
        operator="PythonOperator",
        hostname="worker-1",
        airflow_version="3.3.2",
        start_time=START,
    )


def _dataset(path: str, md5: str) -> ArtifactRecord:
    return ArtifactRecord(uri=f"file://{path}", path=path, md5=md5, hash_state=HashState.HASHED, size=4)


@pytest.fixture
def recorder(tmp_path) -> Recorder:
    return Recorder(open_store(str(tmp_path / "mlmd.sqlite")))


def test_same_try_recorded_twice_is_one_execution(recorder):
    inputs = [_dataset("/d/in.csv", "1" * 32)]
    outputs = [_dataset("/d/out.csv", "2" * 32)]
    outcome = TaskOutcome(state="success", end_time=START + timedelta(seconds=3))
    for _ in range(2):
        recorder.record_start(_run(), inputs, GIT)
        recorder.record_end(_run(), outcome, outputs, GIT, inputs)
    store = recorder.store
    [execution] = store.get_executions()
    events = store.get_events_by_execution_ids([execution.id])

    assert execution.last_known_state == mlmd.Execution.COMPLETE
    assert execution.custom_properties["duration_s"].double_value == 3.0
    assert execution.custom_properties["git_dirty"].bool_value is True
    assert sorted(e.type for e in events) == [mlmd.Event.INPUT, mlmd.Event.OUTPUT]
    assert len(store.get_artifacts()) == 2


def test_execution_uuid_differs_by_site_and_try():
    assert _run().execution_uuid == _run().execution_uuid
    assert _run(site="site-b").execution_uuid != _run().execution_uuid
    assert _run(try_number=2).execution_uuid != _run().execution_uuid


def test_same_content_at_same_path_is_one_artifact(recorder):
    shared = _dataset("/d/features.npy", "3" * 32)
    recorder.record_end(_run(1), TaskOutcome("success", START), [shared], GIT)
    recorder.record_start(_run(2), [shared], GIT)
    store = recorder.store
    [artifact] = store.get_artifacts()

    assert artifact.uri == "3" * 32
    assert artifact.name == "/d/features.npy:" + "3" * 32
    assert len(store.get_events_by_artifact_ids([artifact.id])) == 2


def test_artifact_both_input_and_output_gets_two_events(recorder):
    same = _dataset("/d/in-place.csv", "4" * 32)
    execution = recorder.record_end(_run(), TaskOutcome("success", START), [same], GIT, [same])
    events = recorder.store.get_events_by_execution_ids([execution.id])

    assert len(recorder.store.get_artifacts()) == 1
    assert sorted(e.type for e in events) == [mlmd.Event.INPUT, mlmd.Event.OUTPUT]


def test_end_without_start_creates_the_execution(recorder):
    outcome = TaskOutcome(state="failed", end_time=START, error="OSError: disk full")
    recorder.record_end(_run(), outcome, [], None, [_dataset("/d/in.csv", "5" * 32)])
    [execution] = recorder.store.get_executions()

    assert execution.last_known_state == mlmd.Execution.FAILED
    assert execution.custom_properties["error"].string_value == "OSError: disk full"
    assert execution.properties["Git_Start_Commit"].string_value == ""
    assert len(recorder.store.get_events_by_execution_ids([execution.id])) == 1


def test_site_id_is_generated_once_and_kept(tmp_path):
    path = str(tmp_path / "mlmd.sqlite")
    first = Recorder(open_store(path)).site_id()
    second = Recorder(open_store(path)).site_id()

    assert len(first) == 12
    assert first == second


def test_types_are_registered_once_per_recorder(recorder):
    calls = []
    original = recorder.store.put_execution_type

    def counting(*args, **kwargs):
        calls.append(args[0].name)
        return original(*args, **kwargs)

    recorder.store.put_execution_type = counting
    for try_number in (1, 2, 3):
        recorder.record_start(_run(try_number), [], GIT)

    assert calls == ["daily/train"]


def test_write_lock_times_out_while_held(tmp_path):
    path = str(tmp_path / "mlmd.sqlite")
    with write_lock(path, timeout=1.0):
        with pytest.raises(StoreLockTimeout, match="timed out after 0.2 s waiting for the write lock"):
            # flock locks belong to the open file description, so a second open in one process conflicts.
            with write_lock(path, timeout=0.2):
                pass


def test_objects_carry_external_ids(recorder):
    execution = recorder.record_start(_run(), [_dataset("/d/in.csv", "6" * 32)], GIT)
    [artifact] = recorder.store.get_artifacts()

    assert execution.external_id == _run().execution_uuid
    assert artifact.external_id == "Dataset:" + "6" * 32
    assert recorder.store.get_artifacts_by_external_ids([artifact.external_id])[0].id == artifact.id


def test_same_content_at_two_paths_is_one_artifact(recorder):
    first, second = _dataset("/d/a.csv", "7" * 32), _dataset("/elsewhere/b.csv", "7" * 32)
    recorder.record_start(_run(1), [first], GIT)
    # A second recorder, as in another task process: it must find the artifact in the store by external id.
    other = Recorder(recorder.store)
    other.record_start(_run(2), [second], GIT)
    [artifact] = recorder.store.get_artifacts()

    assert artifact.name == "/d/a.csv:" + "7" * 32
    assert len(recorder.store.get_events_by_artifact_ids([artifact.id])) == 2


def test_logged_artifacts_create_then_join_one_execution(recorder):
    model = ArtifactRecord(
        uri="file:///m/model.pkl",
        path="/m/model.pkl",
        md5="8" * 32,
        hash_state=HashState.HASHED,
        type_name="Model",
        explicit_name="/m/model.pkl:" + "8" * 32 + ":1",
        properties=(("model_framework", "sklearn"), ("model_type", "SGD"), ("model_name", "model.pkl")),
    )
    created = recorder.record_logged(_run(), [(EventKind.OUTPUT, model)], GIT, {"learning_rate": 0.5})
    ended = recorder.record_end(_run(), TaskOutcome("success", START + timedelta(seconds=1)), [], GIT)
    [execution] = recorder.store.get_executions()
    [artifact] = recorder.store.get_artifacts()

    assert created.id == ended.id == execution.id
    assert execution.last_known_state == mlmd.Execution.COMPLETE
    assert execution.custom_properties["learning_rate"].double_value == 0.5
    assert artifact.properties["model_framework"].string_value == "sklearn"
    assert artifact.external_id == "Model:" + "8" * 32


def test_logging_keeps_the_execution_state(recorder):
    recorder.record_start(_run(), [], GIT)
    recorder.record_logged(_run(), [], GIT, {"epochs": 3})
    [execution] = recorder.store.get_executions()

    assert execution.last_known_state == mlmd.Execution.RUNNING
    assert execution.custom_properties["airflow_state"].string_value == "running"
    assert execution.custom_properties["epochs"].int_value == 3


def test_store_without_external_ids_is_adopted_by_name(recorder):
    # A store written by an earlier version: the same execution and artifact names, no external ids.
    recorder.record_start(_run(), [_dataset("/d/old.csv", "9" * 32)], GIT)
    store = recorder.store
    [execution] = store.get_executions()
    [artifact] = store.get_artifacts()
    execution.ClearField("external_id")
    artifact.ClearField("external_id")
    store.put_executions([execution])
    store.put_artifacts([artifact])
    assert store.get_executions()[0].external_id == ""
    assert store.get_artifacts()[0].external_id == ""

    Recorder(store).record_end(
        _run(), TaskOutcome("success", START), [_dataset("/d/old.csv", "9" * 32)], GIT
    )

    assert [e.id for e in store.get_executions()] == [execution.id]
    assert [a.id for a in store.get_artifacts()] == [artifact.id]
    assert sorted(e.type for e in store.get_events_by_artifact_ids([artifact.id])) == [
        mlmd.Event.INPUT,
        mlmd.Event.OUTPUT,
    ]


def test_stale_writer_keeps_final_state(recorder):
    # Two recorders on one store stand for two processes: the worker whose replay writes the try's start and
    # logged parameters, and the try's own end hook. The first still has the RUNNING copy it wrote.
    replaying = recorder
    ending = Recorder(replaying.store)
    run = _run()
    replaying.record_start(run, [_dataset("/d/in.csv", "1" * 32)], GIT)
    outcome = TaskOutcome(state="success", end_time=START + timedelta(seconds=3))
    ending.record_end(run, outcome, [_dataset("/d/out.csv", "2" * 32)], GIT)

    replaying.record_logged(run, [], GIT, {"learning_rate": 0.1})
    replaying.record_start(run, [_dataset("/d/in.csv", "1" * 32), _dataset("/d/extra.csv", "3" * 32)], GIT)
    [execution] = replaying.store.get_executions()
    events = replaying.store.get_events_by_execution_ids([execution.id])

    assert execution.last_known_state == mlmd.Execution.COMPLETE
    assert execution.custom_properties["airflow_state"].string_value == "success"
    assert execution.custom_properties["end_time"].string_value == outcome.end_time.isoformat()
    assert execution.custom_properties["learning_rate"].double_value == 0.1
    assert sorted(event.type for event in events) == [mlmd.Event.INPUT, mlmd.Event.INPUT, mlmd.Event.OUTPUT]
    assert execution.properties["Git_Start_Commit"].string_value == GIT.commit
