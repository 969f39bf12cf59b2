"""Airflow operators of cmf-airflow.

Each operator is imported on first use, so that importing one does not import the others' dependencies
(DVC for ``DvcPushOperator``, the sync client for the push and pull operators).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CmfPythonOperator": "cmf_airflow.operators.python",
    "cmf_task": "cmf_airflow.operators.python",
    "DvcPushOperator": "cmf_airflow.operators.dvc",
    "CmfPushOperator": "cmf_airflow.operators.sync",
    "CmfPullOperator": "cmf_airflow.operators.sync",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cmf_airflow.operators' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
