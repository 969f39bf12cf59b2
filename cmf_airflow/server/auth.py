"""Bearer-token authentication for every endpoint except ``/health``."""

from __future__ import annotations

import hmac
import logging

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health"})


class BearerTokenMiddleware:
    """An ASGI middleware that rejects with 401 every request without ``Authorization: Bearer <token>``.

    The token is compared in constant time, so the time of a rejection does not reveal how much of a guess
    was right.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self._app(scope, receive, send)
            return
        if self._authorized(scope):
            await self._app(scope, receive, send)
            return
        client = scope.get("client") or ("unknown", 0)
        logger.warning("rejected %s %s from %s: missing or wrong bearer token", scope["method"], scope["path"],
                       client[0])
        response = JSONResponse(
            {"detail": "missing or invalid bearer token: send the header 'Authorization: Bearer <token>'"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        header = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value
                break
        scheme, _, credentials = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(credentials.strip(), self._token)
