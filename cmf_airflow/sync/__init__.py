"""The sync client: push a local CMF store to a CMF server, pull pipelines from it, export CMF documents.

The local store is the durable outbox. A push sends only what the server has not acknowledged, keeps the
acknowledgements in the local store and loses nothing when the server is down. Names are imported on first
use, so that the command line starts without loading ML Metadata and httpx.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CmfClient": "cmf_airflow.sync.client",
    "AuthenticationError": "cmf_airflow.sync.errors",
    "RequestRejectedError": "cmf_airflow.sync.errors",
    "ServerError": "cmf_airflow.sync.errors",
    "ServerTimeoutError": "cmf_airflow.sync.errors",
    "ServerUnreachableError": "cmf_airflow.sync.errors",
    "SyncError": "cmf_airflow.sync.errors",
    "export_document": "cmf_airflow.sync.reader",
    "PullResult": "cmf_airflow.sync.puller",
    "pull": "cmf_airflow.sync.puller",
    "PushResult": "cmf_airflow.sync.pusher",
    "outstanding_count": "cmf_airflow.sync.pusher",
    "push": "cmf_airflow.sync.pusher",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cmf_airflow.sync' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
