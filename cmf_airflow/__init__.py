"""cmf-airflow: Common Metadata Framework (CMF) lineage for Apache Airflow.

Installing the package enables a listener that records every task try as a CMF execution in a local ML
Metadata store. DAG authors declare local files as inlets and outlets with ``File`` or ``file_asset``.
"""

from __future__ import annotations

from typing import Any

from cmf_airflow.version import __version__

__all__ = ["File", "__version__", "file_asset"]


def __getattr__(name: str) -> Any:
    # Imported on first use: importing Airflow configures it from AIRFLOW_HOME, which the command line
    # must be able to set first.
    if name in ("File", "file_asset"):
        from cmf_airflow import artifacts

        return getattr(artifacts, name)
    raise AttributeError(f"module 'cmf_airflow' has no attribute {name!r}")
