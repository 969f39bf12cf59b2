"""Database URLs of MLMD stores: ``postgresql://`` and ``mysql://``, parsed into MLMD's ConnectionConfig.

A store is either the path of an SQLite file or such a URL. The local store of a site with many workers and
the central server's store both use this module, so both accept the same URLs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    from ml_metadata.proto import metadata_store_pb2

_URL_SCHEMES = {"postgresql": "postgresql", "postgres": "postgresql", "mysql": "mysql"}
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


@dataclass(frozen=True, slots=True)
class ConnectionFields:
    """The fields of an Airflow connection that fill what a store URL leaves out."""

    login: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    schema: str | None = None

    @classmethod
    def of(cls, connection: Any) -> ConnectionFields:
        """Read the fields of an Airflow connection object of either Airflow major."""
        port = getattr(connection, "port", None)
        return cls(
            login=getattr(connection, "login", None) or None,
            password=getattr(connection, "password", None) or None,
            host=getattr(connection, "host", None) or None,
            port=int(port) if port else None,
            schema=getattr(connection, "schema", None) or None,
        )


@dataclass(frozen=True, slots=True)
class DatabaseAddress:
    """The location of a database store: its backend, host and port, or a Unix socket, and the database name."""

    backend: str
    host: str
    port: int
    socket: str | None
    database: str


def is_url(store: str) -> bool:
    """Return whether ``store`` is a database URL (PostgreSQL or MySQL) rather than an SQLite path."""
    return urlsplit(store).scheme in _URL_SCHEMES


def redact(store: str) -> str:
    """Return ``store`` with any password in it replaced by ``***``, for logs and messages."""
    parts = urlsplit(store)
    if not is_url(store) or parts.password is None:
        return store
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def address(store: str, fields: ConnectionFields | None = None) -> DatabaseAddress:
    """Return the backend, host, port, socket and database of a store URL, completed by ``fields``.

    Raises ValueError, with the URL redacted, when the URL and the connection name no database.
    """
    fields = fields or ConnectionFields()
    parts = urlsplit(store)
    backend = _URL_SCHEMES[parts.scheme]
    # libpq's convention: ?host=/var/run/postgresql selects a Unix socket folder, which cuts the latency
    # of each of MLMD's many statements compared with TCP on the same machine.
    socket_path = parse_qs(parts.query).get("host", [None])[0]
    database = unquote(parts.path.lstrip("/")) or fields.schema
    if not database:
        raise ValueError(f"the store URL {redact(store)} names no database: add it, as in {parts.scheme}://host/cmf")
    return DatabaseAddress(
        backend=backend,
        host=parts.hostname or fields.host or "127.0.0.1",
        port=parts.port or fields.port or _DEFAULT_PORTS[backend],
        socket=socket_path,
        database=database,
    )


def connection_config(
    store: str, fields: ConnectionFields | None = None, *, create_database: bool = True
) -> metadata_store_pb2.ConnectionConfig:
    """Build the MLMD ConnectionConfig for a ``postgresql://`` or ``mysql://`` URL.

    The user and password come from the URL, else from ``fields`` (an Airflow connection), else the
    password from PGPASSWORD (PostgreSQL) or MYSQL_PWD (MySQL). A ``host`` query parameter names a Unix
    socket: a folder for PostgreSQL, the socket file for MySQL. With ``create_database=False``, MLMD fails
    on a database that does not exist instead of creating it.
    """
    from ml_metadata.proto import metadata_store_pb2

    fields = fields or ConnectionFields()
    parts = urlsplit(store)
    where = address(store, fields)
    config = metadata_store_pb2.ConnectionConfig()
    if where.backend == "postgresql":
        target = config.postgresql
        target.host = where.socket or where.host
        target.port = str(where.port)
        target.dbname = where.database
        environment_password = os.environ.get("PGPASSWORD")
    else:
        target = config.mysql
        target.host = where.host
        if where.socket:
            target.socket = where.socket
        target.port = where.port
        target.database = where.database
        environment_password = os.environ.get("MYSQL_PWD")
    target.skip_db_creation = not create_database

    user = unquote(parts.username) if parts.username else fields.login
    if user:
        target.user = user
    if parts.password is not None:
        password: str | None = unquote(parts.password)
    else:
        password = fields.password or environment_password
    if password:
        target.password = password
    return config
