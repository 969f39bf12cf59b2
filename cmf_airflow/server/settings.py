"""The central server's settings, one frozen value built by the command line or by a caller."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_STORE = "cmf_server/mlmd.sqlite"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The server's store, bearer token, body size limit, connection pool and page sizes.

    ``store`` is an SQLite path (the embedded default) or a ``postgresql://`` or ``mysql://`` URL.
    ``token``, when set, is the bearer token every endpoint except ``/health`` requires.
    ``pool_size`` is the number of MLMD connections to PostgreSQL or MySQL; an SQLite store always uses one.
    """

    store: str = DEFAULT_STORE
    token: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    pool_size: int = 4
    page_limit: int = 100
    max_page_limit: int = 1000
    max_lineage_depth: int = 20
    # Seconds a request waits for a free MLMD connection before it fails with 503.
    pool_timeout: float = 120.0

    def __post_init__(self) -> None:
        if not self.store:
            raise ValueError("the server needs a store: an SQLite path or a postgresql:// or mysql:// URL")
        if self.max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, not {self.max_body_bytes}")
        if self.pool_size <= 0:
            raise ValueError(f"pool_size must be positive, not {self.pool_size}")
