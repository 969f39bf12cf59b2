"""Value objects that travel between the listener, the recorder and the command line."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

# A fixed namespace, so that every installation derives the same execution uuid from the same facts.
EXECUTION_UUID_NAMESPACE = uuid.UUID("6c0f5e52-4b8e-5d7a-9a3e-0c3f8e1d2b71")


class HashState(str, Enum):
    """Whether an artifact's content could be hashed."""

    HASHED = "hashed"
    MISSING = "missing"
    UNHASHED = "unhashed"


class EventKind(str, Enum):
    """The direction of an artifact relative to an execution."""

    INPUT = "input"
    OUTPUT = "output"


@dataclass(frozen=True, slots=True)
class GitInfo:
    """Provenance of the code: the git repository that contains the DAG file."""

    remote_url: str
    commit: str
    dirty: bool
    root: str


@dataclass(frozen=True, slots=True)
class TaskRun:
    """One try of one task instance, the unit that becomes one CMF execution."""

    site: str
    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    try_number: int
    operator: str
    hostname: str
    airflow_version: str
    start_time: datetime | None = None
    dag_file: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def stage_name(self) -> str:
        """The CMF stage of this task: ``<dag_id>/<task_id>``."""
        return f"{self.dag_id}/{self.task_id}"

    @property
    def execution_uuid(self) -> str:
        """A uuid5 over the try's identity, so recording the same try twice finds the same execution."""
        key = "\x1f".join(
            (self.site, self.dag_id, self.task_id, self.run_id, str(self.map_index), str(self.try_number))
        )
        return str(uuid.uuid5(EXECUTION_UUID_NAMESPACE, key))


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """The end of a task try: its final state, end time and error."""

    state: str
    end_time: datetime
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ArtifactRecord:
    """An inlet or outlet resolved to what the store keeps: its location and, when readable, its md5."""

    uri: str
    path: str | None
    md5: str | None
    hash_state: HashState
    size: int | None = None
    file_count: int | None = None
    reason: str | None = None
    type_name: str = "Dataset"

    @property
    def name(self) -> str:
        """The CMF artifact name: ``<path>:<md5>``, or the location alone when there is no hash."""
        location = self.path or self.uri
        return f"{location}:{self.md5}" if self.md5 else location


def artifact_external_id(type_name: str, uri: str) -> str:
    """The MLMD external id of an artifact: its type and uri, so that one content of one type is one artifact.

    The uri of a hashed artifact is its md5, so the same bytes logged under two paths, or at two sites, meet
    in one artifact. Every writer (recorder, merge) looks artifacts up by this id.
    """
    return f"{type_name}:{uri}"


def execution_external_id(execution_uuid: str) -> str:
    """The MLMD external id of an execution: its ``Execution_uuid``, unique across sites."""
    return execution_uuid

