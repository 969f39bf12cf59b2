"""Reading a local MLMD store into CMF wire documents.

Two readers share this module: ``export`` builds whole pipelines, and the push builds one document per
batch of executions of one stage. Both read events and artifacts in batched calls, one per batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ml_metadata import errors as mlmd_errors
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2 as mlmd

from cmf_airflow.documents import WireConverter, sendable_properties
from cmf_airflow.wire import EXECUTION_UUID, PIPELINE_TYPE, STAGE_TYPE, WireDocument, WireExecution

if TYPE_CHECKING:
    from ml_metadata.metadata_store import MetadataStore


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
        self._converter = WireConverter(store, sendable_properties)

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
        stage = self._converter.stage(batch.stage, self._wire_executions(batch.executions))
        return WireDocument((self._converter.pipeline(batch.pipeline, (stage,)),))

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
                if self._converter.types.of("context", stage) != STAGE_TYPE:
                    continue
                executions = sorted(self._store.get_executions_by_context(stage.id), key=lambda item: item.id)
                stages.append(self._converter.stage(stage, self._wire_executions(executions)))
            pipelines.append(self._converter.pipeline(context, stages))
        return WireDocument(tuple(pipelines))

    def _pipeline_and_stage(self, execution: mlmd.Execution) -> tuple[mlmd.Context | None, mlmd.Context | None]:
        pipeline = stage = None
        try:
            contexts = self._store.get_contexts_by_execution(execution.id)
        except mlmd_errors.NotFoundError:
            return None, None  # MLMD raises instead of returning an empty list
        for context in contexts:
            type_name = self._converter.types.of("context", context)
            if type_name == PIPELINE_TYPE and pipeline is None:
                pipeline = context
            elif type_name == STAGE_TYPE and stage is None:
                stage = context
        return pipeline, stage

    def _wire_executions(self, executions: Sequence[mlmd.Execution]) -> tuple[WireExecution, ...]:
        if not executions:
            return ()
        events = self._store.get_events_by_execution_ids([execution.id for execution in executions])
        by_execution = self._converter.events_by_execution(events)
        return tuple(self._converter.execution(item, by_execution.get(item.id, ())) for item in executions)


def export_document(store_path: str, pipelines: Sequence[str] | None = None) -> WireDocument:
    """Read the whole of ``pipelines`` (every pipeline when None) from the store at ``store_path``.

    The result is the CMF JSON document a CMF client pushes, through ``WireDocument.to_json()``. Raises
    LookupError naming a pipeline the store does not contain, and StoreError when the store cannot be read.
    """
    from cmf_airflow.sync.local import open_local_store_for_reading

    return StoreReader(open_local_store_for_reading(store_path)).pipeline_document(pipelines)
