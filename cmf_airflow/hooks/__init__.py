"""Airflow hooks of cmf-airflow: the local CMF store, and the connection to a central CMF server.

Each hook is imported on first use, so that importing one does not import the others' dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CmfStoreHook": "cmf_airflow.hooks.store",
    "LocalStore": "cmf_airflow.hooks.store",
    "CmfHook": "cmf_airflow.hooks.cmf",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cmf_airflow.hooks' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
