"""Every difference between the Airflow versions that cmf-airflow supports.

No other module looks at the Airflow version: they ask this one for the task facts, the asset class and the
configuration, in one shape on every version.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow import __version__ as AIRFLOW_VERSION
from packaging.version import Version

if TYPE_CHECKING:
    from airflow.configuration import AirflowConfigParser

AIRFLOW_V_3_0_PLUS: bool = Version(Version(AIRFLOW_VERSION).base_version) >= Version("3.0.0")

# The names a DAG file needs, from where each Airflow version keeps them, so that one DAG file (the examples,
# the tests) runs on both: ``from cmf_airflow.compat import DAG, Asset, task``.
if AIRFLOW_V_3_0_PLUS:
    from airflow.sdk import DAG, BaseHook, BaseOperator, BaseOperatorLink, task
    from airflow.sdk import Asset as AssetClass
    from airflow.sdk.exceptions import AirflowSkipException
else:  # Airflow 2.10 / 2.11 call assets "datasets".
    from airflow.datasets import Dataset as AssetClass  # type: ignore[no-redef]
    from airflow.decorators import task  # type: ignore[no-redef]
    from airflow.exceptions import AirflowSkipException  # type: ignore[no-redef]
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef]
    from airflow.models.baseoperator import BaseOperator  # type: ignore[no-redef]
    from airflow.models.baseoperatorlink import BaseOperatorLink  # type: ignore[no-redef]
    from airflow.models.dag import DAG  # type: ignore[no-redef]

Asset = AssetClass

__all__ = [
    "AIRFLOW_VERSION",
    "AIRFLOW_V_3_0_PLUS",
    "AirflowSkipException",
    "BaseHook",
    "BaseOperator",
    "BaseOperatorLink",
    "DAG",
    "Asset",
    "AssetClass",
    "task",
    "TaskFacts",
    "airflow_conf",
    "airflow_home",
    "current_context",
    "error_text",
    "get_connection",
    "task_facts",
]

# Names imported on first use, because the scheduler loads the listener (and this module) without needing them:
# the PythonOperator, the TaskFlow decorator machinery and the operator class behind ``@task``.
_LAZY_NAMES = {
    "PythonOperator": (
        "airflow.providers.standard.operators.python",
        "airflow.operators.python",
        "PythonOperator",
    ),
    "PythonDecoratedOperator": (
        "airflow.providers.standard.decorators.python",
        "airflow.decorators.python",
        "_PythonDecoratedOperator",
    ),
    "task_decorator_factory": (
        "airflow.sdk.bases.decorator",
        "airflow.decorators.base",
        "task_decorator_factory",
    ),
}


def __getattr__(name: str) -> Any:
    """Import one of ``_LAZY_NAMES`` from where this Airflow version keeps it, on first access."""
    if name not in _LAZY_NAMES:
        raise AttributeError(f"module 'cmf_airflow.compat' has no attribute {name!r}")
    import importlib

    airflow3_module, airflow2_module, attribute = _LAZY_NAMES[name]
    module = importlib.import_module(airflow3_module if AIRFLOW_V_3_0_PLUS else airflow2_module)
    value = getattr(module, attribute)
    globals()[name] = value
    return value


@dataclass(frozen=True, slots=True)
class TaskFacts:
    """Facts the listener reads off a task instance, in one shape on every Airflow version."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    try_number: int
    max_tries: int
    state: str | None
    start_date: datetime | None
    hostname: str
    operator: str
    dag_file: str | None
    inlets: tuple[Any, ...]
    outlets: tuple[Any, ...]
    params: dict[str, Any]
    tags: frozenset[str] = frozenset()


def airflow_conf() -> AirflowConfigParser:
    """Return Airflow's configuration object (airflow.cfg plus ``AIRFLOW__*`` variables)."""
    from airflow.configuration import conf

    return conf


def airflow_home() -> str:
    """Return the AIRFLOW_HOME folder this process uses."""
    from airflow.configuration import AIRFLOW_HOME

    return os.path.expanduser(AIRFLOW_HOME)


def get_connection(conn_id: str) -> Any:
    """Return the Airflow connection ``conn_id``, with ``login``, ``password``, ``host``, ``port`` and ``schema``.

    Airflow 3 workers have no database access and read connections through the Task SDK, which works inside
    task execution and for connections in environment variables or secrets backends. Outside a task (the
    ``cmf-airflow replay`` command on a host with the metadata database) the SDK has no supervisor to ask,
    so the metadata database is read then. Airflow 2 reads the database or secrets in every process.
    """
    if not AIRFLOW_V_3_0_PLUS:
        return BaseHook.get_connection(conn_id)
    try:
        return BaseHook.get_connection(conn_id)
    except Exception as sdk_error:  # the SDK raises its own not-found error, or a runtime error without supervisor
        try:
            from airflow.models.connection import Connection

            return Connection.get_connection_from_secrets(conn_id)
        except Exception:
            raise sdk_error from None


def is_task_process_instance(task_instance: Any) -> bool:
    """Tell whether a listener call comes from the process that ran the task.

    Airflow 3 also fires the task hooks on the API server when a user sets a state by hand. Those calls carry
    an ORM task instance without the operator, and there is nothing on disk there to hash.
    """
    if AIRFLOW_V_3_0_PLUS:
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        return isinstance(task_instance, RuntimeTaskInstance)
    return getattr(task_instance, "task", None) is not None


def task_facts(task_instance: Any, *, with_params: bool = True) -> TaskFacts:
    """Read the facts of a task instance that the listener records, on either Airflow version.

    ``with_params=False`` leaves ``params`` empty, for a hook whose execution already contains them.
    """
    task = task_instance.task
    dag = getattr(task, "dag", None)
    state = getattr(task_instance, "state", None)
    return TaskFacts(
        dag_id=task_instance.dag_id,
        task_id=task_instance.task_id,
        run_id=task_instance.run_id,
        map_index=_int_or(getattr(task_instance, "map_index", -1), -1),
        try_number=_int_or(task_instance.try_number, 1),
        max_tries=_int_or(getattr(task_instance, "max_tries", 0), 0),
        state=None if state is None else str(getattr(state, "value", state)),
        start_date=getattr(task_instance, "start_date", None),
        hostname=_hostname(task_instance),
        operator=getattr(task, "task_type", type(task).__name__),
        dag_file=getattr(dag, "fileloc", None),
        inlets=tuple(getattr(task, "inlets", None) or ()),
        outlets=tuple(getattr(task, "outlets", None) or ()),
        params=_params(task_instance, task) if with_params else {},
        tags=frozenset(str(tag) for tag in (getattr(dag, "tags", None) or ())),
    )


def current_context() -> Any | None:
    """Return the template context of the task running in this process, or None outside a running task.

    Airflow 3 raises RuntimeError and Airflow 2 raises AirflowException when no task is running, and both
    keep the task instance under ``"ti"``.
    """
    if AIRFLOW_V_3_0_PLUS:
        from airflow.sdk import get_current_context
    else:
        from airflow.operators.python import get_current_context
    try:
        return get_current_context()
    except Exception:  # the two majors raise different types for the same condition
        return None


def error_text(error: BaseException | str | None) -> str | None:
    """Turn the ``error`` argument of the failure hook into text; Airflow passes an exception or a string."""
    if error is None:
        return None
    if isinstance(error, BaseException):
        message = str(error)
        return f"{type(error).__name__}: {message}" if message else type(error).__name__
    return str(error)


def _params(task_instance: Any, task: Any) -> dict[str, Any]:
    # Airflow 3 caches the template context on the runtime task instance, so reading it again is cheap.
    # Airflow 2's ORM task instance would build a new context with database queries: use the task's params.
    if AIRFLOW_V_3_0_PLUS:
        params = task_instance.get_template_context().get("params") or {}
    else:
        params = getattr(task, "params", None) or {}
    return {str(key): params[key] for key in params}


def _hostname(task_instance: Any) -> str:
    hostname = getattr(task_instance, "hostname", None)
    if hostname:
        return str(hostname)
    from airflow.utils.net import get_hostname

    return get_hostname()


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
