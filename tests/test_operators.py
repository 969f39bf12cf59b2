"""CmfPythonOperator and @cmf_task under real Airflow DAG runs writing a real MLMD store."""

from __future__ import annotations

from pathlib import Path

from conftest import load_dag, open_read_only, write_dag
from ml_metadata.proto import metadata_store_pb2 as mlmd

from cmf_airflow.lineage import step_metrics_rows

OPERATORS_DAG = '''
from datetime import datetime
from pathlib import Path

from cmf_airflow.compat import DAG
from cmf_airflow.operators import CmfPythonOperator, cmf_task

OUT = Path({out!r})


def with_cmf(cmf):
    cmf.log_metrics("classic", {{"execution_id_seen": cmf.execution_id}})


def with_kwargs(**kwargs):
    kwargs["cmf"].log_params({{"had_ti": "ti" in kwargs}})


def without_cmf(value):
    OUT.write_text(str(value))


with DAG("cmf_operators", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
    classic = CmfPythonOperator(task_id="classic", python_callable=with_cmf)
    keywords = CmfPythonOperator(task_id="keywords", python_callable=with_kwargs)
    plain = CmfPythonOperator(task_id="plain", python_callable=without_cmf, op_args=[7])

    @cmf_task
    def decorated(factor, cmf):
        for step in range(3):
            cmf.log_step_metrics("fit", {{"loss": factor / (step + 1)}})
        return factor * 2

    @cmf_task(task_id="decorated_with_options", retries=0)
    def optioned(value, cmf=None):
        cmf.log_metrics("optioned", {{"value": value}})
        return value

    classic >> keywords >> plain >> optioned(decorated(6))
'''


def _custom(message, key: str):
    value = message.custom_properties[key]
    return getattr(value, value.WhichOneof("value"))


def _run_operators(tmp_path: Path):
    out = tmp_path / "plain.txt"
    dag_file = write_dag(OPERATORS_DAG.format(out=str(out)), "cmf_operators")
    return load_dag(dag_file, "cmf_operators").test(), out


def test_operators_pass_cmf_to_the_callable(tmp_path, cmf_store):
    dag_run, out = _run_operators(tmp_path)
    store = open_read_only(cmf_store)
    executions = {execution.type.split("/")[1]: execution for execution in store.get_executions()}
    metrics = {m.properties["metrics_name"].string_value: m for m in store.get_artifacts_by_type("Metrics")}

    assert str(dag_run.state) == "success"
    assert sorted(executions) == ["classic", "decorated", "decorated_with_options", "keywords", "plain"]
    assert {execution.last_known_state for execution in executions.values()} == {mlmd.Execution.COMPLETE}
    assert _custom(metrics["classic"], "execution_id_seen") == executions["classic"].id
    assert _custom(executions["keywords"], "had_ti") is True
    assert out.read_text() == "7"
    assert _custom(metrics["optioned"], "value") == 12


def test_cmf_task_commits_buffered_step_metrics(tmp_path, cmf_store):
    _run_operators(tmp_path)
    store = open_read_only(cmf_store)
    [decorated] = [e for e in store.get_executions() if e.type == "cmf_operators/decorated"]
    [steps] = store.get_artifacts_by_type("Step_Metrics")
    events = store.get_events_by_artifact_ids([steps.id])

    assert [row["loss"] for row in step_metrics_rows(steps)] == [6.0, 3.0, 2.0]
    assert [(event.execution_id, event.type) for event in events] == [(decorated.id, mlmd.Event.OUTPUT)]


def test_operators_package_exports_lazily():
    import cmf_airflow.operators as operators
    from cmf_airflow.operators.python import CmfPythonOperator, cmf_task

    assert operators.CmfPythonOperator is CmfPythonOperator
    assert operators.cmf_task is cmf_task
    assert {"CmfPythonOperator", "cmf_task", "DvcPushOperator", "CmfPushOperator"} <= set(operators.__all__)


def test_store_hook_is_one_per_process_and_store(cmf_store):
    from cmf_airflow.hooks import CmfStoreHook

    first = CmfStoreHook()
    second = CmfStoreHook()

    assert first.get_conn() is second.get_conn()
    assert first.recorder is second.recorder
    assert first.site == "test-site"
    assert first.store_path == str(cmf_store)
