"""cmf-airflow: Common Metadata Framework (CMF) lineage for Apache Airflow.

Installing the package enables a listener that records every task try as a CMF execution in a local ML
Metadata store. DAG authors declare local files as inlets and outlets with ``File`` or ``file_asset``, and
log models, metrics and parameters from inside a task through ``current()``.
"""

from __future__ import annotations

from typing import Any

from cmf_airflow.version import __version__

__all__ = ["File", "__version__", "current", "file_asset"]

# Imported on first use: importing Airflow configures it from AIRFLOW_HOME, which the command line must be
# able to set first.
_LAZY = {"File": "cmf_airflow.artifacts", "file_asset": "cmf_airflow.artifacts", "current": "cmf_airflow.api"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cmf_airflow' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
