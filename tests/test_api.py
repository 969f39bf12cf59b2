"""The task-level API (cmf_airflow.current()) under real Airflow DAG runs writing a real MLMD store."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
from conftest import load_dag, make_git_repo, open_read_only, write_dag
from ml_metadata.proto import metadata_store_pb2 as mlmd

from cmf_airflow.lineage import step_metrics_rows

HEADER = '''
from datetime import datetime, timedelta
from pathlib import Path

import cmf_airflow
from cmf_airflow.compat import DAG, task

DATA = Path({data!r})
'''

LOGGING_DAG = HEADER + '''
with DAG("api_logging", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

    @task
    def train():
        cmf = cmf_airflow.current()
        cmf.log_params({{"learning_rate": 0.01, "layers": [64, 32]}})
        cmf.log_dataset(str(DATA / "features.csv"), "input", custom_properties={{"rows": 2}})
        (DATA / "model.bin").write_bytes(b"weights v1")
        cmf.log_model(str(DATA / "model.bin"), framework="sklearn", model_type="SGDClassifier")
        cmf.log_metrics("training", {{"loss": 0.25, "epochs": 3}})

    @task
    def evaluate():
        cmf = cmf_airflow.current()
        cmf.log_model(str(DATA / "model.bin"), "sklearn", "SGDClassifier", event="input")
        cmf.log_metrics("evaluation", {{"accuracy": 0.9}})

    train() >> evaluate()
'''


def _custom(message, key: str):
    value = message.custom_properties[key]
    return getattr(value, value.WhichOneof("value"))


def _artifacts_of_type(store, type_name: str) -> list[mlmd.Artifact]:
    return sorted(store.get_artifacts_by_type(type_name), key=lambda artifact: artifact.id)


def _events(store, artifact: mlmd.Artifact) -> list[tuple[int, int]]:
    return sorted((event.execution_id, event.type) for event in store.get_events_by_artifact_ids([artifact.id]))


def _run(source: str, name: str, data: Path, **fields):
    """Write the DAG file ``name`` from ``source`` and run the DAG of the same id."""
    data.mkdir(parents=True, exist_ok=True)
    dag_file = write_dag(source.format(data=str(data), **fields), name)
    return load_dag(dag_file, name).test()


@pytest.fixture
def logging_run(tmp_path, cmf_store):
    data = tmp_path / "data"
    data.mkdir()
    (data / "features.csv").write_text("x,y\n1,2\n")
    dag_run = _run(LOGGING_DAG, "api_logging", data)
    return dag_run, data, open_read_only(cmf_store)


def test_logged_artifacts_join_the_listener_execution(logging_run):
    dag_run, data, store = logging_run
    train, evaluate = sorted(store.get_executions(), key=lambda execution: execution.id)
    [features] = _artifacts_of_type(store, "Dataset")
    [metrics_train, metrics_eval] = _artifacts_of_type(store, "Metrics")

    assert str(dag_run.state) == "success"
    assert [train.type, evaluate.type] == ["api_logging/train", "api_logging/evaluate"]
    assert train.external_id == train.properties["Execution_uuid"].string_value
    assert train.last_known_state == mlmd.Execution.COMPLETE
    assert _custom(train, "learning_rate") == 0.01
    assert _custom(train, "layers") == "[64, 32]"
    assert features.uri == hashlib.md5(b"x,y\n1,2\n").hexdigest()
    assert features.external_id == f"Dataset:{features.uri}"
    assert _custom(features, "rows") == 2
    assert _events(store, features) == [(train.id, mlmd.Event.INPUT)]
    assert metrics_train.name.startswith("training:")
    assert metrics_train.name.endswith(f":{train.id}")
    assert metrics_train.properties["metrics_name"].string_value == "training"
    assert _custom(metrics_train, "loss") == 0.25
    assert _custom(metrics_train, "epochs") == 3
    assert _events(store, metrics_train) == [(train.id, mlmd.Event.OUTPUT)]
    assert _custom(metrics_eval, "accuracy") == 0.9
    assert _events(store, metrics_eval) == [(evaluate.id, mlmd.Event.OUTPUT)]


def test_model_logged_twice_is_one_artifact(logging_run):
    _, data, store = logging_run
    train, evaluate = sorted(store.get_executions(), key=lambda execution: execution.id)
    [model] = _artifacts_of_type(store, "Model")
    md5 = hashlib.md5(b"weights v1").hexdigest()

    assert model.uri == md5
    assert model.name == f"{data / 'model.bin'}:{md5}:{train.id}"
    assert model.external_id == f"Model:{md5}"
    assert model.properties["model_framework"].string_value == "sklearn"
    assert model.properties["model_type"].string_value == "SGDClassifier"
    assert model.properties["model_name"].string_value == "model.bin"
    assert model.properties["Commit"].string_value == md5
    assert _events(store, model) == [(train.id, mlmd.Event.OUTPUT), (evaluate.id, mlmd.Event.INPUT)]


RETRY_DAG = HEADER + '''
with DAG("api_retry", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

    @task(retries=1, retry_delay=timedelta(seconds=0))
    def flaky():
        cmf = cmf_airflow.current()
        first = not (DATA / "marker").exists()
        cmf.log_metrics("progress", {{"try_was_first": int(first)}})
        if first:
            (DATA / "marker").write_text("failed once")
            raise RuntimeError("crash after logging")

    flaky()
'''


def test_retry_logs_into_one_execution_per_try(tmp_path, cmf_store):
    dag_run = _run(RETRY_DAG, "api_retry", tmp_path / "data")
    store = open_read_only(cmf_store)
    first, second = sorted(store.get_executions(), key=lambda execution: execution.id)
    metrics = {_custom(m, "try_was_first"): m for m in store.get_artifacts_by_type("Metrics")}

    assert str(dag_run.state) == "success"
    assert [_custom(first, "airflow_try_number"), _custom(second, "airflow_try_number")] == [1, 2]
    assert first.last_known_state == mlmd.Execution.FAILED
    assert _custom(first, "error") == "RuntimeError: crash after logging"
    assert second.last_known_state == mlmd.Execution.COMPLETE
    assert _events(store, metrics[1]) == [(first.id, mlmd.Event.OUTPUT)]
    assert _events(store, metrics[0]) == [(second.id, mlmd.Event.OUTPUT)]


STEPS_DAG = HEADER + '''
with DAG("api_steps", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

    @task
    def fit():
        cmf = cmf_airflow.current()
        for name in ("training", "same_values"):
            for epoch in range(50):
                cmf.log_step_metrics(name, {{"loss": 1.0 / (epoch + 1), "epoch_seen": epoch}})
            cmf.commit_step_metrics(name)
        cmf.log_step_metrics("validation", {{"accuracy": 0.5}})
        # "validation" is left uncommitted: the listener's end hook commits it.

    fit()
'''


def test_step_metrics_come_back_in_order(tmp_path, cmf_store):
    dag_run = _run(STEPS_DAG, "api_steps", tmp_path / "data")
    store = open_read_only(cmf_store)
    [execution] = store.get_executions()
    by_name = {a.properties["metrics_name"].string_value: a for a in store.get_artifacts_by_type("Step_Metrics")}
    training = by_name["training"]
    rows = step_metrics_rows(training)
    rows_file = Path(training.properties["url"].string_value.removeprefix("file://"))

    assert str(dag_run.state) == "success"
    assert sorted(by_name) == ["same_values", "training", "validation"]
    assert step_metrics_rows(by_name["same_values"]) == step_metrics_rows(training)
    assert by_name["same_values"].uri != training.uri
    assert [row["step"] for row in rows] == list(range(50))
    assert [row["epoch_seen"] for row in rows] == list(range(50))
    assert rows[9]["loss"] == 0.1
    assert training.name == f"training:{training.uri}:{execution.id}"
    assert rows_file.parent == cmf_store.parent / "step_metrics"
    assert hashlib.md5(rows_file.read_bytes()).hexdigest() == training.uri
    assert json.loads(rows_file.read_text()) == {"metrics_name": "training", "steps": rows}
    assert _custom(training, "step_count") == 50
    assert step_metrics_rows(by_name["validation"]) == [{"step": 0, "accuracy": 0.5}]
    assert _events(store, training) == [(execution.id, mlmd.Event.OUTPUT)]


SIMPLE_DAG = HEADER + '''
with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), tags={tags!r}) as dag:

    @task
    def score():
        cmf_airflow.current().log_metrics("evaluation", {{"accuracy": 0.75}})

    score()
'''


@pytest.mark.parametrize(
    ("dag_id", "setting", "tags"),
    [
        ("api_listener_disabled", ("AIRFLOW__CMF__ENABLED", "False"), []),
        ("api_dag_excluded", ("AIRFLOW__CMF__EXCLUDE_DAGS", "api_dag_ex*"), []),
        ("api_no_lineage_tag", None, ["cmf:no-lineage"]),
    ],
)
def test_api_records_when_the_listener_skips_the_task(tmp_path, cmf_store, monkeypatch, dag_id, setting, tags):
    if setting is not None:
        monkeypatch.setenv(*setting)
    dag_run = _run(SIMPLE_DAG, dag_id, tmp_path / "data", dag_id=dag_id, tags=tags)
    store = open_read_only(cmf_store)
    [execution] = store.get_executions()
    [metrics] = store.get_artifacts_by_type("Metrics")

    assert str(dag_run.state) == "success"
    assert execution.last_known_state == mlmd.Execution.COMPLETE
    assert _custom(execution, "airflow_state") == "success"
    assert _custom(execution, "end_time")
    assert _events(store, metrics) == [(execution.id, mlmd.Event.OUTPUT)]


def test_api_records_when_the_start_hook_failed(tmp_path, cmf_store, monkeypatch, caplog):
    from cmf_airflow.listener import CmfListener

    # Mocked: a start hook that fails for a reason outside the task, such as a full disk for a moment.
    def failing_start(self, task_instance, settings):
        raise OSError("disk full for a moment")

    monkeypatch.setattr(CmfListener, "_record_start", failing_start)
    with caplog.at_level(logging.WARNING):
        dag_run = _run(SIMPLE_DAG, "api_start_failed", tmp_path / "data", dag_id="api_start_failed", tags=[])
    store = open_read_only(cmf_store)
    [execution] = store.get_executions()
    [metrics] = store.get_artifacts_by_type("Metrics")

    assert str(dag_run.state) == "success"
    assert any("disk full for a moment" in record.getMessage() for record in caplog.records)
    assert execution.last_known_state == mlmd.Execution.COMPLETE
    assert _events(store, metrics) == [(execution.id, mlmd.Event.OUTPUT)]


BAD_INPUT_DAG = HEADER + '''
from cmf_airflow.api import CmfInputError

CASES = {{
    "missing_path": lambda cmf: cmf.log_dataset(str(DATA / "nowhere.csv")),
    "bool_metric": lambda cmf: cmf.log_metrics("evaluation", {{"converged": True}}),
    "text_metric": lambda cmf: cmf.log_metrics("evaluation", {{"accuracy": "0.9"}}),
    "nan_metric": lambda cmf: cmf.log_step_metrics("training", {{"loss": float("nan")}}),
    "reserved_param": lambda cmf: cmf.log_params({{"airflow_state": "done"}}),
    "unversioned_model": lambda cmf: cmf.log_model(str(DATA / "model.bin"), "sklearn", "SGD", version=True),
}}

with DAG("api_bad_input", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
    for case, call in CASES.items():

        @task(task_id=case)
        def bad(call=call):
            cmf = cmf_airflow.current()
            cmf.log_metrics("before", {{"kept": 1}})
            try:
                call(cmf)
            except CmfInputError as error:
                raise CmfInputError(str(error)) from None
            raise AssertionError("no error for bad input")

        bad()
'''

BAD_INPUT_MESSAGES = {
    "missing_path": "cannot log dataset {data}/nowhere.csv: file does not exist. Write it before logging it",
    "bool_metric": "log_metrics('evaluation'): metric 'converged' is a bool (True). Log 1 or 0",
    "text_metric": "log_metrics('evaluation'): metric 'accuracy' is str '0.9', not a number",
    "nan_metric": "log_step_metrics('training'): metric 'loss' is nan, which JSON cannot carry",
    "reserved_param": "log_params cannot set 'airflow_state': the listener records it",
    "unversioned_model": "cannot version model {data}/model.bin",
}


def test_bad_input_keeps_earlier_logs(tmp_path, cmf_store):
    data = tmp_path / "data"
    data.mkdir()
    (data / "model.bin").write_bytes(b"weights")
    dag_run = _run(BAD_INPUT_DAG, "api_bad_input", data)
    store = open_read_only(cmf_store)
    executions = {execution.type.split("/")[1]: execution for execution in store.get_executions()}
    metrics_events = [_events(store, artifact) for artifact in store.get_artifacts_by_type("Metrics")]
    executions_with_metrics = {events[0][0] for events in metrics_events}

    assert str(dag_run.state) == "failed"
    assert sorted(executions) == sorted(BAD_INPUT_MESSAGES)
    for case, message in BAD_INPUT_MESSAGES.items():
        execution = executions[case]
        assert execution.last_known_state == mlmd.Execution.FAILED, case
        assert message.format(data=data) in _custom(execution, "error"), case
        assert execution.id in executions_with_metrics, case
    assert store.get_artifacts_by_type("Model") == []
    assert store.get_artifacts_by_type("Step_Metrics") == []


def test_unversioned_model_error_names_what_to_do(tmp_path, cmf_store):
    pytest.importorskip("cmf_airflow.versioning", reason="cmf_airflow/versioning.py is not in this checkout yet")
    data = tmp_path / "data"
    data.mkdir()
    (data / "model.bin").write_bytes(b"weights")
    _run(BAD_INPUT_DAG, "api_bad_input", data)
    [execution] = [e for e in open_read_only(cmf_store).get_executions() if e.type.endswith("unversioned_model")]

    assert "it is outside every DVC workspace" in _custom(execution, "error")
    assert "pass version=False" in _custom(execution, "error")


VERSIONED_DAG = HEADER + '''
with DAG("api_versioned", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

    @task
    def train():
        (DATA / "model.bin").write_bytes(b"versioned weights")
        cmf_airflow.current().log_model(str(DATA / "model.bin"), "sklearn", "SGDClassifier")

    train()
'''


def test_model_in_dvc_workspace_is_versioned(tmp_path, cmf_store, monkeypatch):
    import subprocess
    import sys

    pytest.importorskip("cmf_airflow.versioning", reason="cmf_airflow/versioning.py is not in this checkout yet")
    workspace = make_git_repo(tmp_path / "workspace")
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "init", "-q"], cwd=workspace, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "init dvc"], cwd=workspace, check=True)
    monkeypatch.setenv("AIRFLOW__CMF__VERSION_ARTIFACTS", "True")
    dag_run = _run(VERSIONED_DAG, "api_versioned", workspace)
    [model] = open_read_only(cmf_store).get_artifacts_by_type("Model")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True).stdout

    assert str(dag_run.state) == "success"
    assert _custom(model, "git_commit") == head.strip()
    assert _custom(model, "dvc_file") == str(workspace / "model.bin.dvc")
    assert model.properties["Commit"].string_value == hashlib.md5(b"versioned weights").hexdigest()


def test_current_outside_a_task_names_what_to_do():
    import cmf_airflow
    from cmf_airflow.api import NotInTaskError

    with pytest.raises(NotInTaskError, match="outside a running Airflow task: call it from inside a task"):
        cmf_airflow.current()
