"""The FastAPI application of the central CMF server: CMF's push and pull, listings, lineage and the web UI."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ml_metadata import errors as mlmd_errors
from starlette.concurrency import run_in_threadpool

from cmf_airflow.server.auth import BearerTokenMiddleware
from cmf_airflow.server.lineage import artifact_lineage
from cmf_airflow.server.queries import (
    TypeNames,
    list_pipelines,
    page_of_artifacts,
    page_of_executions,
    pipeline_context,
    read_document,
)
from cmf_airflow.server.settings import ServerSettings
from cmf_airflow.server.stores import PipelineLocks, StorePool, StoreUnavailable, redact
from cmf_airflow.server.ui import install_ui
from cmf_airflow.server.ui.database import SchemaMismatch
from cmf_airflow.version import __version__
from cmf_airflow.wire import WireDocument, WireError, parse_pull_request, parse_push_request

logger = logging.getLogger(__name__)


class NotFound(LookupError):
    """A pipeline, execution or artifact that the store does not contain, reported with status 404."""


def create_app(settings: ServerSettings) -> FastAPI:
    """Build the server application for ``settings``. The MLMD store is opened when the app starts."""
    pool = StorePool(settings.store, settings.pool_size, settings.pool_timeout)
    locks = PipelineLocks()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(pool.open_first)
        try:
            await run_in_threadpool(ui_database.check_schema)
        except SchemaMismatch as error:
            # The sync API works through MLMD's own API, so only the web UI is unavailable.
            logger.error("the web UI is unavailable: %s", error)
        logger.info("CMF server ready on store %s (%d connection(s), token %s), web UI at /ui/",
                    redact(settings.store), pool.size, "required" if settings.token else "not required")
        yield
        ui_database.close()

    app = FastAPI(title="cmf-airflow server", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.pool = pool
    if settings.token:
        app.add_middleware(BearerTokenMiddleware, token=settings.token)
    _add_error_handlers(app)
    _add_sync_routes(app, settings, pool, locks)
    _add_query_routes(app, settings, pool)
    # Added after the token middleware, so that the UI's security headers wrap its redirects to the login page.
    ui_database = install_ui(app, settings)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(WireError)
    async def wire_error(request: Request, error: WireError) -> JSONResponse:
        logger.info("rejected %s %s with %d: %s", request.method, request.url.path, error.status_code, error)
        return JSONResponse({"detail": str(error)}, status_code=error.status_code)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, error: NotFound) -> JSONResponse:
        logger.info("%s %s: %s", request.method, request.url.path, error)
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(StoreUnavailable)
    async def unavailable(_: Request, error: StoreUnavailable) -> JSONResponse:
        logger.error("store unavailable: %s", error)
        return JSONResponse({"detail": str(error)}, status_code=503)

    @app.exception_handler(mlmd_errors.InvalidArgumentError)
    async def invalid_argument(_: Request, error: mlmd_errors.InvalidArgumentError) -> JSONResponse:
        logger.warning("MLMD rejected a request: %s", error)
        return JSONResponse({"detail": f"MLMD rejected the data: {error}"}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = ", ".join(
            f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg', 'invalid')}"
            for item in error.errors()
        )
        logger.info("rejected %s %s with 422: %s", request.method, request.url.path, problems)
        return JSONResponse({"detail": f"invalid request: {problems}"}, status_code=422)


async def read_json_body(request: Request, limit: int) -> Any:
    """Read and parse the request's JSON body, failing with 413 as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise WireError(f"the request body of {int(declared)} bytes exceeds the limit of {limit} bytes: "
                        "send fewer executions per request", 413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise WireError(f"the request body exceeds the limit of {limit} bytes: send fewer executions per "
                            "request", 413)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except ValueError as error:
        raise WireError(f"the request body is not valid JSON: {error}", 400) from error


def _add_sync_routes(app: FastAPI, settings: ServerSettings, pool: StorePool, locks: PipelineLocks) -> None:
    @app.get("/health")
    async def health() -> dict[str, str]:
        """Report that the server runs. This endpoint needs no token."""
        return {"status": "ok", "version": __version__}

    # CMF clients reach a CMF server either behind a proxy that serves the API under /api/ or directly at
    # its root, so both paths are served.
    @app.post("/api/mlmd_push")
    @app.post("/mlmd_push", include_in_schema=False)
    async def mlmd_push(request: Request) -> dict[str, str]:
        """Merge a CMF document and return {"status": "success"}, or {"status": "exists"} when nothing was new."""
        body = await read_json_body(request, settings.max_body_bytes)
        return await run_in_threadpool(_push, body, pool, locks)

    @app.post("/api/mlmd_pull")
    @app.post("/mlmd_pull", include_in_schema=False)
    async def mlmd_pull(request: Request) -> dict[str, Any]:
        """Send a pipeline as a CMF document, whole or only what changed after ``last_sync_time``."""
        body = await read_json_body(request, settings.max_body_bytes)
        return await run_in_threadpool(_pull, body, pool)


def _push(body: Any, pool: StorePool, locks: PipelineLocks) -> dict[str, str]:
    pipeline_name, exec_uuid, document = parse_push_request(body)
    document = _only_pipeline(document, pipeline_name)
    if exec_uuid is not None:
        document = _only_execution(document, exec_uuid)
    with locks.lock(pipeline_name), pool.connection() as pooled:
        result = pooled.merger.merge(document)
    logger.info(
        "push of pipeline %s: %d executions sent, %d created, %d updated, %d artifacts and %d events created",
        pipeline_name, document.execution_count, result.executions_created, result.executions_updated,
        result.artifacts_created, result.events_created,
    )
    return {"status": "success" if result.changed else "exists"}


def _only_pipeline(document: WireDocument, pipeline_name: str) -> WireDocument:
    # Pushes are serialised per pipeline_name, so only that pipeline is merged under its lock.
    return WireDocument(tuple(item for item in document.pipelines if item.name == pipeline_name))


def _only_execution(document: WireDocument, exec_uuid: str) -> WireDocument:
    pipelines = []
    for pipeline in document.pipelines:
        stages = []
        for stage in pipeline.stages:
            selected_executions = tuple(item for item in stage.executions
                                        if exec_uuid in (item.execution_uuid or "").split(","))
            if selected_executions:
                stages.append(replace(stage, executions=selected_executions))
        pipelines.append(replace(pipeline, stages=tuple(stages)))
    selected = WireDocument(tuple(pipelines))
    if selected.execution_count == 0:
        raise NotFound(f"the document contains no execution with Execution_uuid {exec_uuid!r}")
    return selected


def _pull(body: Any, pool: StorePool) -> dict[str, Any]:
    pipeline_name, exec_uuid, last_sync_time = parse_pull_request(body)
    with pool.connection() as pooled:
        document = read_document(pooled.store, pipeline_name, exec_uuid=exec_uuid, since_ms=last_sync_time)
    if document is None:
        raise NotFound(f"pipeline {pipeline_name!r} not found on this server")
    if exec_uuid is not None and document.execution_count == 0:
        raise NotFound(f"pipeline {pipeline_name!r} has no execution with Execution_uuid {exec_uuid!r}")
    return document.to_json()


def _add_query_routes(app: FastAPI, settings: ServerSettings, pool: StorePool) -> None:
    page_limit = Query(settings.page_limit, ge=1, le=settings.max_page_limit,
                       description="maximum number of items in the page")
    after_id = Query(0, ge=0, description="return items whose id is above this one (the previous next_after)")

    @app.get("/api/pipelines")
    async def pipelines() -> dict[str, Any]:
        """List every pipeline with its stages."""
        def read() -> list[dict[str, Any]]:
            with pool.connection() as pooled:
                return list_pipelines(pooled.store)
        return {"pipelines": await run_in_threadpool(read)}

    @app.get("/api/pipelines/{name}/executions")
    async def executions(name: str, after: int = after_id, limit: int = page_limit) -> dict[str, Any]:
        """List a pipeline's executions by id, one page at a time."""
        return await run_in_threadpool(_page, pool, name, after, limit, page_of_executions, "executions")

    @app.get("/api/pipelines/{name}/artifacts")
    async def artifacts(name: str, after: int = after_id, limit: int = page_limit) -> dict[str, Any]:
        """List the artifacts attributed to a pipeline by id, one page at a time."""
        return await run_in_threadpool(_page, pool, name, after, limit, page_of_artifacts, "artifacts")

    @app.get("/api/artifacts/{artifact_id}/lineage")
    async def lineage(
        artifact_id: int,
        depth: int = Query(5, ge=1, le=settings.max_lineage_depth, description="executions to follow each way"),
    ) -> dict[str, Any]:
        """Send an artifact's upstream and downstream executions and artifacts."""
        def read() -> dict[str, Any] | None:
            with pool.connection() as pooled:
                return artifact_lineage(pooled.store, artifact_id, depth)
        found = await run_in_threadpool(read)
        if found is None:
            raise NotFound(f"artifact {artifact_id} not found on this server")
        return found


def _page(pool: StorePool, name: str, after: int, limit: int, reader: Any, key: str) -> dict[str, Any]:
    with pool.connection() as pooled:
        pipeline = pipeline_context(pooled.store, name)
        if pipeline is None:
            raise NotFound(f"pipeline {name!r} not found on this server")
        items, next_after = reader(pooled.store, pipeline, after, limit, TypeNames(pooled.store))
    return {"pipeline": name, key: items, "next_after": next_after}
