"""The CMF core: the one place that writes CMF's data model into an MLMD store.

A task try becomes an execution whose type is its stage (``<dag_id>/<task_id>``) and whose name is its
``Execution_uuid``, associated with the stage context, which is a child of the pipeline (DAG) context.
Inputs and outputs are artifacts named ``<path>:<md5>`` with ``uri`` = md5, linked by INPUT and OUTPUT
events and attributed to the stage context. Names and properties follow HPE CMF, so CMF tools read the store.

Identity: an execution's MLMD external id is its ``Execution_uuid`` and an artifact's is ``<type>:<uri>``
(see cmf_airflow.model), and the recorder finds existing objects by those ids. An artifact is its content,
so the same bytes logged under two paths, or by two tasks, are one artifact with one event per use.

Concurrent writers: MLMD keeps external ids, context names and events (artifact, execution, direction)
unique, and types are registered with an external id too. So when two processes create the same object at
once, one of them gets an error, drops what it read and writes again, and then finds the other's object.
Writing a record again never adds an event twice, because the events of the execution are read again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ml_metadata import errors as mlmd_errors
from ml_metadata.proto import metadata_store_pb2 as mlmd

from cmf_airflow.model import (
    EXECUTION_ID_PLACEHOLDER,
    ArtifactRecord,
    EventKind,
    GitInfo,
    HashState,
    RecordKind,
    TaskOutcome,
    TaskRecord,
    TaskRun,
    execution_external_id,
)
from cmf_airflow.store import retry_on_contention

if TYPE_CHECKING:
    from ml_metadata.metadata_store import MetadataStore

logger = logging.getLogger(__name__)

PIPELINE_CONTEXT_TYPE = "Parent_Context"
STAGE_CONTEXT_TYPE = "Pipeline_Stage"
# Not a CMF type: it keeps the generated site id inside the store, so that the id lives as long as the store.
SITE_CONTEXT_TYPE = "cmf_airflow_Site"
# The external id of the site context: unique, so that two workers that open a new store at once agree.
SITE_CONTEXT_EXTERNAL_ID = "cmf_airflow:site"
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
# The properties CMF declares on its artifact types beyond the common three.
_TYPE_PROPERTIES = {
    "Model": {"model_framework": _STRING, "model_type": _STRING, "model_name": _STRING},
    "Metrics": {"metrics_name": _STRING},
    "Step_Metrics": {"metrics_name": _STRING},
}

_EVENT_TYPES = {EventKind.INPUT: mlmd.Event.INPUT, EventKind.OUTPUT: mlmd.Event.OUTPUT}
# Airflow's final task states as MLMD execution states; any other end (failed, up_for_retry) is FAILED.
_FINAL_STATES = {"success": mlmd.Execution.COMPLETE, "skipped": mlmd.Execution.CANCELED}
# The state a start record requests: RUNNING for a new execution, no change for one that exists.
_RUNNING_IF_NEW = -1


class Recorder:
    """Writes task tries and their artifacts into one MLMD store, registering each type once."""

    def __init__(self, store: MetadataStore, *, write_timeout: float = 5.0, location: str = "the store") -> None:
        self._store = store
        self._write_timeout = write_timeout
        self._location = location
        self._type_ids: dict[tuple[str, str], int] = {}
        # Objects this recorder wrote or read, by their MLMD identity. Contexts and artifacts are never
        # deleted and an execution belongs to one task try, which runs in one process, so the copies stay
        # valid and spare the store a read per hook.
        self._contexts: dict[tuple[str, str], mlmd.Context] = {}
        self._linked_stages: set[int] = set()
        self._artifacts: dict[str, mlmd.Artifact] = {}
        self._executions: dict[str, mlmd.Execution] = {}
        self._events: dict[int, set[tuple[int, int]]] = {}

    @property
    def store(self) -> MetadataStore:
        """The MLMD store this recorder writes."""
        return self._store

    def site_id(self) -> str:
        """Return the site id kept in the store, generating and storing one on first use.

        Two processes that call this on a new store at once get the same id: the site context has a fixed
        external id, so the second insert fails and that process reads the first one's id.
        """
        return retry_on_contention(self._site_id, timeout=self._write_timeout, path=self._location,
                                   on_retry=self._forget_types)

    def _site_id(self) -> str:
        existing = _by_external_ids(self._store.get_contexts_by_external_ids, [SITE_CONTEXT_EXTERNAL_ID])
        if existing:
            return existing[0].name
        # Stores written by earlier versions keep the id in a context without external id.
        older = self._store.get_contexts_by_type(SITE_CONTEXT_TYPE)
        if older:
            return min(older, key=lambda context: context.id).name
        type_id = self._context_type(SITE_CONTEXT_TYPE, {})
        site = uuid.uuid4().hex[:12]
        self._store.put_contexts([mlmd.Context(type_id=type_id, name=site, external_id=SITE_CONTEXT_EXTERNAL_ID)])
        logger.info("generated site id %s for this CMF store", site)
        return site

    def apply(self, record: TaskRecord) -> mlmd.Execution:
        """Write one ``TaskRecord``, as its listener hook or API call would have written it.

        ``record.run.site`` must be set. The names of logged artifacts that contain the execution id
        placeholder get the execution's id.
        """
        if not record.run.site:
            raise ValueError(f"the record of {record.run.stage_name} has no site id: fill it in before writing")
        if record.kind is RecordKind.START:
            return self.record_start(record.run, record.artifacts(EventKind.INPUT), record.git)
        if record.kind is RecordKind.END:
            assert record.outcome is not None
            return self.record_end(
                record.run, record.outcome, record.artifacts(EventKind.OUTPUT), record.git,
                record.artifacts(EventKind.INPUT),
            )
        events = list(record.events)
        if any(EXECUTION_ID_PLACEHOLDER in (artifact.explicit_name or "") for _, artifact in events):
            execution_id = self.record_logged(record.run, [], record.git).id
            events = [(kind, _with_execution_id(artifact, execution_id)) for kind, artifact in events]
        return self.record_logged(record.run, events, record.git, dict(record.execution_properties) or None)

    def record_start(
        self, run: TaskRun, inputs: Sequence[ArtifactRecord], git: GitInfo | None
    ) -> mlmd.Execution:
        """Record a task try that started running, with its inputs.

        A try whose end is already recorded keeps its final state: a start replayed from the spool after
        its end was written must not turn the execution back to RUNNING.
        """
        return self._write(run, git, _RUNNING_IF_NEW, _start_facts(run), [(EventKind.INPUT, a) for a in inputs])

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

    def record_logged(
        self,
        run: TaskRun,
        events: Sequence[tuple[EventKind, ArtifactRecord]],
        git: GitInfo | None,
        execution_properties: dict[str, Any] | None = None,
    ) -> mlmd.Execution:
        """Add artifacts and custom properties that a running task logs to the execution of its try.

        The execution keeps its state. When no hook recorded the try's start, the execution is created here
        as RUNNING, and the listener's end hook completes the same execution later.
        """
        facts = dict(execution_properties or {})
        state = None
        if self.find_execution(run) is None:
            facts = {**_start_facts(run), **facts}
            state = mlmd.Execution.RUNNING
        return self._write(run, git, state, facts, events)

    def find_execution(self, run: TaskRun) -> mlmd.Execution | None:
        """Return the execution of a task try, or None when no writer has recorded it yet."""
        execution_uuid = run.execution_uuid
        execution = self._executions.get(execution_uuid)
        if execution is None:
            external_ids = [execution_external_id(execution_uuid)]
            found = _by_external_ids(self._store.get_executions_by_external_ids, external_ids)
            if found:
                execution = found[0]
                self._executions[execution_uuid] = execution
        return execution

    def artifact(self, external_id: str) -> mlmd.Artifact:
        """Return an artifact that this recorder wrote or read, by its external id."""
        return self._artifacts[external_id]

    def _write(
        self,
        run: TaskRun,
        git: GitInfo | None,
        state: int | None,
        facts: dict[str, Any],
        events: Iterable[tuple[EventKind, ArtifactRecord]],
    ) -> mlmd.Execution:
        event_list = list(events)
        return retry_on_contention(
            lambda: self._write_once(run, git, state, dict(facts), event_list),
            timeout=self._write_timeout,
            path=self._location,
            on_retry=lambda: self._forget(run),
        )

    def _forget(self, run: TaskRun) -> None:
        """Drop what this recorder read about the try and its artifacts, after a write that conflicted."""
        execution = self._executions.pop(run.execution_uuid, None)
        if execution is not None and execution.HasField("id"):
            self._events.pop(execution.id, None)
        self._artifacts = {key: artifact for key, artifact in self._artifacts.items() if artifact.HasField("id")}
        self._contexts.clear()
        self._linked_stages.clear()
        self._forget_types()

    def _forget_types(self) -> None:
        self._type_ids.clear()

    def _write_once(
        self,
        run: TaskRun,
        git: GitInfo | None,
        state: int | None,
        facts: dict[str, Any],
        events: list[tuple[EventKind, ArtifactRecord]],
    ) -> mlmd.Execution:
        pipeline = self._pipeline_context(run.dag_id)
        stage = self._stage_context(pipeline, run.stage_name)
        existing = self.find_execution(run)
        if state == _RUNNING_IF_NEW:
            # A start written after the try's end (replayed from the spool) leaves the state to the end.
            state = mlmd.Execution.RUNNING if existing is None else None
            if existing is not None:
                facts.pop("airflow_state", None)
        if existing is not None:
            return self._update(run, existing, pipeline, stage, git, state, facts, events)
        execution = self._new_execution(run, pipeline, stage, git)
        if state is not None:
            execution.last_known_state = state
        _set_custom(execution, facts)

        known_events = self._known_events(execution)
        artifact_and_events = self._new_events(events, known_events, git)

        contexts = [pipeline, stage]
        try:
            execution_id, artifact_ids, _ = self._store.put_execution(
                execution, artifact_and_events, contexts, reuse_context_if_already_exist=True
            )
        except mlmd_errors.AlreadyExistsError:
            if not self._adopt_by_name(execution, run.stage_name, [artifact for artifact, _ in artifact_and_events]):
                raise  # another writer created one of the objects: retry_on_contention reads it and writes again
            # A store written before external ids were set: its objects are adopted by name.
            execution_id, artifact_ids, _ = self._store.put_execution(
                execution, artifact_and_events, contexts, reuse_context_if_already_exist=True
            )
        execution.id = execution_id
        for (artifact, event), artifact_id in zip(artifact_and_events, artifact_ids):
            artifact.id = artifact_id
            known_events.add((artifact_id, event.type))
            self._artifacts[artifact.external_id] = artifact
        self._executions[run.execution_uuid] = execution
        self._events[execution_id] = known_events
        return execution

    def _update(
        self,
        run: TaskRun,
        existing: mlmd.Execution,
        pipeline: mlmd.Context,
        stage: mlmd.Context,
        git: GitInfo | None,
        state: int | None,
        facts: dict[str, Any],
        events: list[tuple[EventKind, ArtifactRecord]],
    ) -> mlmd.Execution:
        """Add events and properties to an execution that exists, changing only the fields this write sets.

        Another process may write the same execution at the same moment: the end hook of the try while a
        replay writes its start, for instance. MLMD's full update would put back the state and properties
        of the copy read before, and undo the other write. A field-mask update touches only what is named.
        """
        known_events = self._known_events(existing)
        artifact_and_events = self._new_events(events, known_events, git)
        new_artifacts = [artifact for artifact, _ in artifact_and_events if not artifact.HasField("id")]
        if new_artifacts:
            for artifact, artifact_id in zip(new_artifacts, self._store.put_artifacts(new_artifacts)):
                artifact.id = artifact_id
        if artifact_and_events:
            attributions = [mlmd.Attribution(artifact_id=artifact.id, context_id=context.id)
                            for artifact, _ in artifact_and_events for context in (pipeline, stage)]
            self._store.put_attributions_and_associations(attributions, [])
            self._store.put_events([mlmd.Event(artifact_id=artifact.id, execution_id=existing.id, type=event.type)
                                    for artifact, event in artifact_and_events])

        patch = mlmd.Execution(id=existing.id, type_id=existing.type_id)
        start_commit = existing.properties.get("Git_Start_Commit")
        if start_commit is not None and start_commit.string_value:
            patch.properties["Git_Start_Commit"].CopyFrom(start_commit)  # so that _describe keeps it
        patch = self._describe(patch, run, pipeline, stage, git)
        _set_custom(patch, facts)
        mask = [f"properties.{name}" for name in patch.properties]
        mask += [f"custom_properties.{name}" for name in patch.custom_properties]
        if state is not None:
            patch.last_known_state = state
            mask.append("last_known_state")
        self._store.put_executions([patch], field_mask_paths=mask)

        [execution] = self._store.get_executions_by_id([existing.id])
        for artifact, event in artifact_and_events:
            known_events.add((artifact.id, event.type))
            self._artifacts[artifact.external_id] = artifact
        self._executions[run.execution_uuid] = execution
        self._events[execution.id] = known_events
        return execution

    def event_counts(self, execution: mlmd.Execution) -> tuple[int, int]:
        """Return how many inputs and outputs the execution has, counting what the task logged itself."""
        known = self._known_events(execution)
        inputs = sum(1 for _, event_type in known if event_type == mlmd.Event.INPUT)
        outputs = sum(1 for _, event_type in known if event_type == mlmd.Event.OUTPUT)
        return inputs, outputs

    def _new_events(
        self,
        events: list[tuple[EventKind, ArtifactRecord]],
        known_events: set[tuple[int, int]],
        git: GitInfo | None,
    ) -> list[tuple[mlmd.Artifact, mlmd.Event]]:
        artifacts = self._artifacts_for([record for _, record in events], git)
        result: list[tuple[mlmd.Artifact, mlmd.Event]] = []
        added: set[tuple[str, int]] = set()
        for kind, record in events:
            artifact = artifacts[record.external_id]
            event_type = _EVENT_TYPES[kind]
            if (record.external_id, event_type) in added:
                continue
            if artifact.HasField("id") and (artifact.id, event_type) in known_events:
                continue
            if not artifact.HasField("id") and any(other is artifact for other, _ in result):
                # The same new artifact is both input and output: MLMD would insert it twice in one call.
                [artifact.id] = self._store.put_artifacts([artifact])
            added.add((record.external_id, event_type))
            result.append((artifact, mlmd.Event(type=event_type)))
        return result

    def _adopt_by_name(self, execution: mlmd.Execution, stage_name: str, artifacts: list[mlmd.Artifact]) -> bool:
        """Give new objects the ids of same-named objects without external id; return whether any was found."""
        adopted = False
        if not execution.HasField("id"):
            existing = self._store.get_execution_by_type_and_name(stage_name, execution.name)
            if existing is not None and not existing.external_id:
                execution.id = existing.id
                adopted = True
        type_names = {artifact_type.id: artifact_type.name for artifact_type in self._store.get_artifact_types()}
        for artifact in artifacts:
            if artifact.HasField("id"):
                continue
            existing = self._store.get_artifact_by_type_and_name(type_names[artifact.type_id], artifact.name)
            if existing is not None and not existing.external_id:
                artifact.id = existing.id
                adopted = True
        return adopted

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

    def _new_execution(
        self, run: TaskRun, pipeline: mlmd.Context, stage: mlmd.Context, git: GitInfo | None
    ) -> mlmd.Execution:
        """Build the execution of a try that the store does not have yet."""
        execution_uuid = run.execution_uuid
        execution = mlmd.Execution(
            type_id=self._execution_type(run.stage_name),
            name=execution_uuid,
            external_id=execution_external_id(execution_uuid),
        )
        return self._describe(execution, run, pipeline, stage, git)

    def _describe(
        self, execution: mlmd.Execution, run: TaskRun, pipeline: mlmd.Context, stage: mlmd.Context,
        git: GitInfo | None,
    ) -> mlmd.Execution:
        """Set on ``execution`` the properties that every write of the try carries, and return it."""
        execution_uuid = run.execution_uuid
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

    def _artifacts_for(self, records: list[ArtifactRecord], git: GitInfo | None) -> dict[str, mlmd.Artifact]:
        """Return the artifact of each record by external id: cached, found in the store in one call, or new."""
        found: dict[str, mlmd.Artifact] = {}
        missing: dict[str, ArtifactRecord] = {}
        for record in records:
            cached = self._artifacts.get(record.external_id)
            if cached is not None:
                found[record.external_id] = cached
            else:
                missing.setdefault(record.external_id, record)
        if missing:
            for artifact in _by_external_ids(self._store.get_artifacts_by_external_ids, list(missing)):
                found[artifact.external_id] = artifact
                self._artifacts[artifact.external_id] = artifact
        for external_id, record in missing.items():
            if external_id not in found:
                found[external_id] = self._new_artifact(record, git)
        return found

    def _new_artifact(self, record: ArtifactRecord, git: GitInfo | None) -> mlmd.Artifact:
        type_id = self._artifact_type(record.type_name)
        artifact = mlmd.Artifact(
            type_id=type_id, name=record.name, uri=record.artifact_uri, external_id=record.external_id
        )
        live = record.hash_state in (HashState.HASHED, HashState.NOT_A_FILE)
        artifact.state = mlmd.Artifact.LIVE if live else mlmd.Artifact.UNKNOWN
        _set_properties(
            artifact,
            {"git_repo": git.remote_url if git else "", "Commit": record.md5 or "", "url": record.uri},
        )
        _set_properties(artifact, dict(record.properties))
        custom: dict[str, Any] = {"hash_state": record.hash_state.value}
        if record.size is not None:
            custom["size"] = record.size
        if record.file_count is not None:
            custom["file_count"] = record.file_count
        if record.reason:
            custom["reason"] = record.reason
        custom.update(record.custom_properties)
        _set_custom(artifact, custom)
        return artifact

    def _context_type(self, name: str, properties: dict[str, int]) -> int:
        return self._registered("context", name, properties, self._store.put_context_type, mlmd.ContextType)

    def _execution_type(self, name: str) -> int:
        return self._registered(
            "execution", name, _EXECUTION_PROPERTIES, self._store.put_execution_type, mlmd.ExecutionType
        )

    def _artifact_type(self, name: str) -> int:
        properties = {**_ARTIFACT_PROPERTIES, **_TYPE_PROPERTIES.get(name, {})}
        return self._registered("artifact", name, properties, self._store.put_artifact_type, mlmd.ArtifactType)

    def _registered(self, kind: str, name: str, properties: dict[str, int], put: Any, proto: Any) -> int:
        key = (kind, name)
        type_id = self._type_ids.get(key)
        if type_id is None:
            # MLMD does not keep type names unique, but it keeps external ids unique: with one, two workers
            # that register a new type at once make one type, and the slower one retries and finds it.
            message = proto(name=name, external_id=_type_external_id(kind, name))
            for property_name, value_type in properties.items():
                message.properties[property_name] = value_type
            type_id = put(message, can_add_fields=True)
            self._type_ids[key] = type_id
        return type_id


def _by_external_ids(get: Any, external_ids: list[str]) -> list[Any]:
    # MLMD 1.17 raises NotFoundError, instead of returning nothing, when none of the ids exists.
    try:
        return list(get(external_ids))
    except mlmd_errors.NotFoundError:
        return []


def _type_external_id(kind: str, name: str) -> str:
    external_id = f"cmf_airflow:{kind}_type:{name}"
    if len(external_id) <= 255:  # the width of MLMD's external_id column on PostgreSQL and MySQL
        return external_id
    return f"cmf_airflow:{kind}_type:sha256:{hashlib.sha256(name.encode()).hexdigest()}"


def _with_execution_id(record: ArtifactRecord, execution_id: int) -> ArtifactRecord:
    name = record.explicit_name
    if name is None or EXECUTION_ID_PLACEHOLDER not in name:
        return record
    return dataclasses.replace(record, explicit_name=name.replace(EXECUTION_ID_PLACEHOLDER, str(execution_id)))


def _start_facts(run: TaskRun) -> dict[str, Any]:
    facts: dict[str, Any] = {"airflow_state": "running"}
    if run.start_time is not None:
        facts["start_time"] = run.start_time.isoformat()
    return facts


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
