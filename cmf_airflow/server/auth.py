"""Token authentication: a bearer header for every endpoint, and a session cookie for the web UI's pages.

``/health``, the ``/`` redirect, the login and logout pages and the UI's static files need no token. The UI's
pages and its JSON under ``/ui/api/`` also accept the ``cmf_token`` cookie that the login page sets. The sync
API accepts only the bearer header, so a browser that has the cookie cannot push.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from urllib.parse import quote

from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/", "/ui/login", "/ui/logout"})
OPEN_PREFIXES = ("/ui/static/",)
UI_PREFIX = "/ui"
UI_API_PREFIX = "/ui/api/"
COOKIE_NAME = "cmf_token"


def session_cookie_value(token: str) -> str:
    """Return the cookie value that proves knowledge of ``token``.

    The cookie contains an HMAC of the token rather than the token, so a copied cookie opens the web UI but
    cannot be sent as the bearer token of the sync API.
    """
    return hmac.new(token.encode(), b"cmf-airflow web UI session", hashlib.sha256).hexdigest()


def token_matches(candidate: str, token: str) -> bool:
    """Compare ``candidate`` with ``token`` in constant time."""
    return hmac.compare_digest(candidate.encode(), token.encode())


class BearerTokenMiddleware:
    """An ASGI middleware that rejects every request that carries neither the bearer token nor the UI cookie.

    The token and the cookie are compared in constant time, so the time of a rejection does not reveal how
    much of a guess was right. A page of the web UI without credentials is redirected to the login page,
    anything else gets 401.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._token = token.encode()
        self._cookie = session_cookie_value(token).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_open(scope["path"]):
            await self._app(scope, receive, send)
            return
        path = scope["path"]
        is_ui = path == UI_PREFIX or path.startswith(UI_PREFIX + "/")
        if self._has_bearer(scope) or (is_ui and self._has_cookie(scope)):
            await self._app(scope, receive, send)
            return
        client = scope.get("client") or ("unknown", 0)
        logger.warning("rejected %s %s from %s: missing or wrong token", scope["method"], path, client[0])
        if is_ui and not path.startswith(UI_API_PREFIX) and scope["method"] in ("GET", "HEAD"):
            target = path + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
            response = RedirectResponse(f"/ui/login?next={quote(target, safe='')}", status_code=303)
        else:
            response = JSONResponse(
                {"detail": "missing or invalid bearer token: send the header 'Authorization: Bearer <token>'"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        await response(scope, receive, send)

    def _has_bearer(self, scope: Scope) -> bool:
        header = _header(scope, b"authorization")
        scheme, _, credentials = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(credentials.strip(), self._token)

    def _has_cookie(self, scope: Scope) -> bool:
        # Parsed by hand: http.cookies rejects a whole header for one malformed cookie of another site.
        for part in _header(scope, b"cookie").split(b";"):
            name, _, value = part.strip().partition(b"=")
            if name == COOKIE_NAME.encode() and hmac.compare_digest(value.strip(b'"'), self._cookie):
                return True
        return False


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return b""
