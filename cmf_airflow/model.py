"""Value objects that travel between the listener, the recorder and the command line."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Union

# A value MLMD can keep in a property: string, integer, double or boolean.
PropertyValue = Union[str, int, float, bool]
_MAX_EXTERNAL_ID_LENGTH = 255

# A fixed namespace, so that every installation derives the same execution uuid from the same facts.
EXECUTION_UUID_NAMESPACE = uuid.UUID("6c0f5e52-4b8e-5d7a-9a3e-0c3f8e1d2b71")


class HashState(str, Enum):
    """Whether an artifact's content could be hashed."""

    HASHED = "hashed"
    MISSING = "missing"
    UNHASHED = "unhashed"
    # Values rather than file content (metrics): identified by a uuid, nothing to hash.
    NOT_A_FILE = "not_a_file"


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
    # A name that replaces ``<path>:<md5>``, for types whose CMF name carries more (models, metrics).
    explicit_name: str | None = None
    # Properties declared by the artifact type (``model_framework``), then free-form custom properties
    # (metric values, user metadata, ``git_commit``). Pairs, not dicts, so that a record stays hashable.
    properties: tuple[tuple[str, PropertyValue], ...] = ()
    custom_properties: tuple[tuple[str, PropertyValue], ...] = ()

    @property
    def name(self) -> str:
        """The CMF artifact name: ``<path>:<md5>``, or the location alone when there is no hash."""
        if self.explicit_name:
            return self.explicit_name
        location = self.path or self.uri
        return f"{location}:{self.md5}" if self.md5 else location

    @property
    def artifact_uri(self) -> str:
        """The MLMD uri: the md5 when the content is hashed, else the location."""
        return self.md5 or self.uri

    @property
    def external_id(self) -> str:
        """The MLMD external id that identifies this artifact's content in every store."""
        return artifact_external_id(self.type_name, self.artifact_uri)


def artifact_external_id(type_name: str, uri: str) -> str:
    """Return the MLMD external id of an artifact: its type and uri, so that one content of one type is one artifact.

    The uri of a hashed artifact is its md5, so the same bytes logged under two paths, or at two sites, meet
    in one artifact. Every writer (recorder, merge) looks artifacts up by this id. MLMD keeps external ids in
    a 255-character column on PostgreSQL and MySQL, so a longer uri (a deep ``s3://`` path) is replaced by
    its sha256.
    """
    external_id = f"{type_name}:{uri}"
    if len(external_id) <= _MAX_EXTERNAL_ID_LENGTH:
        return external_id
    return f"{type_name}:sha256:{hashlib.sha256(uri.encode()).hexdigest()}"


def execution_external_id(execution_uuid: str) -> str:
    """Return the MLMD external id of an execution: its ``Execution_uuid``, unique across sites."""
    return execution_uuid

