"""Helpers that run a real Airflow deployment (scheduler, LocalExecutor and friends) in a test.

The deployment lives in a temporary AIRFLOW_HOME with its metadata database on the local PostgreSQL, since
Airflow 2 rejects the LocalExecutor on SQLite. ``metadata_template`` migrates one database per test module,
and ``metadata_database`` copies it for each test with ``CREATE DATABASE ... TEMPLATE``, which takes well
under a second where a migration takes tens of seconds.

Airflow 3 runs a task only with three processes: the scheduler (with the LocalExecutor's workers), the DAG
processor, which parses DAG files into the database, and the API server, whose Task Execution API the task
processes call. ``airflow standalone`` would start those plus a triggerer on the fixed port 8080, so
``running_airflow`` starts the three itself, with the API server on a free loopback port. Airflow 2's
scheduler parses DAG files and runs tasks on its own.

Every component leads a session of its own, whose processes ``running_airflow`` terminates on exit,
failures included, and every wait has a time limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from server_utils import POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER, free_port

from cmf_airflow.compat import AIRFLOW_V_3_0_PLUS

# The environment variable with the folder where the DAG files in tests/dags write their data.
DATA_DIR_VARIABLE = "CMF_TEST_DATA_DIR"
PARALLELISM = 8
_STARTUP_TIMEOUT_S = 120.0
_STOP_TIMEOUT_S = 20.0
_POLL_S = 0.5
_LOG_TAIL_LINES = 60
_MAX_TASK_LOGS_PRINTED = 10
_ADMIN_DSN = f"host={POSTGRES_HOST} port={POSTGRES_PORT} user={POSTGRES_USER} dbname=postgres"


class AirflowNotReady(RuntimeError):
    """An Airflow component exited, or did not reach the expected state in time. The message names which."""


@dataclass(frozen=True, slots=True, order=True)
class TaskTry:
    """One try of one task instance, as Airflow's metadata database records it."""

    task_id: str
    try_number: int
    state: str


@dataclass(frozen=True, slots=True)
class DagRunResult:
    """The end of a DAG run: its state, run id and wall time from the first component start to the end."""

    run_id: str
    state: str
    seconds: float


@dataclass
class AirflowSite:
    """A running Airflow deployment: its environment, home folder and component processes."""

    home: Path
    env: dict[str, str]
    metadata_url: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)

    def log_path(self, component: str) -> Path:
        """Return the file that receives the standard output and error of ``component``."""
        return self.home / f"{component}.out"

    def check_alive(self) -> None:
        """Raise ``AirflowNotReady`` when a component has exited."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AirflowNotReady(f"the Airflow {name} exited with status {process.returncode}")

    def print_logs(self) -> None:
        """Print the tail of every component's output and of every task log, to show why a run failed."""
        for name in self.processes:
            _print_tail(self.log_path(name), f"Airflow {name}")
        failed_logs = [path for path in sorted((self.home / "logs").rglob("*.log"))
                       if "dag_id=" in str(path) and _looks_failed(path)]
        for task_log in failed_logs[:_MAX_TASK_LOGS_PRINTED]:
            _print_tail(task_log, "task log")
        if len(failed_logs) > _MAX_TASK_LOGS_PRINTED:
            print(f"... and {len(failed_logs) - _MAX_TASK_LOGS_PRINTED} more task logs with errors under "
                  f"{self.home / 'logs'}", file=sys.stderr)


def airflow_environment(
    home: Path, metadata_url: str, dags_folder: Path, data_dir: Path, cmf: dict[str, str]
) -> dict[str, str]:
    """Return the environment for Airflow commands of one test deployment.

    ``cmf`` maps ``[cmf]`` option names to values. The variables that tests/conftest.py sets for dag.test()
    (bundles, SQLite database) are replaced, so that nothing of the pytest session's Airflow leaks in.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    api_port = free_port()
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(PARALLELISM),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(PARALLELISM),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__CORE__FERNET_KEY": "",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__WORKERS": "1",
            # The scheduler signs the tokens that task processes present to the API server, so both need
            # the same secret. A random one per deployment, never a fixed string.
            "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex,
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "3600",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            DATA_DIR_VARIABLE: str(data_dir),
        }
    )
    if AIRFLOW_V_3_0_PLUS:
        # Airflow 3 also opens an asyncio engine, whose default PostgreSQL driver (asyncpg) is not installed:
        # psycopg 3, which the project depends on, has an asyncio mode.
        async_url = metadata_url.replace("postgresql+psycopg2://", "postgresql+psycopg://")
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = async_url
        bundle = {
            "name": "dags-folder",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(dags_folder), "refresh_interval": 0},
        }
        env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps([bundle])
    for option, value in cmf.items():
        env[f"AIRFLOW__CMF__{option.upper()}"] = value
    return env


def airflow_command(env: dict[str, str], *args: str, timeout: float = 300.0) -> str:
    """Run ``airflow ARGS`` with ``env`` and return its standard output, or raise with its output on failure."""
    result = subprocess.run(
        [sys.executable, "-m", "airflow", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AirflowNotReady(
            f"airflow {' '.join(args)} failed with status {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


@contextlib.contextmanager
def metadata_template(home: Path) -> Iterator[str]:
    """Create and migrate a PostgreSQL metadata database, yield its name, and drop it afterwards."""
    import psycopg

    name = f"cmf_airflow_meta_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_ADMIN_DSN, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        env = airflow_environment(home, _sqlalchemy_url(name), home / "no-dags", home / "no-data", {})
        airflow_command(env, "db", "migrate")
        yield name
    finally:
        _drop_database(name)


@contextlib.contextmanager
def metadata_database(template: str) -> Iterator[str]:
    """Copy the migrated ``template`` database into a new one, yield its SQLAlchemy URL, and drop it."""
    import psycopg

    name = f"{template}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(_ADMIN_DSN, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield _sqlalchemy_url(name)
    finally:
        _drop_database(name)


@contextlib.contextmanager
def running_airflow(env: dict[str, str], home: Path) -> Iterator[AirflowSite]:
    """Start the Airflow components that run tasks, yield the deployment, and stop every component.

    When the block raises, the components' output and the failed tasks' logs are printed first.
    """
    site = AirflowSite(home=home, env=env, metadata_url=env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    components = ["api-server", "dag-processor", "scheduler"] if AIRFLOW_V_3_0_PLUS else ["scheduler"]
    try:
        for component in components:
            site.processes[component] = _start(site, component)
        if AIRFLOW_V_3_0_PLUS:
            _wait_for_api_server(site)
        yield site
    except BaseException:
        site.print_logs()
        raise
    finally:
        for process in site.processes.values():
            _stop_session(process)


def wait_for_dag_run(site: AirflowSite, dag_id: str, timeout: float) -> DagRunResult:
    """Wait until the first run of ``dag_id`` ends (success or failed), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_state = "not created"
    while time.monotonic() < deadline:
        site.check_alive()
        rows = _query(site, "SELECT run_id, state FROM dag_run WHERE dag_id = %s ORDER BY id", (dag_id,))
        if rows:
            run_id, last_state = rows[0]
            if last_state in ("success", "failed"):
                return DagRunResult(run_id=run_id, state=last_state, seconds=time.monotonic() - site.started_at)
        time.sleep(_POLL_S)
    counts = _query(site, "SELECT state, count(*) FROM task_instance WHERE dag_id = %s GROUP BY state", (dag_id,))
    raise AirflowNotReady(
        f"the run of DAG {dag_id} did not end within {timeout:g} s: it is {last_state}, task states {counts}"
    )


def wait_for_task_state(site: AirflowSite, dag_id: str, state: str, count: int, timeout: float) -> int:
    """Wait until at least ``count`` task instances of ``dag_id`` are in ``state``, and return how many are."""
    deadline = time.monotonic() + timeout
    found = 0
    while time.monotonic() < deadline:
        site.check_alive()
        [(found,)] = _query(
            site, "SELECT count(*) FROM task_instance WHERE dag_id = %s AND state = %s", (dag_id, state)
        )
        if found >= count:
            return found
        time.sleep(_POLL_S / 5)
    raise AirflowNotReady(
        f"timed out after {timeout:g} s: {found} task instances of {dag_id} are {state}, expected {count}"
    )


def cmf_airflow_command(env: dict[str, str], *args: str, timeout: float = 120.0) -> str:
    """Run ``cmf-airflow ARGS`` with ``env`` and return its output, or raise with the output on failure."""
    command = [str(Path(sys.executable).with_name("cmf-airflow")), *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AirflowNotReady(
            f"cmf-airflow {' '.join(args)} failed with status {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout + result.stderr


def task_tries(site: AirflowSite, dag_id: str, run_id: str) -> list[TaskTry]:
    """Return every try of every task of a DAG run: the earlier tries from the history table, and the last."""
    parameters = (dag_id, run_id)
    rows = _query(
        site,
        "SELECT task_id, try_number, state FROM task_instance WHERE dag_id = %s AND run_id = %s "
        "UNION ALL "
        "SELECT task_id, try_number, state FROM task_instance_history WHERE dag_id = %s AND run_id = %s",
        parameters + parameters,
    )
    return sorted(TaskTry(task_id=task_id, try_number=number, state=str(state)) for task_id, number, state in rows)


def _query(site: AirflowSite, sql: str, parameters: tuple[object, ...]) -> list[tuple]:
    import psycopg

    dsn = site.metadata_url.replace("postgresql+psycopg2://", "postgresql://")
    with psycopg.connect(dsn, connect_timeout=10) as connection:
        return list(connection.execute(sql, parameters).fetchall())


def _sqlalchemy_url(name: str) -> str:
    return f"postgresql+psycopg2://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"


def _drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(_ADMIN_DSN, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _start(site: AirflowSite, component: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "airflow", component]
    if component == "api-server":
        # Only the Task Execution API: the tasks need it, the test needs no UI or public REST API.
        command += ["--apps", "execution", "--host", "127.0.0.1", "--port", site.env["AIRFLOW__API__PORT"]]
    with open(site.log_path(component), "wb") as log_file:
        # A new session groups the component with the executor's workers and the task processes they start,
        # so that stopping the session stops them all.
        return subprocess.Popen(
            command, env=site.env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_for_api_server(site: AirflowSite) -> None:
    url = f"http://127.0.0.1:{site.env['AIRFLOW__API__PORT']}/execution/health"
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        site.check_alive()
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(_POLL_S)
    raise AirflowNotReady(f"the Airflow API server did not answer {url} within {_STARTUP_TIMEOUT_S:g} s")


def _stop_session(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=_STOP_TIMEOUT_S)
    # Airflow 3's task supervisors move into process groups of their own, but stay in the session that the
    # component leads: kill every process left in that session.
    for pid in _session_members(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=_STOP_TIMEOUT_S)


def _session_members(session_id: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended while the folder was read
        # The command name in brackets may contain spaces: the fields after it are fixed.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == session_id:
            members.append(int(entry.name))
    return members


def _looks_failed(task_log: Path) -> bool:
    text = task_log.read_text(encoding="utf-8", errors="replace")
    # The flaky tasks' planned first failure is no reason to print a log.
    return "CMF lineage not recorded" in text or ("Traceback" in text and "planned failure" not in text)


def _print_tail(path: Path, title: str) -> None:
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    print(f"--- {title}: last {_LOG_TAIL_LINES} lines of {path} ---", file=sys.stderr)
    for line in lines[-_LOG_TAIL_LINES:]:
        print(line, file=sys.stderr)


class TcpProxy:
    """A TCP proxy on a free loopback port in front of ``target_port``, which a test can cut and restore.

    ``cut()`` closes the listening socket, so new connections are refused, and resets every connection in
    progress. ``restore()`` listens on the same port again. The real database keeps running throughout.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self._target = (target_host, target_port)
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop_listening = threading.Event()
        self._listener: threading.Thread | None = None
        self.connections = 0

    def start(self) -> None:
        """Accept connections on ``self.port`` and forward them to the target."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        # A timeout lets the accept loop see the stop event, since closing a socket does not wake accept().
        listener.settimeout(0.1)
        self._stop_listening = threading.Event()
        self._listener = threading.Thread(target=self._accept, args=(listener, self._stop_listening), daemon=True)
        self._listener.start()

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        self._stop_listening.set()
        if self._listener is not None:
            self._listener.join(timeout=5)
        with self._lock:
            open_sockets = list(self._sockets)
            self._sockets.clear()
        for sock in open_sockets:
            _reset(sock)

    def restore(self) -> None:
        """Accept and forward connections again, on the same port."""
        self.start()

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        with listener:
            while not stop.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                try:
                    upstream = socket.create_connection(self._target, timeout=10)
                except OSError:
                    _reset(client)
                    continue
                client.settimeout(None)
                upstream.settimeout(None)
                with self._lock:
                    self._sockets.update((client, upstream))
                    self.connections += 1
                for source, target in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass  # the other side, or cut(), closed the connection
        for sock in (source, target):
            with self._lock:
                self._sockets.discard(sock)
            _reset(sock)


def _reset(sock: socket.socket) -> None:
    # A zero linger time makes close() send a reset, as a dropped connection looks to the client. close()
    # alone does not end a recv() that a pump thread is blocked in, and the kernel then keeps the connection
    # open: shutdown() wakes that thread first, so the client really sees the connection end.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
