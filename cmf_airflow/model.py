"""Value objects that travel between the listener, the recorder and the command line."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Union

# A value MLMD can keep in a property: string, integer, double or boolean.
PropertyValue = Union[str, int, float, bool]
_MAX_EXTERNAL_ID_LENGTH = 255

# Stands for the execution's MLMD id in the name of an artifact that the task logged while the store was
# unavailable (``<path>:<md5>:<execution id>``). The recorder puts the id in when it writes the record.
EXECUTION_ID_PLACEHOLDER = "{execution_id}"

# A fixed namespace, so that every installation derives the same execution uuid from the same facts.
EXECUTION_UUID_NAMESPACE = uuid.UUID("6c0f5e52-4b8e-5d7a-9a3e-0c3f8e1d2b71")


class HashState(str, Enum):
    """Whether an artifact's content could be hashed."""

    HASHED = "hashed"
    MISSING = "missing"
    UNHASHED = "unhashed"
    # Values rather than file content (metrics): identified by a uuid, nothing to hash.
    NOT_A_FILE = "not_a_file"


class EventKind(str, Enum):
    """The direction of an artifact relative to an execution."""

    INPUT = "input"
    OUTPUT = "output"


@dataclass(frozen=True, slots=True)
class GitInfo:
    """Provenance of the code: the git repository that contains the DAG file."""

    remote_url: str
    commit: str
    dirty: bool
    root: str

    def to_json(self) -> dict[str, Any]:
        """Return this value as a JSON object."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GitInfo:
        """Rebuild the value that ``to_json`` returned."""
        return cls(remote_url=data["remote_url"], commit=data["commit"], dirty=bool(data["dirty"]), root=data["root"])


@dataclass(frozen=True, slots=True)
class TaskRun:
    """One try of one task instance, the unit that becomes one CMF execution."""

    site: str
    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    try_number: int
    operator: str
    hostname: str
    airflow_version: str
    start_time: datetime | None = None
    dag_file: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def stage_name(self) -> str:
        """The CMF stage of this task: ``<dag_id>/<task_id>``."""
        return f"{self.dag_id}/{self.task_id}"

    @property
    def execution_uuid(self) -> str:
        """A uuid5 over the try's identity, so recording the same try twice finds the same execution."""
        key = "\x1f".join(
            (self.site, self.dag_id, self.task_id, self.run_id, str(self.map_index), str(self.try_number))
        )
        return str(uuid.uuid5(EXECUTION_UUID_NAMESPACE, key))

    def to_json(self) -> dict[str, Any]:
        """Return this value as a JSON object.

        Params that JSON cannot carry become their ``str()``, which is what the recorder stores for them
        anyway (it keeps params as JSON text made with ``default=str``).
        """
        data = {name.name: getattr(self, name.name) for name in dataclasses.fields(self)}
        data["start_time"] = _time_to_json(self.start_time)
        data["params"] = json.loads(json.dumps(self.params, default=str))
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskRun:
        """Rebuild the value that ``to_json`` returned."""
        return cls(
            site=data["site"],
            dag_id=data["dag_id"],
            task_id=data["task_id"],
            run_id=data["run_id"],
            map_index=int(data["map_index"]),
            try_number=int(data["try_number"]),
            operator=data["operator"],
            hostname=data["hostname"],
            airflow_version=data["airflow_version"],
            start_time=_time_from_json(data.get("start_time")),
            dag_file=data.get("dag_file"),
            params=dict(data.get("params") or {}),
        )


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """The end of a task try: its final state, end time and error."""

    state: str
    end_time: datetime
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return this value as a JSON object."""
        return {"state": self.state, "end_time": _time_to_json(self.end_time), "error": self.error}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskOutcome:
        """Rebuild the value that ``to_json`` returned."""
        end_time = _time_from_json(data["end_time"])
        assert end_time is not None, "a spooled outcome always has an end time"
        return cls(state=data["state"], end_time=end_time, error=data.get("error"))


@dataclass(frozen=True, slots=True)
class ArtifactRecord:
    """An inlet or outlet resolved to what the store keeps: its location and, when readable, its md5."""

    uri: str
    path: str | None
    md5: str | None
    hash_state: HashState
    size: int | None = None
    file_count: int | None = None
    reason: str | None = None
    type_name: str = "Dataset"
    # A name that replaces ``<path>:<md5>``, for types whose CMF name carries more (models, metrics).
    explicit_name: str | None = None
    # Properties declared by the artifact type (``model_framework``), then free-form custom properties
    # (metric values, user metadata, ``git_commit``). Pairs, not dicts, so that a record stays hashable.
    properties: tuple[tuple[str, PropertyValue], ...] = ()
    custom_properties: tuple[tuple[str, PropertyValue], ...] = ()

    @property
    def name(self) -> str:
        """The CMF artifact name: ``<path>:<md5>``, or the location alone when there is no hash."""
        if self.explicit_name:
            return self.explicit_name
        location = self.path or self.uri
        return f"{location}:{self.md5}" if self.md5 else location

    @property
    def artifact_uri(self) -> str:
        """The MLMD uri: the md5 when the content is hashed, else the location."""
        return self.md5 or self.uri

    @property
    def external_id(self) -> str:
        """The MLMD external id that identifies this artifact's content in every store."""
        return artifact_external_id(self.type_name, self.artifact_uri)

    def to_json(self) -> dict[str, Any]:
        """Return this value as a JSON object; property values keep their JSON type (str, int, float, bool)."""
        data = {name.name: getattr(self, name.name) for name in dataclasses.fields(self)}
        data["hash_state"] = self.hash_state.value
        data["properties"] = [list(pair) for pair in self.properties]
        data["custom_properties"] = [list(pair) for pair in self.custom_properties]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ArtifactRecord:
        """Rebuild the value that ``to_json`` returned."""
        return cls(
            uri=data["uri"],
            path=data.get("path"),
            md5=data.get("md5"),
            hash_state=HashState(data["hash_state"]),
            size=data.get("size"),
            file_count=data.get("file_count"),
            reason=data.get("reason"),
            type_name=data.get("type_name", "Dataset"),
            explicit_name=data.get("explicit_name"),
            properties=tuple((str(key), value) for key, value in data.get("properties", ())),
            custom_properties=tuple((str(key), value) for key, value in data.get("custom_properties", ())),
        )


class RecordKind(str, Enum):
    """The kind of write in a ``TaskRecord``: a try's start, its end, or what the running task logged."""

    START = "start"
    END = "end"
    LOGGED = "logged"


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """Everything one listener hook or one task-level API call writes for a task try.

    The listener and the API hand it to the recorder, or append it to the spool when the store is
    unavailable. An empty ``run.site`` stands for the site id kept in the store, which is read when the
    record is written. For START, ``events`` are the inputs. For END they are the inputs that the start
    did not record and the outputs. For LOGGED they are what the task logged.
    """

    kind: RecordKind
    run: TaskRun
    git: GitInfo | None
    events: tuple[tuple[EventKind, ArtifactRecord], ...] = ()
    outcome: TaskOutcome | None = None
    execution_properties: tuple[tuple[str, PropertyValue], ...] = ()

    def artifacts(self, kind: EventKind) -> list[ArtifactRecord]:
        """Return the artifacts of the events of one direction, in order."""
        return [record for event_kind, record in self.events if event_kind is kind]

    def to_json(self) -> dict[str, Any]:
        """Return this record as a JSON object, the form in which the spool keeps it."""
        return {
            "kind": self.kind.value,
            "run": self.run.to_json(),
            "git": self.git.to_json() if self.git is not None else None,
            "events": [[kind.value, record.to_json()] for kind, record in self.events],
            "outcome": self.outcome.to_json() if self.outcome is not None else None,
            "execution_properties": [list(pair) for pair in self.execution_properties],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskRecord:
        """Rebuild the record that ``to_json`` returned; raises KeyError or ValueError on a malformed one."""
        kind = RecordKind(data["kind"])
        outcome = TaskOutcome.from_json(data["outcome"]) if data.get("outcome") is not None else None
        if kind is RecordKind.END and outcome is None:
            raise ValueError("an end record has no outcome")
        return cls(
            kind=kind,
            run=TaskRun.from_json(data["run"]),
            git=GitInfo.from_json(data["git"]) if data.get("git") is not None else None,
            events=tuple((EventKind(kind_value), ArtifactRecord.from_json(record)) for kind_value, record in data["events"]),
            outcome=outcome,
            execution_properties=tuple((str(key), value) for key, value in data.get("execution_properties", ())),
        )


def artifact_external_id(type_name: str, uri: str) -> str:
    """Return the MLMD external id of an artifact: its type and uri, so that one content of one type is one artifact.

    The uri of a hashed artifact is its md5, so the same bytes logged under two paths, or at two sites, meet
    in one artifact. Every writer (recorder, merge) looks artifacts up by this id. MLMD keeps external ids in
    a 255-character column on PostgreSQL and MySQL, so a longer uri (a deep ``s3://`` path) is replaced by
    its sha256.
    """
    external_id = f"{type_name}:{uri}"
    if len(external_id) <= _MAX_EXTERNAL_ID_LENGTH:
        return external_id
    return f"{type_name}:sha256:{hashlib.sha256(uri.encode()).hexdigest()}"


def execution_external_id(execution_uuid: str) -> str:
    """Return the MLMD external id of an execution: its ``Execution_uuid``, unique across sites."""
    return execution_uuid



def _time_to_json(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _time_from_json(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
