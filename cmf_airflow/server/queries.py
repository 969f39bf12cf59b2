"""Reading the server's MLMD store: CMF documents for pull, and pages of pipelines, executions and artifacts.

Every read is batched: a document costs one call per stage for its executions, then one call for all their
events and one for all their artifacts, whatever the number of executions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ml_metadata.proto import metadata_store_pb2 as mlmd

from cmf_airflow.documents import TypeNames, WireConverter, properties_of
from cmf_airflow.wire import EXECUTION_UUID, PIPELINE_TYPE, WireDocument

if TYPE_CHECKING:
    from ml_metadata.metadata_store import MetadataStore


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
    converter = WireConverter(store, properties_of, types)
    # A pull sends each execution's events ordered by artifact id, then event type.
    ordered = sorted(events, key=lambda event: (event.artifact_id, event.type))
    events_by_execution = converter.events_by_execution(ordered)

    stages = []
    for stage, executions in stage_executions:
        if filtering and not executions:
            continue
        wire_executions = [converter.execution(item, events_by_execution.get(item.id, ())) for item in executions]
        stages.append(converter.stage(stage, wire_executions))
    return WireDocument((converter.pipeline(pipeline, stages),))


def _has_uuid(execution: mlmd.Execution, exec_uuid: str) -> bool:
    # A CMF client that reran an execution keeps several uuids in the property, separated by commas.
    if execution.external_id == exec_uuid:
        return True
    return exec_uuid in execution.properties[EXECUTION_UUID].string_value.split(",")


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
