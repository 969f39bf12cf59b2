"""The lineage graph of one artifact for the web UI: nodes and edges up to the sources and down to the consumers.

The walk is breadth-first in both directions. Upstream it follows OUTPUT events to the executions that
produced an artifact, then their INPUT events to what they read. Downstream it follows INPUT events to the
consumers, then their OUTPUT events. ``depth`` counts executions in each direction. The graph stops growing
at ``max_nodes`` nodes, newest executions first, and sets ``truncated``, because a dataset read by every
run of a daily DAG would otherwise make a graph too large to read.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cmf_airflow.server.ui.catalog import Catalog
from cmf_airflow.server.ui.database import Row
from cmf_airflow.server.ui.rows import INPUT_EVENT_TYPES, OUTPUT_EVENT_TYPES


@dataclass
class _Graph:
    artifacts: set[int] = field(default_factory=set)
    executions: set[int] = field(default_factory=set)
    # (artifact_id, execution_id, event type)
    events: set[tuple[int, int, int]] = field(default_factory=set)
    truncated: bool = False

    @property
    def size(self) -> int:
        return len(self.artifacts) + len(self.executions)


def artifact_graph(catalog: Catalog, artifact_id: int, depth: int, max_nodes: int) -> dict[str, Any] | None:
    """Return the lineage graph of ``artifact_id`` as JSON-ready nodes and edges, or None if it does not exist.

    Each node has ``kind`` (artifact or execution), its store ``id``, a ``key`` unique in the graph, a
    ``label``, a ``detail`` line, its page ``url`` and ``focus``. Each edge goes in the direction data flows:
    from an input artifact to its execution, from an execution to its output artifact.
    """
    if not catalog.artifact_labels([artifact_id]):
        return None
    graph = _Graph(artifacts={artifact_id})
    _walk(catalog, graph, artifact_id, depth, max_nodes, towards=OUTPUT_EVENT_TYPES, onwards=INPUT_EVENT_TYPES)
    _walk(catalog, graph, artifact_id, depth, max_nodes, towards=INPUT_EVENT_TYPES, onwards=OUTPUT_EVENT_TYPES)
    return _as_json(catalog, graph, artifact_id, depth)


def _walk(
    catalog: Catalog,
    graph: _Graph,
    start: int,
    depth: int,
    max_nodes: int,
    *,
    towards: tuple[int, ...],
    onwards: tuple[int, ...],
) -> None:
    frontier = [start]
    for _ in range(depth):
        if not frontier or max_nodes - graph.size <= 0:
            graph.truncated = graph.truncated or bool(frontier)
            return
        events = catalog.events_of_artifacts(frontier, towards, max_nodes - graph.size + 1)
        new_executions = _add_step(graph, events, graph.executions, max_nodes, node_of=lambda event: event[1])
        events = catalog.events_of_executions(new_executions, onwards, max(max_nodes - graph.size, 0) + 1)
        frontier = _add_step(graph, events, graph.artifacts, max_nodes, node_of=lambda event: event[0])
    if frontier and catalog.events_of_artifacts(frontier, towards, 1):
        graph.truncated = True


def _add_step(
    graph: _Graph,
    events: list[Row],
    seen: set[int],
    max_nodes: int,
    *,
    node_of: Callable[[Row], int],
) -> list[int]:
    """Add the nodes that ``events`` reach (``node_of`` picks them) within the budget; return the new ones."""
    budget = max_nodes - graph.size
    added: list[int] = []
    for event in events:
        node = node_of(event)
        if node not in seen:
            if len(added) >= budget:
                graph.truncated = True
                continue
            added.append(node)
            seen.add(node)
        graph.events.add(tuple(event))
    if len(events) > budget:
        graph.truncated = True
    return added


def _as_json(catalog: Catalog, graph: _Graph, focus: int, depth: int) -> dict[str, Any]:
    artifacts = catalog.artifact_labels(sorted(graph.artifacts))
    executions = catalog.execution_labels(sorted(graph.executions))
    nodes = []
    for artifact_id, (type_name, name, uri) in sorted(artifacts.items()):
        nodes.append({
            "key": f"artifact-{artifact_id}",
            "kind": "artifact",
            "id": artifact_id,
            "label": artifact_label(name, uri),
            "detail": f"{type_name} {uri[:8]}",
            "type": type_name,
            "url": f"/ui/artifacts/{artifact_id}",
            "focus": artifact_id == focus,
        })
    for execution_id, (stage, state) in sorted(executions.items()):
        nodes.append({
            "key": f"execution-{execution_id}",
            "kind": "execution",
            "id": execution_id,
            "label": stage.rsplit("/", 1)[-1],
            "detail": f"#{execution_id} {state}",
            "type": stage,
            "state": state,
            "url": f"/ui/executions/{execution_id}",
            "focus": False,
        })
    edges = []
    for artifact_id, execution_id, event_type in sorted(graph.events):
        artifact_key, execution_key = f"artifact-{artifact_id}", f"execution-{execution_id}"
        if event_type in INPUT_EVENT_TYPES:
            edges.append({"source": artifact_key, "target": execution_key, "type": "INPUT"})
        else:
            edges.append({"source": execution_key, "target": artifact_key, "type": "OUTPUT"})
    return {"focus": f"artifact-{focus}", "depth": depth, "nodes": nodes, "edges": edges,
            "truncated": graph.truncated}


def artifact_label(name: str, uri: str) -> str:
    """Return a short label for an artifact named ``<path>:<md5>[:<execution id>]``: the file name of its path."""
    path = name
    # CMF appends ``:<md5>`` and, for models and metrics, ``:<execution id>``: cut from the hash on.
    if uri and f":{uri}" in name:
        path = name.split(f":{uri}", 1)[0]
    base = posixpath.basename(path.rstrip("/")) or path
    return base or uri[:12]

