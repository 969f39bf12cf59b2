"""The CMF wire format: the JSON document that CMF clients and servers exchange, as validated value objects.

The document is what cmflib's ``CmfQuery.dumptojson`` produces and what ``cmf metadata push`` sends to a CMF
server: ``{"Pipeline": [pipeline, ...]}``, where a pipeline has ``stages``, a stage has ``executions`` and an
execution has ``events``, each event carrying its ``artifact``. Every node has ``name``, ``properties``,
``custom_properties`` and the two ``*_time_since_epoch`` times, and may have ``id`` and ``type_id`` (ids of the
sending store, never used as identity here). Property values are plain JSON scalars.

Parsing validates the whole document before anything uses it, so a bad push is rejected before any write.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

EVENT_INPUT = 3
EVENT_OUTPUT = 4
# MLMD's Event.Type numbers other than UNKNOWN (0): DECLARED_OUTPUT .. PENDING_OUTPUT.
_EVENT_TYPES = frozenset(range(1, 8))
EXECUTION_STATES = ("UNKNOWN", "NEW", "RUNNING", "COMPLETE", "FAILED", "CACHED", "CANCELED")
ARTIFACT_STATES = ("UNKNOWN", "PENDING", "LIVE", "MARKED_FOR_DELETION", "DELETED", "ABANDONED", "REFERENCE")

PIPELINE_TYPE = "Parent_Context"
STAGE_TYPE = "Pipeline_Stage"
EXECUTION_UUID = "Execution_uuid"

# MLMD keeps type names, node names and external ids in VARCHAR(255) columns on MySQL and PostgreSQL.
MAX_NAME_LENGTH = 255
# The largest integer MLMD stores (a signed 64-bit column).
_MAX_INT = 2**63 - 1

PropertyValue = str | int | float | bool


class WireError(ValueError):
    """A request or document that cannot be accepted, with the HTTP status that reports it.

    400 is a malformed request, 413 a body over the size limit and 422 a well-formed document whose content
    cannot be stored. The message names the offending field and what to send instead.
    """

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True)
class WireArtifact:
    """An artifact as sent on the wire: its type name, name, uri (the md5 for hashed content) and properties."""

    type: str
    name: str
    uri: str
    properties: Mapping[str, Any] = field(default_factory=dict)
    custom_properties: Mapping[str, Any] = field(default_factory=dict)
    create_time_since_epoch: int = 0
    last_update_time_since_epoch: int = 0
    id: int | None = None
    state: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "properties", _frozen(self.properties))
        object.__setattr__(self, "custom_properties", _frozen(self.custom_properties))

    def to_json(self) -> dict[str, Any]:
        """Return the artifact as CMF's JSON object."""
        body = _node_json(self.type, self.name, self)
        body["uri"] = self.uri
        if self.state is not None:
            body["state"] = self.state
        return body


@dataclass(frozen=True, slots=True)
class WireEvent:
    """An INPUT (3) or OUTPUT (4) event linking an execution to an artifact."""

    type: int
    artifact: WireArtifact

    def to_json(self) -> dict[str, Any]:
        """Return the event as CMF's JSON object."""
        return {"type": self.type, "artifact": self.artifact.to_json()}


@dataclass(frozen=True, slots=True)
class WireExecution:
    """An execution as sent on the wire: its type (the stage name), properties and events."""

    type: str
    name: str
    properties: Mapping[str, Any] = field(default_factory=dict)
    custom_properties: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[WireEvent, ...] = ()
    create_time_since_epoch: int = 0
    last_update_time_since_epoch: int = 0
    last_known_state: str | None = None
    id: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "properties", _frozen(self.properties))
        object.__setattr__(self, "custom_properties", _frozen(self.custom_properties))
        object.__setattr__(self, "events", tuple(self.events))

    @property
    def execution_uuid(self) -> str | None:
        """The ``Execution_uuid`` property, the execution's identity across stores, or None when missing."""
        value = self.properties.get(EXECUTION_UUID)
        return value if isinstance(value, str) and value else None

    def to_json(self) -> dict[str, Any]:
        """Return the execution as CMF's JSON object."""
        body = _node_json(self.type, self.name, self)
        if self.last_known_state is not None:
            body["last_known_state"] = self.last_known_state
        body["events"] = [event.to_json() for event in self.events]
        return body


@dataclass(frozen=True, slots=True)
class WireStage:
    """A stage context (``Pipeline_Stage``) and the executions sent for it."""

    name: str
    properties: Mapping[str, Any] = field(default_factory=dict)
    custom_properties: Mapping[str, Any] = field(default_factory=dict)
    executions: tuple[WireExecution, ...] = ()
    type: str = STAGE_TYPE
    create_time_since_epoch: int = 0
    last_update_time_since_epoch: int = 0
    id: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "properties", _frozen(self.properties))
        object.__setattr__(self, "custom_properties", _frozen(self.custom_properties))
        object.__setattr__(self, "executions", tuple(self.executions))

    def to_json(self) -> dict[str, Any]:
        """Return the stage as CMF's JSON object."""
        body = _node_json(self.type, self.name, self)
        body["executions"] = [execution.to_json() for execution in self.executions]
        return body


@dataclass(frozen=True, slots=True)
class WirePipeline:
    """A pipeline context (``Parent_Context``, named after the DAG) and its stages."""

    name: str
    properties: Mapping[str, Any] = field(default_factory=dict)
    custom_properties: Mapping[str, Any] = field(default_factory=dict)
    stages: tuple[WireStage, ...] = ()
    type: str = PIPELINE_TYPE
    create_time_since_epoch: int = 0
    last_update_time_since_epoch: int = 0
    id: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "properties", _frozen(self.properties))
        object.__setattr__(self, "custom_properties", _frozen(self.custom_properties))
        object.__setattr__(self, "stages", tuple(self.stages))

    def to_json(self) -> dict[str, Any]:
        """Return the pipeline as CMF's JSON object."""
        body = _node_json(self.type, self.name, self)
        body["stages"] = [stage.to_json() for stage in self.stages]
        return body


@dataclass(frozen=True, slots=True)
class WireDocument:
    """A whole CMF document: ``{"Pipeline": [...]}``."""

    pipelines: tuple[WirePipeline, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "pipelines", tuple(self.pipelines))

    def to_json(self) -> dict[str, Any]:
        """Return the document as CMF's JSON object, made of plain JSON values."""
        return {"Pipeline": [pipeline.to_json() for pipeline in self.pipelines]}

    @property
    def execution_count(self) -> int:
        """The number of executions in all pipelines and stages."""
        return sum(len(stage.executions) for pipeline in self.pipelines for stage in pipeline.stages)


def _node_json(type_name: str, name: str, node: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": type_name,
        "name": name,
        "properties": dict(node.properties),
        "custom_properties": dict(node.custom_properties),
        "create_time_since_epoch": node.create_time_since_epoch,
        "last_update_time_since_epoch": node.last_update_time_since_epoch,
    }
    if node.id is not None:
        body["id"] = node.id
    return body


# ---------------------------------------------------------------------------------------------------------
# Requests


def push_request_body(pipeline_name: str, document: WireDocument, exec_uuid: str | None = None) -> dict:
    """Build the body of ``POST /api/mlmd_push``: the document travels serialised as a JSON string."""
    return {
        "pipeline_name": pipeline_name,
        "exec_uuid": exec_uuid,
        "json_payload": json.dumps(document.to_json(), separators=(",", ":")),
    }


def pull_request_body(
    pipeline_name: str, exec_uuid: str | None = None, last_sync_time: int | None = None
) -> dict:
    """Build the body of ``POST /api/mlmd_pull``, with ``last_sync_time`` in milliseconds since the epoch."""
    return {"pipeline_name": pipeline_name, "exec_uuid": exec_uuid, "last_sync_time": last_sync_time}


def parse_push_request(body: Any) -> tuple[str, str | None, WireDocument]:
    """Validate a push request body and return its pipeline name, ``exec_uuid`` and document.

    Raises WireError: 400 for a body that is not an object, a missing pipeline name or a ``json_payload``
    that is not a JSON string, 422 for a document whose content cannot be stored (see ``parse_document``).
    """
    if not isinstance(body, Mapping):
        raise WireError(f"the push request must be a JSON object, not {_json_kind(body)}", 400)
    pipeline_name = body.get("pipeline_name")
    if not isinstance(pipeline_name, str) or not pipeline_name.strip():
        raise WireError("the push request is missing pipeline_name: send the pipeline (DAG) name as a string", 400)
    exec_uuid = body.get("exec_uuid")
    if exec_uuid is not None and not isinstance(exec_uuid, str):
        raise WireError(f"exec_uuid must be a string or null, not {_json_kind(exec_uuid)}", 400)

    payload = body.get("json_payload")
    if not isinstance(payload, str):
        raise WireError(
            f"json_payload must be the CMF document serialised as a JSON string, not {_json_kind(payload)}", 400
        )
    try:
        document_json = json.loads(payload)
    except ValueError as error:
        raise WireError(f"json_payload is not valid JSON: {error}", 400) from error

    document = parse_document(document_json)
    names = [pipeline.name for pipeline in document.pipelines]
    if pipeline_name not in names:
        raise WireError(
            f"json_payload contains no pipeline named {pipeline_name!r} (it contains {names}): "
            "send the document of the pipeline named in pipeline_name",
            422,
        )
    return pipeline_name, exec_uuid, document


def parse_pull_request(body: Any) -> tuple[str, str | None, int | None]:
    """Validate a pull request body and return its pipeline name, ``exec_uuid`` and ``last_sync_time``."""
    if not isinstance(body, Mapping):
        raise WireError(f"the pull request must be a JSON object, not {_json_kind(body)}", 400)
    pipeline_name = body.get("pipeline_name")
    if not isinstance(pipeline_name, str) or not pipeline_name.strip():
        raise WireError("the pull request is missing pipeline_name: send the pipeline (DAG) name as a string", 400)
    exec_uuid = body.get("exec_uuid")
    if exec_uuid is not None and not isinstance(exec_uuid, str):
        raise WireError(f"exec_uuid must be a string or null, not {_json_kind(exec_uuid)}", 400)
    last_sync_time = body.get("last_sync_time")
    if last_sync_time is not None and (
        isinstance(last_sync_time, bool) or not isinstance(last_sync_time, int) or last_sync_time < 0
    ):
        raise WireError(
            f"last_sync_time must be null or milliseconds since the epoch as an integer, not {last_sync_time!r}",
            400,
        )
    return pipeline_name, exec_uuid, last_sync_time


# ---------------------------------------------------------------------------------------------------------
# Document parsing


def parse_document(obj: Any) -> WireDocument:
    """Validate a CMF document (the parsed JSON object) and return it as value objects.

    Raises WireError with status 400 when the document or a pipeline has no name or the wrong shape. Raises
    it with 422 when content cannot be stored: an execution without ``Execution_uuid``, an event type that
    MLMD does not define, an empty or over-long type name, or a property value that is not a JSON scalar.
    """
    if not isinstance(obj, Mapping):
        raise WireError(f"the CMF document must be a JSON object, not {_json_kind(obj)}", 400)
    pipelines = obj.get("Pipeline")
    if not isinstance(pipelines, list):
        raise WireError('the CMF document must have a "Pipeline" list', 400)
    return WireDocument(tuple(_parse_pipeline(item, f"Pipeline[{i}]") for i, item in enumerate(pipelines)))


def _parse_pipeline(obj: Any, where: str) -> WirePipeline:
    node = _object(obj, where, 400)
    name = node.get("name")
    if not isinstance(name, str) or not name.strip():
        raise WireError(f"{where} is missing its name: every pipeline needs its name as a string", 400)
    stages = _list(node, "stages", where)
    return WirePipeline(
        name=_check_name(name, f"{where}.name"),
        properties=_properties(node, "properties", where),
        custom_properties=_properties(node, "custom_properties", where),
        stages=tuple(_parse_stage(item, f"{where}.stages[{i}]") for i, item in enumerate(stages)),
        type=_type_name(node.get("type") or PIPELINE_TYPE, f"{where}.type"),
        create_time_since_epoch=_time(node, "create_time_since_epoch", where),
        last_update_time_since_epoch=_time(node, "last_update_time_since_epoch", where),
        id=_optional_id(node, where),
    )


def _parse_stage(obj: Any, where: str) -> WireStage:
    node = _object(obj, where)
    name = _required_string(node, "name", where)
    executions = _list(node, "executions", where)
    return WireStage(
        name=_check_name(name, f"{where}.name"),
        properties=_properties(node, "properties", where),
        custom_properties=_properties(node, "custom_properties", where),
        executions=tuple(_parse_execution(item, f"{where}.executions[{i}]") for i, item in enumerate(executions)),
        type=_type_name(node.get("type") or STAGE_TYPE, f"{where}.type"),
        create_time_since_epoch=_time(node, "create_time_since_epoch", where),
        last_update_time_since_epoch=_time(node, "last_update_time_since_epoch", where),
        id=_optional_id(node, where),
    )


def _parse_execution(obj: Any, where: str) -> WireExecution:
    node = _object(obj, where)
    properties = _properties(node, "properties", where)
    execution_uuid = properties.get(EXECUTION_UUID)
    if not isinstance(execution_uuid, str) or not execution_uuid.strip():
        raise WireError(
            f"{where} has no {EXECUTION_UUID} property: every execution needs a non-empty {EXECUTION_UUID} "
            "string, its identity across sites",
            422,
        )
    _check_name(execution_uuid, f"{where}.properties.{EXECUTION_UUID}")
    name = node.get("name") or ""
    if not isinstance(name, str):
        raise WireError(f"{where}.name must be a string, not {_json_kind(name)}")
    state = node.get("last_known_state")
    if state is not None and state not in EXECUTION_STATES:
        raise WireError(f"{where}.last_known_state {state!r} is not an MLMD execution state {EXECUTION_STATES}")
    events = _list(node, "events", where)
    return WireExecution(
        type=_type_name(node.get("type"), f"{where}.type"),
        name=_check_name(name, f"{where}.name"),
        properties=properties,
        custom_properties=_properties(node, "custom_properties", where),
        events=tuple(_parse_event(item, f"{where}.events[{i}]") for i, item in enumerate(events)),
        create_time_since_epoch=_time(node, "create_time_since_epoch", where),
        last_update_time_since_epoch=_time(node, "last_update_time_since_epoch", where),
        last_known_state=state,
        id=_optional_id(node, where),
    )


def _parse_event(obj: Any, where: str) -> WireEvent:
    node = _object(obj, where)
    event_type = node.get("type")
    if isinstance(event_type, bool) or event_type not in _EVENT_TYPES:
        raise WireError(
            f"{where}.type {event_type!r} is not an MLMD event type: send {EVENT_INPUT} (INPUT) or "
            f"{EVENT_OUTPUT} (OUTPUT)"
        )
    artifact = node.get("artifact")
    if artifact is None:
        raise WireError(f"{where} has no artifact: every event needs the artifact it links")
    return WireEvent(type=event_type, artifact=_parse_artifact(artifact, f"{where}.artifact"))


def _parse_artifact(obj: Any, where: str) -> WireArtifact:
    node = _object(obj, where)
    uri = _required_string(node, "uri", where)
    name = node.get("name") or ""
    if not isinstance(name, str):
        raise WireError(f"{where}.name must be a string, not {_json_kind(name)}")
    state = node.get("state")
    if state is not None and state not in ARTIFACT_STATES:
        raise WireError(f"{where}.state {state!r} is not an MLMD artifact state {ARTIFACT_STATES}")
    type_name = _type_name(node.get("type"), f"{where}.type")
    return WireArtifact(
        type=type_name,
        name=_check_name(name, f"{where}.name"),
        uri=uri,
        properties=_properties(node, "properties", where),
        custom_properties=_properties(node, "custom_properties", where),
        create_time_since_epoch=_time(node, "create_time_since_epoch", where),
        last_update_time_since_epoch=_time(node, "last_update_time_since_epoch", where),
        id=_optional_id(node, where),
        state=state,
    )


# ---------------------------------------------------------------------------------------------------------
# Field checks


def _object(obj: Any, where: str, status: int = 422) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise WireError(f"{where} must be a JSON object, not {_json_kind(obj)}", status)
    return obj


def _list(node: Mapping[str, Any], key: str, where: str) -> list:
    value = node.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise WireError(f"{where}.{key} must be a list, not {_json_kind(value)}")
    return value


def _required_string(node: Mapping[str, Any], key: str, where: str) -> str:
    value = node.get(key)
    if not isinstance(value, str) or not value:
        raise WireError(f"{where}.{key} is missing or not a non-empty string ({value!r})")
    return value


def _type_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise WireError(f"{where} {value!r} is not a valid MLMD type name: send a non-empty string")
    if value != value.strip():
        raise WireError(f"{where} {value!r} is not a valid MLMD type name: remove the surrounding spaces")
    return _check_name(value, where)


def _check_name(value: str, where: str) -> str:
    if len(value) > MAX_NAME_LENGTH:
        raise WireError(
            f"{where} is {len(value)} characters long, over MLMD's limit of {MAX_NAME_LENGTH}: shorten it"
        )
    if "\x00" in value:
        raise WireError(f"{where} contains a NUL character, which MLMD cannot store")
    return value


def _properties(node: Mapping[str, Any], key: str, where: str) -> dict[str, PropertyValue]:
    value = node.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise WireError(f"{where}.{key} must be a JSON object, not {_json_kind(value)}")
    checked: dict[str, PropertyValue] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not name:
            raise WireError(f"{where}.{key} has an empty property name")
        checked[name] = _property_value(item, f"{where}.{key}.{name}")
    return checked


def _property_value(value: Any, where: str) -> PropertyValue:
    if isinstance(value, bool | str):
        if isinstance(value, str) and "\x00" in value:
            raise WireError(f"{where} contains a NUL character, which MLMD cannot store")
        return value
    if isinstance(value, int):
        if abs(value) > _MAX_INT:
            raise WireError(f"{where} {value} does not fit a 64-bit integer")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise WireError(f"{where} {value!r} is not a finite number")
        return value
    raise WireError(f"{where} must be a string, number or boolean, not {_json_kind(value)}")


def _time(node: Mapping[str, Any], key: str, where: str) -> int:
    value = node.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or value > _MAX_INT:
        raise WireError(f"{where}.{key} must be milliseconds since the epoch as a number, not {value!r}")
    return int(value)


def _optional_id(node: Mapping[str, Any], where: str) -> int | None:
    value = node.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"{where}.id must be an integer, not {_json_kind(value)}")
    return value


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__
