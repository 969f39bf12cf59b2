"""HTTP client of a CMF server's API: ``<base URL>/api/...``, a bearer token, timeouts and bounded retries.

Only connection errors and 5xx responses are retried, with a growing delay. A 4xx response is final. A
request whose response timed out is not retried here, because the caller repeats the whole push on its next
run and the server merges a repeated push without creating anything twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx

from cmf_airflow.sync.errors import (
    AuthenticationError,
    RequestRejectedError,
    ServerError,
    ServerTimeoutError,
    ServerUnreachableError,
)

logger = logging.getLogger(__name__)

PUSH_PATH = "/api/mlmd_push"
PULL_PATH = "/api/mlmd_pull"
PIPELINES_PATH = "/api/pipelines"
# The statuses of a push that mean the server stores every execution sent.
ACKNOWLEDGED_STATUSES = frozenset({"success", "exists"})

_RETRIED_STATUS_CODES = frozenset({500, 502, 503, 504})
# The consequence of a failed request, by the path it was sent to.
_CONSEQUENCES = {
    PUSH_PATH: "nothing was lost, the next push sends it",
    PULL_PATH: "the local store is unchanged",
}
_DEFAULT_CONSEQUENCE = "the local store is unchanged"


def normalise_base_url(url: str) -> str:
    """Return the server's base URL without a trailing slash, checking that it is an http(s) URL."""
    value = url.strip().rstrip("/")
    parsed = httpx.URL(value) if value else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(
            f"invalid CMF server URL {url!r}: pass the server's base URL, such as http://127.0.0.1:8080"
        )
    return value


class CmfClient:
    """A connection to one CMF server, with counters of the requests and bytes it sent."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        max_attempts: int = 3,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.requests_sent = 0
        self.bytes_sent = 0
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport, follow_redirects=False
        )

    def __enter__(self) -> CmfClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client's connections."""
        self._http.close()

    def push(self, body: Mapping[str, Any]) -> str:
        """Send one ``mlmd_push`` request and return the server's status, ``success`` or ``exists``."""
        response = self.post(PUSH_PATH, body)
        status = response.get("status") if isinstance(response, Mapping) else None
        if status not in ACKNOWLEDGED_STATUSES:
            raise ServerError(
                f"the CMF server at {self.base_url} returned {response!r} for the push instead of a status of "
                f"success or exists; nothing was lost, the next push sends it again"
            )
        return str(status)

    def pull(self, body: Mapping[str, Any]) -> Any:
        """Send one ``mlmd_pull`` request and return the document in the response, as parsed JSON."""
        return self.post(PULL_PATH, body)

    def pipelines(self) -> list[str]:
        """Return the names of the pipelines the server stores (``GET /api/pipelines``)."""
        response = self._send("GET", PIPELINES_PATH, None)
        items = response.get("pipelines", response.get("items")) if isinstance(response, Mapping) else response
        if not isinstance(items, list):
            raise ServerError(f"the CMF server at {self.base_url} returned {response!r} for {PIPELINES_PATH}")
        return [item["name"] if isinstance(item, Mapping) else str(item) for item in items]

    def post(self, path: str, body: Mapping[str, Any]) -> Any:
        """POST ``body`` as JSON to ``path`` and return the parsed JSON response, raising a SyncError on failure."""
        return self._send("POST", path, body)

    def _send(self, method: str, path: str, body: Mapping[str, Any] | None) -> Any:
        content = None if body is None else json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        headers = {} if content is None else {"Content-Type": "application/json"}
        url = f"{self.base_url}{path}"
        for attempt in range(1, self.max_attempts + 1):
            last = attempt == self.max_attempts
            try:
                self.requests_sent += 1
                self.bytes_sent += len(content or b"")
                response = self._http.request(method, path, content=content, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError) as error:
                # The request never reached the server, or the connection broke: sending it again is safe,
                # because the server merges a repeated push without creating anything twice.
                if not last:
                    self._wait_before_retry(attempt, url, error)
                    continue
                raise ServerUnreachableError(
                    f"cannot reach the CMF server at {self.base_url}: {_describe(error)}; "
                    f"{_CONSEQUENCES.get(path, _DEFAULT_CONSEQUENCE)}"
                ) from error
            except httpx.TimeoutException as error:
                raise self._timed_out(path, error) from error
            except httpx.TransportError as error:
                raise ServerUnreachableError(
                    f"cannot reach the CMF server at {self.base_url}: {_describe(error)}; "
                    f"{_CONSEQUENCES.get(path, _DEFAULT_CONSEQUENCE)}"
                ) from error
            if response.status_code in _RETRIED_STATUS_CODES and not last:
                self._wait_before_retry(attempt, url, f"HTTP {response.status_code}")
                continue
            return self._parse_response(response, path)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _parse_response(self, response: httpx.Response, path: str) -> Any:
        code = response.status_code
        consequence = _CONSEQUENCES.get(path, _DEFAULT_CONSEQUENCE)
        if code in (401, 403):
            raise AuthenticationError(
                f"the CMF server at {self.base_url} rejected the request to {path} with HTTP {code} "
                f"({_detail(response)}): set the server's token as the password of the cmf connection or "
                f"pass --token; {consequence}"
            )
        if 400 <= code < 500:
            detail = _detail(response)
            hint = _TOO_LARGE_HINT if code == 413 else ""
            raise RequestRejectedError(
                f"the CMF server at {self.base_url} rejected the request to {path} with HTTP {code}: {detail}"
                f"{hint}; {consequence}",
                code,
                detail,
            )
        if code >= 300:
            raise ServerError(
                f"the CMF server at {self.base_url} failed on {path} with HTTP {code} after {self.max_attempts} "
                f"attempt(s): {_detail(response)}; {consequence}"
            )
        try:
            return response.json()
        except ValueError as error:
            raise ServerError(
                f"the CMF server at {self.base_url} returned a response to {path} that is not JSON "
                f"({response.text[:200]!r}); check that the URL points at a CMF server"
            ) from error

    def _timed_out(self, path: str, error: Exception) -> ServerTimeoutError:
        if path == PUSH_PATH:
            consequence = (
                "nothing was lost, the next push sends the same executions again and the server merges them once"
            )
        else:
            consequence = _CONSEQUENCES.get(path, _DEFAULT_CONSEQUENCE)
        return ServerTimeoutError(
            f"the CMF server at {self.base_url} did not respond to {path} within {self.timeout:g} s "
            f"([cmf] sync_timeout, {_describe(error)}); {consequence}"
        )

    def _wait_before_retry(self, attempt: int, url: str, reason: object) -> None:
        delay = self.backoff * 2 ** (attempt - 1)
        logger.warning(
            "request to %s failed (%s), attempt %d of %d; retrying in %.1f s",
            url,
            _describe(reason) if isinstance(reason, Exception) else reason,
            attempt,
            self.max_attempts,
            delay,
        )
        time.sleep(delay)


def _describe(error: Exception) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


_TOO_LARGE_HINT = (
    " (lower [cmf] sync_batch_size on this site, or start the server with a larger --max-body-bytes)"
)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, Mapping) and "detail" in body:
        return str(body["detail"])
    return str(body)[:500]
