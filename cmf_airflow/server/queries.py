"""Reading the server's MLMD store: CMF documents for pull, and pages of pipelines, executions and artifacts.

Every read is batched: a document costs one call per stage for its executions, then one call for all their
events and one for all their artifacts, whatever the number of executions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ml_metadata.proto import metadata_store_pb2 as mlmd

from cmf_airflow.wire import (
    EXECUTION_UUID,
    PIPELINE_TYPE,
    WireArtifact,
    WireDocument,
    WireEvent,
    WireExecution,
    WirePipeline,
    WireStage,
)

if TYPE_CHECKING:
    from ml_metadata.metadata_store import MetadataStore


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


def pipeline_context(store: MetadataStore, pipeline_name: str) -> mlmd.Context | None:
    """Return the pipeline context named ``pipeline_name``, or None."""
    return store.get_context_by_type_and_name(PIPELINE_TYPE, pipeline_name)


def read_document(
    store: MetadataStore,
    pipeline_name: str,
    *,
    exec_uuid: str | None = None,
    since_ms: int | None = None,
    types: TypeNames | None = None,
) -> WireDocument | None:
    """Read one pipeline as a CMF document, or return None when the store has no such pipeline.

    ``exec_uuid`` keeps only the execution with that ``Execution_uuid``. ``since_ms`` keeps only executions
    updated, or given an event, after that time (milliseconds since the epoch). Stages without a kept
    execution are left out when either filter is given.
    """
    pipeline = pipeline_context(store, pipeline_name)
    if pipeline is None:
        return None
    types = types or TypeNames(store)
    filtering = exec_uuid is not None or since_ms is not None

    stage_executions: list[tuple[mlmd.Context, list[mlmd.Execution]]] = []
    for stage in sorted(store.get_children_contexts_by_context(pipeline.id), key=lambda context: context.id):
        executions = store.get_executions_by_context(stage.id)
        if exec_uuid is not None:
            executions = [item for item in executions if _has_uuid(item, exec_uuid)]
        stage_executions.append((stage, sorted(executions, key=lambda execution: execution.id)))

    execution_ids = [execution.id for _, executions in stage_executions for execution in executions]
    events = store.get_events_by_execution_ids(execution_ids) if execution_ids else []
    if since_ms is not None:
        changed = {event.execution_id for event in events if event.milliseconds_since_epoch > since_ms}
        stage_executions = [
            (stage, [item for item in executions
                     if item.last_update_time_since_epoch > since_ms or item.id in changed])
            for stage, executions in stage_executions
        ]
    artifact_ids = sorted({event.artifact_id for event in events})
    artifacts = {item.id: item for item in store.get_artifacts_by_id(artifact_ids)} if artifact_ids else {}
    events_by_execution: dict[int, list[mlmd.Event]] = {}
    for event in events:
        events_by_execution.setdefault(event.execution_id, []).append(event)

    stages = []
    for stage, executions in stage_executions:
        if filtering and not executions:
            continue
        wire_executions = tuple(
            _wire_execution(item, events_by_execution.get(item.id, []), artifacts, types) for item in executions
        )
        stages.append(_wire_stage(stage, wire_executions, types))
    return WireDocument((WirePipeline(
        name=pipeline.name,
        properties=properties_of(pipeline.properties),
        custom_properties=properties_of(pipeline.custom_properties),
        stages=tuple(stages),
        type=types.name("context", pipeline.type_id) or PIPELINE_TYPE,
        create_time_since_epoch=pipeline.create_time_since_epoch,
        last_update_time_since_epoch=pipeline.last_update_time_since_epoch,
        id=pipeline.id,
    ),))


def _has_uuid(execution: mlmd.Execution, exec_uuid: str) -> bool:
    # A CMF client that reran an execution keeps several uuids in the property, separated by commas.
    if execution.external_id == exec_uuid:
        return True
    return exec_uuid in execution.properties[EXECUTION_UUID].string_value.split(",")


def _wire_stage(stage: mlmd.Context, executions: tuple[WireExecution, ...], types: TypeNames) -> WireStage:
    return WireStage(
        name=stage.name,
        properties=properties_of(stage.properties),
        custom_properties=properties_of(stage.custom_properties),
        executions=executions,
        type=types.name("context", stage.type_id),
        create_time_since_epoch=stage.create_time_since_epoch,
        last_update_time_since_epoch=stage.last_update_time_since_epoch,
        id=stage.id,
    )


def _wire_execution(
    execution: mlmd.Execution, events: Iterable[mlmd.Event], artifacts: Mapping[int, mlmd.Artifact],
    types: TypeNames,
) -> WireExecution:
    ordered = sorted(events, key=lambda event: (event.artifact_id, event.type))
    return WireExecution(
        type=types.name("execution", execution.type_id),
        name=execution.name,
        properties=properties_of(execution.properties),
        custom_properties=properties_of(execution.custom_properties),
        events=tuple(WireEvent(event.type, wire_artifact(artifacts[event.artifact_id], types))
                     for event in ordered if event.artifact_id in artifacts),
        create_time_since_epoch=execution.create_time_since_epoch,
        last_update_time_since_epoch=execution.last_update_time_since_epoch,
        last_known_state=mlmd.Execution.State.Name(execution.last_known_state),
        id=execution.id,
    )


def wire_artifact(artifact: mlmd.Artifact, types: TypeNames) -> WireArtifact:
    """Return a stored artifact as a wire artifact."""
    return WireArtifact(
        type=types.name("artifact", artifact.type_id),
        name=artifact.name,
        uri=artifact.uri,
        properties=properties_of(artifact.properties),
        custom_properties=properties_of(artifact.custom_properties),
        create_time_since_epoch=artifact.create_time_since_epoch,
        last_update_time_since_epoch=artifact.last_update_time_since_epoch,
        id=artifact.id,
        state=mlmd.Artifact.State.Name(artifact.state),
    )


# ---------------------------------------------------------------------------------------------------------
# Listings


def list_pipelines(store: MetadataStore) -> list[dict[str, Any]]:
    """Return every pipeline with its id and stage names, ordered by id."""
    pipelines = sorted(store.get_contexts_by_type(PIPELINE_TYPE), key=lambda context: context.id)
    listed = []
    for pipeline in pipelines:
        stages = sorted(store.get_children_contexts_by_context(pipeline.id), key=lambda context: context.id)
        listed.append({"id": pipeline.id, "name": pipeline.name, "stages": [stage.name for stage in stages]})
    return listed


def page_of_executions(
    store: MetadataStore, pipeline: mlmd.Context, after: int, limit: int, types: TypeNames
) -> tuple[list[dict[str, Any]], int | None]:
    """Return the pipeline's executions with id above ``after``, by id, and the cursor of the next page."""
    from ml_metadata.metadata_store.metadata_store import ListOptions, OrderByField

    options = ListOptions(limit=limit + 1, order_by=OrderByField.ID, is_asc=True,
                          filter_query=f"contexts_a.id = {pipeline.id} AND id > {after}")
    executions = store.get_executions(list_options=options)
    page = executions[:limit]
    next_after = page[-1].id if len(executions) > limit else None
    return [execution_json(item, types) for item in page], next_after


def page_of_artifacts(
    store: MetadataStore, pipeline: mlmd.Context, after: int, limit: int, types: TypeNames
) -> tuple[list[dict[str, Any]], int | None]:
    """Return the pipeline's artifacts with id above ``after``, by id, and the cursor of the next page."""
    from ml_metadata.metadata_store.metadata_store import ListOptions, OrderByField

    options = ListOptions(limit=limit + 1, order_by=OrderByField.ID, is_asc=True,
                          filter_query=f"contexts_a.id = {pipeline.id} AND id > {after}")
    artifacts = store.get_artifacts(list_options=options)
    page = artifacts[:limit]
    next_after = page[-1].id if len(artifacts) > limit else None
    return [artifact_json(item, types) for item in page], next_after


def execution_json(execution: mlmd.Execution, types: TypeNames) -> dict[str, Any]:
    """Return an execution as the JSON object the listing and lineage endpoints send."""
    return {
        "id": execution.id,
        "execution_uuid": execution.external_id or execution.properties[EXECUTION_UUID].string_value,
        "type": types.name("execution", execution.type_id),
        "name": execution.name,
        "state": mlmd.Execution.State.Name(execution.last_known_state),
        "properties": properties_of(execution.properties),
        "custom_properties": properties_of(execution.custom_properties),
        "create_time_since_epoch": execution.create_time_since_epoch,
        "last_update_time_since_epoch": execution.last_update_time_since_epoch,
    }


def artifact_json(artifact: mlmd.Artifact, types: TypeNames) -> dict[str, Any]:
    """Return an artifact as the JSON object the listing and lineage endpoints send."""
    return {
        "id": artifact.id,
        "type": types.name("artifact", artifact.type_id),
        "name": artifact.name,
        "uri": artifact.uri,
        "external_id": artifact.external_id,
        "state": mlmd.Artifact.State.Name(artifact.state),
        "properties": properties_of(artifact.properties),
        "custom_properties": properties_of(artifact.custom_properties),
        "create_time_since_epoch": artifact.create_time_since_epoch,
        "last_update_time_since_epoch": artifact.last_update_time_since_epoch,
    }
