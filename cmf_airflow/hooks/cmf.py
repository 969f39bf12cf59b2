"""The Airflow connection type ``cmf`` and its hook: where the central CMF server is and its token.

A connection of type ``cmf`` (default id ``cmf_default``) keeps the host, the port, the scheme (``http`` or
``https``) in the schema field and the bearer token as the password. The host may carry a path prefix, for
a server behind a proxy at ``https://example.org/cmf``. Airflow 3 workers read connections through the Task
SDK, which ``BaseHook.get_connection`` does on both Airflow majors.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import TYPE_CHECKING, Any

from cmf_airflow import conf

from cmf_airflow.compat import BaseHook

if TYPE_CHECKING:
    from cmf_airflow.sync.client import CmfClient

logger = logging.getLogger(__name__)

DEFAULT_CONN_ID = "cmf_default"
_SCHEMES = ("http", "https")


class CmfHook(BaseHook):
    """Connects to a central CMF server described by an Airflow connection of type ``cmf``.

    :param cmf_conn_id: the connection id, by default ``[cmf] conn_id`` (``cmf_default``).
    :param timeout: seconds to wait for each response, by default ``[cmf] sync_timeout``.
    """

    conn_name_attr = "cmf_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "cmf"
    hook_name = "CMF server"

    def __init__(self, cmf_conn_id: str | None = None, timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cmf_conn_id = cmf_conn_id or conf.conn_id()
        self.timeout = timeout

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Return how Airflow's connection form shows a ``cmf`` connection."""
        from cmf_airflow.provider_info import CMF_CONNECTION_FORM

        return {
            "hidden_fields": list(CMF_CONNECTION_FORM["hidden-fields"]),
            "relabeling": dict(CMF_CONNECTION_FORM["relabeling"]),
            "placeholders": dict(CMF_CONNECTION_FORM["placeholders"]),
        }

    @cached_property
    def connection(self) -> Any:
        """The Airflow connection, read once per hook."""
        return self.get_connection(self.cmf_conn_id)

    @property
    def base_url(self) -> str:
        """The server's base URL, ``<scheme>://<host>[:<port>][/<prefix>]``, to which the client adds ``/api/``."""
        return connection_base_url(self.connection, self.cmf_conn_id)

    @property
    def token(self) -> str | None:
        """The bearer token (the connection's password), or None when the server needs none."""
        return self.connection.password or None

    def get_conn(self) -> CmfClient:
        """Return a new client of the server; see ``get_client``."""
        return self.get_client()

    def get_client(self) -> CmfClient:
        """Return a new client of the server, with the token and ``[cmf] sync_timeout``. Close it after use."""
        from cmf_airflow.sync.client import CmfClient

        timeout = self.timeout if self.timeout is not None else conf.sync_timeout()
        return CmfClient(self.base_url, self.token, timeout=timeout)

    def test_connection(self) -> tuple[bool, str]:
        """Check that the server responds to ``GET /health``, for the Test button of Airflow's connection form."""
        import httpx

        try:
            response = httpx.get(f"{self.base_url}/health", timeout=10.0)
        except (httpx.HTTPError, ValueError) as error:
            return False, f"cannot reach the CMF server at {self.base_url}: {error}"
        if response.status_code != 200:
            return False, f"the CMF server at {self.base_url} returned HTTP {response.status_code} for /health"
        return True, f"the CMF server at {self.base_url} is up"


def connection_base_url(connection: Any, conn_id: str = DEFAULT_CONN_ID) -> str:
    """Build a CMF server's base URL from an Airflow connection's host, port and schema.

    Raises ValueError naming the connection when the host is missing or the schema is not http or https.
    """
    host = (connection.host or "").strip()
    if not host:
        raise ValueError(f"the Airflow connection {conn_id} has no host: set the CMF server's host name")
    if "://" in host:
        # A full URL typed into the host field: its scheme wins over the schema field.
        scheme, host = host.split("://", 1)
    else:
        scheme = (connection.schema or "http").strip().lower() or "http"
    if scheme not in _SCHEMES:
        raise ValueError(
            f"the Airflow connection {conn_id} has the schema {scheme!r}: set it to http or https "
            "(the scheme of the CMF server's URL)"
        )
    name, _, prefix = host.partition("/")
    port = f":{connection.port}" if connection.port else ""
    path = f"/{prefix.strip('/')}" if prefix.strip("/") else ""
    return f"{scheme}://{name}{port}{path}"
