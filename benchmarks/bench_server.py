"""Benchmark of the central server's push rate on PostgreSQL, beside MLMD's own rate for the same data.

The data is one pipeline of ``--executions`` executions in stages of ``--batch`` executions. Every execution
carries the properties the recorder writes (ten properties, eight custom properties) and three new artifacts
of its own: an input dataset, an output dataset and an output model.

For each size (``--sizes``, by default 1,000 and 10,000 executions) the benchmark measures, each on a new
PostgreSQL database:

- server: the sync client's path. One ``POST /api/mlmd_push`` per stage, sent one after another over HTTP
  on loopback to ``python -m cmf_airflow.server``, which parses, validates, looks up and merges each stage.
- ceiling: MLMD alone. One ``put_lineage_subgraph`` call per stage with the same executions, artifacts and
  events, prepared in advance, with the types and contexts registered before the clock starts.

It prints executions per second for both and their ratio. The PostgreSQL server is taken from ``--postgres``
(default ``postgresql://postgres@127.0.0.1:5432``, trust authentication); each run creates a database named
``cmf_bench_<random>`` and drops it at the end.

Usage: ``uv run --no-sync python benchmarks/bench_server.py [--sizes 1000 10000] [--batch 300]
[--postgres URL] [--profile]``. ``--profile`` prints where the server's merge spends its time, measured
in this process without HTTP.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import json
import os
import pstats
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx

from cmf_airflow.wire import (EVENT_INPUT, EVENT_OUTPUT, WireArtifact, WireDocument, WireEvent, WireExecution,
                              WirePipeline, WireStage, push_request_body)

PIPELINE = "bench_pipeline"


def build_stages(executions: int, batch: int) -> list[WireDocument]:
    """Build one single-stage document per batch of executions, three new artifacts per execution."""
    documents = []
    for stage_index, start in enumerate(range(0, executions, batch)):
        stage_name = f"{PIPELINE}/task_{stage_index}"
        stage_executions = tuple(_execution(stage_name, index) for index in range(start, min(start + batch, executions)))
        stage = WireStage(stage_name, {"Pipeline_Stage": stage_name}, {}, stage_executions)
        documents.append(WireDocument((WirePipeline(PIPELINE, {"Pipeline": PIPELINE}, {}, (stage,)),)))
    return documents


def _execution(stage_name: str, index: int) -> WireExecution:
    execution_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench/{index}"))
    raw = _artifact("Dataset", f"/data/raw/part-{index}.csv", index, "raw")
    features = _artifact("Dataset", f"/data/features/part-{index}.parquet", index, "features")
    model = _artifact("Model", f"/models/model-{index}.pkl", index, "model")
    return WireExecution(
        type=stage_name,
        name=execution_uuid,
        properties={
            "Context_Type": stage_name, "Execution_type_name": stage_name, "Context_ID": 2, "Pipeline_id": 1,
            "Pipeline_Type": PIPELINE, "Execution": "PythonOperator train",
            "Git_Repo": "https://git.example.com/team/pipelines.git", "Git_Start_Commit": "a" * 40,
            "Git_End_Commit": "a" * 40, "Execution_uuid": execution_uuid,
        },
        custom_properties={
            "airflow_run_id": f"scheduled__2026-03-01T00:00:00+00:00_{index}", "airflow_try_number": 1,
            "airflow_map_index": -1, "airflow_state": "success", "airflow_operator": "PythonOperator",
            "duration_s": 12.5, "hostname": "worker-1", "site": "site-a",
        },
        events=(WireEvent(EVENT_INPUT, raw), WireEvent(EVENT_OUTPUT, features), WireEvent(EVENT_OUTPUT, model)),
        last_known_state="COMPLETE",
    )


def _artifact(type_name: str, path: str, index: int, role: str) -> WireArtifact:
    md5 = hashlib.md5(f"{role}/{index}".encode()).hexdigest()
    return WireArtifact(type_name, f"{path}:{md5}", md5,
                        {"git_repo": "https://git.example.com/team/pipelines.git", "Commit": md5,
                         "url": f"file://{path}"},
                        {"hash_state": "hashed", "size": 4096 + index}, state="LIVE")


# ---------------------------------------------------------------------------------------------------------
# PostgreSQL databases and the server process


@contextlib.contextmanager
def database(admin_url: str) -> Iterator[str]:
    """Create a database named ``cmf_bench_<random>`` on ``admin_url``'s server, yield its URL, drop it."""
    import psycopg

    parts = urlsplit(admin_url)
    name = f"cmf_bench_{uuid.uuid4().hex[:10]}"
    admin = (f"host={parts.hostname or '127.0.0.1'} port={parts.port or 5432} "
             f"user={parts.username or 'postgres'} dbname=postgres")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin_url.rstrip('/')}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def server(store: str) -> Iterator[str]:
    """Run ``python -m cmf_airflow.server`` on a free loopback port and yield its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tempfile.NamedTemporaryFile(prefix="bench-server-", suffix=".log", delete=False)
    process = subprocess.Popen(
        [sys.executable, "-m", "cmf_airflow.server", "--port", str(port), "--store", store, "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {log.name}")
            time.sleep(0.1)
        yield base_url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        os.unlink(log.name)


# ---------------------------------------------------------------------------------------------------------
# Measurements


def measure_server(admin_url: str, documents: list[WireDocument]) -> float:
    """Push every document through HTTP and return executions per second."""
    bodies = [json.dumps(push_request_body(PIPELINE, document)).encode() for document in documents]
    count = sum(document.execution_count for document in documents)
    with database(admin_url) as store, server(store) as base_url:
        with httpx.Client(base_url=base_url, timeout=600, headers={"Content-Type": "application/json"}) as client:
            started = time.perf_counter()
            for body in bodies:
                response = client.post("/api/mlmd_push", content=body)
                if response.json() != {"status": "success"}:
                    raise RuntimeError(f"push failed: {response.status_code} {response.text}")
            elapsed = time.perf_counter() - started
    return count / elapsed


def measure_ceiling(admin_url: str, documents: list[WireDocument]) -> float:
    """Write the same subgraphs with MLMD's ``put_lineage_subgraph`` alone and return executions per second."""
    from cmf_airflow.merge import Merger
    from cmf_airflow.model import artifact_external_id
    from cmf_airflow.server.stores import open_server_store
    from ml_metadata.proto import metadata_store_pb2 as mlmd

    count = sum(document.execution_count for document in documents)
    with database(admin_url) as url:
        store = open_server_store(url)
        merger = Merger(store)
        calls = []
        for document in documents:
            # Register types and contexts through the merger, outside the timed part.
            pipeline = document.pipelines[0]
            stage = pipeline.stages[0]
            merger.merge(WireDocument((WirePipeline(pipeline.name, pipeline.properties, {},
                                                    (WireStage(stage.name, stage.properties, {}, ()),)),)))
            merger._types.register(_schemas(document))
            contexts = [store.get_context_by_type_and_name("Parent_Context", PIPELINE),
                        store.get_context_by_type_and_name("Pipeline_Stage", stage.name)]
            executions, artifacts, edges = [], [], []
            for execution in stage.executions:
                executions.append(merger._execution_proto(execution, None))
                for event in execution.events:
                    external_id = artifact_external_id(event.artifact.type, event.artifact.uri)
                    artifacts.append(merger._artifact_proto(event.artifact, external_id))
                    edges.append((len(executions) - 1, len(artifacts) - 1, mlmd.Event(type=event.type)))
            calls.append((executions, artifacts, contexts, edges))

        started = time.perf_counter()
        for executions, artifacts, contexts, edges in calls:
            store.put_lineage_subgraph(executions, artifacts, contexts, edges, reuse_context_if_already_exist=True,
                                       reuse_artifact_if_already_exist_by_external_id=True)
        elapsed = time.perf_counter() - started
        del store, merger
    return count / elapsed


def _schemas(document: WireDocument):
    from cmf_airflow.merge import _document_schemas

    return _document_schemas(document)


def profile_merge(admin_url: str, documents: list[WireDocument]) -> None:
    """Print the functions where merging the documents (without HTTP) spends the most time."""
    from cmf_airflow.merge import Merger
    from cmf_airflow.server.stores import open_server_store

    with database(admin_url) as url:
        merger = Merger(open_server_store(url))
        profiler = cProfile.Profile()
        profiler.enable()
        for document in documents:
            merger.merge(document)
        profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="executions per run")
    parser.add_argument("--batch", type=int, default=300, help="executions per stage and per push request")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432",
                        help="PostgreSQL server to create the benchmark databases on (no database name)")
    parser.add_argument("--profile", action="store_true", help="also profile the merge of the first size")
    args = parser.parse_args()

    print(f"{'executions':>10} {'server exec/s':>14} {'MLMD ceiling exec/s':>20} {'server/ceiling':>15}")
    for size in args.sizes:
        documents = build_stages(size, args.batch)
        server_rate = measure_server(args.postgres, documents)
        ceiling_rate = measure_ceiling(args.postgres, documents)
        print(f"{size:>10} {server_rate:>14.1f} {ceiling_rate:>20.1f} {server_rate / ceiling_rate:>15.2f}", flush=True)
    if args.profile:
        profile_merge(args.postgres, build_stages(args.sizes[0], args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
