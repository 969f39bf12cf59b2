"""The hook that gives operators, the task-level API and the listener the local CMF store of this process."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cmf_airflow import conf
from cmf_airflow.compat import BaseHook
from cmf_airflow.hash_cache import HashCache
from cmf_airflow.store import open_store, write_lock

if TYPE_CHECKING:
    from cmf_airflow.recorder import Recorder

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LocalStore:
    """The local MLMD store of one process: its recorder, hash cache, site id and write-lock settings."""

    path: str
    recorder: Recorder
    hash_cache: HashCache
    site: str
    lock_timeout: float

    @property
    def folder(self) -> str:
        """The folder of the store, where files that belong to it (step metrics, environments) are kept."""
        return os.path.dirname(os.path.abspath(self.path))


_open_stores: dict[tuple[int, str], LocalStore] = {}
_open_lock = threading.Lock()


def local_store(settings: conf.Settings | None = None) -> LocalStore:
    """Return this process's ``LocalStore`` for ``[cmf] store``, opening it on first use.

    One per process and store path, so that the listener and the task-level API share one recorder and its
    cache of what is already written. Keyed by process id, because an SQLite connection inherited across
    ``fork()`` must not be used by the child. A store file deleted since it was opened is opened again.
    """
    settings = settings or conf.settings()
    key = (os.getpid(), settings.store)
    with _open_lock:
        opened = _open_stores.get(key)
        if opened is not None and os.path.exists(settings.store):
            return opened
        opened = _open(settings)
        _open_stores[key] = opened
        return opened


def _open(settings: conf.Settings) -> LocalStore:
    # Imported here, not at the top: ML Metadata takes most of a second to import, and the scheduler and the
    # API server load the listener without ever recording.
    from cmf_airflow.recorder import Recorder

    recorder = Recorder(open_store(settings.store))
    site = settings.site
    if site is None:
        with write_lock(settings.store, settings.lock_timeout):
            site = recorder.site_id()
    return LocalStore(
        path=settings.store,
        recorder=recorder,
        hash_cache=HashCache(settings.hash_cache),
        site=site,
        lock_timeout=settings.lock_timeout,
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
        """The path of the local MLMD SQLite store."""
        return self.get_conn().path
