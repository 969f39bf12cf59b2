"""The listener under a real scheduler with the LocalExecutor: many workers writing one shared CMF store.

Each test starts a real Airflow deployment (see tests/scheduler_utils.py) in a temporary AIRFLOW_HOME, runs
one DAG of tests/dags once, and compares the CMF store with the task tries that Airflow's metadata database
records. The outage test puts a TCP proxy between the workers and the store's PostgreSQL database and cuts
it while tasks run. Each test prints how long its run took, from the first component start to the end of
the DAG run (run with ``-s`` to see it).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ml_metadata.proto import metadata_store_pb2 as mlmd
from scheduler_utils import (
    AirflowNotReady,
    AirflowSite,
    DagRunResult,
    TaskTry,
    TcpProxy,
    airflow_environment,
    cmf_airflow_command,
    metadata_database,
    metadata_template,
    running_airflow,
    task_tries,
    wait_for_dag_run,
    wait_for_task_state,
)
from server_utils import POSTGRES_PORT, mysql_database, open_store_for_test, postgres_database

from cmf_airflow.compat import AIRFLOW_VERSION
from cmf_airflow.model import TaskRun

DAGS = Path(__file__).resolve().parent / "dags"
MANY_WORKERS_DAG = "cmf_many_workers"
SITE = "scheduler-test"
# The run must end within this time on a 2-core CI machine. It bounds the wait, it is not a speed check.
RUN_TIMEOUT_S = 420.0
# Expected shape of tests/dags/many_workers.py, written out here so that the test checks the DAG.
PRODUCERS = 60
SAME_BYTES_TASKS = 10
FLAKY_TASKS = 10
TASKS = 200
SAME_BYTES = b"the same bytes, written by ten tasks\n"

OUTAGE_DAG = "cmf_store_outage"
OUTAGE_TASKS = 40
# Task instances that succeed before the cut, and while the store is cut off.
BEFORE_CUT = 4
DURING_CUT = 8
# 40 tasks of two seconds take about a minute on 2 cores. It bounds the wait, it is not a speed check.
OUTAGE_TIMEOUT_S = 240.0



@pytest.fixture(scope="module")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Migrate one Airflow metadata database for the module, which every test copies."""
    with metadata_template(tmp_path_factory.mktemp("airflow-migrate")) as name:
        yield name


@contextlib.contextmanager
def cmf_store_on(backend: str, folder: Path) -> Iterator[str]:
    """Yield ``[cmf] store`` for ``backend``: an SQLite path, or the URL of a database created for the test."""
    if backend == "sqlite":
        yield str(folder / "cmf" / "mlmd.sqlite")
    elif backend == "mariadb":
        with mysql_database("cmf_sched") as url:
            yield url
    else:
        with postgres_database("cmf_sched") as url:
            yield url


def _custom(message, key: str):
    value = message.custom_properties[key]
    return getattr(value, value.WhichOneof("value"))


def _execution_uuid(run_id: str, task_id: str, try_number: int, dag_id: str = MANY_WORKERS_DAG) -> str:
    run = TaskRun(
        site=SITE, dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=-1,
        try_number=try_number, operator="", hostname="", airflow_version="",
    )
    return run.execution_uuid


@contextlib.contextmanager
def deployment(tmp_path: Path, template: str, store: str, dag_file: str) -> Iterator[AirflowSite]:
    """Run Airflow with ``dag_file`` of tests/dags as its only DAG and ``store`` as its CMF store.

    The deployment's output and the failed tasks' logs are printed when the block raises.
    """
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(DAGS / dag_file, dags / dag_file)
    cmf = {"store": store, "site": SITE, "hash_cache": str(tmp_path / "hash_cache.sqlite")}
    home = tmp_path / "airflow"
    home.mkdir()
    with metadata_database(template) as metadata_url:
        env = airflow_environment(home, metadata_url, dags, tmp_path / "data", cmf)
        with running_airflow(env, home) as site:
            yield site


@pytest.mark.parametrize("backend", ["sqlite", "mariadb", "postgresql"])
def test_many_workers_record_every_try_once(tmp_path, migrated_template, backend):
    with cmf_store_on(backend, tmp_path) as store, \
            deployment(tmp_path, migrated_template, store, "many_workers.py") as site:
        result = wait_for_dag_run(site, MANY_WORKERS_DAG, RUN_TIMEOUT_S)
        print(f"\nAirflow {AIRFLOW_VERSION}, {TASKS} tasks, CMF store on {backend}: {result.seconds:.1f} s")
        tries = task_tries(site, MANY_WORKERS_DAG, result.run_id)
        check_many_workers_store(open_store_for_test(store), result, tries)


def check_many_workers_store(metadata, result: DagRunResult, tries: list[TaskTry]) -> None:
    """Assert that the store contains one execution per task try of the many-workers DAG, with its events."""
    executions = metadata.get_executions()
    artifacts = {artifact.id: artifact for artifact in metadata.get_artifacts()}
    events = metadata.get_events_by_execution_ids([execution.id for execution in executions])

    # Airflow's side: every task succeeded, and exactly the flaky tasks needed a second try.
    assert result.state == "success"
    assert len({task_try.task_id for task_try in tries}) == TASKS
    final = {task_try.task_id: task_try for task_try in tries if task_try.state == "success"}
    assert len(final) == TASKS
    # Airflow's history keeps a try that will be retried as "failed" (up_for_retry is not a finished state).
    earlier = sorted((t.task_id, t.try_number, t.state) for t in tries if t.state != "success")
    assert earlier == [(f"flaky_{index:03d}", 1, "failed") for index in range(FLAKY_TASKS)]
    assert all(final[task_id].try_number == 2 for task_id, _, _ in earlier)
    assert len(tries) == TASKS + FLAKY_TASKS

    # One execution per task try, named by the uuid of that try, and none twice.
    expected_uuids = {_execution_uuid(result.run_id, t.task_id, t.try_number): t for t in tries}
    names = [execution.name for execution in executions]
    assert len(names) == len(set(names))
    assert set(names) == set(expected_uuids)
    by_id = {execution.id: execution for execution in executions}
    for execution in executions:
        task_try = expected_uuids[execution.name]
        assert _custom(execution, "airflow_try_number") == task_try.try_number
        if task_try.state == "success":
            assert _custom(execution, "airflow_state") == "success"
            assert execution.last_known_state == mlmd.Execution.COMPLETE
        else:  # the listener records the try that Airflow will retry as up_for_retry
            assert _custom(execution, "airflow_state") == "up_for_retry"
            assert execution.last_known_state == mlmd.Execution.FAILED
        assert execution.type == f"{MANY_WORKERS_DAG}/{task_try.task_id}"

    # Events by (task, try, direction, artifact type): outlets are outputs, inlets and the environment inputs.
    outputs: dict[str, list[mlmd.Artifact]] = {}
    inputs: dict[str, list[mlmd.Artifact]] = {}
    for event in events:
        execution = by_id[event.execution_id]
        key = f"{execution.type.split('/')[1]}#{_custom(execution, 'airflow_try_number')}"
        target = outputs if event.type == mlmd.Event.OUTPUT else inputs
        target.setdefault(key, []).append(artifacts[event.artifact_id])
    assert len(events) == len({(event.execution_id, event.artifact_id, event.type) for event in events})

    [environment] = [artifact for artifact in artifacts.values() if artifact.type_id == _type_id(metadata, "Environment")]
    for key in expected_keys(tries):
        assert environment.id in {artifact.id for artifact in inputs.get(key, [])}, key

    for index in range(PRODUCERS):
        [produced] = outputs[f"produce_{index:03d}#1"]
        assert produced.uri == hashlib.md5(f"row {index}\n".encode()).hexdigest()
        consumed = [artifact for artifact in inputs[f"consume_{index:03d}#1"] if artifact.id != environment.id]
        assert [artifact.id for artifact in consumed] == [produced.id]

    same_bytes_md5 = hashlib.md5(SAME_BYTES).hexdigest()
    same = {outputs[f"same_bytes_{index:03d}#1"][0].id for index in range(SAME_BYTES_TASKS)}
    assert len(same) == 1
    assert artifacts[same.pop()].uri == same_bytes_md5
    assert len(metadata.get_artifacts_by_uri(same_bytes_md5)) == 1

    for index in range(FLAKY_TASKS):
        [missing] = outputs[f"flaky_{index:03d}#1"]
        [written] = outputs[f"flaky_{index:03d}#2"]
        assert _custom(missing, "hash_state") == "missing"
        assert written.uri == hashlib.md5(f"written on the retry to {written.properties['url'].string_value[7:]}\n"
                                          .encode()).hexdigest()

    assert not any(key.startswith("nothing_") for key in outputs)
    # 60 produced files, 1 for the ten identical files, 10 missing and 10 written retry outlets, 1 environment.
    assert len(artifacts) == PRODUCERS + 1 + FLAKY_TASKS * 2 + 1
    output_count = sum(len(found) for found in outputs.values())
    input_count = sum(len(found) for found in inputs.values())
    assert output_count == PRODUCERS + SAME_BYTES_TASKS + FLAKY_TASKS * 2
    assert input_count == PRODUCERS + len(tries)


def expected_keys(tries: list[TaskTry]) -> list[str]:
    """Return ``task#try`` for every task try, the keys under which the test groups events."""
    return [f"{task_try.task_id}#{task_try.try_number}" for task_try in tries]


def _type_id(metadata, type_name: str) -> int:
    return metadata.get_artifact_type(type_name).id


def test_store_outage_loses_and_repeats_nothing(tmp_path, migrated_template):
    proxy = TcpProxy(POSTGRES_PORT)
    proxy.start()
    try:
        with postgres_database("cmf_outage") as direct_url:
            proxied_url = direct_url.replace(f":{POSTGRES_PORT}/", f":{proxy.port}/")
            with deployment(tmp_path, migrated_template, proxied_url, "store_outage.py") as site:
                wait_for_task_state(site, OUTAGE_DAG, "success", BEFORE_CUT, OUTAGE_TIMEOUT_S)
                proxy.cut()
                cut_at = wait_for_task_state(site, OUTAGE_DAG, "success", 0, OUTAGE_TIMEOUT_S)
                wait_for_task_state(site, OUTAGE_DAG, "success", cut_at + DURING_CUT, OUTAGE_TIMEOUT_S)
                spool = site.home / "logs" / "cmf_spool"
                spooled_during_cut = _spooled_lines(spool)
                proxy.restore()

                result = wait_for_dag_run(site, OUTAGE_DAG, OUTAGE_TIMEOUT_S)
                print(f"\nAirflow {AIRFLOW_VERSION}, {OUTAGE_TASKS} tasks, store cut after {cut_at} tasks: "
                      f"{spooled_during_cut} records spooled, run took {result.seconds:.1f} s")
                tries = task_tries(site, OUTAGE_DAG, result.run_id)
                replays = _replay_until_empty(site.env, spool)
                left_in_spool = sorted(path.name for path in spool.iterdir() if path.stat().st_size > 0)
                print("\n".join(replays))
                check_outage_store(open_store_for_test(direct_url), result, tries)
    finally:
        proxy.cut()

    assert spooled_during_cut >= DURING_CUT
    assert left_in_spool == []


def check_outage_store(metadata, result: DagRunResult, tries: list[TaskTry]) -> None:
    """Assert that the store contains what an uninterrupted run of the outage DAG records, each once."""
    assert result.state == "success"
    assert sorted((t.task_id, t.try_number, t.state) for t in tries) == [
        (f"write_{index:03d}", 1, "success") for index in range(OUTAGE_TASKS)
    ]

    executions = metadata.get_executions()
    expected = {_execution_uuid(result.run_id, t.task_id, 1, OUTAGE_DAG): t.task_id for t in tries}
    assert sorted(execution.name for execution in executions) == sorted(expected)
    artifacts = {artifact.id: artifact for artifact in metadata.get_artifacts()}
    events = metadata.get_events_by_execution_ids([execution.id for execution in executions])
    assert len(events) == len({(event.execution_id, event.artifact_id, event.type) for event in events})
    environment_type = metadata.get_artifact_type("Environment").id
    [environment] = [artifact for artifact in artifacts.values() if artifact.type_id == environment_type]

    for execution in executions:
        index = int(expected[execution.name].split("_")[1])
        assert execution.last_known_state == mlmd.Execution.COMPLETE
        assert _custom(execution, "airflow_state") == "success"
        # Both the start and the end record arrived: the start time comes with the first.
        assert _custom(execution, "start_time")
        assert _custom(execution, "duration_s") > 0
        mine = [event for event in events if event.execution_id == execution.id]
        inputs = [event.artifact_id for event in mine if event.type == mlmd.Event.INPUT]
        outputs = [artifacts[event.artifact_id].uri for event in mine if event.type == mlmd.Event.OUTPUT]
        assert inputs == [environment.id]
        assert outputs == [hashlib.md5(f"output of task {index}".encode()).hexdigest()]
    assert len(artifacts) == OUTAGE_TASKS + 1


def _replay_until_empty(env: dict[str, str], spool: Path, timeout: float = 120.0) -> list[str]:
    """Run ``cmf-airflow replay`` until the spool is empty, as an operator would after an outage.

    Right after the cut, the database may still hold a session whose client vanished mid-transaction, with
    its row locks, until PostgreSQL ends it (idle_in_transaction_session_timeout, which the store sets).
    A replay that meets such a lock gives up within [cmf] write_timeout and leaves the records spooled.
    """
    outputs = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            outputs.append(cmf_airflow_command(env, "replay").strip().splitlines()[-1])
        except AirflowNotReady as error:
            outputs.append(str(error).strip().splitlines()[-1])
        if _spooled_lines(spool) == 0 or time.monotonic() > deadline:
            return outputs
        time.sleep(2.0)


def _spooled_lines(spool: Path) -> int:
    if not spool.is_dir():
        return 0
    return sum(len(path.read_bytes().splitlines()) for path in spool.glob("*.jsonl"))
