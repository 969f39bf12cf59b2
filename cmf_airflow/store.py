"""Opening the local MLMD store, and the lock that serialises writers of one SQLite store."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ml_metadata.metadata_store import MetadataStore

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


class StoreLockTimeout(StoreError):
    """Another process held the store's write lock for longer than ``[cmf] lock_timeout``."""


def open_store(path: str, *, read_only: bool = False) -> MetadataStore:
    """Open the MLMD SQLite store at ``path``, creating it (and its folder) unless ``read_only``."""
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
    """Hold an exclusive lock beside the store at ``path``, waiting at most ``timeout`` seconds for it.

    SQLite lets one writer in at a time, so every process that writes the store takes this lock first and
    waits here, with a time limit, instead of meeting a busy database inside MLMD. It is an advisory
    ``flock``, which the kernel releases when the holding process exits, so a crashed task leaves no lock.
    """
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
