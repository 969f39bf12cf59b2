"""Read-only SQL connections to the tables of the server's MLMD store, for the web UI's listings.

MLMD's Python API has no count, group or join, so pages over 100,000 executions read MLMD's tables directly:
sqlite3 for an SQLite store, psycopg for ``postgresql://`` URLs and PyMySQL for ``mysql://`` URLs. Queries
are written once, with ``?`` placeholders and unquoted table names, and adapted to the driver here.
Nothing in this module writes: SQLite is opened in read-only mode and the other two sessions are read-only.
SQLite queries run in worker processes (see ``sqlite_reader.py`` for why).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cmf_airflow.server.stores import StoreUnavailable, is_url, redact
from cmf_airflow.server.ui import sqlite_reader

logger = logging.getLogger(__name__)

# The MLMD schema version (table MLMDEnv) whose tables and columns the UI's queries were written for.
# ml-metadata 1.17 creates and migrates stores to this version.
SUPPORTED_SCHEMA_VERSION = 10

Row = tuple[Any, ...]

# Each SQLite worker is a Python process of its own, and SQLite serves reads from one file, so a few suffice.
_MAX_SQLITE_WORKERS = 2
_DRIVERS = {"postgresql": "postgresql", "postgres": "postgresql", "mysql": "mysql"}


class SchemaMismatch(RuntimeError):
    """The store's MLMD schema version is not the one the UI's queries were written for."""


class ReadOnlyDatabase:
    """A small pool of read-only connections to one MLMD store, with queries adapted to its driver.

    SQLite queries run in up to ``size`` worker processes, each with one connection. PostgreSQL and MySQL
    keep up to ``size`` open connections in this process. The schema version is checked on the first query.
    """

    def __init__(self, store: str, size: int = 4, timeout: float = 120.0) -> None:
        self._store = store
        self._kind = _DRIVERS[urlsplit(store).scheme] if is_url(store) else "sqlite"
        self._size = size
        self._timeout = timeout
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._opened = 0
        self._lock = threading.Lock()
        self._schema_checked = False
        self._workers: ProcessPoolExecutor | None = None

    @property
    def kind(self) -> str:
        """The driver in use: ``sqlite``, ``postgresql`` or ``mysql``."""
        return self._kind

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        """Run one SELECT with ``?`` placeholders and return all its rows."""
        if self._kind == "sqlite":
            if not self._schema_checked:
                self._verify_versions(self._sqlite_query("SELECT schema_version FROM MLMDEnv", ()))
            return self._sqlite_query(sql, parameters)
        statement = sql.replace("?", "%s")
        with self._connection() as connection:
            cursor = connection.cursor()
            try:
                cursor.execute(statement, tuple(parameters))
                return [tuple(row) for row in cursor.fetchall()]
            finally:
                cursor.close()

    def check_schema(self) -> None:
        """Raise SchemaMismatch unless the store is at the MLMD schema version these queries were written for."""
        self.query("SELECT 1")

    def close(self) -> None:
        """Stop the SQLite worker processes and close the idle connections."""
        if self._workers is not None:
            self._workers.shutdown(wait=True, cancel_futures=True)
            self._workers = None
        while True:
            try:
                connection = self._idle.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(Exception):
                connection.close()

    def _sqlite_query(self, sql: str, parameters: Sequence[Any]) -> list[Row]:
        with self._lock:
            if self._workers is None:
                if not os.path.exists(self._store):
                    raise StoreUnavailable(f"the SQLite store {self._store} does not exist")
                # spawn, not fork: the server process has threads and MLMD's native state, which a forked
                # child would inherit in whatever state they were.
                self._workers = ProcessPoolExecutor(
                    max_workers=min(self._size, _MAX_SQLITE_WORKERS), mp_context=multiprocessing.get_context("spawn"),
                    initializer=sqlite_reader.open_connection, initargs=(self._store,))
            workers = self._workers
        try:
            return workers.submit(sqlite_reader.run_query, sql, tuple(parameters)).result(timeout=self._timeout)
        except BrokenProcessPool as error:
            with self._lock:
                if self._workers is workers:
                    self._workers = None
            raise StoreUnavailable(f"the SQLite reader process of {self._store} stopped: {error}; retry") from error
        except sqlite3.OperationalError as error:
            raise StoreUnavailable(f"cannot read the SQLite store {self._store}: {error}") from error

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        connection = self._borrow()
        healthy = True
        try:
            self._verify_schema(connection)
            yield connection
        except Exception as error:
            healthy = not _is_connection_error(error)
            raise
        finally:
            if healthy:
                self._idle.put(connection)
            else:
                with contextlib.suppress(Exception):
                    connection.close()
                with self._lock:
                    self._opened -= 1

    def _verify_schema(self, connection: Any) -> None:
        if self._schema_checked:
            return
        cursor = connection.cursor()
        try:
            cursor.execute("SELECT schema_version FROM MLMDEnv")
            rows = [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()
        self._verify_versions(rows)

    def _verify_versions(self, rows: list[Row]) -> None:
        versions = [row[0] for row in rows]
        if versions != [SUPPORTED_SCHEMA_VERSION]:
            raise SchemaMismatch(
                f"the MLMD store {redact(self._store)} is at schema version {versions or 'unknown'}, but the web "
                f"UI's SQL was written for version {SUPPORTED_SCHEMA_VERSION} (ml-metadata 1.17): install "
                "ml-metadata 1.17 or a cmf-airflow release that supports this schema"
            )
        self._schema_checked = True

    def _borrow(self) -> Any:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._opened < self._size:
                connection = self._open()
                self._opened += 1
                return connection
        try:
            return self._idle.get(timeout=self._timeout)
        except queue.Empty:
            raise StoreUnavailable(
                f"no read-only SQL connection became free within {self._timeout:g} s; retry later"
            ) from None

    def _open(self) -> Any:
        try:
            if self._kind == "postgresql":
                return _open_postgresql(self._store)
            return _open_mysql(self._store)
        except OSError as error:
            raise StoreUnavailable(f"cannot read the MLMD store {redact(self._store)}: {error}") from error
        except Exception as error:  # psycopg and PyMySQL raise their own error hierarchies
            if _is_connection_error(error):
                raise StoreUnavailable(f"cannot read the MLMD store {redact(self._store)}: {error}") from error
            raise


def _open_postgresql(store: str) -> Any:
    import psycopg

    parts = urlsplit(store)
    socket_folder = parse_qs(parts.query).get("host", [None])[0]
    password = parts.password if parts.password is not None else os.environ.get("PGPASSWORD")
    connection = psycopg.connect(
        host=socket_folder or parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        dbname=unquote(parts.path.lstrip("/")),
        user=unquote(parts.username) if parts.username else None,
        password=unquote(password) if password else None,
        autocommit=True,
    )
    connection.execute("SET default_transaction_read_only = on")
    return connection


def _open_mysql(store: str) -> Any:
    import pymysql

    parts = urlsplit(store)
    socket_file = parse_qs(parts.query).get("host", [None])[0]
    password = parts.password if parts.password is not None else os.environ.get("MYSQL_PWD")
    connection = pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        unix_socket=socket_file,
        database=unquote(parts.path.lstrip("/")),
        user=unquote(parts.username) if parts.username else "root",
        password=unquote(password) if password else "",
        autocommit=True,
        charset="utf8mb4",
    )
    with connection.cursor() as cursor:
        cursor.execute("SET SESSION TRANSACTION READ ONLY")
    return connection


def _is_connection_error(error: Exception) -> bool:
    name = type(error).__name__
    return name in {"OperationalError", "InterfaceError"}
