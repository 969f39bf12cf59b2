"""Benchmark of the web UI's pages on a server store of one pipeline with 100,000 executions.

The store contains one pipeline of ``--executions`` executions in four stages. Each run of the pipeline has
one execution per stage at one of three sites, and each execution reads the previous stage's output (the first
stage reads one shared raw dataset) and the shared environment, and writes one dataset. About one execution in
twenty failed. The store is written with MLMD's ``put_lineage_subgraph`` in batches of 1,000 executions, and
the SQLite store is cached in ``/tmp/cmf-bench-ui-<executions>.sqlite`` and reused on reruns.

For each page it prints the median and maximum time over ``--rounds`` requests, against the target of 1 s.
The client measures each request over HTTP on loopback, so the time includes HTTP and rendering. The pages:
the pipelines page, the pipeline page (first page, a filtered page, a page deep in the keyset), the page and
graph JSON of an artifact in the middle of the lineage and of the shared raw dataset, and search.

Usage: ``uv run --no-sync python benchmarks/bench_ui.py [--executions 100000] [--rounds 7]
[--postgres postgresql://postgres@127.0.0.1:5432]``. With ``--postgres`` the same store is also built in a
new PostgreSQL database, measured, and dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import statistics
import sys
import time
import uuid
from collections.abc import Iterator

import httpx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__))))
from bench_server import database, server  # noqa: E402  (a sibling script of this folder)

PIPELINE = "bench_ui"
STAGES = ("prepare", "featurize", "train", "evaluate")
SITES = ("site-a", "site-b", "site-c")
BATCH_RUNS = 250
TARGET_S = 1.0


def fill_store(store_location: str, executions: int) -> None:
    """Write the benchmark pipeline into the empty store at ``store_location`` with MLMD's batch call."""
    from ml_metadata.proto import metadata_store_pb2 as mlmd

    from cmf_airflow.merge import Merger
    from cmf_airflow.server.stores import open_server_store
    from cmf_airflow.wire import (EVENT_INPUT, EVENT_OUTPUT, WireArtifact, WireDocument, WireEvent, WireExecution,
                                  WirePipeline, WireStage)

    store = open_server_store(store_location)
    runs = executions // len(STAGES)
    raw = WireArtifact("Dataset", f"/data/raw.csv:{_md5('raw')}", _md5("raw"),
                       {"git_repo": "https://git.example.com/ml.git", "Commit": _md5("raw"), "url": "file:///data/raw.csv"},
                       {"hash_state": "hashed", "git_commit": "d" * 40})
    environment = WireArtifact("Environment", f"/envs/freeze.txt:{_md5('env')}", _md5("env"),
                               {"url": "file:///envs/freeze.txt"}, {"hash_state": "hashed", "package_count": 200})

    # One real execution per stage through the merger registers the types, contexts and stage links exactly
    # as a push would. The bulk then goes through put_lineage_subgraph.
    seed_stages = []
    for stage in STAGES:
        name = f"{PIPELINE}/{stage}"
        seed = WireExecution(type=name, name=f"seed-{stage}", properties=_properties(name, f"seed-{stage}"),
                             custom_properties=_custom(0, 0, False), last_known_state="COMPLETE",
                             events=(WireEvent(EVENT_INPUT, raw), WireEvent(EVENT_INPUT, environment)))
        seed_stages.append(WireStage(name, {"Pipeline_Stage": name}, {}, (seed,)))
    Merger(store).merge(WireDocument((WirePipeline(PIPELINE, {"Pipeline": PIPELINE}, {}, tuple(seed_stages)),)))

    pipeline = store.get_context_by_type_and_name("Parent_Context", PIPELINE)
    stage_contexts = [store.get_context_by_type_and_name("Pipeline_Stage", f"{PIPELINE}/{stage}") for stage in STAGES]
    type_ids = {item.name: item.id for item in store.get_execution_types()}
    artifact_types = {item.name: item.id for item in store.get_artifact_types()}
    [raw_artifact] = [item for item in store.get_artifacts() if item.uri == raw.uri]
    [environment_artifact] = [item for item in store.get_artifacts() if item.uri == environment.uri]

    started = time.perf_counter()
    for first_run in range(0, runs, BATCH_RUNS):
        previous: dict[int, mlmd.Artifact] = {}
        for stage_index, stage in enumerate(STAGES):
            name = f"{PIPELINE}/{stage}"
            executions_batch, artifacts_batch, edges = [], [raw_artifact if stage_index == 0 else None,
                                                         environment_artifact], []
            artifacts_batch = [environment_artifact] if stage_index else [environment_artifact, raw_artifact]
            outputs: dict[int, int] = {}
            for run in range(first_run, min(first_run + BATCH_RUNS, runs)):
                execution_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-ui/{stage}/{run}"))
                failed = (run * 7 + stage_index) % 20 == 0
                execution = mlmd.Execution(type_id=type_ids[name], name=execution_uuid, external_id=execution_uuid,
                                           last_known_state=mlmd.Execution.FAILED if failed else mlmd.Execution.COMPLETE)
                _set(execution.properties, _properties(name, execution_uuid))
                _set(execution.custom_properties, _custom(run, stage_index, failed))
                executions_batch.append(execution)
                index = len(executions_batch) - 1
                edges.append((index, 0, mlmd.Event(type=mlmd.Event.INPUT)))
                if stage_index == 0:
                    edges.append((index, 1, mlmd.Event(type=mlmd.Event.INPUT)))
                else:
                    artifacts_batch.append(previous[run])
                    edges.append((index, len(artifacts_batch) - 1, mlmd.Event(type=mlmd.Event.INPUT)))
                digest = _md5(stage, run)
                path = f"/data/{stage}/part-{run:06d}.parquet"
                output = mlmd.Artifact(type_id=artifact_types["Dataset"], name=f"{path}:{digest}", uri=digest,
                                       external_id=f"Dataset:{digest}", state=mlmd.Artifact.LIVE)
                _set(output.properties, {"git_repo": "https://git.example.com/ml.git", "Commit": digest,
                                         "url": f"file://{path}"})
                _set(output.custom_properties, {"hash_state": "hashed", "size": 4096})
                artifacts_batch.append(output)
                outputs[run] = len(artifacts_batch) - 1
                edges.append((index, len(artifacts_batch) - 1, mlmd.Event(type=mlmd.Event.OUTPUT)))
            _, artifact_ids, _ = store.put_lineage_subgraph(
                executions_batch, artifacts_batch, [pipeline, stage_contexts[stage_index]], edges,
                reuse_context_if_already_exist=True, reuse_artifact_if_already_exist_by_external_id=True)
            previous = {}
            for run, position in outputs.items():
                artifact = artifacts_batch[position]
                artifact.id = artifact_ids[position]
                previous[run] = artifact
        done = min(first_run + BATCH_RUNS, runs) * len(STAGES)
        if done % 20000 == 0:
            print(f"  {done} executions written in {time.perf_counter() - started:.0f} s", flush=True)


def _properties(stage: str, execution_uuid: str) -> dict:
    return {"Execution_uuid": execution_uuid, "Context_Type": stage, "Execution_type_name": stage,
            "Pipeline_Type": PIPELINE, "Execution": f"PythonOperator {stage}",
            "Git_Repo": "https://git.example.com/ml.git", "Git_Start_Commit": "a" * 40, "Git_End_Commit": "a" * 40}


def _custom(run: int, stage_index: int, failed: bool) -> dict:
    values = {"airflow_run_id": f"scheduled__{run:06d}", "airflow_try_number": 1, "airflow_map_index": -1,
              "airflow_state": "failed" if failed else "success", "site": SITES[run % len(SITES)],
              "duration_s": 1.0 + (run % 50) / 10, "hostname": "worker-1",
              "start_time": "2026-03-01T12:00:00+00:00", "params": '{"n_estimators": 100}'}
    if failed:
        values["error"] = "ValueError: benchmark failure"
    return values


def _set(target, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, bool):
            target[key].bool_value = value
        elif isinstance(value, int):
            target[key].int_value = value
        elif isinstance(value, float):
            target[key].double_value = value
        else:
            target[key].string_value = value


def _md5(*parts: object) -> str:
    return hashlib.md5("/".join(str(part) for part in parts).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Measurements


def _paths(client: httpx.Client, executions: int) -> list[tuple[str, str]]:
    """Return the pages to measure, with ids read from the store through the UI itself."""
    home = client.get("/ui/").text
    pipeline_id = re.search(r'href="/ui/pipelines/(\d+)"', home).group(1)
    first = client.get(f"/ui/pipelines/{pipeline_id}").text
    newest = int(re.search(r'<tr data-id="(\d+)"', first).group(1))
    runs = executions // len(STAGES)
    middle_hash = _md5("featurize", runs // 2)
    middle = client.get("/ui/search", params={"q": middle_hash}).headers["location"].rsplit("/", 1)[1]
    raw = client.get("/ui/search", params={"q": _md5("raw")}).headers["location"].rsplit("/", 1)[1]
    some_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-ui/train/{runs // 3}"))
    base = f"/ui/pipelines/{pipeline_id}"
    return [
        ("pipelines page", "/ui/"),
        ("pipeline, first page", base),
        ("pipeline, state+site filter", f"{base}?state=FAILED&site=site-b"),
        ("pipeline, stage+run id filter", f"{base}?stage={PIPELINE}/train&q=scheduled__{runs // 2:06d}"),
        ("pipeline, uuid prefix filter", f"{base}?q={some_uuid[:8]}"),
        ("pipeline, deep keyset page", f"{base}?before={newest - executions + 200}"),
        ("execution page", f"/ui/executions/{newest - executions // 2}"),
        ("artifact page (middle)", f"/ui/artifacts/{middle}"),
        ("graph JSON (middle, depth 5)", f"/ui/api/artifacts/{middle}/graph?depth=5"),
        ("artifact page (shared raw input)", f"/ui/artifacts/{raw}"),
        ("graph JSON (shared raw input)", f"/ui/api/artifacts/{raw}/graph?depth=5"),
        ("search by hash prefix", f"/ui/search?q={middle_hash[:10]}"),
        ("search by name substring", "/ui/search?q=part-01234"),
        ("search by execution uuid", f"/ui/search?q={some_uuid}"),
    ]


def measure(base_url: str, executions: int, rounds: int) -> None:
    """Request every page ``rounds`` times and print median and max."""
    with httpx.Client(base_url=base_url, timeout=600) as client:
        paths = _paths(client, executions)
        print(f"{'page':<36} {'median s':>9} {'max s':>8} {'status':>7}  target {TARGET_S:g} s")
        for label, path in paths:
            timings = []
            status = 0
            for _ in range(rounds):
                started = time.perf_counter()
                response = client.get(path)
                timings.append(time.perf_counter() - started)
                status = response.status_code
            flag = "" if max(timings) <= TARGET_S else "  over target"
            print(f"{label:<36} {statistics.median(timings):>9.3f} {max(timings):>8.3f} {status:>7}{flag}",
                  flush=True)


@contextlib.contextmanager
def sqlite_store(executions: int) -> Iterator[str]:
    """Yield the cached SQLite store of ``executions`` executions, building it on first use."""
    path = f"/tmp/cmf-bench-ui-{executions}.sqlite"
    if not os.path.exists(path):
        print(f"building {path} (cached for later runs)", flush=True)
        partial = path + ".partial"
        for leftover in (partial, partial + "-wal", partial + "-shm"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        started = time.perf_counter()
        fill_store(partial, executions)
        # The writer's WAL is checkpointed by closing MLMD's connection when the process exits, so the
        # finished store is copied with SQLite's backup API instead of renamed.
        import sqlite3

        with sqlite3.connect(partial) as source, sqlite3.connect(path) as target:
            source.backup(target)
        for leftover in (partial, partial + "-wal", partial + "-shm"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        print(f"built in {time.perf_counter() - started:.0f} s", flush=True)
    yield path


def main() -> int:
    """Build or reuse the stores and print the page timings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=100_000, help="executions in the pipeline")
    parser.add_argument("--rounds", type=int, default=7, help="requests per page")
    parser.add_argument("--postgres", default=None,
                        help="also measure on a new database of this PostgreSQL server (no database name)")
    args = parser.parse_args()

    with sqlite_store(args.executions) as path, server(path) as base_url:
        print(f"\nSQLite store {path}, {args.executions} executions")
        measure(base_url, args.executions, args.rounds)
    if args.postgres:
        with database(args.postgres) as url:
            print(f"\nbuilding the PostgreSQL store ({args.executions} executions)", flush=True)
            started = time.perf_counter()
            fill_store(url, args.executions)
            print(f"built in {time.perf_counter() - started:.0f} s", flush=True)
            with server(url) as base_url:
                print(f"PostgreSQL store, {args.executions} executions")
                measure(base_url, args.executions, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
