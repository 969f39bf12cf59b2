"""The Airflow plugin that installs the CMF listener for every DAG, found through ``airflow.plugins``.

It also adds the "CMF lineage" extra link to every operator, which opens the task instance's execution on the
central CMF server.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from cmf_airflow.links import CmfLineageLink
from cmf_airflow.listener import listener


class CmfPlugin(AirflowPlugin):
    """Registers cmf-airflow's task listener and its extra link on all operators."""

    name = "cmf"
    listeners = [listener]
    global_operator_extra_links = [CmfLineageLink()]
