"""Opening the server's MLMD store from a path or URL, and the pool of connections that requests share."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cmf_airflow.merge import Merger
from cmf_airflow.store_url import connection_config, is_url, redact

if TYPE_CHECKING:
    from ml_metadata.metadata_store import MetadataStore

logger = logging.getLogger(__name__)

__all__ = ["PipelineLocks", "PooledStore", "StorePool", "StoreUnavailable", "connection_config", "is_url",
           "open_server_store", "redact"]


class StoreUnavailable(RuntimeError):
    """No MLMD connection became free in time, or the database cannot be reached."""


def open_server_store(store: str) -> MetadataStore:
    """Open the MLMD store at ``store``: an SQLite path (created if missing) or a database URL."""
    if not is_url(store):
        from cmf_airflow.store import open_store

        return open_store(store)
    from ml_metadata.metadata_store import metadata_store

    try:
        return metadata_store.MetadataStore(connection_config(store))
    except Exception as error:  # MLMD raises its own error types for an unreachable database
        raise StoreUnavailable(f"cannot open the MLMD store {redact(store)}: {error}") from error


@dataclass(frozen=True, slots=True)
class PooledStore:
    """One MLMD connection and the merger that writes through it."""

    store: MetadataStore
    merger: Merger


class StorePool:
    """A fixed set of MLMD connections, one request at a time on each.

    MLMD's Python store is one database connection and is not safe for two threads at once, so each request
    borrows a connection. An SQLite store gets one connection, so its requests run one at a time, and so
    does its single writer. A database URL gets ``size`` connections, opened when first needed.
    """

    def __init__(self, store: str, size: int, timeout: float) -> None:
        self._store = store
        self._size = 1 if not is_url(store) else size
        self._timeout = timeout
        self._idle: queue.LifoQueue[PooledStore] = queue.LifoQueue()
        self._opened = 0
        self._open_lock = threading.Lock()

    @property
    def size(self) -> int:
        """The maximum number of connections."""
        return self._size

    def open_first(self) -> None:
        """Open one connection now, so that MLMD creates its schema once, before requests run in parallel."""
        with self.connection():
            pass

    @contextlib.contextmanager
    def connection(self) -> Iterator[PooledStore]:
        """Borrow a connection for the duration of the ``with`` block."""
        pooled = self._borrow()
        try:
            yield pooled
        finally:
            self._idle.put(pooled)

    def _borrow(self) -> PooledStore:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._open_lock:
            if self._opened < self._size:
                store = open_server_store(self._store)
                self._opened += 1
                logger.info("opened MLMD connection %d of %d to %s", self._opened, self._size,
                            redact(self._store))
                return PooledStore(store, Merger(store))
        try:
            return self._idle.get(timeout=self._timeout)
        except queue.Empty:
            raise StoreUnavailable(
                f"no MLMD connection became free within {self._timeout:g} s; retry later"
            ) from None


class PipelineLocks:
    """One lock per pipeline name, so that pushes to one pipeline run one after another."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def lock(self, pipeline_name: str) -> threading.Lock:
        """Return the lock of ``pipeline_name``, creating it on first use."""
        with self._guard:
            return self._locks.setdefault(pipeline_name, threading.Lock())
