"""Errors of the sync client. Each message names the server, what failed and what happens next."""

from __future__ import annotations


class SyncError(Exception):
    """A push, pull or export that could not finish. Nothing recorded in the local store is lost by it."""


class ServerUnreachableError(SyncError):
    """No connection to the CMF server could be made, even after the retries."""


class ServerTimeoutError(SyncError):
    """The CMF server accepted the request but did not respond within ``[cmf] sync_timeout``."""


class AuthenticationError(SyncError):
    """The CMF server rejected the request's bearer token (HTTP 401 or 403)."""


class RequestRejectedError(SyncError):
    """The CMF server rejected the request (HTTP 4xx other than 401 and 403), with its detail."""

    def __init__(self, message: str, status_code: int, detail: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


class ServerError(SyncError):
    """The CMF server failed (HTTP 5xx) on every attempt, or sent a response that is not CMF's."""
