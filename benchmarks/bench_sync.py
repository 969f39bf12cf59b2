"""Cost of a push with nothing new, on local stores of 1,000 and 10,000 executions, side by side in one run.

Both stores are written by the Recorder, with one input and one output artifact per execution. Then direct
SQL on the benchmark's own files spreads their update times, one execution every 10 seconds, as a site that
has run for a while would have them. So the last 60 executions lie inside the sync client's 10-minute
safety window. Each store is
pushed once in full to a real CMF server on a loopback port (timed), then pushed again with nothing new,
several rounds (median printed). The target is a ratio of at most 1.5 between the two no-op pushes.

Run: python benchmarks/bench_sync.py [--sizes 1000 10000] [--rounds 15] [--server-store PATH_OR_URL]
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from server_utils import running_server  # noqa: E402

# Imported before any timing: the first push opens the store through the listener's hook, which imports
# Airflow, and that one-time cost (seconds) is not part of a push.
import cmf_airflow.hooks.store  # noqa: E402, F401

from cmf_airflow.model import ArtifactRecord, HashState, TaskOutcome, TaskRun  # noqa: E402
from cmf_airflow.recorder import Recorder  # noqa: E402
from cmf_airflow.sync import CmfClient, push  # noqa: E402
from cmf_airflow.sync.local import open_local_store  # noqa: E402

START = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
SPACING_MS = 10_000
TASKS = ("ingest", "split", "featurize", "train", "evaluate")


def build_store(path: Path, count: int) -> float:
    """Record ``count`` executions into a new store at ``path`` and return the seconds it took."""
    started = time.perf_counter()
    recorder = Recorder(open_local_store(str(path)))
    for index in range(count):
        task = TASKS[index % len(TASKS)]
        run = TaskRun(
            site="bench-site",
            dag_id="bench_pipeline",
            task_id=task,
            run_id=f"scheduled__{index // len(TASKS)}",
            map_index=-1,
            try_number=1,
            operator="PythonOperator",
            hostname="worker-1",
            airflow_version="3.3.2",
            start_time=START,
        )
        source = ArtifactRecord(uri="file:///data/in.csv", path="/data/in.csv", md5=f"{index:032x}",
                                hash_state=HashState.HASHED, size=1024)
        output = ArtifactRecord(uri="file:///data/out.csv", path="/data/out.csv", md5=f"{index + 1:032x}",
                                hash_state=HashState.HASHED, size=1024)
        recorder.record_end(run, TaskOutcome("success", START + timedelta(seconds=5)), [output], None, [source])
    return time.perf_counter() - started


def age_store(path: Path) -> None:
    """Spread the update times back in time, one execution every SPACING_MS, the newest staying as it is."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        (newest,) = connection.execute("SELECT MAX(id) FROM Execution").fetchone()
        connection.execute(
            "UPDATE Execution SET last_update_time_since_epoch = last_update_time_since_epoch - (? - id) * ?",
            (newest, SPACING_MS),
        )
        connection.commit()


def measure(server_store: str, sizes: list[int], rounds: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="cmf-bench-sync-"))
    paths = {size: folder / f"store-{size}.sqlite" for size in sizes}
    for size, path in paths.items():
        # Built in a child process: this process must not hold an MLMD connection to a file that age_store
        # then changes through Python's own SQLite library.
        started = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--build", str(path), str(size)], check=True)
        age_store(path)
        print(f"built a local store of {size} executions in {time.perf_counter() - started:.1f} s")

    with running_server(server_store) as url, CmfClient(url) as client:
        print(f"\nCMF server at {url}, store {server_store}\n")
        full = {}
        for size, path in paths.items():
            started = time.perf_counter()
            result = push(str(path), client, batch_size=500)
            full[size] = time.perf_counter() - started
            print(f"first full push of {size}: {full[size]:.2f} s, {result.requests} requests, "
                  f"{result.bytes_sent / 1e6:.1f} MB, {size / full[size]:.0f} executions/s")

        noop: dict[int, list[float]] = {size: [] for size in sizes}
        for _ in range(rounds):
            for size, path in paths.items():
                started = time.perf_counter()
                result = push(str(path), client)
                noop[size].append(time.perf_counter() - started)
                assert result.requests == 0, f"a no-op push of {size} sent {result.requests} request(s)"

    print(f"\nno-op push (nothing new), median of {rounds} rounds, side by side:")
    medians = {size: statistics.median(times) for size, times in noop.items()}
    for size, median in medians.items():
        print(f"  {size:>6} executions: {median * 1000:.2f} ms (min {min(noop[size]) * 1000:.2f} ms)")
    smallest, largest = min(sizes), max(sizes)
    ratio = medians[largest] / medians[smallest]
    verdict = "meets" if ratio <= 1.5 else "misses"
    print(f"  ratio {largest}/{smallest}: {ratio:.2f} ({verdict} the target of at most 1.5)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="store sizes in executions")
    parser.add_argument("--rounds", type=int, default=15, help="no-op pushes per store")
    parser.add_argument("--server-store", help="the server's MLMD store (default: a new SQLite file)")
    parser.add_argument("--build", nargs=2, metavar=("PATH", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        build_store(Path(args.build[0]), int(args.build[1]))
        return 0
    server_store = args.server_store or str(Path(tempfile.mkdtemp(prefix="cmf-bench-server-")) / "mlmd.sqlite")
    measure(server_store, sorted(args.sizes), args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
