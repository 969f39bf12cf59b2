"""Pulling pipelines from a CMF server into the local store, through the same idempotent merge as the server's.

An execution the pull creates, or updates while the server had already acknowledged the local version,
counts as acknowledged, so the next push does not send it back. An execution that had changes the server
has not acknowledged stays outstanding, so the pull never hides a local change from the next push.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ml_metadata import errors as mlmd_errors
from ml_metadata.proto import metadata_store_pb2 as mlmd

from cmf_airflow.merge import MergeResult, merge_document
from cmf_airflow.model import execution_external_id
from cmf_airflow.store import write_lock
from cmf_airflow.sync.local import open_local_store
from cmf_airflow.sync.client import CmfClient
from cmf_airflow.sync.errors import RequestRejectedError, ServerError, SyncError
from cmf_airflow.sync.state import SAFETY_WINDOW_MS, AckState, AckStore
from cmf_airflow.wire import WireDocument, WireError, parse_document, pull_request_body

if TYPE_CHECKING:
    from ml_metadata.metadata_store import MetadataStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PullResult:
    """Counts of one pull: executions received from the server and objects written into the local store."""

    server: str
    pipelines: tuple[str, ...]
    executions_received: int
    merge: MergeResult

    @property
    def summary(self) -> str:
        """One line for a log or a terminal."""
        merge = self.merge
        return (
            f"pulled {self.executions_received} execution(s) of {len(self.pipelines)} pipeline(s) from "
            f"{self.server}: {merge.executions_created} created, {merge.executions_updated} updated, "
            f"{merge.artifacts_created} artifact(s) and {merge.events_created} event(s) created"
        )


def pull(
    store_path: str,
    client: CmfClient,
    *,
    pipelines: Sequence[str] | None = None,
    full: bool = False,
    lock_timeout: float = 10.0,
) -> PullResult:
    """Pull ``pipelines`` (every pipeline on the server when None) into the store at ``store_path``.

    Each pipeline requests only what changed on the server since its previous pull, unless ``full``.
    Raises a SyncError when the server cannot be reached, does not have a requested pipeline, or returns a
    document that is not valid.
    """
    names = list(pipelines) if pipelines is not None else _server_pipelines(client)
    store = open_local_store(store_path)
    acks = AckStore(store, client.base_url)
    received = 0
    merged = MergeResult()
    for name in names:
        state = acks.load()
        since = None if full else state.pulled.get(name)
        document = _fetch(client, name, None if since is None else max(0, since - SAFETY_WINDOW_MS))
        received += document.execution_count
        merged += _merge(store, store_path, acks, state, document, lock_timeout)
        latest = _latest_update(document)
        if latest:
            with write_lock(store_path, lock_timeout):
                acks.update(lambda current: current.with_pulled(name, latest))
    return PullResult(client.base_url, tuple(names), received, merged)


def _server_pipelines(client: CmfClient) -> list[str]:
    try:
        return client.pipelines()
    except RequestRejectedError as error:
        # An unmodified CMF server has no endpoint that lists pipelines.
        raise SyncError(
            f"the CMF server at {client.base_url} does not list its pipelines (HTTP {error.status_code} for "
            "GET /api/pipelines): name the pipelines to pull"
        ) from error


def _fetch(client: CmfClient, pipeline: str, last_sync_time: int | None) -> WireDocument:
    try:
        response = client.pull(pull_request_body(pipeline, None, last_sync_time))
    except RequestRejectedError as error:
        if error.status_code == 404:
            raise SyncError(
                f"the CMF server at {client.base_url} has no pipeline {pipeline!r} ({error.detail}); "
                "check the name, or push it first"
            ) from error
        raise
    try:
        return parse_document(response)
    except WireError as error:
        raise ServerError(
            f"the CMF server at {client.base_url} returned a document for the pull of {pipeline!r} that is not "
            f"valid: {error}; the local store is unchanged"
        ) from error


def _merge(
    store: MetadataStore,
    store_path: str,
    acks: AckStore,
    state: AckState,
    document: WireDocument,
    lock_timeout: float,
) -> MergeResult:
    uuids = [e.execution_uuid for p in document.pipelines for s in p.stages for e in s.executions if e.execution_uuid]
    external_ids = [execution_external_id(uuid) for uuid in uuids]
    with write_lock(store_path, lock_timeout):
        before = {e.external_id: e for e in _executions(store, external_ids)}
        result = merge_document(store, document)
        after = _executions(store, external_ids)
        acked = {}
        for execution in after:
            previous = before.get(execution.external_id)
            if previous is None:
                acked[execution.id] = execution.last_update_time_since_epoch
            elif state.is_acknowledged(previous.id, previous.last_update_time_since_epoch):
                acked[execution.id] = execution.last_update_time_since_epoch
        if acked:
            acks.update(lambda current: current.with_acks(acked))
    logger.info("merged %d pulled execution(s): %s", len(uuids), result)
    return result


def _executions(store: MetadataStore, external_ids: list[str]) -> list[mlmd.Execution]:
    found = []
    for start in range(0, len(external_ids), 1000):
        try:
            found.extend(store.get_executions_by_external_ids(external_ids[start : start + 1000]))
        except mlmd_errors.NotFoundError:
            pass  # MLMD raises instead of returning an empty list when none of the ids exists
    return found


def _latest_update(document: WireDocument) -> int:
    times = [e.last_update_time_since_epoch for p in document.pipelines for s in p.stages for e in s.executions]
    return max(times, default=0)
