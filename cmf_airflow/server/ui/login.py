"""The web UI's login and logout pages, which set and clear the session cookie."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from cmf_airflow.server.auth import COOKIE_NAME, session_cookie_value, token_matches

# A login form is a few hundred bytes, so a larger body is not a login.
_MAX_FORM_BYTES = 16 * 1024
_HOME = "/ui/"


def safe_next(target: str | None) -> str:
    """Return ``target`` when it is a page of this UI, else the pipelines page, so login never leaves the site."""
    if not target:
        return _HOME
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target or not (target == "/ui" or target.startswith("/ui/")):
        return _HOME
    return target


def build_login_router(templates: Jinja2Templates, token: str | None) -> APIRouter:
    """Return the routes of ``/ui/login`` and ``/ui/logout`` for a server whose token is ``token``."""
    router = APIRouter()

    @router.get("/ui/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str | None = None) -> Response:  # noqa: A002 - the contract's field
        """Show the login form, or go straight on when the server needs no token."""
        target = safe_next(next)
        if token is None:
            return RedirectResponse(target, status_code=303)
        return _form(templates, request, target, None, 200)

    @router.post("/ui/login")
    async def login(request: Request) -> Response:
        """Check the submitted token and set the session cookie, then go to ``next``."""
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_FORM_BYTES:
                return _form(templates, request, _HOME, "The login form was too large.", 413)
        fields = parse_qs(body.decode("utf-8", "replace"))
        submitted = fields.get("token", [""])[0]
        target = safe_next(fields.get("next", [None])[0])
        if token is None:
            return RedirectResponse(target, status_code=303)
        if not submitted or not token_matches(submitted, token):
            return _form(templates, request, target, "Wrong token: enter the server's token (CMF_SERVER_TOKEN).",
                         401)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE_NAME, session_cookie_value(token), httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
        return response

    @router.get("/ui/logout")
    @router.post("/ui/logout")
    def logout() -> Response:
        """Clear the session cookie and show the login page."""
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
        return response

    return router


def _form(templates: Jinja2Templates, request: Request, target: str, error: str | None, status: int) -> Any:
    return templates.TemplateResponse(request, "login.html", {"next": target, "error": error},
                                      status_code=status)
