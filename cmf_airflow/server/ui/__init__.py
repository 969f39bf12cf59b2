"""The central server's web UI under ``/ui``: pages rendered on the server from read-only SQL over MLMD's tables.

``install_ui`` adds the pages, the static files, the login pages and the security headers to the server app.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from cmf_airflow.server.settings import ServerSettings
from cmf_airflow.server.ui import present
from cmf_airflow.server.ui.catalog import Catalog
from cmf_airflow.server.ui.database import ReadOnlyDatabase, SchemaMismatch
from cmf_airflow.server.ui.login import build_login_router
from cmf_airflow.server.ui.pages import PageError, Pages, UiLimits, build_page_router
from cmf_airflow.server.ui.security import SecurityHeadersMiddleware

logger = logging.getLogger(__name__)

_SERVER_FOLDER = Path(__file__).resolve().parent.parent
TEMPLATES_FOLDER = _SERVER_FOLDER / "templates"
STATIC_FOLDER = _SERVER_FOLDER / "static"


def build_templates(*, signed_in: bool = False) -> Jinja2Templates:
    """Return the UI's Jinja2 templates, with autoescaping on for every template and the UI's filters.

    ``signed_in`` (the server has a token, so a page is only seen after signing in) adds a sign-out link.
    """
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_FOLDER)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["duration"] = present.format_duration
    environment.filters["epoch_ms"] = present.format_epoch_ms
    environment.filters["value"] = present.format_value
    environment.filters["short"] = present.short_hash
    environment.globals["signed_in"] = signed_in
    return Jinja2Templates(env=environment)


def install_ui(app: FastAPI, settings: ServerSettings, limits: UiLimits | None = None) -> ReadOnlyDatabase:
    """Add the web UI to ``app`` and return its database connections, which the caller closes at shutdown."""
    database = ReadOnlyDatabase(settings.store, settings.pool_size, settings.pool_timeout)
    limits = limits or UiLimits(max_graph_depth=settings.max_lineage_depth,
                                graph_depth=min(5, settings.max_lineage_depth))
    templates = build_templates(signed_in=bool(settings.token))
    pages = Pages(Catalog(database), templates, limits)

    app.add_middleware(SecurityHeadersMiddleware)
    app.mount("/ui/static", StaticFiles(directory=str(STATIC_FOLDER)), name="ui-static")
    app.include_router(build_login_router(templates, settings.token))
    app.include_router(build_page_router(pages))

    @app.get("/", include_in_schema=False)
    @app.get("/ui", include_in_schema=False)
    def home() -> Response:
        """Send the browser to the pipelines page."""
        return RedirectResponse("/ui/", status_code=302)

    @app.exception_handler(PageError)
    async def page_error(request: Request, error: PageError) -> Response:
        logger.info("%s %s: %d %s", request.method, request.url.path, error.status, error.message)
        return pages.render(request, "error.html", error.status, title=error.title, message=error.message)

    @app.exception_handler(SchemaMismatch)
    async def schema_mismatch(request: Request, error: SchemaMismatch) -> Response:
        logger.error("web UI unavailable: %s", error)
        return pages.render(request, "error.html", 500, title="Unsupported MLMD schema", message=str(error))

    return database
