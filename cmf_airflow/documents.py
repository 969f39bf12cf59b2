"""MLMD nodes as wire nodes: the contexts, executions and artifacts of a store as ``cmf_airflow.wire`` objects.

The server (``server/queries.py``) and the sync client (``sync/reader.py``) build their CMF documents with
``WireConverter``. They send a property value that is not a scalar differently, so each passes its own property
converter: ``properties_of`` for the server and ``sendable_properties`` for the sync client.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from google.protobuf.json_format import MessageToDict
from ml_metadata.proto import metadata_store_pb2 as mlmd

from cmf_airflow.wire import PIPELINE_TYPE, WireArtifact, WireEvent, WireExecution, WirePipeline, WireStage

if TYPE_CHECKING:
    from ml_metadata.metadata_store import MetadataStore

logger = logging.getLogger(__name__)

PropertyConverter = Callable[[Mapping[str, mlmd.Value]], dict[str, Any]]


class TypeNames:
    """Type names by id for one store, read once per kind."""

    def __init__(self, store: MetadataStore) -> None:
        self._store = store
        self._names: dict[tuple[str, int], str] = {}

    def name(self, kind: str, type_id: int) -> str:
        """Return the name of the ``kind`` ("execution", "artifact" or "context") type ``type_id``."""
        key = (kind, type_id)
        if key not in self._names:
            read = {"execution": self._store.get_execution_types, "artifact": self._store.get_artifact_types,
                    "context": self._store.get_context_types}[kind]
            for stored in read():
                self._names[(kind, stored.id)] = stored.name
        return self._names.get(key, "")

    def of(self, kind: str, node: Any) -> str:
        """Return the type name of ``node``, an MLMD node of ``kind``, or "" when its type is not stored."""
        # MLMD 1.17 fills the ``type`` field on reads. The lookup by type id covers stores that do not.
        return node.type or self.name(kind, node.type_id)


def value_of(value: mlmd.Value) -> Any:
    """Return an MLMD property value as a plain JSON value (structs and protos as their text)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    return str(getattr(value, kind)) if kind else None


def properties_of(values: Mapping[str, mlmd.Value]) -> dict[str, Any]:
    """Return a node's properties as plain JSON values, leaving out unset ones."""
    plain = {key: value_of(value) for key, value in values.items()}
    return {key: value for key, value in plain.items() if value is not None}


def sendable_properties(values: Mapping[str, mlmd.Value]) -> dict[str, Any]:
    """Return a node's properties as the scalars a push sends: structs as JSON text, other kinds left out."""
    plain: dict[str, Any] = {}
    for key, value in values.items():
        kind = value.WhichOneof("value")
        if kind in ("int_value", "double_value", "string_value", "bool_value"):
            plain[key] = getattr(value, kind)
        elif kind == "struct_value":
            # The wire carries scalars only, so a structure travels as its JSON text.
            plain[key] = json.dumps(MessageToDict(value.struct_value), sort_keys=True)
        elif kind is not None:
            logger.debug("property %s of kind %s has no JSON form and is not sent", key, kind)
    return plain


class WireConverter:
    """Conversion of the nodes of one MLMD store into wire nodes, with their type names and plain properties."""

    def __init__(
        self,
        store: MetadataStore,
        properties: PropertyConverter = properties_of,
        types: TypeNames | None = None,
    ) -> None:
        self._store = store
        self._properties = properties
        self.types = types or TypeNames(store)

    def events_by_execution(self, events: Iterable[mlmd.Event]) -> dict[int, list[WireEvent]]:
        """Read the artifacts of ``events`` in one call and return the events as wire events by execution id.

        Each execution keeps its events in the order given. An event whose artifact the store does not
        contain is left out.
        """
        events = list(events)
        artifact_ids = sorted({event.artifact_id for event in events})
        stored = self._store.get_artifacts_by_id(artifact_ids) if artifact_ids else []
        artifacts = {artifact.id: self.artifact(artifact) for artifact in stored}

        by_execution: dict[int, list[WireEvent]] = {}
        for event in events:
            artifact = artifacts.get(event.artifact_id)
            if artifact is not None:
                by_execution.setdefault(event.execution_id, []).append(WireEvent(int(event.type), artifact))
        return by_execution

    def artifact(self, artifact: mlmd.Artifact) -> WireArtifact:
        """Return a stored artifact as a wire artifact."""
        return WireArtifact(
            type=self.types.of("artifact", artifact),
            uri=artifact.uri,
            state=mlmd.Artifact.State.Name(artifact.state),
            **self._node_fields(artifact),
        )

    def execution(self, execution: mlmd.Execution, events: Iterable[WireEvent]) -> WireExecution:
        """Return a stored execution with its ``events`` as a wire execution."""
        return WireExecution(
            type=self.types.of("execution", execution),
            events=tuple(events),
            last_known_state=mlmd.Execution.State.Name(execution.last_known_state),
            **self._node_fields(execution),
        )

    def stage(self, stage: mlmd.Context, executions: Iterable[WireExecution]) -> WireStage:
        """Return a stored stage context with its ``executions`` as a wire stage."""
        return WireStage(
            type=self.types.of("context", stage),
            executions=tuple(executions),
            **self._node_fields(stage),
        )

    def pipeline(self, pipeline: mlmd.Context, stages: Iterable[WireStage]) -> WirePipeline:
        """Return a stored pipeline context with its ``stages`` as a wire pipeline."""
        return WirePipeline(
            type=self.types.of("context", pipeline) or PIPELINE_TYPE,
            stages=tuple(stages),
            **self._node_fields(pipeline),
        )

    def _node_fields(self, node: mlmd.Artifact | mlmd.Execution | mlmd.Context) -> dict[str, Any]:
        # The fields that every wire node class has, whatever its kind.
        return {
            "name": node.name,
            "properties": self._properties(node.properties),
            "custom_properties": self._properties(node.custom_properties),
            "create_time_since_epoch": node.create_time_since_epoch,
            "last_update_time_since_epoch": node.last_update_time_since_epoch,
            "id": node.id,
        }
