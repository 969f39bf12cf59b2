"""The listener under real Airflow DAG runs (dag.test) writing a real MLMD store."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
from conftest import GIT_DAGS, PLAIN_DAGS, git, load_dag, open_read_only, write_dag
from ml_metadata.proto import metadata_store_pb2 as mlmd

from cmf_airflow.model import TaskRun


@pytest.fixture(autouse=True)
def _without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leave the Environment artifact out, so that each test counts only the artifacts of its DAG.

    tests/test_environment.py covers the Environment artifact, which is on by default.
    """
    monkeypatch.setenv("AIRFLOW__CMF__CAPTURE_ENVIRONMENT", "False")


@pytest.fixture(autouse=True)
def _fresh_git_lookup() -> None:
    """Forget git provenance looked up by earlier tests, as a new task process would.

    The lookup is cached per process and folder, and earlier tests commit DAG files to the same repository.
    """
    from cmf_airflow import provenance

    provenance._git_info_of_folder.cache_clear()

CHAIN_DAG = '''
from datetime import datetime
from pathlib import Path

from cmf_airflow.compat import DAG, task

from cmf_airflow import File

DATA = Path({data!r})

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), params={{"rows": 3}}) as dag:

    @task(outlets=[File(str(DATA / "raw.txt"))])
    def produce():
        DATA.mkdir(parents=True, exist_ok=True)
        (DATA / "raw.txt").write_text("a,b\\n1,2\\n")

    @task(inlets=[File(str(DATA / "raw.txt"))], outlets=[File(str(DATA / "clean"))])
    def transform():
        (DATA / "clean").mkdir(exist_ok=True)
        (DATA / "clean" / "part-0.txt").write_text((DATA / "raw.txt").read_text().upper())

    @task(inlets=[File(str(DATA / "clean"))])
    def consume():
        assert (DATA / "clean" / "part-0.txt").read_text().startswith("A,B")

    produce() >> transform() >> consume()
'''


def _executions(store_path: Path) -> list[mlmd.Execution]:
    return sorted(open_read_only(store_path).get_executions(), key=lambda execution: execution.id)


def _custom(message, key: str):
    value = message.custom_properties[key]
    return getattr(value, value.WhichOneof("value"))


def _task_states(dag_run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def _cmf_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("cmf_airflow") and r.levelno == logging.WARNING]


def _run_chain(tmp_path: Path, dag_id: str, *, in_git: bool = True):
    data = tmp_path / "data"
    dag_file = write_dag(CHAIN_DAG.format(dag_id=dag_id, data=str(data)), dag_id, in_git=in_git)
    dag_run = load_dag(dag_file, dag_id).test()
    return dag_run, data


def test_each_task_try_is_one_execution(tmp_path, cmf_store):
    dag_run, data = _run_chain(tmp_path, "chain_basic")
    executions = _executions(cmf_store)
    store = open_read_only(cmf_store)

    assert str(dag_run.state) == "success"
    assert [e.type for e in executions] == ["chain_basic/produce", "chain_basic/transform", "chain_basic/consume"]
    assert all(e.last_known_state == mlmd.Execution.COMPLETE for e in executions)
    for execution in executions:
        run = TaskRun(
            site="test-site",
            dag_id="chain_basic",
            task_id=execution.type.split("/")[1],
            run_id=dag_run.run_id,
            map_index=-1,
            try_number=1,
            operator="",
            hostname="",
            airflow_version="",
        )
        assert execution.name == run.execution_uuid
        assert execution.properties["Execution_uuid"].string_value == run.execution_uuid
        assert _custom(execution, "airflow_run_id") == dag_run.run_id
        assert _custom(execution, "airflow_try_number") == 1
        assert _custom(execution, "airflow_state") == "success"
        assert _custom(execution, "site") == "test-site"
        assert _custom(execution, "duration_s") >= 0
    assert _custom(executions[0], "params") == '{"rows": 3}'

    head = git(GIT_DAGS, "rev-parse", "HEAD")
    assert {e.properties["Git_Start_Commit"].string_value for e in executions} == {head}
    assert {e.properties["Git_End_Commit"].string_value for e in executions} == {head}
    assert {e.properties["Git_Repo"].string_value for e in executions} == {
        "https://git.example.com/team/pipelines.git"
    }

    [pipeline] = store.get_contexts_by_type("Parent_Context")
    assert pipeline.name == "chain_basic"
    stages = store.get_children_contexts_by_context(pipeline.id)
    assert sorted(stage.name for stage in stages) == [
        "chain_basic/consume",
        "chain_basic/produce",
        "chain_basic/transform",
    ]
    for stage in stages:
        assert [e.type for e in store.get_executions_by_context(stage.id)] == [stage.name]

    raw_md5 = hashlib.md5((data / "raw.txt").read_bytes()).hexdigest()
    [raw] = store.get_artifacts_by_uri(raw_md5)
    assert raw.name == f"{data / 'raw.txt'}:{raw_md5}"
    assert raw.properties["Commit"].string_value == raw_md5
    events = store.get_events_by_artifact_ids([raw.id])
    assert sorted((e.execution_id, e.type) for e in events) == [
        (executions[0].id, mlmd.Event.OUTPUT),
        (executions[1].id, mlmd.Event.INPUT),
    ]
    [clean] = [a for a in store.get_artifacts() if a.uri.endswith(".dir")]
    assert _custom(clean, "file_count") == 1
    clean_events = store.get_events_by_artifact_ids([clean.id])
    assert sorted((e.execution_id, e.type) for e in clean_events) == [
        (executions[1].id, mlmd.Event.OUTPUT),
        (executions[2].id, mlmd.Event.INPUT),
    ]


RETRY_DAG = '''
from datetime import datetime, timedelta
from pathlib import Path

from cmf_airflow.compat import DAG, task

from cmf_airflow import File

MARKER = Path({marker!r})
OUT = Path({out!r})

with DAG("retry_once", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

    @task(outlets=[File(str(OUT))], retries=2, retry_delay=timedelta(seconds=0))
    def flaky():
        if not MARKER.exists():
            MARKER.write_text("failed once")
            raise RuntimeError("transient failure on the first try")
        OUT.write_text("done")

    flaky()
'''


def test_retry_records_a_second_execution(tmp_path, cmf_store):
    out = tmp_path / "out.txt"
    dag_file = write_dag(RETRY_DAG.format(marker=str(tmp_path / "marker"), out=str(out)), "retry_once")
    dag_run = load_dag(dag_file, "retry_once").test()
    first, second = _executions(cmf_store)

    assert str(dag_run.state) == "success"
    assert first.name != second.name
    assert _custom(first, "airflow_try_number") == 1
    assert _custom(second, "airflow_try_number") == 2
    assert first.last_known_state == mlmd.Execution.FAILED
    assert _custom(first, "airflow_state") == "up_for_retry"
    assert _custom(first, "error") == "RuntimeError: transient failure on the first try"
    assert second.last_known_state == mlmd.Execution.COMPLETE
    assert "error" not in second.custom_properties

    store = open_read_only(cmf_store)
    outputs = {e.execution_id: e.artifact_id for e in store.get_events_by_execution_ids([first.id, second.id])}
    [missing] = store.get_artifacts_by_id([outputs[first.id]])
    [written] = store.get_artifacts_by_id([outputs[second.id]])
    assert _custom(missing, "hash_state") == "missing"
    assert written.uri == hashlib.md5(b"done").hexdigest()


FAILING_DAG = '''
from datetime import datetime

from cmf_airflow.compat import DAG, task

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1)) as dag:

    @task
    def ok():
        return 1

    @task
    def broken():
        raise ValueError("bad row 7 in input")

    ok() >> broken()
'''


def test_failed_task_records_its_error(cmf_store):
    dag_file = write_dag(FAILING_DAG.format(dag_id="fails_once"), "fails_once")
    dag_run = load_dag(dag_file, "fails_once").test()
    ok, broken = _executions(cmf_store)

    assert str(dag_run.state) == "failed"
    assert ok.last_known_state == mlmd.Execution.COMPLETE
    assert broken.last_known_state == mlmd.Execution.FAILED
    assert _custom(broken, "airflow_state") == "failed"
    assert _custom(broken, "error") == "ValueError: bad row 7 in input"


MISSING_OUTLET_DAG = '''
from datetime import datetime

from cmf_airflow.compat import DAG, task

from cmf_airflow import File

with DAG("forgets_outlet", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

    @task(outlets=[File({path!r})])
    def forgets():
        pass

    forgets()
'''


def test_missing_outlet_is_recorded_as_missing(tmp_path, cmf_store, caplog):
    path = str(tmp_path / "never-written.csv")
    dag_file = write_dag(MISSING_OUTLET_DAG.format(path=path), "forgets_outlet")
    with caplog.at_level(logging.INFO):
        dag_run = load_dag(dag_file, "forgets_outlet").test()
    store = open_read_only(cmf_store)
    [artifact] = store.get_artifacts()

    assert str(dag_run.state) == "success"
    assert artifact.name == path
    assert artifact.uri == f"file://{path}"
    assert _custom(artifact, "hash_state") == "missing"
    assert _custom(artifact, "reason") == "file does not exist"
    assert _cmf_warnings(caplog) == [f"cannot hash outlet {path}: file does not exist (recorded as missing)"]


ASSET_DAG = '''
from datetime import datetime
from pathlib import Path

from cmf_airflow.compat import DAG, Asset, task

from cmf_airflow import file_asset

with DAG("asset_outlets", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

    @task(outlets=[file_asset({local!r}), Asset("s3://bucket/models/model.bin")])
    def publish():
        Path({local!r}).write_bytes(b"weights")

    publish()
'''


def test_asset_outlets_local_and_remote(tmp_path, cmf_store):
    local = str(tmp_path / "with space" / "model.bin")
    Path(local).parent.mkdir()
    dag_file = write_dag(ASSET_DAG.format(local=local), "asset_outlets")
    dag_run = load_dag(dag_file, "asset_outlets").test()
    artifacts = {a.properties["url"].string_value: a for a in open_read_only(cmf_store).get_artifacts()}

    assert str(dag_run.state) == "success"
    assert sorted(artifacts) == [f"file://{local}", "s3://bucket/models/model.bin"]
    assert artifacts[f"file://{local}"].uri == hashlib.md5(b"weights").hexdigest()
    remote = artifacts["s3://bucket/models/model.bin"]
    assert remote.uri == "s3://bucket/models/model.bin"
    assert _custom(remote, "hash_state") == "unhashed"
    assert _custom(remote, "reason") == "URI scheme 's3' is not a local file"


MAPPED_DAG = '''
from datetime import datetime

from cmf_airflow.compat import DAG, task

with DAG("mapped_squares", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

    @task
    def square(x):
        return x * x

    square.expand(x=[1, 2, 3])
'''


def test_mapped_task_is_one_execution_per_map_index(cmf_store):
    dag_file = write_dag(MAPPED_DAG, "mapped_squares")
    dag_run = load_dag(dag_file, "mapped_squares").test()
    executions = _executions(cmf_store)

    assert str(dag_run.state) == "success"
    assert sorted(_custom(e, "airflow_map_index") for e in executions) == [0, 1, 2]
    assert len({e.name for e in executions}) == 3


def test_dag_outside_git_is_recorded_without_commit(tmp_path, cmf_store, caplog):
    with caplog.at_level(logging.INFO):
        dag_run, _ = _run_chain(tmp_path, "chain_no_git", in_git=False)
    executions = _executions(cmf_store)

    assert str(dag_run.state) == "success"
    assert len(executions) == 3
    assert {e.properties["Git_Start_Commit"].string_value for e in executions} == {""}
    assert "git_dirty" not in executions[0].custom_properties
    assert _cmf_warnings(caplog) == [
        f"DAG folder {PLAIN_DAGS} is not inside a git repository: executions are recorded without git commit"
    ]


def _outcomes_with_and_without_plugin(monkeypatch, dag_id: str):
    dag_file = write_dag(FAILING_DAG.format(dag_id=dag_id), dag_id)
    dag = load_dag(dag_file, dag_id)
    monkeypatch.setenv("AIRFLOW__CMF__ENABLED", "False")
    without = _task_states(dag.test())
    monkeypatch.setenv("AIRFLOW__CMF__ENABLED", "True")
    return without, dag


def test_corrupt_store_leaves_outcomes_unchanged(tmp_path, cmf_store, monkeypatch, caplog):
    cmf_store.parent.mkdir(parents=True)
    cmf_store.write_bytes(b"this is not an SQLite database" * 100)
    without, dag = _outcomes_with_and_without_plugin(monkeypatch, "corrupt_store")
    with caplog.at_level(logging.INFO):
        with_plugin = _task_states(dag.test())
    warnings = _cmf_warnings(caplog)

    assert without == {"ok": "success", "broken": "failed"}
    assert with_plugin == without
    assert len(warnings) == 2  # one per task try
    assert all(f"cannot open CMF store {cmf_store}" in warning for warning in warnings)
    assert cmf_store.read_bytes() == b"this is not an SQLite database" * 100


def test_unwritable_store_leaves_outcomes_unchanged(tmp_path, monkeypatch, cmf_store, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("a regular file where the store's folder should be")
    monkeypatch.setenv("AIRFLOW__CMF__STORE", str(blocker / "cmf" / "mlmd.sqlite"))
    without, dag = _outcomes_with_and_without_plugin(monkeypatch, "unwritable_store")
    with caplog.at_level(logging.INFO):
        with_plugin = _task_states(dag.test())
    warnings = _cmf_warnings(caplog)

    assert with_plugin == without
    assert len(warnings) == 2
    assert all(f"cannot create the folder {blocker / 'cmf'}" in warning for warning in warnings)


@pytest.mark.parametrize(
    ("setting", "value"),
    [("AIRFLOW__CMF__EXCLUDE_DAGS", "other, chain_ex*"), ("AIRFLOW__CMF__INCLUDE_DAGS", "ml_*")],
)
def test_dag_filtered_by_config_is_not_recorded(tmp_path, cmf_store, monkeypatch, setting, value):
    monkeypatch.setenv(setting, value)
    dag_run, _ = _run_chain(tmp_path, "chain_excluded")

    assert str(dag_run.state) == "success"
    assert not cmf_store.exists()


def test_disabled_listener_records_nothing(tmp_path, cmf_store, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CMF__ENABLED", "False")
    dag_run, _ = _run_chain(tmp_path, "chain_disabled")

    assert str(dag_run.state) == "success"
    assert not cmf_store.exists()


def test_included_dag_is_recorded(tmp_path, cmf_store, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CMF__INCLUDE_DAGS", "chain_inc*")
    monkeypatch.setenv("AIRFLOW__CMF__EXCLUDE_DAGS", "other")
    dag_run, _ = _run_chain(tmp_path, "chain_included")

    assert str(dag_run.state) == "success"
    assert len(_executions(cmf_store)) == 3


SKIPPING_DAG = '''
from datetime import datetime

from cmf_airflow.compat import DAG, AirflowSkipException, task

with DAG("skips_itself", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

    @task
    def nothing_to_do():
        raise AirflowSkipException("no new rows today")

    nothing_to_do()
'''


def test_self_skipped_task_is_one_execution(cmf_store):
    from cmf_airflow.compat import AIRFLOW_V_3_0_PLUS

    dag_file = write_dag(SKIPPING_DAG, "skips_itself")
    dag_run = load_dag(dag_file, "skips_itself").test()
    [execution] = _executions(cmf_store)

    assert _task_states(dag_run) == {"nothing_to_do": "skipped"}
    if AIRFLOW_V_3_0_PLUS:  # Airflow 3.2+ calls on_task_instance_skipped
        assert execution.last_known_state == mlmd.Execution.CANCELED
        assert _custom(execution, "airflow_state") == "skipped"
    else:  # Airflow 2 calls no hook when a task skips itself
        assert execution.last_known_state == mlmd.Execution.RUNNING
        assert _custom(execution, "airflow_state") == "running"


NO_LINEAGE_DAG = '''
from datetime import datetime

from cmf_airflow.compat import DAG, task

with DAG("no_lineage", schedule=None, start_date=datetime(2026, 1, 1), tags=["sync", "cmf:no-lineage"]) as dag:

    @task
    def push():
        return "pushed"

    @task
    def fails():
        raise ValueError("not recorded either")

    push() >> fails()
'''


def test_no_lineage_tag_skips_every_task(cmf_store):
    dag_file = write_dag(NO_LINEAGE_DAG, "no_lineage")
    dag_run = load_dag(dag_file, "no_lineage").test()

    assert _task_states(dag_run) == {"push": "success", "fails": "failed"}
    assert not cmf_store.exists()


VERSIONED_OUTLETS_DAG = '''
from datetime import datetime
from pathlib import Path

from cmf_airflow.compat import DAG, task

from cmf_airflow import File

INSIDE = Path({inside!r})
OUTSIDE = Path({outside!r})

with DAG("versioned_outlets", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

    @task(outlets=[File(str(INSIDE)), File(str(OUTSIDE))])
    def publish():
        INSIDE.write_text("inside the workspace")
        OUTSIDE.write_text("outside any workspace")

    publish()
'''


def test_outlets_in_dvc_workspace_are_versioned(tmp_path, cmf_store, monkeypatch, caplog):
    import subprocess
    import sys

    pytest.importorskip("cmf_airflow.versioning", reason="cmf_airflow/versioning.py is not in this checkout yet")
    from conftest import make_git_repo

    workspace = make_git_repo(tmp_path / "workspace")
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "init", "-q"], cwd=workspace, check=True)
    git(workspace, "commit", "-q", "-m", "init dvc")
    inside, outside = workspace / "table.csv", tmp_path / "elsewhere.csv"
    monkeypatch.setenv("AIRFLOW__CMF__VERSION_ARTIFACTS", "True")
    dag_file = write_dag(VERSIONED_OUTLETS_DAG.format(inside=str(inside), outside=str(outside)), "versioned_outlets")
    with caplog.at_level(logging.INFO):
        dag_run = load_dag(dag_file, "versioned_outlets").test()
    artifacts = {a.properties["url"].string_value: a for a in open_read_only(cmf_store).get_artifacts()}
    versioned, unversioned = artifacts[f"file://{inside}"], artifacts[f"file://{outside}"]

    assert str(dag_run.state) == "success"
    assert _custom(versioned, "git_commit") == git(workspace, "rev-parse", "HEAD")
    assert _custom(versioned, "dvc_file") == f"{inside}.dvc"
    assert versioned.properties["Commit"].string_value == hashlib.md5(b"inside the workspace").hexdigest()
    assert "git_commit" not in unversioned.custom_properties
    assert _cmf_warnings(caplog) == []
