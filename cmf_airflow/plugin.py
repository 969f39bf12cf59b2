"""The Airflow plugin that installs the CMF listener for every DAG, found through ``airflow.plugins``."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from cmf_airflow.listener import listener


class CmfPlugin(AirflowPlugin):
    """Registers cmf-airflow's task listener."""

    name = "cmf"
    listeners = [listener]
