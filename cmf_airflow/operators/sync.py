"""Airflow operators that push the local CMF store to a CMF server and pull pipelines from it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from cmf_airflow import conf

from cmf_airflow.compat import BaseOperator

logger = logging.getLogger(__name__)


class _CmfSyncOperator(BaseOperator):
    template_fields: Sequence[str] = ("cmf_conn_id", "pipelines", "store")
    ui_color = "#7fb8d6"

    def __init__(
        self,
        *,
        cmf_conn_id: str | None = None,
        pipelines: Sequence[str] | str | None = None,
        store: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cmf_conn_id = cmf_conn_id
        self.pipelines = pipelines
        self.store = store

    def _pipeline_names(self) -> list[str] | None:
        # A template that renders one name yields a string, which must not be read as a list of characters.
        if self.pipelines is None:
            return None
        if isinstance(self.pipelines, str):
            names = [part.strip() for part in self.pipelines.split(",")]
        else:
            names = [str(part).strip() for part in self.pipelines]
        return [name for name in names if name] or None

    def _store_path(self) -> str:
        return self.store or conf.store()


class CmfPushOperator(_CmfSyncOperator):
    """Push the executions of the local CMF store that the CMF server has not acknowledged yet.

    :param cmf_conn_id: the Airflow connection of type ``cmf``, by default ``[cmf] conn_id``. Templated.
    :param pipelines: pipelines (DAG ids) to push, a list or a comma-separated string; None pushes every
        pipeline. Templated.
    :param store: the local MLMD store, by default ``[cmf] store``. Templated.

    The task fails when the server cannot be reached or rejects a batch. The acknowledgement state then
    covers only what the server acknowledged, so the next run pushes everything still outstanding. The
    return value (an XCom) counts what was sent.
    """

    def execute(self, context: Any) -> dict[str, Any]:
        """Push, log a summary line and return the counts."""
        from cmf_airflow.hooks.cmf import CmfHook
        from cmf_airflow.sync import push

        hook = CmfHook(self.cmf_conn_id)
        with hook.get_client() as client:
            result = push(
                self._store_path(),
                client,
                pipelines=self._pipeline_names(),
                batch_size=conf.sync_batch_size(),
                lock_timeout=conf.lock_timeout(),
            )
        logger.info("%s", result.summary)
        return {
            "server": result.server,
            "executions_sent": result.executions_sent,
            "batches_merged": result.batches_merged,
            "batches_known": result.batches_known,
            "requests": result.requests,
            "bytes_sent": result.bytes_sent,
            "pipelines": list(result.pipelines),
        }


class CmfPullOperator(_CmfSyncOperator):
    """Pull pipelines from the CMF server into the local CMF store, merging them idempotently.

    :param cmf_conn_id: the Airflow connection of type ``cmf``, by default ``[cmf] conn_id``. Templated.
    :param pipelines: pipelines to pull, a list or a comma-separated string; None pulls every pipeline the
        server stores. Templated.
    :param store: the local MLMD store, by default ``[cmf] store``. Templated.

    Pulled executions count as acknowledged by the server, so the next push does not send them back.
    """

    def execute(self, context: Any) -> dict[str, Any]:
        """Pull, log a summary line and return the counts."""
        from cmf_airflow.hooks.cmf import CmfHook
        from cmf_airflow.sync import pull

        hook = CmfHook(self.cmf_conn_id)
        with hook.get_client() as client:
            result = pull(
                self._store_path(), client, pipelines=self._pipeline_names(), lock_timeout=conf.lock_timeout()
            )
        logger.info("%s", result.summary)
        return {
            "server": result.server,
            "pipelines": list(result.pipelines),
            "executions_received": result.executions_received,
            "executions_created": result.merge.executions_created,
            "executions_updated": result.merge.executions_updated,
        }
