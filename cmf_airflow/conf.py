"""One accessor per ``[cmf]`` option; nothing else in cmf-airflow reads Airflow's configuration.

Each accessor reads the option on every call, so that ``AIRFLOW__CMF__*`` variables set by a test or a
deployment take effect without a restart of the process. ``settings()`` bundles them for the listener.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cmf_airflow.compat import airflow_conf, airflow_home
from cmf_airflow.provider_info import CMF_OPTIONS
from cmf_airflow.store_url import is_url

SECTION = "cmf"
# The variables that can set a [cmf] option: the option itself, or a command or secret that yields it.
_ENVIRONMENT_NAMES = tuple(
    f"AIRFLOW__CMF__{option.upper()}{suffix}" for option in CMF_OPTIONS for suffix in ("", "_CMD", "_SECRET")
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every ``[cmf]`` option, read together."""

    enabled: bool
    store: str
    site: str | None
    include_dags: tuple[str, ...]
    exclude_dags: tuple[str, ...]
    hash_cache: str
    lock_timeout: float
    version_artifacts: bool
    capture_environment: bool
    # The folder of the files that belong to the local store: see ``data_folder()``.
    data_folder: str
    store_conn_id: str | None = None
    write_timeout: float = 5.0
    connect_timeout: float = 5.0
    spool_folder: str = ""


_settings_cache: tuple[tuple[str | None, ...], Settings] | None = None


def settings() -> Settings:
    """Return all ``[cmf]`` options, read again only when an ``AIRFLOW__CMF__*`` variable changed.

    Airflow reads airflow.cfg once per process but environment variables on every lookup, so those variables
    are the only input that can change while a process runs. Each lookup costs tens of microseconds, and the
    listener needs every option twice per task.
    """
    global _settings_cache
    key = tuple(os.environ.get(name) for name in _ENVIRONMENT_NAMES)
    if _settings_cache is not None and _settings_cache[0] == key:
        return _settings_cache[1]
    value = Settings(
        enabled=enabled(),
        store=store(),
        site=site(),
        include_dags=include_dags(),
        exclude_dags=exclude_dags(),
        hash_cache=hash_cache(),
        lock_timeout=lock_timeout(),
        version_artifacts=version_artifacts(),
        capture_environment=capture_environment(),
        store_conn_id=store_conn_id(),
        write_timeout=write_timeout(),
        connect_timeout=connect_timeout(),
        spool_folder=spool_folder(),
        data_folder=data_folder(),
    )
    _settings_cache = (key, value)
    return value


def enabled() -> bool:
    """``[cmf] enabled``: record every task instance as a CMF execution."""
    return airflow_conf().getboolean(SECTION, "enabled", fallback=True)


def store() -> str:
    """``[cmf] store``: path of the local MLMD SQLite store, by default ``$AIRFLOW_HOME/cmf/mlmd.sqlite``, or
    the ``postgresql://`` or ``mysql://`` URL of a database that the workers of a site share."""
    value = airflow_conf().get(SECTION, "store", fallback="").strip()
    if is_url(value):
        return value
    return os.path.expanduser(value) if value else os.path.join(airflow_home(), "cmf", "mlmd.sqlite")


def store_conn_id() -> str | None:
    """``[cmf] store_conn_id``: the Airflow connection whose password (and login, host, port, schema when the
    store URL leaves them out) a database store uses, or None."""
    return airflow_conf().get(SECTION, "store_conn_id", fallback="").strip() or None


def data_folder() -> str:
    """Return the folder of the files that belong to the local store (hash cache, step metrics, environments).

    The folder of an SQLite store, or ``$AIRFLOW_HOME/cmf`` on each worker for a database store.
    """
    location = store()
    if is_url(location):
        return os.path.join(airflow_home(), "cmf")
    return os.path.dirname(os.path.abspath(location))


def write_timeout() -> float:
    """``[cmf] write_timeout``: seconds one write to the local store retries conflicts with other writers."""
    return airflow_conf().getfloat(SECTION, "write_timeout", fallback=5.0)


def connect_timeout() -> float:
    """``[cmf] connect_timeout``: seconds to wait for the database of a database store to accept a connection."""
    return airflow_conf().getfloat(SECTION, "connect_timeout", fallback=5.0)


def spool_folder() -> str:
    """``[cmf] spool_folder``: where records wait that the local store could not take, by default
    ``<[logging] base_log_folder>/cmf_spool``."""
    value = airflow_conf().get(SECTION, "spool_folder", fallback="").strip()
    if value:
        return os.path.expanduser(value)
    logs = airflow_conf().get("logging", "base_log_folder", fallback="").strip()
    return os.path.join(os.path.expanduser(logs) if logs else os.path.join(airflow_home(), "logs"), "cmf_spool")


def site() -> str | None:
    """``[cmf] site``: this site's id, or None to use the id kept in the local store."""
    return airflow_conf().get(SECTION, "site", fallback="").strip() or None


def include_dags() -> tuple[str, ...]:
    """``[cmf] include_dags``: DAG ids or fnmatch patterns to record; empty means every DAG."""
    return _patterns(airflow_conf().get(SECTION, "include_dags", fallback=""))


def exclude_dags() -> tuple[str, ...]:
    """``[cmf] exclude_dags``: DAG ids or fnmatch patterns never to record."""
    return _patterns(airflow_conf().get(SECTION, "exclude_dags", fallback=""))


def hash_cache() -> str:
    """``[cmf] hash_cache``: the SQLite file of cached file hashes, by default beside the local store."""
    value = airflow_conf().get(SECTION, "hash_cache", fallback="").strip()
    if value:
        return os.path.expanduser(value)
    return os.path.join(data_folder(), "hash_cache.sqlite")


def lock_timeout() -> float:
    """``[cmf] lock_timeout``: seconds to wait for the local store's write lock."""
    return airflow_conf().getfloat(SECTION, "lock_timeout", fallback=10.0)


def version_artifacts() -> bool:
    """``[cmf] version_artifacts``: add file artifacts inside a DVC workspace to DVC and commit them to git."""
    return airflow_conf().getboolean(SECTION, "version_artifacts", fallback=False)


def capture_environment() -> bool:
    """``[cmf] capture_environment``: record the task's pip freeze as an Environment input artifact."""
    return airflow_conf().getboolean(SECTION, "capture_environment", fallback=True)


def conn_id() -> str:
    """``[cmf] conn_id``: the Airflow connection (type ``cmf``) of the central CMF server."""
    return airflow_conf().get(SECTION, "conn_id", fallback="cmf_default").strip() or "cmf_default"


def sync_batch_size() -> int:
    """``[cmf] sync_batch_size``: the maximum number of executions in one push request."""
    value = airflow_conf().getint(SECTION, "sync_batch_size", fallback=500)
    if value < 1:
        from airflow.exceptions import AirflowConfigException

        raise AirflowConfigException(f"[cmf] sync_batch_size is {value}: set it to 1 or more (default 500)")
    return value


def sync_timeout() -> float:
    """``[cmf] sync_timeout``: seconds a push or pull waits for the server to respond to one request."""
    return airflow_conf().getfloat(SECTION, "sync_timeout", fallback=60.0)


def _patterns(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())
