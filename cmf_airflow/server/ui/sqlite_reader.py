"""Read-only SQLite queries in worker processes, apart from the server's MLMD connection.

MLMD links its own copy of SQLite. Two copies of SQLite in one process do not see each other's POSIX locks.
Closing a file descriptor also drops every lock the process has on that file. So a Python ``sqlite3``
connection in the server process breaks MLMD's locking, and after it was closed the server's writes were
not visible to other processes. Each worker process here keeps one read-only connection for its lifetime,
so the operating system's locks keep readers and MLMD's writer apart as for any two processes.

This module imports only the standard library, because each worker process imports it on start.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any

_connection: sqlite3.Connection | None = None


_PARENT_CHECK_SECONDS = 1.0


def open_connection(path: str) -> None:
    """Open this worker process's read-only connection to the SQLite store at ``path``.

    It also starts a thread that ends the worker when the server process is gone: a server killed with
    SIGKILL cannot stop its workers, which would otherwise stay behind with the store's files open.
    """
    global _connection
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), name="cmf-ui-parent-check", daemon=True).start()
    if not os.path.exists(path):
        raise FileNotFoundError(f"the SQLite store {path} does not exist")
    # mode=ro: the UI never writes, and SQLite then rejects any write on this connection.
    _connection = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True, timeout=30.0)


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_CHECK_SECONDS)
    os._exit(0)  # the parent is gone: nothing waits for this worker's results


def run_query(sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Run one SELECT on this worker's connection and return all its rows."""
    if _connection is None:
        raise RuntimeError("the SQLite reader process has no connection: open_connection was not called")
    return [tuple(row) for row in _connection.execute(sql, tuple(parameters)).fetchall()]
