"""The ``push``, ``pull`` and ``export`` subcommands of ``cmf-airflow``.

Defaults come from ``[cmf]`` (store, batch size, timeout, connection id) and from the Airflow connection of
type ``cmf`` when Airflow is configured. Flags override them. The connection's token is only sent to the
connection's own server, never to a server given with ``--server``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cmf_airflow.store_url import is_url

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerTarget:
    """The server a command talks to, its token and where the two came from."""

    url: str
    token: str | None
    source: str


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``push``, ``pull`` and ``export`` subcommands to ``commands``."""
    push = commands.add_parser("push", help="push the executions the CMF server has not acknowledged yet")
    _server_options(push)
    push.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on standard error (default: only when it is a terminal)",
    )
    push.set_defaults(run=run_push)

    pull = commands.add_parser("pull", help="pull pipelines from the CMF server into the local store")
    _server_options(pull)
    pull.add_argument(
        "--full", action="store_true", help="pull whole pipelines, not only what changed since the last pull"
    )
    pull.set_defaults(run=run_pull)

    export = commands.add_parser("export", help="write the CMF JSON document of the local store")
    export.add_argument("--store", help=_STORE_HELP)
    export.add_argument("--pipeline", action="append", help="export only this pipeline (repeatable; default: all)")
    export.add_argument("--output", "-o", default="-", help="file to write (default: standard output)")
    export.set_defaults(run=run_export)


_STORE_HELP = (
    "local MLMD SQLite store or database URL (default: [cmf] store, $AIRFLOW_HOME/cmf/mlmd.sqlite unless set)"
)


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", help="base URL of the CMF server, such as http://127.0.0.1:8080 (default: the cmf connection)"
    )
    parser.add_argument("--store", help=_STORE_HELP)
    parser.add_argument("--pipeline", action="append", help="only this pipeline (DAG id); repeatable")
    parser.add_argument("--token", help="bearer token of the server (default: the password of the cmf connection)")
    parser.add_argument("--conn-id", help="Airflow connection of type cmf (default: [cmf] conn_id, cmf_default)")


def run_push(args: argparse.Namespace) -> int:
    """Run ``cmf-airflow push`` and return its exit status."""
    _quiet_library_logs()
    from cmf_airflow import conf
    from cmf_airflow.store import StoreError
    from cmf_airflow.sync.errors import SyncError
    from cmf_airflow.sync.pusher import push

    store = args.store or conf.store()
    if not is_url(store) and not os.path.exists(store):
        return _fail("push", f"no CMF store at {store}: pass --store, or run a DAG with cmf-airflow enabled first")
    client = _open_client("push", args)
    if isinstance(client, int):
        return client
    show_progress = args.progress if args.progress is not None else sys.stderr.isatty()
    try:
        with client, _progress_bar(show_progress) as progress:
            result = push(
                store,
                client,
                pipelines=args.pipeline,
                batch_size=conf.sync_batch_size(),
                lock_timeout=conf.lock_timeout(),
                progress=progress,
                require_known_pipelines=True,
            )
    except (SyncError, StoreError) as error:
        return _fail("push", str(error))
    print(result.summary)
    return 0


def run_pull(args: argparse.Namespace) -> int:
    """Run ``cmf-airflow pull`` and return its exit status."""
    _quiet_library_logs()
    from cmf_airflow import conf
    from cmf_airflow.store import StoreError
    from cmf_airflow.sync.errors import SyncError
    from cmf_airflow.sync.puller import pull

    store = args.store or conf.store()
    client = _open_client("pull", args)
    if isinstance(client, int):
        return client
    try:
        with client:
            result = pull(store, client, pipelines=args.pipeline, full=args.full, lock_timeout=conf.lock_timeout())
    except (SyncError, StoreError) as error:
        return _fail("pull", str(error))
    print(result.summary)
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Run ``cmf-airflow export`` and return its exit status."""
    _quiet_library_logs()
    from cmf_airflow import conf
    from cmf_airflow.store import StoreError
    from cmf_airflow.sync.reader import export_document

    store = args.store or conf.store()
    try:
        document = export_document(store, args.pipeline)
    except (StoreError, LookupError) as error:
        return _fail("export", str(error).strip("'\""))
    text = json.dumps(document.to_json(), indent=2, sort_keys=True)
    if args.output == "-":
        sys.stdout.write(text + "\n")
    else:
        try:
            with open(args.output, "w", encoding="utf-8") as output:
                output.write(text + "\n")
        except OSError as error:
            return _fail("export", f"cannot write {args.output}: {error.strerror}")
    summary = f"exported {document.execution_count} execution(s) of {len(document.pipelines)} pipeline(s)"
    print(summary if args.output == "-" else f"{summary} to {args.output}", file=sys.stderr)
    return 0


def resolve_target(server: str | None, token: str | None, conn_id: str | None) -> ServerTarget:
    """Decide which server and token a command uses: the flags first, then the Airflow connection.

    Raises LookupError when neither a ``--server`` flag nor a usable connection names a server.
    """
    from cmf_airflow import conf

    conn_id = conn_id or conf.conn_id()
    if server is not None:
        if token is None:
            connection = _connection_target(conn_id)
            if connection is not None and connection.url.rstrip("/") == server.rstrip("/"):
                token = connection.token
        return ServerTarget(server, token, "--server")
    connection = _connection_target(conn_id)
    if connection is None:
        raise LookupError(
            f"no CMF server: pass --server URL, or define the Airflow connection {conn_id} of type cmf "
            f"(for example AIRFLOW_CONN_{conn_id.upper()}='cmf://:TOKEN@host:8080/http')"
        )
    return ServerTarget(connection.url, token if token is not None else connection.token, connection.source)


def _connection_target(conn_id: str) -> ServerTarget | None:
    from cmf_airflow.hooks.cmf import CmfHook

    hook = CmfHook(conn_id)
    try:
        return ServerTarget(hook.base_url, hook.token, f"connection {conn_id}")
    except ValueError:
        raise
    except Exception as error:  # Airflow raises its own not-found error, or a database error when unconfigured
        logger.debug("no Airflow connection %s: %s", conn_id, error)
        return None


def _open_client(command: str, args: argparse.Namespace) -> Any:
    """Return a client of the command's server, or the exit status after printing why there is none."""
    from cmf_airflow import conf
    from cmf_airflow.sync.client import CmfClient

    try:
        target = resolve_target(args.server, args.token, args.conn_id)
        return CmfClient(target.url, target.token, timeout=conf.sync_timeout())
    except (LookupError, ValueError) as error:
        return _fail(command, str(error).strip("'\""), status=2)


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar: list[Any] = []

    def advance(count: int, total: int) -> None:
        if not bar:
            bar.append(tqdm(total=total, unit="execution", file=sys.stderr, desc="push"))
        bar[0].update(count)

    try:
        yield advance
    finally:
        if bar:
            bar[0].close()


def _quiet_library_logs() -> None:
    # ML Metadata logs every new connection and httpx every request at INFO. Airflow sends log records to
    # standard output, where they would corrupt an exported document and bury the summary line.
    for name in ("absl", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _fail(command: str, message: str, *, status: int = 1) -> int:
    print(f"cmf-airflow {command}: {message}", file=sys.stderr)
    return status
