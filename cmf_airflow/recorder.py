"""The CMF core: the one place that writes CMF's data model into an MLMD store.

A task try becomes an execution whose type is its stage (``<dag_id>/<task_id>``) and whose name is its
``Execution_uuid``, associated with the stage context, which is a child of the pipeline (DAG) context.
Inputs and outputs are artifacts named ``<path>:<md5>`` with ``uri`` = md5, linked by INPUT and OUTPUT
events and attributed to the stage context. Names and properties follow HPE CMF, so CMF tools read the store.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ml_metadata import errors as mlmd_errors
from ml_metadata.proto import metadata_store_pb2 as mlmd

from cmf_airflow.model import ArtifactRecord, EventKind, GitInfo, HashState, TaskOutcome, TaskRun

if TYPE_CHECKING:
    from ml_metadata.metadata_store import MetadataStore

logger = logging.getLogger(__name__)

PIPELINE_CONTEXT_TYPE = "Parent_Context"
STAGE_CONTEXT_TYPE = "Pipeline_Stage"
# Not a CMF type: it keeps the generated site id inside the store, so that the id lives as long as the store.
SITE_CONTEXT_TYPE = "cmf_airflow_Site"
DATASET_TYPE = "Dataset"

_STRING = mlmd.STRING
_INT = mlmd.INT

_EXECUTION_PROPERTIES = {
    "Context_Type": _STRING,
    "Execution_type_name": _STRING,
    "Context_ID": _INT,
    "Pipeline_id": _INT,
    "Pipeline_Type": _STRING,
    "Execution": _STRING,
    "Git_Repo": _STRING,
    "Git_Start_Commit": _STRING,
    "Git_End_Commit": _STRING,
    "Execution_uuid": _STRING,
}
_ARTIFACT_PROPERTIES = {"git_repo": _STRING, "Commit": _STRING, "url": _STRING}

_EVENT_TYPES = {EventKind.INPUT: mlmd.Event.INPUT, EventKind.OUTPUT: mlmd.Event.OUTPUT}
# Airflow's final task states as MLMD execution states; any other end (failed, up_for_retry) is FAILED.
_FINAL_STATES = {"success": mlmd.Execution.COMPLETE, "skipped": mlmd.Execution.CANCELED}


class Recorder:
    """Writes task tries and their artifacts into one MLMD store, registering each type once."""

    def __init__(self, store: MetadataStore) -> None:
        self._store = store
        self._type_ids: dict[tuple[str, str], int] = {}
        # Objects this recorder wrote or read, by their MLMD identity. Contexts and artifacts are never
        # deleted and an execution belongs to one task try, which runs in one process, so the copies stay
        # valid and spare the store a read per hook.
        self._contexts: dict[tuple[str, str], mlmd.Context] = {}
        self._linked_stages: set[int] = set()
        self._artifacts: dict[tuple[str, str], mlmd.Artifact] = {}
        self._executions: dict[str, mlmd.Execution] = {}
        self._events: dict[int, set[tuple[int, int]]] = {}

    @property
    def store(self) -> MetadataStore:
        """The MLMD store this recorder writes."""
        return self._store

    def site_id(self) -> str:
        """Return the site id kept in the store, generating and storing one on first use.

        Callers that may race with another process hold the store's write lock around this call.
        """
        existing = self._store.get_contexts_by_type(SITE_CONTEXT_TYPE)
        if existing:
            return min(existing, key=lambda context: context.id).name
        type_id = self._context_type(SITE_CONTEXT_TYPE, {})
        site = uuid.uuid4().hex[:12]
        self._store.put_contexts([mlmd.Context(type_id=type_id, name=site)])
        logger.info("generated site id %s for this CMF store", site)
        return site

    def record_start(
        self, run: TaskRun, inputs: Sequence[ArtifactRecord], git: GitInfo | None
    ) -> mlmd.Execution:
        """Record a task try that started running, with its inputs."""
        facts = {"airflow_state": "running"}
        if run.start_time is not None:
            facts["start_time"] = run.start_time.isoformat()
        return self._write(run, git, mlmd.Execution.RUNNING, facts, [(EventKind.INPUT, a) for a in inputs])

    def record_end(
        self,
        run: TaskRun,
        outcome: TaskOutcome,
        outputs: Sequence[ArtifactRecord],
        git: GitInfo | None,
        inputs: Sequence[ArtifactRecord] = (),
    ) -> mlmd.Execution:
        """Record how a task try ended, with its outputs; creates the execution if its start went unrecorded."""
        facts: dict[str, Any] = {"airflow_state": outcome.state, "end_time": outcome.end_time.isoformat()}
        if run.start_time is not None:
            facts["start_time"] = run.start_time.isoformat()
            facts["duration_s"] = round(_seconds_between(run.start_time, outcome.end_time), 6)
        if outcome.error:
            facts["error"] = outcome.error
        state = _FINAL_STATES.get(outcome.state, mlmd.Execution.FAILED)
        events = [(EventKind.INPUT, a) for a in inputs] + [(EventKind.OUTPUT, a) for a in outputs]
        return self._write(run, git, state, facts, events)

    def _write(
        self,
        run: TaskRun,
        git: GitInfo | None,
        state: int,
        facts: dict[str, Any],
        events: Iterable[tuple[EventKind, ArtifactRecord]],
    ) -> mlmd.Execution:
        pipeline = self._pipeline_context(run.dag_id)
        stage = self._stage_context(pipeline, run.stage_name)
        execution = self._execution(run, pipeline, stage, git)
        execution.last_known_state = state
        _set_custom(execution, facts)

        known_events = self._known_events(execution)

        artifact_and_events = []
        artifacts_in_call: dict[tuple[str, str], mlmd.Artifact] = {}
        for kind, record in dict.fromkeys(events):
            key = (record.type_name, record.name)
            event_type = _EVENT_TYPES[kind]
            artifact = artifacts_in_call.get(key)
            if artifact is None:
                artifact = self._artifact(record, git)
                artifacts_in_call[key] = artifact
            elif not artifact.HasField("id"):
                # The same new artifact is both input and output: MLMD would insert it twice in one call.
                [artifact.id] = self._store.put_artifacts([artifact])
            if artifact.HasField("id"):
                if (artifact.id, event_type) in known_events:
                    continue
                known_events.add((artifact.id, event_type))
            artifact_and_events.append((artifact, mlmd.Event(type=event_type)))

        execution_id, artifact_ids, _ = self._store.put_execution(
            execution, artifact_and_events, [pipeline, stage], reuse_context_if_already_exist=True
        )
        execution.id = execution_id
        for (artifact, event), artifact_id in zip(artifact_and_events, artifact_ids):
            artifact.id = artifact_id
            known_events.add((artifact_id, event.type))
        self._artifacts.update(artifacts_in_call)
        self._executions[execution.name] = execution
        self._events[execution_id] = known_events
        return execution

    def _known_events(self, execution: mlmd.Execution) -> set[tuple[int, int]]:
        if not execution.HasField("id"):
            return set()
        known = self._events.get(execution.id)
        if known is None:
            events = self._store.get_events_by_execution_ids([execution.id])
            known = {(event.artifact_id, event.type) for event in events}
        return set(known)

    def _pipeline_context(self, dag_id: str) -> mlmd.Context:
        type_id = self._context_type(PIPELINE_CONTEXT_TYPE, {"Pipeline": _STRING})
        return self._context(type_id, PIPELINE_CONTEXT_TYPE, dag_id, {"Pipeline": dag_id})

    def _stage_context(self, pipeline: mlmd.Context, stage_name: str) -> mlmd.Context:
        type_id = self._context_type(STAGE_CONTEXT_TYPE, {"Pipeline_Stage": _STRING})
        stage = self._context(type_id, STAGE_CONTEXT_TYPE, stage_name, {"Pipeline_Stage": stage_name})
        if stage.id in self._linked_stages:
            return stage
        parents = self._store.get_parent_contexts_by_context(stage.id)
        if not any(parent.id == pipeline.id for parent in parents):
            link = mlmd.ParentContext(child_id=stage.id, parent_id=pipeline.id)
            try:
                self._store.put_parent_contexts([link])
            except mlmd_errors.AlreadyExistsError:
                pass  # another writer linked them first
        self._linked_stages.add(stage.id)
        return stage

    def _context(self, type_id: int, type_name: str, name: str, properties: dict[str, Any]) -> mlmd.Context:
        key = (type_name, name)
        context = self._contexts.get(key) or self._store.get_context_by_type_and_name(type_name, name)
        if context is None:
            context = mlmd.Context(type_id=type_id, name=name)
            _set_properties(context, properties)
            try:
                [context.id] = self._store.put_contexts([context])
            except mlmd_errors.AlreadyExistsError:
                context = self._store.get_context_by_type_and_name(type_name, name)
        self._contexts[key] = context
        return context

    def _execution(
        self, run: TaskRun, pipeline: mlmd.Context, stage: mlmd.Context, git: GitInfo | None
    ) -> mlmd.Execution:
        type_id = self._execution_type(run.stage_name)
        execution_uuid = run.execution_uuid
        execution = self._executions.get(execution_uuid)
        if execution is None:
            execution = self._store.get_execution_by_type_and_name(run.stage_name, execution_uuid)
        if execution is None:
            execution = mlmd.Execution(type_id=type_id, name=execution_uuid)

        _set_properties(
            execution,
            {
                "Context_Type": run.stage_name,
                "Execution_type_name": run.stage_name,
                "Context_ID": stage.id,
                "Pipeline_id": pipeline.id,
                "Pipeline_Type": run.dag_id,
                "Execution": f"{run.operator} {run.task_id}",
                "Execution_uuid": execution_uuid,
            },
        )
        if git is not None:
            _set_properties(execution, {"Git_Repo": git.remote_url, "Git_End_Commit": git.commit})
            if not execution.properties["Git_Start_Commit"].string_value:
                _set_properties(execution, {"Git_Start_Commit": git.commit})
            _set_custom(execution, {"git_dirty": git.dirty})

        _set_custom(
            execution,
            {
                "airflow_run_id": run.run_id,
                "airflow_try_number": run.try_number,
                "airflow_map_index": run.map_index,
                "airflow_operator": run.operator,
                "hostname": run.hostname,
                "airflow_version": run.airflow_version,
                "site": run.site,
            },
        )
        if run.params:
            _set_custom(execution, {"params": json.dumps(run.params, sort_keys=True, default=str)})
        return execution

    def _artifact(self, record: ArtifactRecord, git: GitInfo | None) -> mlmd.Artifact:
        type_id = self._artifact_type(record.type_name)
        existing = self._artifacts.get((record.type_name, record.name))
        if existing is None:
            existing = self._store.get_artifact_by_type_and_name(record.type_name, record.name)
        if existing is not None:
            return existing

        artifact = mlmd.Artifact(type_id=type_id, name=record.name, uri=record.md5 or record.uri)
        artifact.state = mlmd.Artifact.LIVE if record.hash_state is HashState.HASHED else mlmd.Artifact.UNKNOWN
        _set_properties(
            artifact,
            {"git_repo": git.remote_url if git else "", "Commit": record.md5 or "", "url": record.uri},
        )
        custom: dict[str, Any] = {"hash_state": record.hash_state.value}
        if record.size is not None:
            custom["size"] = record.size
        if record.file_count is not None:
            custom["file_count"] = record.file_count
        if record.reason:
            custom["reason"] = record.reason
        _set_custom(artifact, custom)
        return artifact

    def _context_type(self, name: str, properties: dict[str, int]) -> int:
        return self._registered("context", name, properties, self._store.put_context_type, mlmd.ContextType)

    def _execution_type(self, name: str) -> int:
        return self._registered(
            "execution", name, _EXECUTION_PROPERTIES, self._store.put_execution_type, mlmd.ExecutionType
        )

    def _artifact_type(self, name: str) -> int:
        return self._registered(
            "artifact", name, _ARTIFACT_PROPERTIES, self._store.put_artifact_type, mlmd.ArtifactType
        )

    def _registered(self, kind: str, name: str, properties: dict[str, int], put: Any, proto: Any) -> int:
        key = (kind, name)
        type_id = self._type_ids.get(key)
        if type_id is None:
            message = proto(name=name)
            for property_name, value_type in properties.items():
                message.properties[property_name] = value_type
            type_id = put(message, can_add_fields=True)
            self._type_ids[key] = type_id
        return type_id


def _set_properties(message: Any, values: dict[str, Any]) -> None:
    for key, value in values.items():
        _assign(message.properties[key], value)


def _set_custom(message: Any, values: dict[str, Any]) -> None:
    for key, value in values.items():
        _assign(message.custom_properties[key], value)


def _assign(target: mlmd.Value, value: Any) -> None:
    # bool before int: a bool is an int in Python, but MLMD keeps it as bool_value.
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    else:
        target.string_value = str(value)


def _seconds_between(start: datetime, end: datetime) -> float:
    if (start.tzinfo is None) != (end.tzinfo is None):
        start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)
    return (end - start).total_seconds()
