"""One MLMD connection per process and local store, shared by push, pull and the recorder of this process.

Opening a store a second time in a process that already has it open is unsafe. ``store.open_store`` checks
the journal mode through Python's own SQLite library, and closing that connection drops the POSIX locks that
MLMD's copy of SQLite holds on the same file. In a test on this project's machine, a write after that
failed with "database disk image is malformed".
So the sync client opens each store once per process, through the same per-process cache as the listener.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import TYPE_CHECKING

from cmf_airflow.store import StoreError, open_store
from cmf_airflow.store_url import is_url

if TYPE_CHECKING:
    from ml_metadata.metadata_store import MetadataStore

_opened: dict[tuple[int, str], MetadataStore] = {}
_opened_lock = threading.Lock()


def open_local_store_for_reading(path: str) -> MetadataStore:
    """Return this process's connection to the store at ``path`` if it has one, else open it read-only.

    A read-only open writes nothing, not even a site id, so ``export`` leaves the store as it found it.
    """
    key = (os.getpid(), _store_key(path))
    with _opened_lock:
        store = _opened.get(key)
    if store is not None and _exists(path):
        return store
    return open_store(path, read_only=True)


def open_local_store(path: str, *, create: bool = True) -> MetadataStore:
    """Return this process's connection to the local store at ``path``, opening it on first use.

    With ``create=False`` a missing store raises StoreError instead of being created.
    """
    if not create and not _exists(path):
        raise StoreError(f"no CMF store at {path}: pass the path of a local store, or run a DAG with cmf-airflow first")
    key = (os.getpid(), _store_key(path))
    with _opened_lock:
        store = _opened.get(key)
        if store is not None and _exists(path):
            return store
        store = _listener_store(path) or open_store(path)
        _opened[key] = store
        return store


def _listener_store(path: str) -> MetadataStore | None:
    # The listener and the task-level API keep one recorder per process and store path. Going through the
    # same cache, for any path, means that this process never opens a store twice.
    try:
        from cmf_airflow.hooks.store import local_store
    except ImportError:
        return None
    from cmf_airflow import conf

    settings = dataclasses.replace(conf.settings(), store=path)
    return local_store(settings).recorder.store


def _store_key(path: str) -> str:
    return path if is_url(path) else os.path.realpath(path)


def _exists(path: str) -> bool:
    # A database store exists when it can be opened, which open_store finds out.
    return is_url(path) or os.path.exists(path)
