"""Benchmark of the local store's write rate on each backend, with one writer and with eight at once.

Each writer is a process that does what the listener does for one task try. It hands a START record (one
input artifact) and then an END record (one output artifact, state success) to ``cmf_airflow.spool.deliver``,
the function through which the listener writes the store. So the figures include the SQLite write lock, the
retries of conflicting database writes and the spool check that every listener write pays. The input
artifact is the same for every execution, as a shared data set would be, and the output is new each time.
The records are built before the clock starts, so no file is hashed while it runs.

For each backend (an SQLite file, a MariaDB database and a PostgreSQL database on this machine) and each
writer count, the benchmark creates a new store. Every writer first records one untimed execution, which
opens its connection and, for the first of them, creates MLMD's tables. Then all writers start together,
and the benchmark measures the wall time until the last one is done. It prints executions per second (one START and one
END write each) in a table, one row per backend.

After every measurement the store must contain exactly the executions written, all COMPLETE, with one input
and one output event each, and nothing may be left in the spool. Otherwise the benchmark exits with status 1.

The databases are created on ``--postgres`` (default ``postgresql://postgres@127.0.0.1:5432``) and
``--mysql`` (default ``mysql://root@127.0.0.1:3306``) with a random ``cmf_bench_`` name and dropped at the end.

Usage: ``uv run --no-sync python benchmarks/bench_backends.py [--executions N] [--writers 1 8]
[--backends sqlite mariadb postgresql] [--postgres URL] [--mysql URL]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

DAG_ID = "cmf_bench_backends"
BACKENDS = ("sqlite", "mariadb", "postgresql")
SITE = "bench-site"
# Seconds a writer waits for the others to be ready, and for the timed writes, before it gives up.
BARRIER_TIMEOUT_S = 300.0
SHARED_INPUT = b"the data set every execution reads\n"


class BenchmarkError(Exception):
    """A writer failed or spooled a record, or the store lacks executions or events it should contain."""


@dataclass(frozen=True, slots=True)
class WriterResult:
    """The work of one writer process: its timed span on the system-wide monotonic clock, and its records."""

    started: float
    finished: float
    executions: int
    spooled: int


@dataclass(frozen=True, slots=True)
class Measurement:
    """One backend and writer count: executions written and the wall time of the timed part."""

    backend: str
    writers: int
    executions: int
    seconds: float

    @property
    def per_second(self) -> float:
        """Executions (each one START and one END write) recorded per second."""
        return self.executions / self.seconds


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=100, help="timed executions per writer (default 100)")
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 8], help="writer counts (default 1 8)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS),
                        help="backends to measure (default: all three)")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432",
                        help="PostgreSQL server on which to create the benchmark databases")
    parser.add_argument("--mysql", default="mysql://root@127.0.0.1:3306",
                        help="MariaDB or MySQL server on which to create the benchmark databases")
    return parser.parse_args(argv)


@contextlib.contextmanager
def new_store(backend: str, folder: Path, arguments: argparse.Namespace) -> Iterator[str]:
    """Yield ``[cmf] store`` for a new, empty store on ``backend``, and drop its database afterwards."""
    name = f"cmf_bench_{uuid.uuid4().hex[:12]}"
    if backend == "sqlite":
        yield str(folder / name / "mlmd.sqlite")
    elif backend == "postgresql":
        import psycopg

        admin = f"{arguments.postgres.rstrip('/')}/postgres"
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{arguments.postgres.rstrip('/')}/{name}"
        finally:
            with psycopg.connect(admin, autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        with _mysql_admin(arguments.mysql) as cursor:
            cursor.execute(f"CREATE DATABASE `{name}`")
        try:
            yield f"{arguments.mysql.rstrip('/')}/{name}"
        finally:
            with _mysql_admin(arguments.mysql) as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")


@contextlib.contextmanager
def _mysql_admin(server: str) -> Iterator[object]:
    import pymysql

    parts = urlsplit(server)
    connection = pymysql.connect(host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
                                 user=parts.username or "root", password=parts.password or "", autocommit=True)
    try:
        with connection.cursor() as cursor:
            yield cursor
    finally:
        connection.close()


def build_records(writer: int, count: int) -> list[tuple[object, object]]:
    """Build the START and END records of ``count`` task tries of one writer, as the listener would."""
    from cmf_airflow.compat import AIRFLOW_VERSION
    from cmf_airflow.model import ArtifactRecord, EventKind, HashState, RecordKind, TaskOutcome, TaskRecord, TaskRun

    shared_md5 = hashlib.md5(SHARED_INPUT).hexdigest()
    shared = ArtifactRecord(uri="file:///bench/shared_input.csv", path="/bench/shared_input.csv", md5=shared_md5,
                            hash_state=HashState.HASHED, size=len(SHARED_INPUT))
    records = []
    for index in range(count):
        output_path = f"/bench/writer_{writer}/output_{index:05d}.csv"
        output_md5 = hashlib.md5(output_path.encode()).hexdigest()
        output = ArtifactRecord(uri=f"file://{output_path}", path=output_path, md5=output_md5,
                                hash_state=HashState.HASHED, size=len(output_path))
        run = TaskRun(site=SITE, dag_id=DAG_ID, task_id=f"writer_{writer}", run_id=f"bench__{index:05d}",
                      map_index=-1, try_number=1, operator="PythonOperator", hostname="bench-host",
                      airflow_version=AIRFLOW_VERSION, start_time=datetime.now(timezone.utc))
        start = TaskRecord(RecordKind.START, run, None, ((EventKind.INPUT, shared),))
        outcome = TaskOutcome(state="success", end_time=datetime.now(timezone.utc))
        end = TaskRecord(RecordKind.END, run, None, ((EventKind.OUTPUT, output),), outcome)
        records.append((start, end))
    return records


def write_executions(writer: int, count: int, barrier: multiprocessing.synchronize.Barrier, results) -> None:
    """Run in a writer process: record one untimed execution, wait for the others, then record ``count``."""
    from cmf_airflow import conf
    from cmf_airflow.spool import deliver

    settings = conf.settings()
    warm_up, *timed = build_records(writer, count + 1)
    spooled = sum(deliver(record, settings).spooled for record in warm_up)

    barrier.wait(timeout=BARRIER_TIMEOUT_S)
    started = time.monotonic()
    for start, end in timed:
        spooled += deliver(start, settings).spooled
        spooled += deliver(end, settings).spooled
    finished = time.monotonic()
    results.put(WriterResult(started=started, finished=finished, executions=count + 1, spooled=spooled))


def measure(backend: str, store: str, writers: int, arguments: argparse.Namespace, folder: Path) -> Measurement:
    """Run ``writers`` writer processes against ``store`` and return the timed part's figures."""
    os.environ["AIRFLOW__CMF__STORE"] = store
    os.environ["AIRFLOW__CMF__SPOOL_FOLDER"] = str(folder / f"spool-{uuid.uuid4().hex[:8]}")
    # A new process per writer, as every Airflow task try is: spawn, so no parent state is shared.
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(writers)
    results = context.Queue()
    processes = [
        context.Process(target=write_executions, args=(writer, arguments.executions, barrier, results))
        for writer in range(writers)
    ]
    for process in processes:
        process.start()
    try:
        finished = [results.get(timeout=BARRIER_TIMEOUT_S * 2) for _ in processes]
    except Exception as error:
        raise BenchmarkError(f"a writer on {backend} did not finish: {type(error).__name__} {error}") from error
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    spooled = sum(result.spooled for result in finished)
    if spooled:
        raise BenchmarkError(f"{spooled} record(s) went to the spool on {backend} because the store was unavailable: check its log")

    expected = sum(result.executions for result in finished)
    check_store(store, expected, Path(os.environ["AIRFLOW__CMF__SPOOL_FOLDER"]))
    seconds = max(result.finished for result in finished) - min(result.started for result in finished)
    return Measurement(backend=backend, writers=writers, executions=arguments.executions * writers, seconds=seconds)


def check_store(store: str, expected: int, spool_folder: Path) -> None:
    """Raise BenchmarkError unless the store has ``expected`` COMPLETE executions with their two events."""
    from ml_metadata.proto import metadata_store_pb2 as mlmd

    from cmf_airflow.store import open_store

    metadata = open_store(store, read_only=True)
    executions = metadata.get_executions()
    if len(executions) != expected:
        raise BenchmarkError(f"store {store} contains {len(executions)} executions; expected {expected}")
    if len({execution.name for execution in executions}) != expected:
        raise BenchmarkError(f"store {store} contains an execution twice")
    incomplete = sum(execution.last_known_state != mlmd.Execution.COMPLETE for execution in executions)
    if incomplete:
        raise BenchmarkError(f"store {store}: {incomplete} executions are not COMPLETE")
    events = metadata.get_events_by_execution_ids([execution.id for execution in executions])
    for event_type, role in ((mlmd.Event.INPUT, "input"), (mlmd.Event.OUTPUT, "output")):
        count = sum(event.type == event_type for event in events)
        if count != expected:
            raise BenchmarkError(f"store {store} contains {count} {role} events; expected {expected}")
    shared = metadata.get_artifacts_by_uri(hashlib.md5(SHARED_INPUT).hexdigest())
    if len(shared) != 1:
        raise BenchmarkError(f"store {store} contains the shared input {len(shared)} times; expected once")
    leftovers = [path.name for path in spool_folder.glob("*") if path.stat().st_size > 0]
    if leftovers:
        raise BenchmarkError(f"the spool {spool_folder} is not empty: {leftovers}")


def print_table(measurements: list[Measurement], writer_counts: list[int], per_writer: int) -> None:
    """Print executions per second, one row per backend and one column per writer count."""
    print()
    print(f"Executions recorded per second ({per_writer} per writer, one START and one END write each):")
    header = "".join(f"{f'{count} writer(s)':>16}" for count in writer_counts)
    print(f"{'backend':<12}{header}")
    for backend in dict.fromkeys(measurement.backend for measurement in measurements):
        cells = []
        for count in writer_counts:
            found = [m for m in measurements if m.backend == backend and m.writers == count]
            cells.append(f"{found[0].per_second:>16.1f}" if found else f"{'-':>16}")
        print(f"{backend:<12}{''.join(cells)}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0 when every store was complete and nothing was spooled, else 1."""
    arguments = parse_arguments(argv)
    folder = Path(tempfile.mkdtemp(prefix="cmf-bench-backends-"))
    os.environ["AIRFLOW_HOME"] = str(folder / "airflow")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CMF__SITE"] = SITE
    os.environ["AIRFLOW__CMF__CAPTURE_ENVIRONMENT"] = "False"
    os.environ["AIRFLOW__CMF__HASH_CACHE"] = str(folder / "hash_cache.sqlite")
    print(f"{os.cpu_count()} CPU(s); writers are processes started with spawn; temporary folder {folder}")
    measurements = []
    try:
        for backend in arguments.backends:
            for writers in arguments.writers:
                print(f"  {backend}, {writers} writer(s) ...", flush=True)
                with new_store(backend, folder, arguments) as store:
                    measurements.append(measure(backend, store, writers, arguments, folder))
    except BenchmarkError as error:
        print(f"bench_backends: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print_table(measurements, arguments.writers, arguments.executions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
