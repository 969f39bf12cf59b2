"""The acknowledgement state of each CMF server, kept in the local store so that it lives as long as the store.

One context of the type ``cmf_airflow_Sync`` (not a CMF type) per server URL keeps, as custom properties:

- ``watermark``: a time in ms since the epoch. Every execution whose last update is at or before
  ``watermark - SAFETY_WINDOW_MS`` is acknowledged.
- ``recent``: the acknowledged (execution id, last update time) pairs inside the window, as JSON.
- ``pulled:<pipeline>``: the server's latest update time seen by a pull of that pipeline.

An execution is outstanding when its last update is inside the window or later and its current
(id, last update time) pair is not among the recent ones. So an execution pushed while RUNNING and updated
later is outstanding again. The window exists because concurrent writers take their timestamps before they
commit: an execution may become visible after a later one, with an earlier update time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from ml_metadata.proto import metadata_store_pb2 as mlmd

if TYPE_CHECKING:
    from ml_metadata.metadata_store import MetadataStore

logger = logging.getLogger(__name__)

SYNC_CONTEXT_TYPE = "cmf_airflow_Sync"
# How far back a push looks behind its watermark: longer than any writer's commit delay, and than the clock
# difference between the workers that write one shared store. Ten minutes is a guess, not a measurement.
SAFETY_WINDOW_MS = 10 * 60 * 1000

_WATERMARK = "watermark"
_RECENT = "recent"
_PULLED_PREFIX = "pulled:"


@dataclass(frozen=True, slots=True)
class AckState:
    """The acknowledgement state of one server: its watermark and the acknowledged pairs inside the window."""

    server: str
    watermark: int = 0
    recent: Mapping[int, int] = field(default_factory=dict)
    pulled: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "recent", MappingProxyType(dict(self.recent)))
        object.__setattr__(self, "pulled", MappingProxyType(dict(self.pulled)))

    @property
    def since(self) -> int:
        """The update time after which executions may be outstanding: the watermark minus the window."""
        return max(0, self.watermark - SAFETY_WINDOW_MS)

    def is_acknowledged(self, execution_id: int, update_time: int) -> bool:
        """Return whether the server acknowledged this execution in the version last updated at ``update_time``."""
        return update_time <= self.since or self.recent.get(execution_id) == update_time

    def with_acks(self, acks: Mapping[int, int]) -> AckState:
        """Return this state with more acknowledged (execution id, update time) pairs."""
        return AckState(self.server, self.watermark, {**self.recent, **acks}, self.pulled)

    def advanced(self, watermark: int) -> AckState:
        """Return this state with the watermark moved forward to ``watermark`` (never back) and pruned."""
        moved = max(self.watermark, watermark)
        since = max(0, moved - SAFETY_WINDOW_MS)
        recent = {execution_id: time for execution_id, time in self.recent.items() if time > since}
        return AckState(self.server, moved, recent, self.pulled)

    def with_pulled(self, pipeline: str, update_time: int) -> AckState:
        """Return this state with the latest server update time seen by a pull of ``pipeline``."""
        pulled = {**self.pulled, pipeline: max(update_time, self.pulled.get(pipeline, 0))}
        return AckState(self.server, self.watermark, self.recent, pulled)


AckStateChange = Callable[[AckState], AckState]


def next_watermark(scanned: Iterable[int], pending: Iterable[int]) -> int:
    """Return how far the watermark may move after a push that read executions updated at ``scanned`` times.

    ``pending`` are the update times of the scanned executions still not acknowledged (failed, not sent, or
    left out by a pipeline filter). The watermark stops at the earliest of them, so they stay inside the next
    scan. Returns 0 when nothing was scanned, which leaves the watermark where it is.
    """
    latest = max(scanned, default=0)
    earliest_pending = min(pending, default=None)
    return latest if earliest_pending is None else min(latest, earliest_pending)


class AckStore:
    """Reads and writes the acknowledgement state of one server in a local MLMD store.

    Callers hold the store's write lock around ``update`` so that two pushes at once do not lose each other's
    acknowledgements.
    """

    def __init__(self, store: MetadataStore, server: str) -> None:
        self._store = store
        self._server = server
        self._type_id: int | None = None

    def load(self) -> AckState:
        """Return the server's state, empty when the store never synced with it."""
        context = self._context()
        if context is None:
            return AckState(self._server)
        return _state_from_context(self._server, context)

    def update(self, change: AckStateChange) -> AckState:
        """Read the state again, apply ``change`` to it, write it and return it."""
        context = self._context()
        current = AckState(self._server) if context is None else _state_from_context(self._server, context)
        state = change(current)
        if context is None:
            context = mlmd.Context(type_id=self._context_type_id(), name=self._server)
        _write_state(context, state)
        self._store.put_contexts([context])
        return state

    def _context(self) -> mlmd.Context | None:
        return self._store.get_context_by_type_and_name(SYNC_CONTEXT_TYPE, self._server)

    def _context_type_id(self) -> int:
        if self._type_id is None:
            self._type_id = self._store.put_context_type(mlmd.ContextType(name=SYNC_CONTEXT_TYPE), can_add_fields=True)
        return self._type_id


def _state_from_context(server: str, context: mlmd.Context) -> AckState:
    custom = context.custom_properties
    watermark = custom[_WATERMARK].int_value if _WATERMARK in custom else 0
    recent: dict[int, int] = {}
    if _RECENT in custom:
        try:
            recent = {int(key): int(value) for key, value in json.loads(custom[_RECENT].string_value).items()}
        except (ValueError, AttributeError) as error:
            # An unreadable list only costs a repeated push of the window, which the server merges once.
            logger.warning("ignoring the unreadable acknowledgements of %s in the local store: %s", server, error)
    pulled = {
        key[len(_PULLED_PREFIX):]: value.int_value for key, value in custom.items() if key.startswith(_PULLED_PREFIX)
    }
    return AckState(server, watermark, recent, pulled)


def _write_state(context: mlmd.Context, state: AckState) -> None:
    custom = context.custom_properties
    custom[_WATERMARK].int_value = state.watermark
    custom[_RECENT].string_value = json.dumps({str(key): value for key, value in sorted(state.recent.items())})
    for pipeline, update_time in state.pulled.items():
        custom[f"{_PULLED_PREFIX}{pipeline}"].int_value = update_time
