"""The lineage of one artifact in the server's store: what produced it, back to the sources, and what used it.

The walk is breadth-first with batched reads: each level costs one events-by-artifacts call and one
events-by-executions call, and the nodes found are read at the end with one call per kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ml_metadata.proto import metadata_store_pb2 as mlmd

from cmf_airflow.server.queries import TypeNames, artifact_json, execution_json

if TYPE_CHECKING:
    from ml_metadata.metadata_store import MetadataStore

_INPUTS = frozenset({mlmd.Event.INPUT, mlmd.Event.DECLARED_INPUT, mlmd.Event.INTERNAL_INPUT})
_OUTPUTS = frozenset({mlmd.Event.OUTPUT, mlmd.Event.DECLARED_OUTPUT, mlmd.Event.INTERNAL_OUTPUT,
                      mlmd.Event.PENDING_OUTPUT})


@dataclass(frozen=True, slots=True)
class _Walk:
    execution_levels: dict[int, int]
    artifact_levels: dict[int, int]
    edges: list[tuple[int, int, str]]
    truncated: bool


def artifact_lineage(store: MetadataStore, artifact_id: int, depth: int) -> dict[str, Any] | None:
    """Return the upstream and downstream lineage of ``artifact_id`` up to ``depth`` executions away.

    Upstream follows OUTPUT events to the executions that produced an artifact and their INPUT events to
    what those read. Downstream follows INPUT events to consumers and their OUTPUT events. Every node carries
    its ``level`` (1 for the nearest executions). ``truncated`` is true when the walk stopped at ``depth``
    with nodes left. Returns None when the artifact does not exist.
    """
    found = store.get_artifacts_by_id([artifact_id])
    if not found:
        return None
    types = TypeNames(store)
    upstream = _walk(store, artifact_id, depth, towards=_OUTPUTS, onwards=_INPUTS)
    downstream = _walk(store, artifact_id, depth, towards=_INPUTS, onwards=_OUTPUTS)
    return {
        "artifact": artifact_json(found[0], types),
        "depth": depth,
        "upstream": _nodes(store, upstream, types),
        "downstream": _nodes(store, downstream, types),
    }


def _walk(store: MetadataStore, start: int, depth: int, *, towards: frozenset, onwards: frozenset) -> _Walk:
    executions: dict[int, int] = {}
    artifacts: dict[int, int] = {start: 0}
    edges: list[tuple[int, int, str]] = []
    frontier = [start]
    truncated = False
    for level in range(1, depth + 1):
        next_executions = sorted({
            event.execution_id for event in store.get_events_by_artifact_ids(frontier)
            if event.type in towards and event.execution_id not in executions
        })
        if not next_executions:
            break
        for execution_id in next_executions:
            executions[execution_id] = level
        frontier = []
        for event in store.get_events_by_execution_ids(next_executions):
            if event.type in onwards and event.artifact_id not in artifacts:
                artifacts[event.artifact_id] = level
                frontier.append(event.artifact_id)
            if event.artifact_id in artifacts:
                edges.append((event.execution_id, event.artifact_id, mlmd.Event.Type.Name(event.type)))
        if not frontier:
            break
    else:
        truncated = bool(frontier) and any(
            event.type in towards and event.execution_id not in executions
            for event in store.get_events_by_artifact_ids(frontier)
        )
    del artifacts[start]
    return _Walk(executions, artifacts, edges, truncated)


def _nodes(store: MetadataStore, walk: _Walk, types: TypeNames) -> dict[str, Any]:
    executions = store.get_executions_by_id(list(walk.execution_levels)) if walk.execution_levels else []
    artifacts = store.get_artifacts_by_id(list(walk.artifact_levels)) if walk.artifact_levels else []
    execution_items = [
        {**execution_json(item, types), "level": walk.execution_levels[item.id]}
        for item in sorted(executions, key=lambda execution: (walk.execution_levels[execution.id], execution.id))
    ]
    artifact_items = [
        {**artifact_json(item, types), "level": walk.artifact_levels[item.id]}
        for item in sorted(artifacts, key=lambda artifact: (walk.artifact_levels[artifact.id], artifact.id))
    ]
    return {
        "executions": execution_items,
        "artifacts": artifact_items,
        "events": [
            {"execution_id": execution_id, "artifact_id": artifact_id, "type": event_type}
            for execution_id, artifact_id, event_type in sorted(set(walk.edges))
        ],
        "truncated": walk.truncated,
    }
