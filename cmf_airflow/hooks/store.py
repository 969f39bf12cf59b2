"""The hook that gives operators, the task-level API and the listener the local CMF store of this process."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cmf_airflow import compat, conf
from cmf_airflow.compat import BaseHook
from cmf_airflow.hash_cache import HashCache
from cmf_airflow.store import StoreUnavailable, open_store, write_lock
from cmf_airflow.store_url import ConnectionFields, is_url, redact

if TYPE_CHECKING:
    from cmf_airflow.recorder import Recorder

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LocalStore:
    """The local MLMD store of one process: its recorder, hash cache, site id and write-lock settings."""

    # An SQLite path or a database URL, which may contain a password: show it with ``redact``.
    path: str
    recorder: Recorder
    hash_cache: HashCache
    site: str
    lock_timeout: float
    # The folder of the files that belong to the store (step metrics, environments), see ``conf.data_folder``.
    folder: str

    @property
    def display_name(self) -> str:
        """The store's path or URL without its password, for logs and messages."""
        return redact(self.path)


_open_stores: dict[tuple[int, str], LocalStore] = {}
_hash_caches: dict[tuple[int, str], HashCache] = {}
_open_lock = threading.RLock()


def local_store(settings: conf.Settings | None = None) -> LocalStore:
    """Return this process's ``LocalStore`` for ``[cmf] store``, opening it on first use.

    One per process and store, so that the listener and the task-level API share one recorder and its
    cache of what is already written. Keyed by process id, because a connection inherited across ``fork()``
    must not be used by the child. A store file deleted since it was opened is opened again. Raises
    StoreUnavailable when a database store cannot be reached, and StoreError for a store that is invalid.
    """
    settings = settings or conf.settings()
    key = (os.getpid(), settings.store)
    with _open_lock:
        opened = _open_stores.get(key)
        if opened is not None and (is_url(settings.store) or os.path.exists(settings.store)):
            return opened
        opened = _open(settings)
        _open_stores[key] = opened
        return opened


def forget_store(settings: conf.Settings) -> None:
    """Close this process's connection to the store of ``settings``, so that the next use opens a new one.

    Called after a write failed because the store was unavailable: the old connection may be broken.
    """
    with _open_lock:
        _open_stores.pop((os.getpid(), settings.store), None)


def opened_site(settings: conf.Settings) -> str:
    """Return the site id without opening the store: ``[cmf] site``, or the id of the store if this process
    has it open, or an empty string, meaning "the id kept in the store" until the record is written."""
    if settings.site is not None:
        return settings.site
    with _open_lock:
        opened = _open_stores.get((os.getpid(), settings.store))
    return opened.site if opened is not None else ""


def hash_cache(settings: conf.Settings) -> HashCache:
    """Return this process's hash cache of ``[cmf] hash_cache``, which needs no store."""
    key = (os.getpid(), settings.hash_cache)
    with _open_lock:
        cache = _hash_caches.get(key)
        if cache is None:
            cache = HashCache(settings.hash_cache)
            _hash_caches[key] = cache
        return cache


def store_fields(settings: conf.Settings) -> ConnectionFields | None:
    """Return the fields of ``[cmf] store_conn_id`` for a database store, or None when there is none.

    Raises StoreUnavailable when the connection cannot be read, since the secrets backend may be down too.
    """
    if settings.store_conn_id is None or not is_url(settings.store):
        return None
    try:
        return ConnectionFields.of(compat.get_connection(settings.store_conn_id))
    except Exception as error:  # each Airflow major and secrets backend raises its own error types
        raise StoreUnavailable(
            f"cannot read the Airflow connection {settings.store_conn_id} ([cmf] store_conn_id) for the CMF store "
            f"{redact(settings.store)}: {type(error).__name__}: {error}. Define it, or put the credentials in "
            "the URL"
        ) from error


def _open(settings: conf.Settings) -> LocalStore:
    # Imported here, not at the top: ML Metadata takes most of a second to import, and the scheduler and the
    # API server load the listener without ever recording.
    from cmf_airflow.recorder import Recorder

    # Several processes that open a new SQLite store at once race to create MLMD's tables, which SQLite
    # aborts: under the write lock one creates them and the others find them.
    with write_lock(settings.store, settings.lock_timeout):
        store = open_store(
            settings.store,
            fields=store_fields(settings),
            connect_timeout=settings.connect_timeout,
            lock_wait=settings.write_timeout,
        )
    recorder = Recorder(store, write_timeout=settings.write_timeout, location=redact(settings.store))
    site = settings.site
    if site is None:
        with write_lock(settings.store, settings.lock_timeout):
            site = recorder.site_id()
    return LocalStore(
        path=settings.store,
        recorder=recorder,
        hash_cache=hash_cache(settings),
        site=site,
        lock_timeout=settings.lock_timeout,
        folder=settings.data_folder,
    )


class CmfStoreHook(BaseHook):
    """Airflow hook for the local CMF store: its recorder, site id and write lock, one per process.

    It needs no Airflow connection: ``[cmf] store`` names the store. Operators that write CMF metadata use
    it, and so do the task-level API (``cmf_airflow.current()``) and the listener.
    """

    hook_name = "CMF local store"

    def __init__(self, settings: conf.Settings | None = None) -> None:
        super().__init__()
        self._settings = settings

    def get_conn(self) -> LocalStore:
        """Return the process's ``LocalStore``, opening the store on first use."""
        return local_store(self._settings)

    @property
    def recorder(self) -> Recorder:
        """The recorder that writes this process's store."""
        return self.get_conn().recorder

    @property
    def site(self) -> str:
        """The site id: ``[cmf] site``, or the id generated once and kept in the store."""
        return self.get_conn().site

    @property
    def store_path(self) -> str:
        """The path of the local MLMD SQLite store, or the URL of its database (with its password)."""
        return self.get_conn().path
