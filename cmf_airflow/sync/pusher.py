"""Pushing a local store's outstanding executions to a CMF server, one stage batch per request.

A push reads only the executions updated since the server's watermark (minus the safety window) through
MLMD's index on the update time, so a push with nothing new costs the same on a small and on a large store.
The acknowledgement state advances only after a response of ``success`` or ``exists``. So a push that
fails half-way keeps what the server acknowledged, and the next push sends the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ml_metadata.proto import metadata_store_pb2 as mlmd

from cmf_airflow.store import write_lock
from cmf_airflow.sync.local import open_local_store
from cmf_airflow.sync.client import CmfClient
from cmf_airflow.sync.errors import SyncError
from cmf_airflow.sync.reader import StageBatch, StoreReader
from cmf_airflow.sync.state import AckState, AckStore, next_watermark
from cmf_airflow.wire import push_request_body

logger = logging.getLogger(__name__)

# Called after each acknowledged request with the executions it carried and the total to send.
ProgressCallback = Callable[[int, int], None]

# NOTE: change detection follows the executions' update times only. An artifact whose properties change
# later, without a new write of an execution that uses it, is not pushed again.


@dataclass(frozen=True, slots=True)
class PushResult:
    """Counts of one push: executions read and sent, requests, bytes and the server's statuses."""

    server: str
    executions_scanned: int
    executions_sent: int
    batches_merged: int
    batches_known: int
    executions_skipped: int
    requests: int
    bytes_sent: int
    pipelines: tuple[str, ...]

    @property
    def summary(self) -> str:
        """One line for a log or a terminal."""
        if not self.executions_sent:
            text = f"nothing to push to {self.server}: it acknowledged every execution of the local store"
        else:
            text = (
                f"pushed {self.executions_sent} execution(s) of {len(self.pipelines)} pipeline(s) to {self.server} "
                f"in {self.requests} request(s), {self.bytes_sent} bytes: {self.batches_merged} batch(es) merged, "
                f"{self.batches_known} already known"
            )
        if self.executions_skipped:
            text += f" ({self.executions_skipped} execution(s) without a stage or Execution_uuid skipped)"
        return text


def outstanding_count(store_path: str, server: str) -> int:
    """Return how many executions of the store at ``store_path`` the server at ``server`` has not acknowledged."""
    store = open_local_store(store_path, create=False)
    state = AckStore(store, server).load()
    reader = StoreReader(store)
    executions = reader.executions_updated_after(state.since)
    return sum(1 for e in executions if not state.is_acknowledged(e.id, e.last_update_time_since_epoch))


def push(
    store_path: str,
    client: CmfClient,
    *,
    pipelines: Sequence[str] | None = None,
    batch_size: int = 500,
    lock_timeout: float = 10.0,
    progress: ProgressCallback | None = None,
    require_known_pipelines: bool = False,
) -> PushResult:
    """Push the executions of the store at ``store_path`` that ``client``'s server has not acknowledged.

    ``pipelines`` limits the push to those pipelines (DAG ids). With ``require_known_pipelines``, a pipeline
    that the store never recorded raises a SyncError instead of sending nothing, which catches a typo on the
    command line. A scheduled push leaves it off, because a site may not have run a DAG yet. ``progress`` is called after each
    acknowledged request with the number of executions it carried and the number this push sends in all.
    Raises a SyncError when the server cannot be reached or rejects a request, after recording what it
    acknowledged until then. Raises StoreError when the store does not exist.
    """
    store = open_local_store(store_path, create=False)
    acks = AckStore(store, client.base_url)
    reader = StoreReader(store)
    state = acks.load()
    if pipelines and require_known_pipelines:
        _check_pipelines(reader, pipelines)
    plan = _plan(reader, state, pipelines, max(1, batch_size))
    if plan.unsendable:
        # Recorded as handled, so that they neither hold the watermark back nor warn again on every push.
        _record_acks(acks, store_path, lock_timeout, plan.unsendable)

    handled = {e.id for e in plan.unsendable}
    total = sum(len(batch.executions) for batch in plan.batches)
    counts = {"merged": 0, "known": 0, "sent": 0}
    requests_before, bytes_before = client.requests_sent, client.bytes_sent
    try:
        for batch in plan.batches:
            status = _push_batch(reader, client, batch)
            _record_acks(acks, store_path, lock_timeout, batch.executions)
            handled.update(e.id for e in batch.executions)
            counts["merged" if status == "success" else "known"] += 1
            counts["sent"] += len(batch.executions)
            if progress is not None:
                progress(len(batch.executions), total)
    finally:
        pending = [e.last_update_time_since_epoch for e in plan.outstanding if e.id not in handled]
        watermark = next_watermark((e.last_update_time_since_epoch for e in plan.scanned), pending)
        if watermark > state.watermark:
            with write_lock(store_path, lock_timeout):
                acks.update(lambda current: current.advanced(watermark))

    return PushResult(
        server=client.base_url,
        executions_scanned=len(plan.scanned),
        executions_sent=counts["sent"],
        batches_merged=counts["merged"],
        batches_known=counts["known"],
        executions_skipped=len(plan.unsendable),
        requests=client.requests_sent - requests_before,
        bytes_sent=client.bytes_sent - bytes_before,
        pipelines=tuple(sorted({batch.pipeline_name for batch in plan.batches})),
    )


@dataclass(frozen=True, slots=True)
class _Plan:
    scanned: list[mlmd.Execution]
    outstanding: list[mlmd.Execution]
    batches: list[StageBatch]
    unsendable: tuple[mlmd.Execution, ...]


def _check_pipelines(reader: StoreReader, pipelines: Sequence[str]) -> None:
    known = reader.pipeline_names()
    unknown = [name for name in pipelines if name not in known]
    if unknown:
        raise SyncError(
            f"the local store contains no pipeline {', '.join(unknown)} (pipelines: {', '.join(known) or 'none'}): "
            "pass a DAG id that the store recorded"
        )


def _plan(reader: StoreReader, state: AckState, pipelines: Sequence[str] | None, batch_size: int) -> _Plan:
    scanned = reader.executions_updated_after(state.since)
    outstanding = [e for e in scanned if not state.is_acknowledged(e.id, e.last_update_time_since_epoch)]
    grouping = reader.group_by_stage(outstanding, batch_size)
    batches = [batch for batch in grouping.batches if pipelines is None or batch.pipeline_name in pipelines]
    for execution in grouping.unsendable:
        logger.warning(
            "execution %s (%s) is not pushed: it has no stage context or no Execution_uuid, which a CMF server "
            "needs to merge it",
            execution.id,
            execution.type,
        )
    return _Plan(scanned, outstanding, batches, grouping.unsendable)


def _push_batch(reader: StoreReader, client: CmfClient, batch: StageBatch) -> str:
    document = reader.batch_document(batch)
    status = client.push(push_request_body(batch.pipeline_name, document))
    logger.debug(
        "server %s returned %s for %d execution(s) of stage %s",
        client.base_url,
        status,
        len(batch.executions),
        batch.stage.name,
    )
    return status


def _record_acks(acks: AckStore, store_path: str, lock_timeout: float, executions: Sequence[mlmd.Execution]) -> None:
    pairs = {e.id: e.last_update_time_since_epoch for e in executions}
    with write_lock(store_path, lock_timeout):
        acks.update(lambda current: current.with_acks(pairs))

