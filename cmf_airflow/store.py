"""Opening the local MLMD store, the lock that serialises writers of one SQLite store, and retries.

The local store is an SQLite file, or a PostgreSQL or MySQL database (a URL) that the workers of a site
share. SQLite lets one writer in at a time, so its writers take a file lock first. A database takes
concurrent writers, whose conflicts (deadlocks, lock wait timeouts, serialization failures, two inserts of
one unique name) ``retry_on_contention`` retries for a bounded time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import random
import re
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from cmf_airflow.store_url import ConnectionFields, DatabaseAddress, address, connection_config, is_url, redact

if TYPE_CHECKING:
    from ml_metadata.metadata_store import MetadataStore

logger = logging.getLogger(__name__)
T = TypeVar("T")

# MLMD's SqliteMetadataSourceConfig.ConnectionMode values.
_SQLITE_READONLY = 1
_SQLITE_READWRITE_OPENCREATE = 3

_LOCK_POLL_SECONDS = 0.005

# Stores this process has opened, by (process id, real path). SQLite's file locks are POSIX locks, which
# belong to the process: closing any descriptor of the file drops all of them, MLMD's included. So the
# checks below, which open their own sqlite3 connection, run only on a process's first open of a store.
_opened: set[tuple[int, str]] = set()


class StoreError(Exception):
    """The local store cannot be opened or written; the message names the store and what to do."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or written for now (database down, timeout, lock held): retry later.

    The listener spools what it could not write when it gets this error, and writes it later.
    """


class StoreLockTimeout(StoreUnavailable):
    """Another process held the store's write lock for longer than ``[cmf] lock_timeout``."""


def open_store(
    path: str,
    *,
    read_only: bool = False,
    fields: ConnectionFields | None = None,
    connect_timeout: float = 5.0,
    lock_wait: float | None = None,
) -> MetadataStore:
    """Open the MLMD store at ``path``: an SQLite file, created (with its folder) unless ``read_only``, or a
    ``postgresql://`` or ``mysql://`` URL of a database that must exist.

    ``fields`` (an Airflow connection) fill what a URL leaves out. Opening a database gives up after about
    ``connect_timeout`` seconds with StoreUnavailable. MLMD has no read-only mode for databases, so
    ``read_only`` only checks that the database exists there. ``lock_wait`` bounds, on PostgreSQL, how long
    one statement waits for a row lock that another session holds.
    """
    if is_url(path):
        return _open_database(path, fields, connect_timeout, lock_wait)

    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    if os.path.isdir(path):
        raise StoreError(f"CMF store {path} is a folder; the store is an MLMD SQLite file, such as {path}/mlmd.sqlite")
    if read_only and not os.path.exists(path):
        raise StoreError(f"no CMF store at {path}: check the path, or run a DAG with cmf-airflow enabled first")
    opened_key = (os.getpid(), os.path.realpath(path))
    first_open = opened_key not in _opened or not os.path.exists(path)
    if not read_only and first_open:
        _make_folder(path)
        _use_write_ahead_log(path)

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = path
    config.sqlite.connection_mode = _SQLITE_READONLY if read_only else _SQLITE_READWRITE_OPENCREATE
    if read_only and first_open:
        _check_is_mlmd(path)
    try:
        store = metadata_store.MetadataStore(config)
    except Exception as error:  # MLMD raises its own error types, and RuntimeError for a non-database file
        raise _cannot_open(path, error) from error
    _opened.add(opened_key)
    return store


def _use_write_ahead_log(path: str) -> None:
    """Switch the SQLite file at ``path`` (created if missing) to write-ahead logging.

    The journal mode is stored in the database file, so MLMD's own connections use it too. With WAL a
    commit costs one fsync instead of the rollback journal's several (it halved the recorder's time per task
    in a measurement on this project's test machine), and readers such as ``cmf-airflow lineage`` no longer
    block writers.
    """
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=5.0)) as connection:
            if connection.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as error:
        raise _cannot_open(path, error) from error


@contextlib.contextmanager
def write_lock(path: str, timeout: float) -> Iterator[None]:
    """Hold an exclusive lock beside the SQLite store at ``path``, waiting at most ``timeout`` seconds for it.

    SQLite lets one writer in at a time, so every process that writes the store takes this lock first and
    waits here, with a time limit, instead of meeting a busy database inside MLMD. It is an advisory
    ``flock``, which the kernel releases when the holding process exits, so a crashed task leaves no lock.
    A database store (a URL) takes no lock here: the database orders concurrent writers itself, and
    ``retry_on_contention`` retries those that conflict.
    NOTE: the sync client's acknowledgement state is read, changed and written under this lock, so two
    pushes at once from one database store may lose an acknowledgement, and the execution is sent again.
    """
    if is_url(path):
        yield
        return
    lock_path = f"{path}.lock"
    _make_folder(lock_path)
    try:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o664)
    except OSError as error:
        raise StoreError(f"cannot create lock file {lock_path}: {error.strerror}; check the folder's "
                         "permissions or point [cmf] store elsewhere") from error
    try:
        _acquire(descriptor, lock_path, timeout)
        yield
    finally:
        os.close(descriptor)  # closing the descriptor releases the flock


def _acquire(descriptor: int, lock_path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise StoreError(f"cannot lock {lock_path}: {error.strerror}") from error
        if time.monotonic() >= deadline:
            raise StoreLockTimeout(
                f"timed out after {timeout:g} s waiting for the write lock {lock_path}, which another process "
                "kept the whole time. Raise [cmf] lock_timeout if tasks often finish together"
            )
        time.sleep(_LOCK_POLL_SECONDS)


def _check_is_mlmd(path: str) -> None:
    # MLMD's own error for a file that is not its database quotes its whole schema query; this names the file.
    try:
        uri = f"file:{path}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as error:
        raise StoreError(f"{path} is not an MLMD SQLite store ({error}); pass the path of a CMF store") from error
    if "Execution" not in tables or "Artifact" not in tables:
        raise StoreError(f"{path} is an SQLite file without MLMD's tables; pass the path of a CMF store")


def _cannot_open(path: str, error: Exception) -> StoreError:
    return StoreError(
        f"cannot open CMF store {path}: {error}. Check that it is an MLMD SQLite file and that this user "
        "can write it, or point [cmf] store at another path"
    )


def _make_folder(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot create the folder {folder} of the CMF store: {error.strerror}") from error


def _open_database(
    url: str, fields: ConnectionFields | None, connect_timeout: float, lock_wait: float | None
) -> MetadataStore:
    from ml_metadata.metadata_store import metadata_store

    try:
        where = address(url, fields)
        config = connection_config(url, fields, create_database=False)
    except ValueError as error:
        raise StoreError(str(error)) from error
    deadline = time.monotonic() + connect_timeout
    # MLMD has no connection timeout of its own. The probe finds out within the timeout whether a server
    # listens and responds (a closed port fails in milliseconds, a dropped packet or a hung server waits).
    _probe(where, connect_timeout, url)
    session = _libpq_settings(connect_timeout, lock_wait) if where.backend == "postgresql" else {}

    attempt = 0
    while True:
        attempt += 1
        try:
            with _environment(session):
                return metadata_store.MetadataStore(config)
        except Exception as error:  # MLMD raises RuntimeError with the cause only in its own log
            # Several workers that open a new database at once race to create MLMD's tables, and all but
            # one fail until the winner has committed them. MLMD's message then requests a retry.
            racing = bool(_SCHEMA_RACE_TEXT.search(str(error)) or _CONTENTION_TEXT.search(str(error)))
            if (attempt < 3 or racing) and time.monotonic() < deadline:
                time.sleep(min(0.05 * attempt, 0.5) * random.uniform(0.5, 1.5))
                continue
            raise StoreUnavailable(
                f"cannot open the CMF store {redact(url)}: {error}. Check that the database server is running, "
                "that the database exists (cmf-airflow creates its tables but not the database) and that the "
                "user and password are right"
            ) from error


def _libpq_settings(connect_timeout: float, lock_wait: float | None) -> dict[str, str]:
    """Return the libpq variables that bound the waits of an MLMD session on PostgreSQL.

    MLMD's configuration has no field for them, but libpq reads these variables when it connects.
    ``idle_in_transaction_session_timeout`` ends, on the server, a session whose client vanished in the
    middle of a transaction (a worker killed, a network cut), which would otherwise hold its row locks and
    stall every other writer until TCP keepalive noticed, hours later. ``lock_timeout`` makes a statement
    that waits for such a lock fail, so that the recorder retries it or the record goes to the spool.
    NOTE: nothing here bounds a statement on a connection whose peer vanished without a reset (a network
    partition): MLMD gives libpq no keepalive or TCP timeout setting, so the write waits until TCP gives up,
    and the record of that hook can be lost if Airflow ends the task process first.
    """
    options = ["-c idle_in_transaction_session_timeout=10000"]
    if lock_wait is not None:
        options.append(f"-c lock_timeout={max(1, int(lock_wait * 1000))}")
    user_options = os.environ.get("PGOPTIONS", "").strip()
    return {
        # In whole seconds, at least 2. A value the deployment set itself wins.
        "PGCONNECT_TIMEOUT": os.environ.get("PGCONNECT_TIMEOUT") or str(max(2, int(connect_timeout + 0.999))),
        "PGOPTIONS": " ".join([*options, user_options]).strip(),
    }


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables only while MLMD connects, so that the task's own connections keep theirs.

    NOTE: the environment belongs to the whole process, so a connection that another thread opens at this
    moment also gets these values. MLMD's open takes milliseconds, and the values only bound waits.
    """
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _probe(where: DatabaseAddress, timeout: float, url: str) -> None:
    """Check that a database server at ``where`` accepts a connection and responds, within ``timeout`` seconds.

    MySQL and MariaDB greet every new client first. A PostgreSQL server responds to an SSL request with one
    byte. Either way no credentials are sent, and the server logs at most an aborted connection.
    NOTE: for MySQL this bounds the wait up to the greeting only. A server that greets and then stalls
    during login keeps MLMD's open waiting, because MLMD sets no read timeout (libpq's PGCONNECT_TIMEOUT covers
    PostgreSQL's whole login).
    """
    try:
        if where.socket:
            path = where.socket
            if where.backend == "postgresql":
                path = os.path.join(where.socket, f".s.PGSQL.{where.port}")
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            connection.settimeout(timeout)
            connection.connect(path)
        else:
            connection = socket.create_connection((where.host, where.port), timeout=timeout)
        with connection:
            if where.backend == "postgresql":
                connection.sendall((8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"))
            if not connection.recv(1):
                raise ConnectionError("the server closed the connection without a response")
    except OSError as error:
        if isinstance(error, TimeoutError):
            reason = f"no response within {timeout:g} s"
        else:
            reason = (error.strerror or str(error)).lower()
        raise StoreUnavailable(
            f"cannot reach the database of the CMF store {redact(url)} at {where.socket or f'{where.host}:{where.port}'}: "
            f"{reason}. Check that the {where.backend} server is running"
        ) from error


# Texts of the database errors that mean "another writer got there first", as PostgreSQL, MariaDB/MySQL
# and SQLite word them. MLMD passes them on inside InternalError or AbortedError.
_CONTENTION_TEXT = re.compile(
    r"deadlock|lock wait timeout|could not serialize|serialization failure|database is locked|"
    r"database table is locked|duplicate key|duplicate entry|unique constraint|try restarting transaction|"
    r"concurrent writes aborted|lock timeout",
    re.IGNORECASE,
)


_SCHEMA_RACE_TEXT = re.compile(r"concurrent connection|retry connection|schema_version", re.IGNORECASE)


def is_contention(error: BaseException) -> bool:
    """Tell whether ``error`` comes from a conflict with a concurrent writer, which a new attempt can avoid."""
    from ml_metadata import errors as mlmd_errors

    if isinstance(error, (mlmd_errors.AbortedError, mlmd_errors.AlreadyExistsError)):
        return True
    if isinstance(error, (mlmd_errors.InternalError, mlmd_errors.UnknownError, RuntimeError, sqlite3.OperationalError)):
        return bool(_CONTENTION_TEXT.search(str(error)))
    return False


def is_unavailable(error: BaseException, path: str) -> bool:
    """Tell whether ``error``, raised by opening or writing the store at ``path``, means "try again later".

    For a database store that is any error from MLMD or the network, except invalid input. MLMD writes the
    cause of a failed statement only to its own log, so a dropped connection and a server that shuts down
    look alike. For an SQLite store it is a timed-out lock or a busy database.
    """
    from ml_metadata import errors as mlmd_errors

    if isinstance(error, StoreUnavailable):
        return True
    if isinstance(error, (mlmd_errors.InvalidArgumentError, mlmd_errors.NotFoundError,
                          mlmd_errors.FailedPreconditionError, mlmd_errors.OutOfRangeError)):
        return False
    transient = (mlmd_errors.UnavailableError, mlmd_errors.DeadlineExceededError, mlmd_errors.AbortedError)
    if isinstance(error, transient):
        return True
    if is_url(path):
        return isinstance(error, (mlmd_errors.StatusError, RuntimeError, ConnectionError, TimeoutError))
    return is_contention(error)


def retry_on_contention(
    operation: Callable[[], T], *, timeout: float, path: str, on_retry: Callable[[], None] | None = None
) -> T:
    """Run ``operation``, again after a short random pause each time it conflicts with another writer.

    ``on_retry`` runs before each new attempt, to forget what the failed attempt read. After ``timeout``
    seconds of conflicts the last one is raised as StoreUnavailable, so the caller can spool the write.
    """
    deadline = time.monotonic() + timeout
    delay = 0.01
    attempts = 0
    while True:
        attempts += 1
        try:
            return operation()
        except Exception as error:
            if not is_contention(error):
                raise
            if time.monotonic() + delay > deadline:
                raise StoreUnavailable(
                    f"gave up writing the CMF store {redact(path)} after {attempts} attempt(s) in {timeout:g} s of "
                    f"conflicts with other writers (last: {type(error).__name__}: {error}). Raise "
                    "[cmf] write_timeout if many tasks end at the same moment"
                ) from error
            logger.debug("write to %s conflicted with another writer (%s), attempt %d", redact(path), error, attempts)
        if on_retry is not None:
            on_retry()
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 0.5)
