"""The ``cmf-airflow server`` subcommand, and ``python -m cmf_airflow.server``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from cmf_airflow.server.settings import DEFAULT_MAX_BODY_BYTES, DEFAULT_STORE

STORE_VARIABLE = "CMF_SERVER_STORE"
TOKEN_VARIABLE = "CMF_SERVER_TOKEN"


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``server`` subcommand to ``subparsers``. Running it calls ``args.run(args)``."""
    parser = subparsers.add_parser("server", help="run the central CMF server that sites push to")
    add_arguments(parser)
    parser.set_defaults(run=run_command)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the server's options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port to listen on (default: 8080)")
    parser.add_argument(
        "--store",
        default=os.environ.get(STORE_VARIABLE) or DEFAULT_STORE,
        help=f"MLMD store: an SQLite path, or postgresql://user[:password]@host:port/dbname (password also "
        f"from PGPASSWORD), or mysql://... (default: ${STORE_VARIABLE}, else {DEFAULT_STORE})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_VARIABLE) or None,
        help=f"bearer token that clients must send; prefer ${TOKEN_VARIABLE}, which no process listing shows "
        "(default: none, every request is accepted)",
    )
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="log level of the server and uvicorn (default: info)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help=f"largest request body accepted, in bytes (default: {DEFAULT_MAX_BODY_BYTES})")
    parser.add_argument("--pool-size", type=int, default=4,
                        help="MLMD connections to PostgreSQL or MySQL (default: 4; SQLite always uses one)")


def run_command(args: argparse.Namespace) -> int:
    """Run the server with the parsed options and return the exit status."""
    from cmf_airflow.server import run
    from cmf_airflow.server.stores import StoreUnavailable

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(args.host, args.port, args.store, args.token, log_level=args.log_level,
            max_body_bytes=args.max_body_bytes, pool_size=args.pool_size)
    except (StoreUnavailable, ValueError) as error:
        print(f"cmf-airflow server: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m cmf_airflow.server`` with ``argv`` and return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m cmf_airflow.server", description="The central CMF server.")
    add_arguments(parser)
    return run_command(parser.parse_args(argv))
