"""Benchmark of the CMF listener's overhead per Airflow task, measured with ``dag.test()``.

A generated DAG chains ``--tasks`` copy tasks: task *i* reads ``file_i`` (declared as inlet with
``cmf_airflow.File``) and writes ``file_{i+1}`` (declared as outlet). The DAG file and the data files lie in
a throw-away git repository, so the listener looks up git provenance as it does in production.

The benchmark runs the DAG with ``[cmf] enabled`` True and False in alternating order (ABBA, so neither mode
always runs first), after one untimed warm-up run of each. In the first series every enabled run writes a
fresh store and hash cache: the DAG's first run, which also creates its stages. In the second series every
enabled run writes into one store that already contains the DAG's earlier runs, as a site's store does after
the first day. The figure is ``(median enabled wall time - median disabled wall time) / tasks``. After every
enabled run the store must contain exactly one COMPLETE execution per task try, with one output event and one
input event each (two with the Environment artifact, which ``[cmf] capture_environment`` records by
default), and every run must succeed, else the benchmark exits with status 1. The timings do not affect
the exit status. ``--no-environment`` turns the Environment artifact off, so that two runs of the benchmark
show what it adds per task.

Usage: ``uv run --no-sync python benchmarks/bench_listener.py [--rounds N] [--tasks N] [--quick] [--profile]
[--no-environment]``.
Airflow's own output goes to a log file in the temporary folder, which is deleted at the end unless
``--keep`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib.util
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TARGET_MS_PER_TASK = 10.0
DAG_ID = "cmf_bench_listener"
INPUT_SIZE_BYTES = 1024
PROFILE_TOP_ENTRIES = 15
ONE_TIME_REPEATS = 5
LOG_TAIL_LINES = 40


class BenchmarkError(Exception):
    """A DAG run failed, or the store of an enabled run lacks the expected executions and events."""


@dataclass(frozen=True, slots=True)
class Layout:
    """Folders and files of one benchmark run, all under one temporary folder."""

    root: Path
    airflow_home: Path
    repo: Path
    dags: Path
    data: Path
    stores: Path
    log: Path

    @classmethod
    def under(cls, root: Path) -> Layout:
        """Return the layout rooted at ``root``; nothing is created yet."""
        repo = root / "repo"
        return cls(
            root=root,
            airflow_home=root / "airflow",
            repo=repo,
            dags=repo / "dags",
            data=repo / "data",
            stores=root / "stores",
            log=root / "airflow-output.log",
        )

    def data_file(self, index: int) -> Path:
        """Return the path of the data file that task ``index - 1`` writes and task ``index`` reads."""
        return self.data / f"file_{index:04d}.txt"


@dataclass(frozen=True, slots=True)
class RoundResult:
    """Wall times of one benchmark round, in seconds."""

    number: int
    order: str
    enabled_s: float
    disabled_s: float
    in_hooks_s: float


DAG_TEMPLATE = '''"""Benchmark DAG written by benchmarks/bench_listener.py: a chain of small file copies."""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG, task

from cmf_airflow import File

DATA_DIR = {data_dir!r}
TASKS = {tasks!r}


def data_file(index: int) -> str:
    return os.path.join(DATA_DIR, f"file_{{index:04d}}.txt")


@task
def copy_step(source: str, target: str, index: int) -> None:
    """Copy the source file to the target and append one line, so that every file has its own hash."""
    with open(source, "rb") as file:
        content = file.read()
    with open(target, "wb") as file:
        file.write(content + f"step {{index}}\\n".encode())


with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    previous = None
    for index in range(TASKS):
        source, target = data_file(index), data_file(index + 1)
        current = copy_step.override(
            task_id=f"copy_{{index:04d}}", inlets=[File(source)], outlets=[File(target)]
        )(source, target, index)
        if previous is not None:
            previous >> current
        previous = current
'''


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; ``--quick`` replaces the defaults of ``--rounds`` and ``--tasks``."""
    parser = argparse.ArgumentParser(description="Measure the CMF listener's added wall time per Airflow task.")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed rounds; each round runs the DAG once enabled and once disabled (default 5)")
    parser.add_argument("--tasks", type=int, default=None, help="tasks in the chained DAG (default 50)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 rounds of 10 tasks unless --rounds or --tasks is given")
    parser.add_argument("--profile", action="store_true",
                        help="run one more enabled round under cProfile and print where the listener spends time")
    parser.add_argument("--no-environment", action="store_true",
                        help="set [cmf] capture_environment to False: record no Environment artifact")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (Airflow home, stores, output log) and print its path")
    arguments = parser.parse_args(argv)

    if arguments.rounds is None:
        arguments.rounds = 2 if arguments.quick else 5
    if arguments.tasks is None:
        arguments.tasks = 10 if arguments.quick else 50
    if arguments.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {arguments.rounds}")
    if arguments.tasks < 1:
        parser.error(f"--tasks must be at least 1, got {arguments.tasks}")
    return arguments


def configure_environment(layout: Layout, capture_environment: bool = True) -> None:
    """Point Airflow at a throw-away home and SQLite database; must run before Airflow is imported.

    ``dag.test()`` in Airflow 3 runs only DAGs that lie in a configured DAG bundle, so the DAG folder is
    declared as a local bundle. ``[cmf]`` options inherited from the caller's environment are removed, so the
    listener runs with its defaults apart from the store, hash cache and enabled flag set per round.
    """
    for name in [name for name in os.environ if name.startswith("AIRFLOW__CMF__")]:
        del os.environ[name]
    bundles = [
        {
            "name": "bench",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(layout.dags), "refresh_interval": 0},
        }
    ]
    os.environ.update(
        {
            "AIRFLOW_HOME": str(layout.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(layout.dags),
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{layout.airflow_home / 'airflow.db'}",
            "AIRFLOW__CMF__STORE": str(layout.stores / "unused" / "mlmd.sqlite"),
            "AIRFLOW__CMF__CAPTURE_ENVIRONMENT": str(capture_environment),
        }
    )


def run_git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` and return its standard output, stripped."""
    result = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)
    return result.stdout.strip()


def create_repository(layout: Layout, tasks: int) -> Path:
    """Create the git repository with the committed DAG file and the first input; return the DAG file."""
    for folder in (layout.airflow_home, layout.dags, layout.data, layout.stores):
        folder.mkdir(parents=True, exist_ok=True)

    dag_file = layout.dags / "bench_listener_dag.py"
    dag_file.write_text(
        DAG_TEMPLATE.format(data_dir=str(layout.data), tasks=tasks, dag_id=DAG_ID), encoding="utf-8"
    )
    # Generated data is usually git-ignored, and ignoring it keeps the working tree clean.
    (layout.repo / ".gitignore").write_text("data/\n", encoding="utf-8")
    layout.data_file(0).write_bytes(bytes(index % 251 for index in range(INPUT_SIZE_BYTES)))

    run_git(layout.repo, "init", "-q", "-b", "main")
    run_git(layout.repo, "config", "user.email", "bench@example.com")
    run_git(layout.repo, "config", "user.name", "cmf-airflow benchmark")
    # The remote URL is only recorded as provenance; the benchmark never contacts it.
    run_git(layout.repo, "remote", "add", "origin", "https://git.example.com/team/pipelines.git")
    run_git(layout.repo, "add", "-A")
    run_git(layout.repo, "commit", "-q", "-m", "add benchmark DAG")
    return dag_file


def migrate_database(layout: Layout) -> None:
    """Create the Airflow database with ``airflow db migrate``, its output going to the log file."""
    with open(layout.log, "a", encoding="utf-8") as log:
        result = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
            check=False,
        )
    if result.returncode != 0:
        raise BenchmarkError(f"airflow db migrate failed with exit status {result.returncode}")


def load_dag(dag_file: Path) -> Any:
    """Import the generated DAG file and return its DAG object."""
    spec = importlib.util.spec_from_file_location("cmf_bench_listener_dag", dag_file)
    if spec is None or spec.loader is None:
        raise BenchmarkError(f"cannot import the DAG file {dag_file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.dag


@contextlib.contextmanager
def output_redirected(log_path: Path) -> Iterator[None]:
    """Send everything written to file descriptors 1 and 2 to ``log_path`` while the block runs.

    Airflow's task runner writes logs through several handlers and to the descriptors directly, so
    redirecting the descriptors is the one way to catch all of it.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for descriptor in saved:
                os.close(descriptor)


class HookClock:
    """Sums the time spent inside the CMF listener's hooks, a figure free of Airflow's run-to-run noise."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        from cmf_airflow.listener import listener

        original = listener._guarded

        def timed(*args: Any) -> None:
            started = time.perf_counter()
            try:
                original(*args)
            finally:
                self.seconds += time.perf_counter() - started

        listener._guarded = timed  # the hook methods look _guarded up on the instance
        try:
            yield
        finally:
            del listener._guarded


class DagRunner:
    """Runs the benchmark DAG with the listener enabled or disabled and checks each run."""

    def __init__(self, dag: Any, layout: Layout, tasks: int, *, shared_store: bool = False) -> None:
        self._dag = dag
        self._layout = layout
        self._tasks = tasks
        self._store_count = 0
        # A shared store receives every enabled run, like the store of a site whose DAGs run every day.
        # Otherwise each enabled run is the DAG's first run into a new store.
        self._shared_store = shared_store
        self._shared_runs = 0
        self.last_in_hooks_s = 0.0

    def run(self, enabled: bool, profiler: cProfile.Profile | None = None) -> float:
        """Run the DAG once and return the wall time of ``dag.test()`` in seconds.

        An enabled run gets a new store and hash cache, and its store must contain one execution per task.
        """
        store = None
        expected_executions = self._tasks
        if enabled and self._shared_store:
            self._shared_runs += 1
            expected_executions = self._tasks * self._shared_runs
            store_folder = self._layout.stores / "shared"
        elif enabled:
            self._store_count += 1
            store_folder = self._layout.stores / f"enabled-run-{self._store_count:03d}"
        if enabled:
            store = store_folder / "mlmd.sqlite"
            os.environ["AIRFLOW__CMF__STORE"] = str(store)
            os.environ["AIRFLOW__CMF__HASH_CACHE"] = str(store_folder / "hash_cache.sqlite")
        os.environ["AIRFLOW__CMF__ENABLED"] = str(enabled)
        self._remove_outputs()

        clock = HookClock()
        with output_redirected(self._layout.log), clock.installed():
            started = time.perf_counter()
            if profiler is None:
                dag_run = self._dag.test()
            else:
                dag_run = profiler.runcall(self._dag.test)
            elapsed = time.perf_counter() - started
        self.last_in_hooks_s = clock.seconds

        mode = "enabled" if enabled else "disabled"
        if str(dag_run.state) != "success":
            raise BenchmarkError(f"DAG run with the listener {mode} ended in state {dag_run.state!r}, not success")
        if store is not None:
            self._check_store(store, expected_executions)
        return elapsed

    def _remove_outputs(self) -> None:
        for index in range(1, self._tasks + 1):
            self._layout.data_file(index).unlink(missing_ok=True)

    def _check_store(self, store: Path, expected_executions: int) -> None:
        from ml_metadata.proto import metadata_store_pb2 as mlmd

        from cmf_airflow.store import StoreError, open_store

        try:
            with output_redirected(self._layout.log):
                metadata_store = open_store(str(store), read_only=True)
                executions = metadata_store.get_executions()
                events = metadata_store.get_events_by_execution_ids([execution.id for execution in executions])
        except StoreError as error:
            raise BenchmarkError(f"the listener wrote no readable store: {error}") from error
        if len(executions) != expected_executions:
            raise BenchmarkError(
                f"store {store} contains {len(executions)} execution(s); expected {expected_executions}, "
                f"one per task try of {self._tasks} task(s) per run, so the listener is not recording correctly"
            )

        incomplete = [
            execution.id for execution in executions if execution.last_known_state != mlmd.Execution.COMPLETE
        ]
        if incomplete:
            raise BenchmarkError(f"store {store}: execution(s) {incomplete} are not COMPLETE after a successful run")
        inputs_per_try = 2 if os.environ.get("AIRFLOW__CMF__CAPTURE_ENVIRONMENT") == "True" else 1
        for event_type, role, per_try in (
            (mlmd.Event.INPUT, "input", inputs_per_try),
            (mlmd.Event.OUTPUT, "output", 1),
        ):
            count = sum(1 for event in events if event.type == event_type)
            if count != expected_executions * per_try:
                raise BenchmarkError(
                    f"store {store} contains {count} {role} event(s); expected {expected_executions * per_try}, "
                    f"{per_try} per task try"
                )


def run_rounds(runner: DagRunner, rounds: int) -> list[RoundResult]:
    """Run the timed rounds, alternating which mode goes first, and print each round as it ends."""
    results = []
    for number in range(1, rounds + 1):
        enabled_first = number % 2 == 1
        times: dict[bool, float] = {}
        in_hooks_s = 0.0
        for enabled in (enabled_first, not enabled_first):
            times[enabled] = runner.run(enabled)
            if enabled:
                in_hooks_s = runner.last_in_hooks_s
        result = RoundResult(
            number=number,
            order="enabled first" if enabled_first else "disabled first",
            enabled_s=times[True],
            disabled_s=times[False],
            in_hooks_s=in_hooks_s,
        )
        results.append(result)
        print(f"  round {number}/{rounds} done ({result.order})", flush=True)
    return results


def print_results(results: list[RoundResult], tasks: int) -> None:
    """Print the per-round table, the raw medians and the added milliseconds per task."""
    print()
    print(f"{'round':>5}  {'order':<15} {'enabled s':>10} {'disabled s':>11} {'added ms/task':>14}")
    for result in results:
        added_ms = (result.enabled_s - result.disabled_s) / tasks * 1000
        print(f"{result.number:>5}  {result.order:<15} {result.enabled_s:>10.3f} {result.disabled_s:>11.3f} "
              f"{added_ms:>14.2f}")

    median_enabled = statistics.median(result.enabled_s for result in results)
    median_disabled = statistics.median(result.disabled_s for result in results)
    added_ms = (median_enabled - median_disabled) / tasks * 1000
    print()
    print(f"median wall time of dag.test(), listener enabled:  {median_enabled:.3f} s "
          f"({median_enabled / tasks * 1000:.1f} ms per task)")
    print(f"median wall time of dag.test(), listener disabled: {median_disabled:.3f} s "
          f"({median_disabled / tasks * 1000:.1f} ms per task)")
    verdict = "within" if added_ms <= TARGET_MS_PER_TASK else "above"
    print(f"added by the listener: {added_ms:.2f} ms per task "
          f"(target <= {TARGET_MS_PER_TASK:g} ms per task: {verdict})")
    in_hooks_ms = statistics.median(result.in_hooks_s for result in results) / tasks * 1000
    print(f"time inside the listener's hooks, measured directly: {in_hooks_ms:.2f} ms per task (median)")


def is_cmf_airflow(filename: str) -> bool:
    """Tell whether a profiled function lies in the cmf_airflow package."""
    return f"{os.sep}cmf_airflow{os.sep}" in filename


def describe_function(key: tuple[str, int, str]) -> str:
    """Return ``file:line(function)`` for a pstats key, with the file's folder dropped when it has one."""
    filename, line, function = key
    if filename == "~":  # built-in functions and methods of C extensions
        return function
    return f"{Path(filename).parent.name}/{Path(filename).name}:{line}({function})"


def print_profile(profiler: cProfile.Profile, tasks: int) -> None:
    """Print where one profiled enabled run spent its time in and below cmf_airflow, per task.

    Two tables: the cmf_airflow functions with the highest cumulative time, and the functions of other
    packages (MLMD, GitPython, SQLite, ...) that cmf_airflow calls directly, with the cumulative time of
    those calls only.
    """
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    own: list[tuple[float, int, str]] = []
    called: list[tuple[float, int, str]] = []
    for key, (_, calls, _, cumulative, callers) in stats.items():
        if is_cmf_airflow(key[0]):
            own.append((cumulative, calls, describe_function(key)))
            continue
        from_cmf = [timing for caller, timing in callers.items() if is_cmf_airflow(caller[0])]
        if from_cmf:
            called.append(
                (sum(timing[3] for timing in from_cmf), sum(timing[1] for timing in from_cmf), describe_function(key))
            )
    own.sort(reverse=True)
    called.sort(reverse=True)

    hooks_s = sum(
        cumulative
        for key, (_, _, _, cumulative, _) in stats.items()
        if is_cmf_airflow(key[0]) and key[0].endswith("listener.py") and key[2].startswith("on_task_instance_")
    )
    print()
    print(f"Profile of one enabled run of {tasks} tasks. cProfile slows the code it measures, so compare the "
          "entries with each other, not with the wall times above.")
    print(f"listener hooks in total: {hooks_s / tasks * 1000:.2f} ms per task")
    for title, entries in (
        (f"top {PROFILE_TOP_ENTRIES} cmf_airflow functions by cumulative time", own),
        (f"top {PROFILE_TOP_ENTRIES} functions of other packages called directly from cmf_airflow", called),
    ):
        print()
        print(f"{title}:")
        print(f"  {'ms/task':>8} {'calls':>7}  function")
        for cumulative, calls, name in entries[:PROFILE_TOP_ENTRIES]:
            print(f"  {cumulative / tasks * 1000:>8.2f} {calls:>7}  {name}")


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    """Run ``action`` ``repeats`` times and return the median wall time in seconds."""
    durations = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def print_one_time_costs(dag_file: Path, store: Path, log_path: Path) -> None:
    """Print the set-up that the listener pays once per process, which the per-task figure leaves out.

    ``dag.test()`` runs every task in this one process, so the git lookup (cached per folder) and the store
    connection (cached per process and store path) are paid once. Outside ``dag.test()``, the task SDK supervisor of
    Airflow 3 (``ActivitySubprocess.start`` in task SDK 1.3.2) forks a new process for each task try, which
    pays both again.
    """
    from cmf_airflow import provenance
    from cmf_airflow.store import open_store

    def look_up_git() -> None:
        # NOTE: clears a private cache of cmf_airflow.provenance, so a rename there breaks this measurement.
        provenance._git_info_of_folder.cache_clear()
        provenance.git_info(str(dag_file))

    with output_redirected(log_path):
        git_s = median_seconds(look_up_git, ONE_TIME_REPEATS)
        open_s = median_seconds(lambda: open_store(str(store)), ONE_TIME_REPEATS)
    print()
    print("Set-up left out of the per-task figure: dag.test() pays the git lookup once per process and opens the "
          "store once per run,")
    print(f"but a deployment pays both for every task try, which runs in its own process (median of "
          f"{ONE_TIME_REPEATS}):")
    print(f"  git provenance lookup (git_info, uncached): {git_s * 1000:.1f} ms")
    print(f"  opening an existing store (open_store):     {open_s * 1000:.1f} ms")
    print_environment_costs(store.parent, log_path)
    # NOTE: registering the shared MLMD context and artifact types, which every new process repeats, is not measured.


def print_environment_costs(folder: Path, log_path: Path) -> None:
    """Print what the Environment artifact costs a task process: listing packages, and the cached lookup.

    A task process finds the freeze file of an unchanged environment through the cache file that an earlier
    process wrote, so only the first task after a package change pays for listing the packages.
    """
    from cmf_airflow import environment

    def uncached() -> None:
        environment.freeze_text()

    def cached_in_new_process() -> None:
        # NOTE: clears a private memo of cmf_airflow.environment, to act as a new task process does.
        environment._memo = None
        environment.capture(str(folder))

    with output_redirected(log_path):
        environment.capture(str(folder))
        list_s = median_seconds(uncached, ONE_TIME_REPEATS)
        cached_s = median_seconds(cached_in_new_process, ONE_TIME_REPEATS * 20)
    print(f"  listing installed packages (freeze_text):   {list_s * 1000:.1f} ms, paid after a package change")
    print(f"  Environment artifact lookup, new process:   {cached_s * 1000:.2f} ms (cache file keyed by sys.path state)")


def print_log_tail(log_path: Path) -> None:
    """Print the last lines of Airflow's output to standard error, to show why a run failed."""
    if not log_path.exists():
        return
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    print(f"--- last {LOG_TAIL_LINES} lines of {log_path} ---", file=sys.stderr)
    for line in lines[-LOG_TAIL_LINES:]:
        print(line, file=sys.stderr)


def run_benchmark(arguments: argparse.Namespace, layout: Layout) -> None:
    """Set up Airflow in ``layout``, run warm-up, timed and profiled rounds, and print the figures."""
    configure_environment(layout, capture_environment=not arguments.no_environment)
    print(f"[cmf] capture_environment = {not arguments.no_environment}")
    dag_file = create_repository(layout, arguments.tasks)
    print(f"Setting up Airflow in {layout.root} ...", flush=True)
    migrate_database(layout)

    with output_redirected(layout.log):
        dag = load_dag(dag_file)
    runner = DagRunner(dag, layout, arguments.tasks)

    print(f"Warm-up: one run enabled and one disabled, {arguments.tasks} chained tasks ...", flush=True)
    runner.run(True)
    runner.run(False)

    print(f"Timed rounds, first run of the DAG into a new store: {arguments.rounds}, each one run enabled "
          "and one disabled ...", flush=True)
    results = run_rounds(runner, arguments.rounds)
    print_results(results, arguments.tasks)

    shared_runner = DagRunner(dag, layout, arguments.tasks, shared_store=True)
    shared_runner.run(True)
    print(f"\nTimed rounds, repeat runs of the DAG into one existing store: {arguments.rounds}, each one run "
          "enabled and one disabled ...", flush=True)
    results = run_rounds(shared_runner, arguments.rounds)
    print_results(results, arguments.tasks)

    if arguments.profile:
        print("\nProfiling one more enabled run ...", flush=True)
        profiler = cProfile.Profile()
        runner.run(True, profiler)
        print_profile(profiler, arguments.tasks)

    print_one_time_costs(dag_file, layout.stores / "enabled-run-001" / "mlmd.sqlite", layout.log)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0 when every run succeeded and every store was complete, else 1."""
    arguments = parse_arguments(argv)
    layout = Layout.under(Path(tempfile.mkdtemp(prefix="cmf-bench-listener-")))
    try:
        run_benchmark(arguments, layout)
    except (BenchmarkError, subprocess.CalledProcessError) as error:
        print(f"bench_listener: {error}", file=sys.stderr)
        print_log_tail(layout.log)
        return 1
    except Exception:
        print_log_tail(layout.log)
        raise
    finally:
        if arguments.keep:
            print(f"\nKept the temporary folder {layout.root} (Airflow output in {layout.log})")
        else:
            shutil.rmtree(layout.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
