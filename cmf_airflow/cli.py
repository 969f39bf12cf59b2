"""The ``cmf-airflow`` command line: ``demo``, ``lineage``, ``replay``, ``server``, ``push``, ``pull`` and ``export``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from cmf_airflow.version import __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cmf-airflow`` command and return its exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except Exception as error:
        # Imported only here: importing Airflow configures it, which the demo must be able to prepare first.
        from airflow.exceptions import AirflowConfigException

        if not isinstance(error, AirflowConfigException):
            raise
        print(f"cmf-airflow {args.command}: invalid Airflow configuration: {error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmf-airflow", description="CMF lineage for Apache Airflow.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run the example ML pipeline under Airflow and print its lineage"
    )
    demo.add_argument(
        "--home",
        default=".cmf-demo",
        help="folder for the demo's Airflow home, data and CMF store (default: .cmf-demo). It must be new, "
        "empty or from an earlier demo, whose content is replaced",
    )
    demo.set_defaults(run=_run_demo)

    lineage = commands.add_parser("lineage", help="print the lineage kept in a local CMF store")
    lineage.add_argument(
        "--store",
        help="MLMD SQLite file or database URL to read (default: [cmf] store, $AIRFLOW_HOME/cmf/mlmd.sqlite unless set)",
    )
    lineage.add_argument("--pipeline", help="print only this pipeline (DAG id)")
    lineage.add_argument(
        "--upstream",
        metavar="ARTIFACT",
        help="also trace back to their sources the artifacts whose md5 equals, or whose name contains, ARTIFACT",
    )
    lineage.set_defaults(run=_run_lineage)

    replay = commands.add_parser(
        "replay", help="write the records that waited in the spool while the local store was unavailable"
    )
    replay.add_argument(
        "--store", help="local store to write: SQLite path or database URL (default: [cmf] store)"
    )
    replay.add_argument(
        "--spool-folder", help="spool folder to read (default: [cmf] spool_folder, <base_log_folder>/cmf_spool)"
    )
    replay.set_defaults(run=_run_replay)

    _register_server(commands)
    from cmf_airflow.sync.cli import register as register_sync

    register_sync(commands)
    return parser


def _register_server(commands: argparse._SubParsersAction) -> None:
    try:
        from cmf_airflow.server.cli import register
    except ImportError as error:
        # The server's dependencies (FastAPI, uvicorn) are part of the package, so this only happens in a
        # broken installation: the other commands still work.
        server = commands.add_parser("server", help="run the central CMF server (unavailable, see its error)")
        server.set_defaults(run=lambda args: _unavailable("server", error))
        return
    register(commands)


def _unavailable(command: str, error: Exception) -> int:
    print(f"cmf-airflow {command}: cannot load the command: {error}", file=sys.stderr)
    return 1


def _run_demo(args: argparse.Namespace) -> int:
    from cmf_airflow.demo import run_demo

    return run_demo(args.home)


def _run_replay(args: argparse.Namespace) -> int:
    import dataclasses

    from cmf_airflow import conf
    from cmf_airflow.spool import replay
    from cmf_airflow.store import StoreError
    from cmf_airflow.store_url import redact

    settings = conf.settings()
    overrides = {"store": args.store, "spool_folder": args.spool_folder}
    settings = dataclasses.replace(settings, **{key: value for key, value in overrides.items() if value})
    try:
        result = replay(settings)
    except StoreError as error:
        print(f"cmf-airflow replay: {error}; the spooled records stay in {settings.spool_folder}", file=sys.stderr)
        return 1
    print(
        f"replayed {result.written} record(s) from {settings.spool_folder} into {redact(settings.store)}: "
        f"{result.corrupt} corrupt and {result.rejected} rejected line(s) kept aside, {result.remaining} still waiting"
    )
    if result.error is not None:
        print(f"cmf-airflow replay: the store failed again: {result.error}", file=sys.stderr)
        return 1
    return 0


def _run_lineage(args: argparse.Namespace) -> int:
    from cmf_airflow.store import StoreError, open_store

    path = args.store
    if path is None:
        from cmf_airflow import conf

        path = conf.store()
    try:
        store = open_store(path, read_only=True)
    except StoreError as error:
        print(f"cmf-airflow lineage: {error}", file=sys.stderr)
        return 1
    from cmf_airflow.store_url import redact

    return print_lineage(store, redact(path), args.pipeline, args.upstream, sys.stdout)


def print_lineage(store, path: str, pipeline: str | None, upstream_of: str | None, out: TextIO) -> int:
    """Print the lineage tree of ``store`` and, if asked, the sources of artifacts; return the exit status.

    Bad arguments are reported before anything is printed, so an error is the only output.
    """
    from cmf_airflow.lineage import find_artifacts, pipeline_names, read_pipelines, upstream

    pipelines = read_pipelines(store, pipeline)
    if not pipelines:
        names = ", ".join(pipeline_names(store)) or "none"
        requested = f"pipeline {pipeline!r}" if pipeline else "any pipeline"
        print(f"cmf-airflow lineage: the store {path} contains no {requested} (pipelines: {names})", file=sys.stderr)
        return 1
    matches = []
    if upstream_of is not None:
        if not upstream_of.strip():
            print("cmf-airflow lineage: --upstream needs an md5 or part of an artifact name", file=sys.stderr)
            return 2
        matches = find_artifacts(store, upstream_of)
        if not matches:
            print(f"cmf-airflow lineage: no artifact's md5 or name matches {upstream_of!r}", file=sys.stderr)
            return 1

    for view in pipelines:
        _print_pipeline(view, out)
    if len(matches) > 1:
        print(f"\n{len(matches)} artifacts match {upstream_of!r}", file=out)
    for artifact in matches:
        print(f"\nUpstream of {artifact.type_name} {artifact.name}", file=out)
        for execution, source in upstream(store, artifact.id):
            print(f"  {execution.stage} (execution {execution.id}) read {source.name}", file=out)
    return 0


def _print_pipeline(view: Any, out: TextIO) -> None:
    from cmf_airflow.lineage import format_pipeline

    for line in format_pipeline(view):
        print(line, file=out)


if __name__ == "__main__":
    sys.exit(main())
