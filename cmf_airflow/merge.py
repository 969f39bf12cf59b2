"""Idempotent merge of a CMF document into an MLMD store: the server's push and the sync client's pull.

Identity decides what is new:
- an execution is its ``Execution_uuid``, kept as the MLMD external id,
- an artifact is its content, external id ``"<type>:<uri>"``, so the same bytes sent by two sites meet in one
  artifact that carries the events of both,
- a context is its (type, name), and a stage context is a child (``ParentContext``) of its pipeline context.

Each stage is written with one ``put_lineage_subgraph`` call, which MLMD runs as one transaction and which
associates every execution, and attributes every artifact, to the pipeline and stage contexts passed. The
sync client sends one stage per request, so its push is one transaction. A document with several stages, as
an unmodified CMF client sends, becomes one transaction per stage. Each of them is idempotent, so a push cut
short by a crash is completed by sending it again. Executions, events and artifacts that the store already
contains are skipped, and an execution that changed since it was stored (RUNNING, then COMPLETE with more
output events) is updated in place and gets only its new events.

MLMD's Python API cannot run several calls in one transaction, so the contexts, the stage-to-pipeline link
and new types are written before the stage's subgraph, each idempotently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ContextManager

from ml_metadata import errors as mlmd_errors
from ml_metadata.proto import metadata_store_pb2 as mlmd

from cmf_airflow.model import artifact_external_id, execution_external_id
from cmf_airflow.wire import (
    MAX_NAME_LENGTH,
    WireArtifact,
    WireDocument,
    WireError,
    WireExecution,
    WirePipeline,
    WireStage,
)

if TYPE_CHECKING:
    from ml_metadata.metadata_store import MetadataStore

logger = logging.getLogger(__name__)

# Custom property that keeps an execution's or artifact's own name when a different object of the same type
# already uses that name, and the merge renamed it to its external id.
ORIGINAL_NAME = "cmf_original_name"
# How many external ids one lookup sends, so that a large batch does not build one huge SQL IN list.
_LOOKUP_CHUNK = 1000
_FINAL_STATES = frozenset({mlmd.Execution.COMPLETE, mlmd.Execution.FAILED, mlmd.Execution.CACHED,
                           mlmd.Execution.CANCELED})
_PROPERTY_TYPE_NAMES = {mlmd.INT: "INT", mlmd.DOUBLE: "DOUBLE", mlmd.STRING: "STRING", mlmd.BOOLEAN: "BOOLEAN",
                        mlmd.STRUCT: "STRUCT", mlmd.PROTO: "PROTO"}


@dataclass(frozen=True, slots=True)
class MergeResult:
    """Counts of the objects one merge created or updated, all zero when the store had everything."""

    executions_created: int = 0
    executions_updated: int = 0
    artifacts_created: int = 0
    events_created: int = 0
    contexts_created: int = 0

    @property
    def changed(self) -> bool:
        """Whether the merge wrote anything."""
        return any(getattr(self, item.name) for item in fields(self))

    def __add__(self, other: MergeResult) -> MergeResult:
        return MergeResult(*(getattr(self, item.name) + getattr(other, item.name) for item in fields(self)))


def merge_document(
    store: MetadataStore, document: WireDocument, *, lock: ContextManager[Any] | None = None
) -> MergeResult:
    """Merge ``document`` into ``store`` idempotently and return what was written.

    ``lock``, when given, is held around the whole merge (for example the local store's write lock).
    Raises WireError (422) before writing anything when a property value does not fit the type stored for
    it, or a type cannot be registered.
    """
    return Merger(store).merge(document, lock=lock)


class Merger:
    """Merges documents into one MLMD store, keeping the types and contexts it has seen between merges.

    Types and contexts are never deleted from an MLMD store, so the cached copies stay valid. A Merger is
    not safe for use by two threads at once: give each thread (or each pooled store) its own.
    """

    def __init__(self, store: MetadataStore) -> None:
        self._store = store
        self._types = _TypeRegistry(store)
        self._contexts: dict[tuple[str, str], mlmd.Context] = {}
        self._linked: set[tuple[int, int]] = set()

    @property
    def store(self) -> MetadataStore:
        """The MLMD store this merger writes."""
        return self._store

    def merge(self, document: WireDocument, *, lock: ContextManager[Any] | None = None) -> MergeResult:
        """Merge ``document`` with one transaction per stage, as ``merge_document`` describes."""
        with lock if lock is not None else contextlib.nullcontext():
            schemas = _document_schemas(document)
            self._types.check(schemas)
            self._types.register(schemas)
            result = MergeResult()
            for pipeline in document.pipelines:
                for stage in pipeline.stages:
                    result += self.merge_stage(pipeline, stage)
                if not pipeline.stages:
                    result += self._pipeline_context(pipeline)[1]
            return result

    def merge_stage(self, pipeline: WirePipeline, stage: WireStage) -> MergeResult:
        """Merge one stage of ``pipeline`` in one MLMD transaction, retrying once after a conflict.

        A conflict is a unique key that another writer took between this merge's reads and its write (the
        same new artifact pushed by two pipelines at once), or a name that another object of the same type
        already uses. The retry reads the store again and renames objects whose names are taken.
        """
        pipeline_context, pipeline_result = self._pipeline_context(pipeline)
        stage_context, stage_result = self._stage_context(pipeline_context, stage)
        result = pipeline_result + stage_result
        try:
            return result + self._write_stage(pipeline_context, stage_context, stage, resolve_names=False)
        except (mlmd_errors.AlreadyExistsError, mlmd_errors.InternalError) as error:
            if not _is_unique_violation(error):
                raise
            logger.info("retrying the merge of stage %s after a conflict: %s", stage.name, error)
            return result + self._write_stage(pipeline_context, stage_context, stage, resolve_names=True)

    # -----------------------------------------------------------------------------------------------------
    # Contexts

    def _pipeline_context(self, pipeline: WirePipeline) -> tuple[mlmd.Context, MergeResult]:
        return self._context(pipeline.type, pipeline.name, pipeline.properties, pipeline.custom_properties)

    def _stage_context(self, parent: mlmd.Context, stage: WireStage) -> tuple[mlmd.Context, MergeResult]:
        context, result = self._context(stage.type, stage.name, stage.properties, stage.custom_properties)
        key = (context.id, parent.id)
        if key not in self._linked:
            parents = self._store.get_parent_contexts_by_context(context.id)
            if not any(item.id == parent.id for item in parents):
                try:
                    self._store.put_parent_contexts([mlmd.ParentContext(child_id=context.id, parent_id=parent.id)])
                except mlmd_errors.AlreadyExistsError:
                    pass  # another writer linked them first
            self._linked.add(key)
        return context, result

    def _context(
        self, type_name: str, name: str, properties: Mapping[str, Any], custom: Mapping[str, Any]
    ) -> tuple[mlmd.Context, MergeResult]:
        key = (type_name, name)
        context = self._contexts.get(key) or self._store.get_context_by_type_and_name(type_name, name)
        created = 0
        if context is None:
            context = mlmd.Context(type_id=self._types.context_type(type_name).id, name=name)
            self._types.fill("context", type_name, context, properties, custom)
            try:
                [context.id] = self._store.put_contexts([context])
                created = 1
            except mlmd_errors.AlreadyExistsError:
                context = self._store.get_context_by_type_and_name(type_name, name)
        self._contexts[key] = context
        return context, MergeResult(contexts_created=created)

    # -----------------------------------------------------------------------------------------------------
    # Executions, artifacts and events of one stage

    def _write_stage(
        self, pipeline: mlmd.Context, stage_context: mlmd.Context, stage: WireStage, *, resolve_names: bool
    ) -> MergeResult:
        wire_executions = _unique_executions(stage.executions)
        stored_executions = self._executions_by_uuid(list(wire_executions))
        known_events = self._events_of(stored_executions.values())
        wire_artifacts = _unique_artifacts(wire_executions.values())
        stored_artifacts = self._artifacts_by_external_id(list(wire_artifacts))

        plan = _SubgraphPlan()
        for external_id, wire_artifact in wire_artifacts.items():
            stored = stored_artifacts.get(external_id)
            if stored is None:
                plan.add_artifact(external_id, self._artifact_proto(wire_artifact, external_id), new=True)
            else:
                plan.add_artifact(external_id, stored, new=False)
        for execution_uuid, wire_execution in wire_executions.items():
            stored_execution = stored_executions.get(execution_uuid)
            execution = self._execution_proto(wire_execution, stored_execution)
            plan.add_execution(execution, stored_execution, wire_execution, known_events)

        if resolve_names:
            self._resolve_names(plan)
        if not plan.has_writes():
            return MergeResult()

        artifacts = plan.artifacts_to_write()
        execution_ids, artifact_ids, _ = self._store.put_lineage_subgraph(
            plan.executions,
            artifacts,
            [pipeline, stage_context],
            plan.event_edges(),
            reuse_context_if_already_exist=True,
            reuse_artifact_if_already_exist_by_external_id=True,
        )
        logger.debug("merged stage %s: %d executions, %d artifacts written", stage.name, len(execution_ids),
                     len(artifact_ids))
        return plan.result()

    def _executions_by_uuid(self, uuids: Sequence[str]) -> dict[str, mlmd.Execution]:
        found: dict[str, mlmd.Execution] = {}
        external_ids = [execution_external_id(item) for item in uuids]
        for chunk in _chunks(external_ids):
            for execution in _found(self._store.get_executions_by_external_ids, chunk):
                found[execution.external_id] = execution
        return {item: found[external_id] for item, external_id in zip(uuids, external_ids) if external_id in found}

    def _artifacts_by_external_id(self, external_ids: Sequence[str]) -> dict[str, mlmd.Artifact]:
        found: dict[str, mlmd.Artifact] = {}
        for chunk in _chunks(external_ids):
            for artifact in _found(self._store.get_artifacts_by_external_ids, chunk):
                found[artifact.external_id] = artifact
        return found

    def _events_of(self, executions: Iterable[mlmd.Execution]) -> set[tuple[int, int, int]]:
        ids = [execution.id for execution in executions]
        known: set[tuple[int, int, int]] = set()
        for chunk in _chunks(ids):
            for event in self._store.get_events_by_execution_ids(chunk):
                known.add((event.execution_id, event.artifact_id, event.type))
        return known

    def _execution_proto(self, wire: WireExecution, stored: mlmd.Execution | None) -> mlmd.Execution:
        if stored is None:
            execution = mlmd.Execution(
                type_id=self._types.execution_type(wire.type).id,
                external_id=execution_external_id(wire.execution_uuid or ""),
            )
            if wire.name:
                execution.name = wire.name
        else:
            execution = mlmd.Execution()
            execution.CopyFrom(stored)
        stored_type = self._types.execution_type_by_id(execution.type_id)
        self._types.fill("execution", stored_type.name, execution, wire.properties, wire.custom_properties)
        if wire.last_known_state is not None:
            state = mlmd.Execution.State.Value(wire.last_known_state)
            # A late copy of a RUNNING execution never undoes its recorded end.
            if stored is None or not (stored.last_known_state in _FINAL_STATES and state not in _FINAL_STATES):
                execution.last_known_state = state
        return execution

    def _artifact_proto(self, wire: WireArtifact, external_id: str) -> mlmd.Artifact:
        artifact = mlmd.Artifact(type_id=self._types.artifact_type(wire.type).id, uri=wire.uri,
                                 external_id=external_id)
        if wire.name:
            artifact.name = wire.name
        if wire.state is not None:
            artifact.state = mlmd.Artifact.State.Value(wire.state)
        self._types.fill("artifact", wire.type, artifact, wire.properties, wire.custom_properties)
        return artifact

    def _resolve_names(self, plan: _SubgraphPlan) -> None:
        """Rename new executions and artifacts whose (type, name) another object already uses."""
        _rename_taken(
            plan.new_executions(),
            lambda node: self._types.execution_type_by_id(node.type_id).name,
            self._store.get_execution_by_type_and_name,
        )
        _rename_taken(
            plan.new_artifacts(),
            lambda node: self._types.artifact_type_by_id(node.type_id).name,
            self._store.get_artifact_by_type_and_name,
        )


def _rename_taken(nodes: Any, type_name_of: Any, find_by_type_and_name: Any) -> None:
    # MLMD requires a unique (type, name): a node whose name another object, or another node of this
    # merge, already uses takes its external id as its name.
    seen: set[tuple[int, str]] = set()
    for node in nodes:
        if not node.name:
            continue
        holder = find_by_type_and_name(type_name_of(node), node.name)
        taken = holder is not None and holder.external_id != node.external_id
        if taken or (node.type_id, node.name) in seen:
            _rename(node, node.external_id)
        seen.add((node.type_id, node.name))


def _is_unique_violation(error: Exception) -> bool:
    # MLMD 1.17 reports some unique-key violations as AlreadyExists and others, from PostgreSQL, MySQL and
    # SQLite, as Internal errors that quote the database's message.
    if isinstance(error, mlmd_errors.AlreadyExistsError):
        return True
    message = str(error).lower()
    return any(marker in message for marker in ("duplicate key", "duplicate entry", "unique constraint failed"))


def _rename(node: Any, new_name: str) -> None:
    logger.warning("renamed %s to %s because another object of its type uses that name", node.name, new_name)
    node.custom_properties[ORIGINAL_NAME].string_value = node.name
    node.name = new_name


class _SubgraphPlan:
    """The executions, artifacts and events of one stage that one ``put_lineage_subgraph`` call writes."""

    def __init__(self) -> None:
        self.executions: list[mlmd.Execution] = []
        self._created = 0
        self._updated = 0
        self._artifacts: dict[str, mlmd.Artifact] = {}
        self._new_artifacts: set[str] = set()
        # (index in self.executions or None, stored execution id or None, artifact external id, event type)
        self._edges: list[tuple[int | None, int | None, str, int]] = []
        self._artifact_order: dict[str, int] = {}

    def add_artifact(self, external_id: str, artifact: mlmd.Artifact, *, new: bool) -> None:
        self._artifacts[external_id] = artifact
        if new:
            self._new_artifacts.add(external_id)

    def add_execution(
        self,
        execution: mlmd.Execution,
        stored: mlmd.Execution | None,
        wire: WireExecution,
        known_events: set[tuple[int, int, int]],
    ) -> None:
        index: int | None = None
        if stored is None or stored != execution:
            index = len(self.executions)
            self.executions.append(execution)
            if stored is None:
                self._created += 1
            else:
                self._updated += 1

        seen: set[tuple[str, int]] = set()
        for event in wire.events:
            external_id = artifact_external_id(event.artifact.type, event.artifact.uri)
            if (external_id, event.type) in seen:
                continue
            seen.add((external_id, event.type))
            artifact = self._artifacts[external_id]
            if stored is not None and artifact.HasField("id"):
                if (stored.id, artifact.id, event.type) in known_events:
                    continue
            self._edges.append((index, stored.id if stored is not None else None, external_id, event.type))

    def has_writes(self) -> bool:
        return bool(self.executions or self._edges)

    def new_executions(self) -> list[mlmd.Execution]:
        return [execution for execution in self.executions if not execution.HasField("id")]

    def new_artifacts(self) -> list[mlmd.Artifact]:
        return [self._artifacts[external_id] for external_id in self._new_artifacts]

    def artifacts_to_write(self) -> list[mlmd.Artifact]:
        """Return the artifacts that the new events link, new and stored ones alike.

        A stored artifact is passed unchanged, which MLMD does not rewrite, so that it is attributed to this
        pipeline and stage as well.
        """
        used = dict.fromkeys(external_id for _, _, external_id, _ in self._edges)
        self._artifact_order = {external_id: index for index, external_id in enumerate(used)}
        return [self._artifacts[external_id] for external_id in used]

    def event_edges(self) -> list[tuple[int | None, int | None, mlmd.Event]]:
        edges = []
        for execution_index, execution_id, external_id, event_type in self._edges:
            event = mlmd.Event(type=event_type)
            if execution_index is None:
                event.execution_id = execution_id
            edges.append((execution_index, self._artifact_order[external_id], event))
        return edges

    def result(self) -> MergeResult:
        # NOTE: an artifact that another writer created between this merge's lookup and its write is reused
        # by MLMD (reuse by external id) but still counted in artifacts_created.
        return MergeResult(
            executions_created=self._created,
            executions_updated=self._updated,
            artifacts_created=len(self._new_artifacts & set(self._artifact_order)),
            events_created=len(self._edges),
        )


# ---------------------------------------------------------------------------------------------------------
# Types


# A type's property schema: property name -> MLMD PropertyType number.
_Schema = dict[str, int]
_KINDS = ("context", "execution", "artifact")


class _TypeRegistry:
    """The store's context, execution and artifact types, read once and registered on first need."""

    def __init__(self, store: MetadataStore) -> None:
        self._store = store
        self._by_name: dict[tuple[str, str], Any] = {}
        self._by_id: dict[tuple[str, int], Any] = {}
        self._loaded = False

    def _load(self) -> None:
        readers = {"context": self._store.get_context_types, "execution": self._store.get_execution_types,
                   "artifact": self._store.get_artifact_types}
        for kind, read in readers.items():
            for stored in read():
                self._remember(kind, stored)
        self._loaded = True

    def _remember(self, kind: str, stored: Any) -> None:
        self._by_name[(kind, stored.name)] = stored
        self._by_id[(kind, stored.id)] = stored

    def get(self, kind: str, name: str) -> Any | None:
        if not self._loaded:
            self._load()
        found = self._by_name.get((kind, name))
        if found is None:
            self._load()  # another writer may have registered it since
            found = self._by_name.get((kind, name))
        return found

    def context_type(self, name: str) -> mlmd.ContextType:
        return self._required("context", name)

    def execution_type(self, name: str) -> mlmd.ExecutionType:
        return self._required("execution", name)

    def artifact_type(self, name: str) -> mlmd.ArtifactType:
        return self._required("artifact", name)

    def execution_type_by_id(self, type_id: int) -> mlmd.ExecutionType:
        return self._by_id_or_load("execution", type_id)

    def artifact_type_by_id(self, type_id: int) -> mlmd.ArtifactType:
        return self._by_id_or_load("artifact", type_id)

    def _by_id_or_load(self, kind: str, type_id: int) -> Any:
        found = self._by_id.get((kind, type_id))
        if found is None:
            self._load()
            found = self._by_id[(kind, type_id)]
        return found

    def _required(self, kind: str, name: str) -> Any:
        found = self.get(kind, name)
        if found is None:
            self.register({(kind, name): {}})
            found = self._by_name[(kind, name)]
        return found

    def check(self, schemas: Mapping[tuple[str, str], _Schema]) -> None:
        """Raise WireError (422) when a property's value type differs from the type stored for it."""
        for (kind, name), schema in schemas.items():
            stored = self.get(kind, name)
            if stored is None:
                continue
            for property_name, value_type in schema.items():
                stored_type = stored.properties.get(property_name)
                if stored_type is None or stored_type == value_type:
                    continue
                if stored_type == mlmd.DOUBLE and value_type == mlmd.INT:
                    continue  # an integer is stored as a double without loss
                raise WireError(
                    f"property {property_name!r} of {kind} type {name!r} is "
                    f"{_PROPERTY_TYPE_NAMES.get(stored_type, stored_type)} in the store, but the document "
                    f"sends a {_PROPERTY_TYPE_NAMES.get(value_type, value_type)} value: send a value of the "
                    "stored type",
                    422,
                )

    def register(self, schemas: Mapping[tuple[str, str], _Schema]) -> None:
        """Register missing types and add missing properties (``can_add_fields``) to stored ones."""
        writers = {"context": (self._store.put_context_type, mlmd.ContextType),
                   "execution": (self._store.put_execution_type, mlmd.ExecutionType),
                   "artifact": (self._store.put_artifact_type, mlmd.ArtifactType)}
        for (kind, name), schema in schemas.items():
            stored = self.get(kind, name)
            missing = {key: value for key, value in schema.items() if stored is None or key not in stored.properties}
            if stored is not None and not missing:
                continue
            put, proto = writers[kind]
            message = proto(name=name)
            for key, value in {**(dict(stored.properties) if stored else {}), **missing}.items():
                message.properties[key] = value
            try:
                message.id = put(message, can_add_fields=True, can_omit_fields=True)
            except mlmd_errors.AlreadyExistsError:
                self._load()  # another writer registered it at the same moment
                message = self._by_name[(kind, name)]
                message.id = put(message, can_add_fields=True, can_omit_fields=True)
            except mlmd_errors.InvalidArgumentError as error:
                raise WireError(f"MLMD cannot register the {kind} type {name!r}: {error}", 422) from error
            self._remember(kind, message)

    def fill(self, kind: str, type_name: str, node: Any, properties: Mapping[str, Any],
             custom: Mapping[str, Any]) -> None:
        """Set ``node``'s properties as its type declares them, and its custom properties as given."""
        declared = self._required(kind, type_name).properties
        for key, value in properties.items():
            _assign(node.properties[key], value, declared.get(key))
        for key, value in custom.items():
            _assign(node.custom_properties[key], value, None)


def _assign(target: mlmd.Value, value: Any, declared: int | None) -> None:
    # bool before int: a bool is an int in Python, but MLMD keeps it as bool_value.
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int) and declared != mlmd.DOUBLE:
        target.int_value = value
    elif isinstance(value, int | float):
        target.double_value = float(value)
    else:
        target.string_value = str(value)


def _value_type(value: Any) -> int:
    if isinstance(value, bool):
        return mlmd.BOOLEAN
    if isinstance(value, int):
        return mlmd.INT
    if isinstance(value, float):
        return mlmd.DOUBLE
    return mlmd.STRING


def _document_schemas(document: WireDocument) -> dict[tuple[str, str], _Schema]:
    """Collect the property schema of every type the document uses, raising WireError on a conflict in it."""
    schemas: dict[tuple[str, str], _Schema] = {}

    def add(kind: str, type_name: str, properties: Mapping[str, Any]) -> None:
        schema = schemas.setdefault((kind, type_name), {})
        for key, value in properties.items():
            value_type = _value_type(value)
            known = schema.get(key)
            if known is None or known == value_type:
                schema[key] = value_type
            elif {known, value_type} == {mlmd.INT, mlmd.DOUBLE}:
                schema[key] = mlmd.DOUBLE
            else:
                raise WireError(
                    f"property {key!r} of {kind} type {type_name!r} has values of two types in the document "
                    f"({_PROPERTY_TYPE_NAMES[known]} and {_PROPERTY_TYPE_NAMES[value_type]}): send one type",
                    422,
                )

    for pipeline in document.pipelines:
        add("context", pipeline.type, pipeline.properties)
        for stage in pipeline.stages:
            add("context", stage.type, stage.properties)
            for execution in stage.executions:
                add("execution", execution.type, execution.properties)
                for event in execution.events:
                    add("artifact", event.artifact.type, event.artifact.properties)
    return schemas


# ---------------------------------------------------------------------------------------------------------
# Helpers


def _unique_executions(executions: Iterable[WireExecution]) -> dict[str, WireExecution]:
    """Key executions by uuid, folding repeats of one uuid into one (later properties win, events add up)."""
    unique: dict[str, WireExecution] = {}
    for execution in executions:
        execution_uuid = execution.execution_uuid
        if execution_uuid is None:
            raise WireError(f"execution {execution.name!r} of type {execution.type!r} has no Execution_uuid", 422)
        earlier = unique.get(execution_uuid)
        if earlier is not None:
            execution = dataclasses.replace(
                execution,
                properties={**earlier.properties, **execution.properties},
                custom_properties={**earlier.custom_properties, **execution.custom_properties},
                events=earlier.events + execution.events,
                last_known_state=execution.last_known_state or earlier.last_known_state,
            )
        unique[execution_uuid] = execution
    return unique


def _unique_artifacts(executions: Iterable[WireExecution]) -> dict[str, WireArtifact]:
    unique: dict[str, WireArtifact] = {}
    for execution in executions:
        for event in execution.events:
            unique.setdefault(artifact_external_id(event.artifact.type, event.artifact.uri), event.artifact)
    return unique


def _found(read: Any, external_ids: Sequence[str]) -> list[Any]:
    # MLMD 1.17 raises NotFoundError, not an empty list, when none of the external ids exists.
    try:
        return read(list(external_ids))
    except mlmd_errors.NotFoundError:
        return []


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _LOOKUP_CHUNK):
        yield items[start : start + _LOOKUP_CHUNK]
