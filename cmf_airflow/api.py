"""The task-level API: what a running task logs into the CMF execution of its own try.

``cmf_airflow.current()`` returns a ``CmfExecution`` for the task try running in this process. Everything it
logs joins the one execution that the listener records for that try (same ``Execution_uuid``), and each call
writes at once under the store's write lock, so a later crash of the task loses nothing logged before it.
The one exception is ``log_step_metrics``, which buffers steps in memory until ``commit_step_metrics``
(the CMF operators and the listener's end hook commit what is left when the task ends). When the store is
unavailable, a call appends what it logs to the spool (cmf_airflow.spool) instead, which is written later.

Input rules, checked before anything is written:
- a path must exist. A URI with a scheme other than ``file`` (``s3://...``) is recorded by its URI, unhashed.
- a metric value must be a finite int or float (numpy numbers included). A bool, a string, NaN and
  infinity are rejected: JSON, which carries metrics to the CMF server, has no NaN, and a bool metric is
  ambiguous.
- custom properties take str, int, float or bool values. ``log_params`` also takes lists and dicts, stored
  as JSON text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import numbers
import os
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from cmf_airflow import compat, conf
from cmf_airflow.artifacts import File, resolve, version_record
from cmf_airflow.environment import write_atomically
from cmf_airflow.hooks.store import hash_cache, local_store, opened_site
from cmf_airflow.model import (
    EXECUTION_ID_PLACEHOLDER,
    ArtifactRecord,
    EventKind,
    HashState,
    PropertyValue,
    RecordKind,
    TaskRecord,
    TaskRun,
)
from cmf_airflow.provenance import git_info
from cmf_airflow.spool import deliver
from cmf_airflow.store import StoreUnavailable
from cmf_airflow.store_url import redact

if TYPE_CHECKING:
    from cmf_airflow.spool import Delivery

logger = logging.getLogger(__name__)

# Execution custom properties that the listener writes: log_params must not overwrite them.
RESERVED_EXECUTION_PROPERTIES = frozenset(
    {
        "start_time",
        "end_time",
        "duration_s",
        "hostname",
        "site",
        "params",
        "error",
        "git_dirty",
    }
)


# The key of the step number in each row of step metrics.
STEP_KEY = "step"
# Steps whose JSON is larger than this stay only in the rows file beside the store, because every push to the
# CMF server carries the custom properties. NOTE: the limit is a judgement, not a measured server limit.
MAX_STEPS_PROPERTY_BYTES = 1_000_000


class CmfInputError(ValueError):
    """A value passed to the task-level API is invalid; the message names it and what to do."""


class NotInTaskError(RuntimeError):
    """``cmf_airflow.current()`` was called where no Airflow task is running."""


@dataclass(frozen=True, slots=True)
class LoggedArtifact:
    """An artifact that the task logged: its MLMD id, type, CMF name, uri and the event that links it.

    ``id`` is None when the store was unavailable and the artifact waits in the spool. Its name then
    contains ``{execution_id}`` where the execution's id goes, which is filled in when it is written.
    """

    id: int | None
    type_name: str
    name: str
    uri: str
    event: EventKind


_executions: dict[str, CmfExecution] = {}
_executions_lock = threading.Lock()


def current() -> CmfExecution:
    """Return the ``CmfExecution`` of the task try running in this process.

    Raises NotInTaskError outside a running task, such as at DAG parse time or in a plain script.
    """
    context = compat.current_context()
    task_instance = context.get("ti") if context is not None else None
    if task_instance is None:
        raise NotInTaskError(
            "cmf_airflow.current() was called outside a running Airflow task: call it from inside a task's "
            "callable, or use CmfPythonOperator or @cmf_task, which pass the API object as the 'cmf' argument"
        )
    return for_task_instance(task_instance)


def for_task_instance(task_instance: Any) -> CmfExecution:
    """Return the ``CmfExecution`` of a running task instance, one per task try and process."""
    key = task_try_key(task_instance)
    with _executions_lock:
        execution = _executions.get(key)
        if execution is None:
            execution = CmfExecution(task_instance)
            _executions[key] = execution
        return execution


def release(key: str) -> bool:
    """Forget the API object of a finished try after committing its step metrics; return whether it wrote.

    Called by the listener's end hook. A failure to commit is logged as a warning and not raised, because
    the hook must still record how the try ended.
    """
    with _executions_lock:
        execution = _executions.pop(key, None)
    if execution is None:
        return False
    try:
        execution.commit_pending_step_metrics()
    except Exception as error:
        logger.warning("cannot commit the step metrics of task try %s: %s (they are lost)", key, error)
    return execution.wrote


def task_try_key(task_instance: Any) -> str:
    """Return ``dag/task/[map N/]run/try``, the key that names one task try in logs and per-process maps."""
    parts = [getattr(task_instance, name, "?") for name in ("dag_id", "task_id", "run_id", "try_number")]
    map_index = getattr(task_instance, "map_index", -1)
    if map_index not in (-1, None):
        parts.insert(2, f"map {map_index}")
    return "/".join(str(part) for part in parts)


def task_run(facts: compat.TaskFacts, site: str, start_time: datetime | None) -> TaskRun:
    """Return the ``TaskRun`` of a task try from its facts, the value that identifies its execution."""
    return TaskRun(
        site=site,
        dag_id=facts.dag_id,
        task_id=facts.task_id,
        run_id=facts.run_id,
        map_index=facts.map_index,
        try_number=facts.try_number,
        operator=facts.operator,
        hostname=facts.hostname,
        airflow_version=compat.AIRFLOW_VERSION,
        start_time=start_time,
        dag_file=facts.dag_file,
        params=facts.params,
    )


class CmfExecution:
    """The CMF execution of one running task try, to which the task logs artifacts, metrics and params.

    Obtain it with ``cmf_airflow.current()`` or as the ``cmf`` argument that CmfPythonOperator and
    ``@cmf_task`` pass. The store opens at the first call that writes. Methods are safe to call from
    several threads of the task.
    """

    def __init__(self, task_instance: Any, settings: conf.Settings | None = None) -> None:
        self._facts = compat.task_facts(task_instance, with_params=True)
        self._settings = settings or conf.settings()
        self._start_time = self._facts.start_date or datetime.now(timezone.utc)
        self._lock = threading.RLock()
        self._site = opened_site(self._settings)
        self._execution_id: int | None = None
        self._steps = _StepMetricsBuffer()
        self._wrote = False

    @property
    def wrote(self) -> bool:
        """Whether this object has written to the execution, which the listener then completes in any case."""
        return self._wrote

    @property
    def stage_name(self) -> str:
        """The CMF stage of the task: ``<dag_id>/<task_id>``."""
        return f"{self._facts.dag_id}/{self._facts.task_id}"

    @property
    def execution_uuid(self) -> str:
        """The ``Execution_uuid`` of this try, the same that the listener records."""
        run = self._run()
        if not run.site:
            run = dataclasses.replace(run, site=local_store(self._settings).site)
        return run.execution_uuid

    @property
    def execution_id(self) -> int:
        """The MLMD id of this try's execution, which is created now if no hook has recorded it yet.

        Raises StoreUnavailable when the store cannot be reached, so that the id is not known yet.
        """
        with self._lock:
            if self._execution_id is None:
                self._write([])
            if self._execution_id is None:
                raise StoreUnavailable(
                    f"the execution id of {self.stage_name} is not known: the CMF store "
                    f"{redact(self._settings.store)} is unavailable and what the task logs is spooled"
                )
            return self._execution_id

    def _execution_id_for_name(self) -> str:
        # Artifact names contain the execution id. While the store is unavailable the recorder fills it in
        # when it writes the spooled record.
        if self._execution_id is None:
            self._write([])
        return EXECUTION_ID_PLACEHOLDER if self._execution_id is None else str(self._execution_id)

    def log_dataset(
        self,
        path: str | os.PathLike[str],
        event: str | EventKind = "input",
        custom_properties: Mapping[str, Any] | None = None,
        *,
        version: bool | None = None,
    ) -> LoggedArtifact:
        """Log a file or folder that the task reads (``event="input"``) or writes (``"output"``).

        The artifact is named ``<path>:<md5>``. An output is versioned with DVC when ``version`` is True, or
        when it is None and ``[cmf] version_artifacts`` is on. Raises CmfInputError for a missing path, and for
        an output to version that lies outside every DVC workspace. Content already in the store is one
        artifact: the call adds an event to it and leaves its name and properties as first recorded.
        """
        kind = _event_kind(event, "log_dataset")
        custom = _custom_properties(custom_properties, "log_dataset")
        record = self._hashed(path, "dataset")
        if kind is EventKind.OUTPUT:
            record = self._version(record, version, "dataset")
        record = dataclasses.replace(record, custom_properties=record.custom_properties + custom)
        return self._log(kind, record)

    def log_model(
        self,
        path: str | os.PathLike[str],
        framework: str,
        model_type: str,
        name: str | None = None,
        event: str | EventKind = "output",
        custom_properties: Mapping[str, Any] | None = None,
        *,
        version: bool | None = None,
    ) -> LoggedArtifact:
        """Log a model file or folder, by default as an output, with its framework and model type.

        The artifact is named ``<path>:<md5>:<execution id>`` and is its content: a model logged again with
        the same bytes (by the evaluation task, as an input) is the same artifact with one more event.
        Versioning follows the rule of ``log_dataset`` for outputs.
        """
        _require_text(framework, "framework", "log_model", "such as 'sklearn' or 'pytorch'")
        _require_text(model_type, "model_type", "log_model", "such as 'SGDClassifier'")
        if name is not None:
            _require_text(name, "name", "log_model", "or leave it out to use the file name")
        kind = _event_kind(event, "log_model")
        custom = _custom_properties(custom_properties, "log_model")
        record = self._hashed(path, "model")
        if kind is EventKind.OUTPUT:
            record = self._version(record, version, "model")
        properties = (
            ("model_framework", framework),
            ("model_type", model_type),
            ("model_name", name or os.path.basename(record.path or record.uri)),
        )
        with self._lock:
            explicit_name = f"{record.path}:{record.md5}:{self._execution_id_for_name()}"
            record = dataclasses.replace(
                record,
                type_name="Model",
                explicit_name=explicit_name,
                properties=properties,
                custom_properties=record.custom_properties + custom,
            )
            return self._log(kind, record)

    def log_metrics(self, name: str, values: Mapping[str, Any]) -> LoggedArtifact:
        """Log one set of metrics (accuracy, loss) as a ``Metrics`` output, named ``<name>:<uuid>:<execution id>``."""
        _require_text(name, "name", "log_metrics", "such as 'evaluation'")
        checked = _metric_values(values, f"log_metrics({name!r})")
        metrics_uuid = str(uuid.uuid4())
        with self._lock:
            record = ArtifactRecord(
                uri=metrics_uuid,
                path=None,
                md5=None,
                hash_state=HashState.NOT_A_FILE,
                type_name="Metrics",
                explicit_name=f"{name}:{metrics_uuid}:{self._execution_id_for_name()}",
                properties=(("metrics_name", name),),
                custom_properties=tuple(checked.items()),
            )
            return self._log(EventKind.OUTPUT, record)

    def log_step_metrics(self, name: str, values: Mapping[str, Any]) -> int:
        """Buffer the metrics of one step (an epoch, an iteration) under ``name``; return the step number.

        Steps are numbered from 0 in the order they are logged. Nothing is written until
        ``commit_step_metrics(name)``, so logging a step costs microseconds.
        """
        _require_text(name, "name", "log_step_metrics", "such as 'training'")
        checked = _metric_values(values, f"log_step_metrics({name!r})")
        if STEP_KEY in checked:
            raise CmfInputError(
                f"log_step_metrics({name!r}): {STEP_KEY!r} is the step number that the API adds. Rename the "
                "metric, for example 'epoch'"
            )
        with self._lock:
            return self._steps.append(name, checked)

    def commit_step_metrics(self, name: str) -> LoggedArtifact:
        """Write the buffered steps of ``name`` as one ``Step_Metrics`` output and clear the buffer.

        The rows go to a JSON file beside the store, whose md5 is the artifact's uri, and into the
        ``steps`` custom property as JSON (up to a size limit), so they travel to the CMF server.
        """
        _require_text(name, "name", "commit_step_metrics", "the name passed to log_step_metrics")
        with self._lock:
            if not self._steps.pending(name):
                raise CmfInputError(
                    f"no step metrics named {name!r} to commit: log steps with log_step_metrics({name!r}, ...) "
                    f"first (pending: {', '.join(map(repr, self._steps.names())) or 'none'})"
                )
            record = self._steps.record(name, self._data_folder(), self._execution_id_for_name())
            logged = self._log(EventKind.OUTPUT, record)
            self._steps.clear(name)
            return logged

    def commit_pending_step_metrics(self) -> list[LoggedArtifact]:
        """Commit every step-metrics buffer that still has steps, as the task ends."""
        with self._lock:
            return [self.commit_step_metrics(name) for name in self._steps.names()]

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record parameters of this try (learning rate, epochs) as custom properties of its execution."""
        if not isinstance(params, Mapping):
            raise CmfInputError(f"log_params takes a mapping of names to values, got {type(params).__name__}")
        checked: dict[str, PropertyValue] = {}
        for key, value in params.items():
            _check_param_name(key)
            checked[key] = _param_value(key, value)
        with self._lock:
            self._write([], checked)

    def _log(self, kind: EventKind, record: ArtifactRecord) -> LoggedArtifact:
        with self._lock:
            delivery = self._write([(kind, record)])
            if delivery.store is None:
                return LoggedArtifact(
                    id=None, type_name=record.type_name, name=record.name, uri=record.artifact_uri, event=kind
                )
            artifact = delivery.store.recorder.artifact(record.external_id)
        return LoggedArtifact(
            id=artifact.id, type_name=record.type_name, name=artifact.name, uri=artifact.uri, event=kind
        )

    def _write(
        self, events: list[tuple[EventKind, ArtifactRecord]], properties: dict[str, PropertyValue] | None = None
    ) -> Delivery:
        git = git_info(self._facts.dag_file)
        record = TaskRecord(
            RecordKind.LOGGED, self._run(), git, tuple(events),
            execution_properties=tuple((properties or {}).items()),
        )
        delivery = deliver(record, self._settings)
        if delivery.execution is not None and delivery.store is not None:
            self._execution_id = delivery.execution.id
            self._site = delivery.store.site
        self._wrote = True
        return delivery

    def _data_folder(self) -> str:
        return self._settings.data_folder

    def _run(self) -> TaskRun:
        if not self._site:
            self._site = opened_site(self._settings)
        return task_run(self._facts, self._site, self._start_time)

    def _hashed(self, path: str | os.PathLike[str], artifact_kind: str) -> ArtifactRecord:
        entity = _as_entity(path, artifact_kind)
        record = resolve(entity, hash_cache(self._settings))
        if record.hash_state is HashState.MISSING:
            raise CmfInputError(
                f"cannot log {artifact_kind} {record.path}: file does not exist. Write it before logging it, or check "
                "the path (relative paths are resolved from the task's working folder "
                f"{os.getcwd()})"
            )
        if record.hash_state is HashState.UNHASHED and record.path is not None:
            raise CmfInputError(
                f"cannot log {artifact_kind} {record.path}: {record.reason}. Check the file's permissions"
            )
        return record

    def _version(self, record: ArtifactRecord, version: bool | None, artifact_kind: str) -> ArtifactRecord:
        requested = self._settings.version_artifacts if version is None else version
        if not requested:
            return record
        if record.path is None:
            raise CmfInputError(
                f"cannot version {artifact_kind} {record.uri} with DVC: only local files can be versioned. "
                "Pass version=False to log it unversioned"
            )
        message = f"Version {artifact_kind} {os.path.basename(record.path)} ({self.stage_name})"
        try:
            versioned = version_record(record, lock_timeout=self._settings.lock_timeout, message=message)
        except ImportError as error:
            raise CmfInputError(
                f"cannot version {artifact_kind} {record.path}: DVC versioning is not available in this installation "
                f"({error}). Pass version=False, or set [cmf] version_artifacts = False"
            ) from error
        if versioned is None:
            raise CmfInputError(
                f"cannot version {artifact_kind} {record.path}: it is outside every DVC workspace (a git repository "
                "where 'dvc init' ran). Write it inside one, or pass version=False, or set "
                "[cmf] version_artifacts = False"
            )
        return versioned


def _as_entity(path: Any, artifact_kind: str) -> Any:
    if isinstance(path, os.PathLike):
        return File(os.path.abspath(os.fspath(path)))
    if not isinstance(path, str) or not path.strip():
        raise CmfInputError(f"the {artifact_kind} path must be a non-empty string or path, got {path!r}")
    if "://" in path:
        return path
    return File(os.path.abspath(path))


def _event_kind(event: str | EventKind, method: str) -> EventKind:
    try:
        return EventKind(event)
    except ValueError:
        raise CmfInputError(f"{method} event must be 'input' or 'output', got {event!r}") from None


def _require_text(value: Any, argument: str, method: str, hint: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise CmfInputError(f"{method} needs a non-empty string as {argument} ({hint}), got {value!r}")


def _metric_values(values: Any, call: str) -> dict[str, int | float]:
    if not isinstance(values, Mapping) or not values:
        raise CmfInputError(f"{call} needs a non-empty mapping of metric names to numbers, got {values!r}")
    checked: dict[str, int | float] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            raise CmfInputError(f"{call}: metric names must be non-empty strings, got {key!r}")
        checked[key] = _metric_number(key, value, call)
    return checked


def _metric_number(key: str, value: Any, call: str) -> int | float:
    if isinstance(value, bool):
        raise CmfInputError(f"{call}: metric {key!r} is a bool ({value}). Log 1 or 0, or record it with log_params")
    if not isinstance(value, numbers.Real):
        raise CmfInputError(
            f"{call}: metric {key!r} is {type(value).__name__} {value!r}, not a number. Convert it with "
            "float(), or record text with log_params"
        )
    if isinstance(value, numbers.Integral):
        return int(value)
    number = float(value)
    if not math.isfinite(number):
        raise CmfInputError(
            f"{call}: metric {key!r} is {number}, which JSON cannot carry to the CMF server. Leave the key "
            "out for a step without a value"
        )
    return number


def _custom_properties(values: Mapping[str, Any] | None, method: str) -> tuple[tuple[str, PropertyValue], ...]:
    if values is None:
        return ()
    if not isinstance(values, Mapping):
        raise CmfInputError(f"{method} custom_properties must be a mapping, got {type(values).__name__}")
    result = []
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            raise CmfInputError(f"{method} custom property names must be non-empty strings, got {key!r}")
        if not isinstance(value, (str, int, float, bool)):
            raise CmfInputError(
                f"{method} custom property {key!r} is {type(value).__name__}: use str, int, float or bool "
                "(convert structures with json.dumps)"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise CmfInputError(f"{method} custom property {key!r} is {value}: use a finite number or a string")
        result.append((key, value))
    return tuple(result)


def _check_param_name(key: Any) -> None:
    if not isinstance(key, str) or not key:
        raise CmfInputError(f"log_params names must be non-empty strings, got {key!r}")
    if key in RESERVED_EXECUTION_PROPERTIES or key.startswith("airflow_"):
        raise CmfInputError(
            f"log_params cannot set {key!r}: the listener records it. Rename the parameter, for example "
            f"'param_{key}'"
        )


def _param_value(key: str, value: Any) -> PropertyValue:
    if isinstance(value, float) and not math.isfinite(value):
        raise CmfInputError(f"log_params value of {key!r} is {value}: use a finite number or a string")
    if isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return _param_value(key, float(value))
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise CmfInputError(
            f"log_params value of {key!r} ({type(value).__name__}) cannot be stored: {error}. Pass a str, "
            "number, bool, or a list or dict of them"
        ) from error


class _StepMetricsBuffer:
    """Rows of step metrics per name, kept in memory until committed."""

    def __init__(self) -> None:
        self._rows: dict[str, list[dict[str, int | float]]] = {}

    def append(self, name: str, values: dict[str, int | float]) -> int:
        rows = self._rows.setdefault(name, [])
        rows.append(values)
        return len(rows) - 1

    def pending(self, name: str) -> bool:
        return bool(self._rows.get(name))

    def names(self) -> list[str]:
        return [name for name, rows in self._rows.items() if rows]

    def clear(self, name: str) -> None:
        self._rows.pop(name, None)

    def record(self, name: str, folder: str, execution_id: int | str) -> ArtifactRecord:
        """Write the rows of ``name`` to ``folder/step_metrics/<md5>.json`` and return its artifact record.

        The file is one JSON document, ``{"metrics_name": name, "steps": [rows]}``. The name is part of the
        content, so two metrics with equal values under different names stay two artifacts.
        """
        lines = [
            json.dumps({STEP_KEY: step, **values}, separators=(",", ":"))
            for step, values in enumerate(self._rows[name])
        ]
        steps_json = "[" + ",\n".join(lines) + "]"
        content = ('{"metrics_name":' + json.dumps(name) + ',"steps":' + steps_json + "}\n").encode()
        md5 = hashlib.md5(content).hexdigest()
        path = os.path.join(folder, "step_metrics", f"{md5}.json")
        if not os.path.exists(path):
            write_atomically(path, content)

        custom: list[tuple[str, PropertyValue]] = [("step_count", len(lines))]
        if len(steps_json) <= MAX_STEPS_PROPERTY_BYTES:
            custom.append(("steps", steps_json))
        else:
            custom.append(("steps_omitted", f"{len(steps_json)} bytes of JSON; the rows are in {path}"))
        return ArtifactRecord(
            uri=f"file://{path}",
            path=path,
            md5=md5,
            hash_state=HashState.HASHED,
            size=len(content),
            type_name="Step_Metrics",
            explicit_name=f"{name}:{md5}:{execution_id}",
            properties=(("metrics_name", name),),
            custom_properties=tuple(custom),
        )
