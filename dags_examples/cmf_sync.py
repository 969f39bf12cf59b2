"""Scheduled sync of this site's CMF metadata to the central CMF server, every 15 minutes.

First the versioned artifacts go to the DVC remote, then the metadata goes to the server of the Airflow
connection ``cmf_default`` (type ``cmf``), so the server never lists an artifact whose data is not on the
remote yet. The DVC step runs only when a DVC workspace is configured: the DAG param ``dvc_workspace``, or
else the Airflow Variable ``cmf_dvc_workspace``. Without one it logs that there is nothing to push.

The tag ``cmf:no-lineage`` keeps the CMF listener from recording this DAG's own tasks. A run that cannot
reach the server fails and loses nothing: the next run pushes everything still outstanding.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from cmf_airflow.compat import DAG
from cmf_airflow.operators.dvc import DvcPushOperator
from cmf_airflow.operators.sync import CmfPushOperator

logger = logging.getLogger(__name__)

WORKSPACE_VARIABLE = "cmf_dvc_workspace"


class OptionalDvcPushOperator(DvcPushOperator):
    """``DvcPushOperator`` that does nothing, and logs why, when its workspace renders empty."""

    def execute(self, context: Any) -> dict[str, Any] | None:
        """Push to the DVC remote, or log that no DVC workspace is configured."""
        if not str(self.workspace or "").strip():
            logger.info(
                "no DVC workspace configured (DAG param dvc_workspace or Airflow Variable %s): no artifact "
                "data to push",
                WORKSPACE_VARIABLE,
            )
            return None
        return super().execute(context)


with DAG(
    dag_id="cmf_sync",
    description="Push versioned artifacts to the DVC remote, then CMF metadata to the CMF server",
    schedule=timedelta(minutes=15),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={"dvc_workspace": ""},
    tags=["cmf", "cmf:no-lineage"],
) as dag:
    push_artifacts = OptionalDvcPushOperator(
        task_id="push_artifacts",
        workspace="{{ params.dvc_workspace or var.value.get('" + WORKSPACE_VARIABLE + "', '') }}",
    )
    push_metadata = CmfPushOperator(task_id="push_metadata", retries=0)

    push_artifacts >> push_metadata
