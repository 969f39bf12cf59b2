"""The values the web UI's catalog returns to its pages: pipelines, stages, executions and artifacts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# MLMD's Execution.State numbers, as stored in Execution.last_known_state.
EXECUTION_STATES = {0: "UNKNOWN", 1: "NEW", 2: "RUNNING", 3: "COMPLETE", 4: "FAILED", 5: "CACHED", 6: "CANCELED"}
# MLMD's Artifact.State numbers, as stored in Artifact.state.
ARTIFACT_STATES = {0: "UNKNOWN", 1: "PENDING", 2: "LIVE", 3: "MARKED_FOR_DELETION", 4: "DELETED", 5: "ABANDONED",
                   6: "REFERENCE"}
EVENT_INPUT = 3
EVENT_OUTPUT = 4
# MLMD's event types that read an artifact, and those that write one.
INPUT_EVENT_TYPES = (1, 3, 5)
OUTPUT_EVENT_TYPES = (2, 4, 6, 7)


@dataclass(frozen=True, slots=True)
class StateCount:
    """How many executions are in one MLMD state."""

    state: str
    count: int


@dataclass(frozen=True, slots=True)
class PipelineSummary:
    """A pipeline (DAG) on the pipelines page."""

    id: int
    name: str
    stage_count: int
    execution_count: int
    site_count: int
    states: tuple[StateCount, ...]
    last_update_ms: int | None
    last_run_id: str | None


@dataclass(frozen=True, slots=True)
class StageSummary:
    """A stage (``<dag_id>/<task_id>``) of a pipeline, with its execution counts by state."""

    id: int
    name: str
    execution_count: int
    states: tuple[StateCount, ...]


@dataclass(frozen=True, slots=True)
class ExecutionRow:
    """One execution in a table: the facts the pipeline page and the lists show."""

    id: int
    stage: str
    state: str
    execution_uuid: str
    run_id: str | None
    try_number: int | None
    map_index: int | None
    site: str | None
    duration_s: float | None
    git_commit: str | None
    start_time: str | None


@dataclass(frozen=True, slots=True)
class ExecutionFilter:
    """The filters of the pipeline page. Empty fields do not filter."""

    stage_id: int | None = None
    state: int | None = None
    site: str | None = None
    query: str | None = None


@dataclass(frozen=True, slots=True)
class ExecutionPage:
    """One page of executions, newest first, with the keyset cursors of the pages around it."""

    rows: tuple[ExecutionRow, ...]
    # ``before`` for the next (older) page and ``after`` for the previous (newer) page, None at either end.
    next_before: int | None
    previous_after: int | None


@dataclass(frozen=True, slots=True)
class ArtifactRow:
    """An artifact with all its properties."""

    id: int
    type: str
    name: str
    uri: str
    state: str
    create_time_ms: int
    properties: Mapping[str, Any] = field(default_factory=dict)
    custom_properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExecutionDetail:
    """An execution with all its properties, contexts and artifacts, for the execution page."""

    row: ExecutionRow
    type_id: int
    pipeline_id: int | None
    pipeline: str | None
    stage_id: int | None
    properties: Mapping[str, Any]
    custom_properties: Mapping[str, Any]
    inputs: tuple[ArtifactRow, ...]
    outputs: tuple[ArtifactRow, ...]


@dataclass(frozen=True, slots=True)
class ArtifactDetail:
    """An artifact with the executions that produced and consumed it (the newest ones, up to a limit)."""

    artifact: ArtifactRow
    producers: tuple[ExecutionRow, ...]
    consumers: tuple[ExecutionRow, ...]
    producer_count: int
    consumer_count: int


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One search result: an artifact or an execution, and the page that shows it."""

    kind: str
    id: int
    label: str
    detail: str
