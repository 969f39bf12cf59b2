"""Reading a local MLMD store into CMF wire documents.

Two readers share this module: ``export`` builds whole pipelines, and the push builds one document per
batch of executions of one stage. Both read events and artifacts in batched calls, one per batch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf.json_format import MessageToDict
from ml_metadata import errors as mlmd_errors
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2 as mlmd

from cmf_airflow.wire import (
    EXECUTION_UUID,
    PIPELINE_TYPE,
    STAGE_TYPE,
    WireArtifact,
    WireDocument,
    WireEvent,
    WireExecution,
    WirePipeline,
    WireStage,
)

if TYPE_CHECKING:
    from ml_metadata.metadata_store import MetadataStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StageBatch:
    """Executions of one stage of one pipeline, sent together in one push request."""

    pipeline: mlmd.Context
    stage: mlmd.Context
    executions: tuple[mlmd.Execution, ...]

    @property
    def pipeline_name(self) -> str:
        """The name of the pipeline (the DAG id)."""
        return self.pipeline.name


@dataclass(frozen=True, slots=True)
class Grouping:
    """Executions grouped into stage batches, and those that cannot travel on the wire."""

    batches: tuple[StageBatch, ...]
    unsendable: tuple[mlmd.Execution, ...]


class StoreReader:
    """Reads executions with their events, artifacts and contexts from one MLMD store."""

    def __init__(self, store: MetadataStore) -> None:
        self._store = store
        self._type_names: dict[tuple[str, int], str] = {}

    def executions_updated_after(self, since: int) -> list[mlmd.Execution]:
        """Return the executions last updated after ``since`` (ms since the epoch), through MLMD's time index."""
        options = metadata_store.ListOptions(filter_query=f"last_update_time_since_epoch > {int(since)}")
        return self._store.get_executions(list_options=options)

    def group_by_stage(self, executions: Iterable[mlmd.Execution], batch_size: int) -> Grouping:
        """Group executions by pipeline and stage context, in batches of at most ``batch_size``.

        An execution without a stage context or without ``Execution_uuid`` was not written by cmf-airflow or
        a CMF client, so no CMF server can merge it: it is returned as unsendable.
        """
        groups: dict[tuple[int, int], tuple[mlmd.Context, mlmd.Context, list[mlmd.Execution]]] = {}
        unsendable: list[mlmd.Execution] = []
        for execution in sorted(executions, key=lambda item: item.id):
            pipeline, stage = self._pipeline_and_stage(execution)
            if pipeline is None or stage is None or not execution.properties[EXECUTION_UUID].string_value:
                unsendable.append(execution)
                continue
            groups.setdefault((pipeline.id, stage.id), (pipeline, stage, []))[2].append(execution)

        batches = []
        for pipeline, stage, members in groups.values():
            for start in range(0, len(members), batch_size):
                batches.append(StageBatch(pipeline, stage, tuple(members[start : start + batch_size])))
        return Grouping(tuple(batches), tuple(unsendable))

    def batch_document(self, batch: StageBatch) -> WireDocument:
        """Build the wire document of one batch: its pipeline, its stage and its executions with their events."""
        stage = self._wire_stage(batch.stage, self._wire_executions(batch.executions))
        return WireDocument((self._wire_pipeline(batch.pipeline, (stage,)),))

    def pipeline_names(self) -> list[str]:
        """Return the names of every pipeline in the store, sorted."""
        return sorted(context.name for context in self._store.get_contexts_by_type(PIPELINE_TYPE))

    def pipeline_document(self, names: Sequence[str] | None = None) -> WireDocument:
        """Build the whole-pipeline document of ``names`` (every pipeline when None), as a CMF client exports it.

        Raises LookupError naming the pipelines that the store does not contain.
        """
        requested = list(names) if names is not None else self.pipeline_names()
        contexts = [self._store.get_context_by_type_and_name(PIPELINE_TYPE, name) for name in requested]
        missing = [name for name, context in zip(requested, contexts) if context is None]
        if missing:
            available = ", ".join(self.pipeline_names()) or "none"
            raise LookupError(f"the local store contains no pipeline {', '.join(missing)} (pipelines: {available})")

        pipelines = []
        for context in contexts:
            stages = []
            try:
                children = self._store.get_children_contexts_by_context(context.id)
            except mlmd_errors.NotFoundError:
                children = []  # a pipeline without stages
            for stage in sorted(children, key=lambda item: item.id):
                if self._type_name("context", stage) != STAGE_TYPE:
                    continue
                executions = sorted(self._store.get_executions_by_context(stage.id), key=lambda item: item.id)
                stages.append(self._wire_stage(stage, self._wire_executions(executions)))
            pipelines.append(self._wire_pipeline(context, tuple(stages)))
        return WireDocument(tuple(pipelines))

    def _pipeline_and_stage(self, execution: mlmd.Execution) -> tuple[mlmd.Context | None, mlmd.Context | None]:
        pipeline = stage = None
        try:
            contexts = self._store.get_contexts_by_execution(execution.id)
        except mlmd_errors.NotFoundError:
            return None, None  # MLMD raises instead of returning an empty list
        for context in contexts:
            type_name = self._type_name("context", context)
            if type_name == PIPELINE_TYPE and pipeline is None:
                pipeline = context
            elif type_name == STAGE_TYPE and stage is None:
                stage = context
        return pipeline, stage

    def _wire_executions(self, executions: Sequence[mlmd.Execution]) -> tuple[WireExecution, ...]:
        if not executions:
            return ()
        events = self._store.get_events_by_execution_ids([execution.id for execution in executions])
        artifact_ids = sorted({event.artifact_id for event in events})
        artifacts = {artifact.id: self._wire_artifact(artifact) for artifact in self._artifacts(artifact_ids)}
        by_execution: dict[int, list[WireEvent]] = {}
        for event in events:
            artifact = artifacts.get(event.artifact_id)
            if artifact is not None:
                by_execution.setdefault(event.execution_id, []).append(WireEvent(int(event.type), artifact))
        return tuple(
            WireExecution(
                type=self._type_name("execution", execution),
                name=execution.name,
                properties=_plain_values(execution.properties),
                custom_properties=_plain_values(execution.custom_properties),
                events=tuple(by_execution.get(execution.id, ())),
                create_time_since_epoch=execution.create_time_since_epoch,
                last_update_time_since_epoch=execution.last_update_time_since_epoch,
                last_known_state=mlmd.Execution.State.Name(execution.last_known_state),
                id=execution.id,
            )
            for execution in executions
        )

    def _artifacts(self, artifact_ids: list[int]) -> list[mlmd.Artifact]:
        return self._store.get_artifacts_by_id(artifact_ids) if artifact_ids else []

    def _wire_artifact(self, artifact: mlmd.Artifact) -> WireArtifact:
        return WireArtifact(
            type=self._type_name("artifact", artifact),
            name=artifact.name,
            uri=artifact.uri,
            properties=_plain_values(artifact.properties),
            custom_properties=_plain_values(artifact.custom_properties),
            create_time_since_epoch=artifact.create_time_since_epoch,
            last_update_time_since_epoch=artifact.last_update_time_since_epoch,
            id=artifact.id,
            state=mlmd.Artifact.State.Name(artifact.state),
        )

    def _wire_stage(self, stage: mlmd.Context, executions: tuple[WireExecution, ...]) -> WireStage:
        return WireStage(
            name=stage.name,
            properties=_plain_values(stage.properties),
            custom_properties=_plain_values(stage.custom_properties),
            executions=executions,
            create_time_since_epoch=stage.create_time_since_epoch,
            last_update_time_since_epoch=stage.last_update_time_since_epoch,
            id=stage.id,
        )

    def _wire_pipeline(self, pipeline: mlmd.Context, stages: tuple[WireStage, ...]) -> WirePipeline:
        return WirePipeline(
            name=pipeline.name,
            properties=_plain_values(pipeline.properties),
            custom_properties=_plain_values(pipeline.custom_properties),
            stages=stages,
            create_time_since_epoch=pipeline.create_time_since_epoch,
            last_update_time_since_epoch=pipeline.last_update_time_since_epoch,
            id=pipeline.id,
        )

    def _type_name(self, kind: str, node: Any) -> str:
        # MLMD 1.17 fills the ``type`` field on reads. The lookup by type id covers stores that do not.
        if node.type:
            return node.type
        key = (kind, node.type_id)
        if key not in self._type_names:
            getter = {
                "context": self._store.get_context_types_by_id,
                "execution": self._store.get_execution_types_by_id,
                "artifact": self._store.get_artifact_types_by_id,
            }[kind]
            for found in getter([node.type_id]):
                self._type_names[(kind, found.id)] = found.name
        return self._type_names.get(key, "")


def _plain_values(values: Any) -> dict[str, Any]:
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


def export_document(store_path: str, pipelines: Sequence[str] | None = None) -> WireDocument:
    """Read the whole of ``pipelines`` (every pipeline when None) from the store at ``store_path``.

    The result is the CMF JSON document a CMF client pushes, through ``WireDocument.to_json()``. Raises
    LookupError naming a pipeline the store does not contain, and StoreError when the store cannot be read.
    """
    from cmf_airflow.sync.local import open_local_store_for_reading

    return StoreReader(open_local_store_for_reading(store_path)).pipeline_document(pipelines)
