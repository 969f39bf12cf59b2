"""The central CMF server: a FastAPI app over MLMD (PostgreSQL in production, SQLite embedded)."""

from __future__ import annotations

import logging

from cmf_airflow.server.settings import DEFAULT_MAX_BODY_BYTES, DEFAULT_STORE, ServerSettings

__all__ = ["ServerSettings", "create_app", "run"]


def create_app(settings: ServerSettings):
    """Build the FastAPI application for ``settings`` (see ``cmf_airflow.server.app``)."""
    from cmf_airflow.server.app import create_app as build

    return build(settings)


def run(
    host: str = "127.0.0.1",
    port: int = 8080,
    store: str = DEFAULT_STORE,
    token: str | None = None,
    *,
    log_level: str = "info",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    pool_size: int = 4,
) -> None:
    """Serve the CMF server under uvicorn until interrupted."""
    import uvicorn

    settings = ServerSettings(store=store, token=token or None, max_body_bytes=max_body_bytes, pool_size=pool_size)
    logging.getLogger("cmf_airflow").setLevel(log_level.upper())
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)
