"""The spool: records that an unavailable store could not take are kept, then written exactly once.

The DAG runs use dag.test() against stores that are really unavailable: a loopback port where nothing
listens, and a PostgreSQL database that does not exist yet.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import GIT_DAGS, load_dag, write_dag
from server_utils import POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER, free_port, open_store_for_test

from cmf_airflow.model import (ArtifactRecord, EventKind, GitInfo, HashState, RecordKind, TaskOutcome, TaskRecord,
                               TaskRun)
from cmf_airflow.spool import CORRUPT_FILE, PENDING_FILE, Spool

SPOOL_DAG = '''
from datetime import datetime
from pathlib import Path

import cmf_airflow
from cmf_airflow import File
from cmf_airflow.compat import DAG, task

OUT = Path({out!r})

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), params={{"rows": 2}}) as dag:

    @task(outlets=[File(str(OUT))])
    def produce():
        OUT.write_text("a,b\\n1,2\\n")
        cmf_airflow.current().log_metrics("quality", {{"rows": 2, "score": 0.5}})

    @task(inlets=[File(str(OUT))])
    def check():
        raise ValueError("row 2 is invalid")

    produce() >> check()
'''


@pytest.fixture(autouse=True)
def _spool_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Give each test its own spool folder and leave the Environment artifact out."""
    spool = tmp_path / "spool"
    monkeypatch.setenv("AIRFLOW__CMF__SPOOL_FOLDER", str(spool))
    monkeypatch.setenv("AIRFLOW__CMF__CAPTURE_ENVIRONMENT", "False")
    monkeypatch.setenv("AIRFLOW__CMF__CONNECT_TIMEOUT", "3")
    return spool


def _record(index: int = 0, site: str = "site-a") -> TaskRecord:
    run = TaskRun(site=site, dag_id="daily", task_id="train", run_id=f"manual__{index}", map_index=-1, try_number=1,
                  operator="PythonOperator", hostname="worker-1", airflow_version="3",
                  start_time=datetime(2026, 3, 1, tzinfo=timezone.utc),
                  params={"when": datetime(2026, 1, 1), "rows": [1, 2]})
    artifact = ArtifactRecord(uri="file:///d/x.csv", path="/d/x.csv", md5="3" * 32, hash_state=HashState.HASHED,
                              size=4, custom_properties=(("exact", True), ("ratio", 1.0), ("count", 3)))
    outcome = TaskOutcome(state="failed", end_time=datetime(2026, 3, 1, 0, 5, tzinfo=timezone.utc), error="boom")
    git = GitInfo(remote_url="https://git.example.com/a.git", commit="c" * 40, dirty=True, root="/repo")
    return TaskRecord(RecordKind.END, run, git, ((EventKind.OUTPUT, artifact),), outcome, (("lr", 0.1),))


def test_record_round_trips_through_json():
    record = _record()
    restored = TaskRecord.from_json(json.loads(json.dumps(record.to_json())))

    assert restored.run.params == {"when": "2026-01-01 00:00:00", "rows": [1, 2]}
    assert restored.run.execution_uuid == record.run.execution_uuid
    assert restored.events == record.events
    assert restored.outcome == record.outcome
    assert restored.git == record.git
    assert restored.execution_properties == (("lr", 0.1),)
    assert [type(value) for _, value in restored.events[0][1].custom_properties] == [bool, float, int]


def test_corrupt_line_is_kept_aside(tmp_path, caplog):
    spool = Spool(str(tmp_path / "folder"))
    spool.append(_record(1), "/store.sqlite")
    with open(spool.pending_path, "ab") as pending:
        pending.write(b'{"format": 1, "record": {"kind": "nonsense"}}\n')
        pending.write(b"half a line")
    spool.append(_record(2), "/store.sqlite")
    written: list[str] = []

    result = spool.replay(lambda record: written.append(record.run.run_id), "/store.sqlite")
    kept = (tmp_path / "folder" / CORRUPT_FILE).read_bytes().splitlines()

    assert written == ["manual__1", "manual__2"]
    assert (result.written, result.corrupt, result.remaining) == (2, 2, 0)
    assert kept == [b'{"format": 1, "record": {"kind": "nonsense"}}', b"half a line"]
    assert sorted(os.listdir(tmp_path / "folder")) == [CORRUPT_FILE]
    warnings = [r.getMessage() for r in caplog.records if r.name == "cmf_airflow.spool"]
    assert len(warnings) == 2
    assert all(str(tmp_path / "folder" / CORRUPT_FILE) in warning for warning in warnings)


def test_unavailable_store_keeps_the_rest():
    from cmf_airflow.store import StoreUnavailable

    calls: list[str] = []

    def write(record: TaskRecord) -> None:
        calls.append(record.run.run_id)
        if record.run.run_id == "manual__2":
            raise StoreUnavailable("database went away")

    spool = Spool(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"cmf-spool-{uuid.uuid4().hex}"))
    for index in range(4):
        spool.append(_record(index), "postgresql://x/y")
    first = spool.replay(write, "postgresql://x/y")
    second = spool.replay(lambda record: calls.append(record.run.run_id), "postgresql://x/y")

    assert (first.written, first.remaining, first.error) == (2, 2, "database went away")
    assert (second.written, second.remaining) == (2, 0)
    assert calls == ["manual__0", "manual__1", "manual__2", "manual__2", "manual__3"]
    assert not spool.has_pending()


def _replay_into_log(folder: str, log: str, barrier) -> None:
    """Run in a child process: replay the spool, appending each record's run id to ``log``."""
    def write(record: TaskRecord) -> None:
        with open(log, "a", encoding="utf-8") as target:
            target.write(record.run.run_id + "\n")

    barrier.wait(timeout=60)
    Spool(folder).replay(write, "/store.sqlite")


def test_concurrent_replays_write_each_record_once(tmp_path):
    folder, log = str(tmp_path / "spool-concurrent"), str(tmp_path / "written.log")
    spool = Spool(folder)
    for index in range(300):
        spool.append(_record(index), "/store.sqlite")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    processes = [context.Process(target=_replay_into_log, args=(folder, log, barrier)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    counts = Counter(Path(log).read_text(encoding="utf-8").split())

    assert [process.exitcode for process in processes] == [0, 0, 0, 0]
    assert len(counts) == 300
    assert set(counts.values()) == {1}
    assert os.listdir(folder) == []


def _normalized(store) -> dict:
    """A picture of a store that leaves out what differs between two runs of one DAG: ids, run ids, uuids."""
    executions = {e.id: e for e in store.get_executions()}
    artifacts = {a.id: a for a in store.get_artifacts()}
    types = {t.id: t.name for t in store.get_artifact_types()}

    def artifact_key(artifact) -> tuple:
        if types[artifact.type_id] == "Metrics":
            values = sorted((k, v.WhichOneof("value"), str(getattr(v, v.WhichOneof("value"))))
                            for k, v in artifact.custom_properties.items())
            return ("Metrics", artifact.properties["metrics_name"].string_value, tuple(values))
        return (types[artifact.type_id], artifact.name, artifact.uri)

    events = store.get_events_by_execution_ids(list(executions)) if executions else []
    return {
        "executions": sorted(
            (e.type, e.last_known_state, e.custom_properties["airflow_state"].string_value,
             e.custom_properties["error"].string_value if "error" in e.custom_properties else "",
             e.custom_properties["params"].string_value if "params" in e.custom_properties else "")
            for e in executions.values()
        ),
        "artifacts": sorted(artifact_key(a) for a in artifacts.values()),
        "events": sorted((executions[e.execution_id].type, artifact_key(artifacts[e.artifact_id]), e.type)
                         for e in events),
        "contexts": sorted(c.name for c in store.get_contexts() if c.name != "test-site"),
    }


def _of_dag(picture: dict, dag_id: str) -> dict:
    events = [event for event in picture["events"] if event[0].startswith(f"{dag_id}/")]
    used = {artifact for _, artifact, _ in events}
    return {
        "executions": [e for e in picture["executions"] if e[0].startswith(f"{dag_id}/")],
        "events": events,
        "artifacts": sorted(used),
        "contexts": [c for c in picture["contexts"] if c == dag_id or c.startswith(f"{dag_id}/")],
    }


def _metrics_name_has_execution_id(store) -> bool:
    executions = {e.id: e for e in store.get_executions()}
    checked = []
    for metrics in [a for a in store.get_artifacts() if a.name.startswith("quality:")]:
        [event] = store.get_events_by_artifact_ids([metrics.id])
        checked.append(event.execution_id in executions and metrics.name.endswith(f":{event.execution_id}"))
    return bool(checked) and all(checked)


def _run_spool_dag(tmp_path: Path, dag_id: str) -> dict[str, str]:
    dag_file = GIT_DAGS / f"{dag_id}.py"
    source = SPOOL_DAG.format(dag_id=dag_id, out=str(tmp_path / f"{dag_id}.csv"))
    if not dag_file.exists() or dag_file.read_text(encoding="utf-8") != source:
        write_dag(source, dag_id)  # committed once: a second run of the same DAG has nothing new to commit
    dag_run = load_dag(dag_file, dag_id).test()
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def _spooled_kinds(spool: Path) -> list[tuple[str, str]]:
    lines = (spool / PENDING_FILE).read_text(encoding="utf-8").splitlines()
    return [(json.loads(line)["record"]["kind"], json.loads(line)["record"]["run"]["task_id"]) for line in lines]


def _replay_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cmf_airflow.cli", "replay", *args], capture_output=True,
                          text=True, env=os.environ.copy(), timeout=300)


def test_unreachable_store_spools_then_replay_writes_once(tmp_path, cmf_store, monkeypatch, _spool_settings):
    direct = _run_spool_dag(tmp_path, "spool_direct")
    expected = _normalized(open_store_for_test(str(cmf_store)))
    monkeypatch.setenv("AIRFLOW__CMF__STORE", f"postgresql://postgres:secret-pw@127.0.0.1:{free_port()}/cmf")
    spooled = _run_spool_dag(tmp_path, "spool_direct")
    target = tmp_path / "replayed" / "mlmd.sqlite"

    assert direct == {"produce": "success", "check": "failed"}
    assert spooled == direct
    # Two logged records: log_metrics first creates the execution whose id goes into the metrics' name.
    assert _spooled_kinds(_spool_settings) == [("start", "produce"), ("logged", "produce"), ("logged", "produce"),
                                              ("end", "produce"), ("start", "check"), ("end", "check")]
    assert "secret-pw" not in (_spool_settings / PENDING_FILE).read_text(encoding="utf-8")

    down = _replay_command()
    assert down.returncode == 1
    assert "cannot reach the database" in down.stderr
    assert "secret-pw" not in down.stderr
    assert len(_spooled_kinds(_spool_settings)) == 6

    first = _replay_command("--store", str(target))
    second = _replay_command("--store", str(target))
    store = open_store_for_test(str(target))

    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-1].startswith("replayed 6 record(s)")
    assert second.stdout.splitlines()[-1].startswith("replayed 0 record(s)")
    assert _normalized(store) == expected
    assert _metrics_name_has_execution_id(store)
    assert os.listdir(_spool_settings) == []


def test_missing_database_spools_until_next_task(tmp_path, cmf_store, monkeypatch, _spool_settings):
    import psycopg

    expected_run = _run_spool_dag(tmp_path, "spool_missing_db")
    expected = _normalized(open_store_for_test(str(cmf_store)))
    name = f"cmf_spool_{uuid.uuid4().hex[:12]}"
    url = f"postgresql://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    monkeypatch.setenv("AIRFLOW__CMF__STORE", url)
    admin = f"host={POSTGRES_HOST} port={POSTGRES_PORT} user={POSTGRES_USER} dbname=postgres"

    spooled_run = _run_spool_dag(tmp_path, "spool_missing_db")
    assert spooled_run == expected_run
    assert len(_spooled_kinds(_spool_settings)) == 6
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        # The next task that reaches the store writes the spool first, then its own records.
        _run_spool_dag(tmp_path, "spool_next_task")
        store = open_store_for_test(url)
        pictures = _normalized(store)

        assert _of_dag(pictures, "spool_missing_db") == _of_dag(expected, "spool_missing_db")
        assert len(pictures["executions"]) == 4
        assert _metrics_name_has_execution_id(store)
        assert os.listdir(_spool_settings) == []
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.timeout(300)
def test_locked_store_spools_records(tmp_path, cmf_store, monkeypatch, _spool_settings):
    # A session that holds a table lock inside an open transaction stands for a worker that vanished in the
    # middle of a write: without a lock timeout, every later writer would wait for it, and its task with it.
    import psycopg

    from server_utils import postgres_database

    monkeypatch.setenv("AIRFLOW__CMF__WRITE_TIMEOUT", "2")
    with postgres_database("cmf_locked") as url:
        monkeypatch.setenv("AIRFLOW__CMF__STORE", url)
        first = _run_spool_dag(tmp_path, "spool_locked")
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(f"host={POSTGRES_HOST} port={POSTGRES_PORT} user={POSTGRES_USER} dbname={name}") as lock:
            lock.execute("LOCK TABLE execution IN ACCESS EXCLUSIVE MODE")
            blocked = _run_spool_dag(tmp_path, "spool_locked")
            # A write that found the store locked may have claimed the pending file for a replay: count all files.
            kinds = sorted(
                (json.loads(line)["record"]["kind"], json.loads(line)["record"]["run"]["task_id"])
                for spooled in _spool_settings.glob("*.jsonl")
                for line in spooled.read_text(encoding="utf-8").splitlines()
            )
            lock.rollback()
        replayed = _replay_command()
        store = open_store_for_test(url)
        executions = store.get_executions()

    assert first == {"produce": "success", "check": "failed"}
    assert blocked == first
    assert kinds == sorted([("start", "produce"), ("logged", "produce"), ("logged", "produce"), ("end", "produce"),
                            ("start", "check"), ("end", "check")])
    assert replayed.returncode == 0, replayed.stderr
    assert len(executions) == 4
    assert len({execution.external_id for execution in executions}) == 4
    assert os.listdir(_spool_settings) == []


def test_silent_database_probed_once_per_try(tmp_path, cmf_store, monkeypatch, _spool_settings):
    # A socket that accepts connections and never responds, as a hung database server or a half-open network
    # path would. Each try should wait for it once, then spool its later records at once.
    import socket
    import threading

    accepted: list[socket.socket] = []
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        silent.settimeout(0.2)
        stop = threading.Event()

        def accept() -> None:
            while not stop.is_set():
                try:
                    accepted.append(silent.accept()[0])
                except OSError:
                    continue

        acceptor = threading.Thread(target=accept, daemon=True)
        acceptor.start()
        monkeypatch.setenv("AIRFLOW__CMF__STORE", f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/cmf")
        try:
            states = _run_spool_dag(tmp_path, "spool_silent")
        finally:
            stop.set()
            acceptor.join()
            for connection in accepted:
                connection.close()

    assert states == {"produce": "success", "check": "failed"}
    assert _spooled_kinds(_spool_settings) == [("start", "produce"), ("logged", "produce"), ("logged", "produce"),
                                              ("end", "produce"), ("start", "check"), ("end", "check")]
    # One probe per task try: produce's and check's first records.
    assert len(accepted) == 2
