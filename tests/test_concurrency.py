"""Eight real processes write one local store at the same moment: SQLite, PostgreSQL and MariaDB.

Each process records one try of a mapped task (so all register the same new execution type), reads the
same input and writes the same bytes, then writes its end record a second time, as a retried write would.
The store must end with one artifact per content, one event per use, one type per name and one site id.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
from ml_metadata.proto import metadata_store_pb2 as mlmd
from server_utils import mysql_database, open_store_for_test, postgres_database

WRITERS = 8
SHARED_INPUT_MD5 = "1" * 32
SHARED_OUTPUT_MD5 = "2" * 32


def _settings(store: str, data: Path):
    from cmf_airflow import conf

    return dataclasses.replace(
        conf.settings(),
        store=store,
        site=None,
        hash_cache=str(data / "hash_cache.sqlite"),
        data_folder=str(data),
        spool_folder=str(data / "spool"),
        write_timeout=30.0,
        connect_timeout=10.0,
    )


def _write_one_try(store: str, data: str, index: int, barrier, results) -> None:
    """Run in a child process: record the start and, twice, the end of map index ``index``."""
    from cmf_airflow.model import (ArtifactRecord, EventKind, GitInfo, HashState, RecordKind, TaskOutcome,
                                   TaskRecord, TaskRun)
    from cmf_airflow.spool import deliver

    settings = _settings(store, Path(data))
    run = TaskRun(site="", dag_id="fan_out", task_id="score", run_id="manual__1", map_index=index, try_number=1,
                  operator="PythonOperator", hostname=f"worker-{index}", airflow_version="3",
                  start_time=datetime(2026, 3, 1, tzinfo=timezone.utc))
    git = GitInfo(remote_url="https://git.example.com/a.git", commit="a" * 40, dirty=False, root="/repo")
    shared_input = ArtifactRecord(uri="file:///data/in.csv", path="/data/in.csv", md5=SHARED_INPUT_MD5,
                                  hash_state=HashState.HASHED, size=10)
    # Same bytes under a different path per writer: one artifact, named after the first writer's path.
    output = ArtifactRecord(uri=f"file:///data/out-{index}.csv", path=f"/data/out-{index}.csv",
                            md5=SHARED_OUTPUT_MD5, hash_state=HashState.HASHED, size=20)
    outcome = TaskOutcome(state="success", end_time=datetime(2026, 3, 1, 0, 1, tzinfo=timezone.utc))

    barrier.wait(timeout=120)
    deliveries = [
        deliver(TaskRecord(RecordKind.START, run, git, ((EventKind.INPUT, shared_input),)), settings),
        deliver(TaskRecord(RecordKind.END, run, git, ((EventKind.OUTPUT, output),), outcome), settings),
        deliver(TaskRecord(RecordKind.END, run, git, ((EventKind.OUTPUT, output),), outcome), settings),
    ]
    results.put((index, [delivery.spooled for delivery in deliveries], deliveries[0].store.site))


def _run_writers(store: str, data: Path) -> list[tuple[int, list[bool], str]]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WRITERS)
    results = context.Queue()
    processes = [
        context.Process(target=_write_one_try, args=(store, str(data), index, barrier, results))
        for index in range(WRITERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=240)
    assert [process.exitcode for process in processes] == [0] * WRITERS
    return [results.get(timeout=10) for _ in processes]


def _check_store(store) -> None:
    executions = store.get_executions()
    artifacts = store.get_artifacts()
    by_uri = {artifact.uri: artifact for artifact in artifacts}
    events = store.get_events_by_execution_ids([execution.id for execution in executions])
    type_names = Counter(t.name for t in [*store.get_artifact_types(), *store.get_execution_types(),
                                          *store.get_context_types()])

    assert len(executions) == WRITERS
    assert sorted(e.custom_properties["airflow_map_index"].int_value for e in executions) == list(range(WRITERS))
    assert all(e.custom_properties["airflow_state"].string_value == "success" for e in executions)
    assert sorted(by_uri) == [SHARED_INPUT_MD5, SHARED_OUTPUT_MD5]
    assert len(artifacts) == 2
    assert len(events) == 2 * WRITERS
    assert Counter((e.artifact_id, e.type) for e in events) == {
        (by_uri[SHARED_INPUT_MD5].id, mlmd.Event.INPUT): WRITERS,
        (by_uri[SHARED_OUTPUT_MD5].id, mlmd.Event.OUTPUT): WRITERS,
    }
    assert [name for name, count in type_names.items() if count > 1] == []
    assert sorted(c.name for c in store.get_contexts_by_type("Parent_Context")) == ["fan_out"]
    assert sorted(c.name for c in store.get_contexts_by_type("Pipeline_Stage")) == ["fan_out/score"]
    assert len(store.get_contexts_by_type("cmf_airflow_Site")) == 1


def _check_results(results: list[tuple[int, list[bool], str]]) -> None:
    assert sorted(index for index, _, _ in results) == list(range(WRITERS))
    assert all(spooled == [False, False, False] for _, spooled, _ in results)
    assert len({site for _, _, site in results}) == 1


def test_eight_writers_on_sqlite(tmp_path):
    store = str(tmp_path / "cmf" / "mlmd.sqlite")
    results = _run_writers(store, tmp_path)

    _check_results(results)
    _check_store(open_store_for_test(store))
    assert not os.path.exists(tmp_path / "spool" / "pending.jsonl")


def test_eight_writers_on_postgresql(tmp_path):
    with postgres_database("cmf_concurrency") as url:
        results = _run_writers(url, tmp_path)

        _check_results(results)
        _check_store(open_store_for_test(url))


def test_eight_writers_on_mariadb(tmp_path):
    with mysql_database("cmf_concurrency") as url:
        results = _run_writers(url, tmp_path)

        _check_results(results)
        _check_store(open_store_for_test(url))


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_second_round_adds_nothing(tmp_path, backend):
    database = postgres_database if backend == "postgresql" else mysql_database
    with database("cmf_concurrency") as url:
        _run_writers(url, tmp_path)
        results = _run_writers(url, tmp_path)

        _check_results(results)
        _check_store(open_store_for_test(url))
