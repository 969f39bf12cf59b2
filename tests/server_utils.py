"""Helpers that start the real CMF server and create PostgreSQL databases for tests.

``running_server`` starts ``python -m cmf_airflow.server`` as a subprocess on a free loopback port and yields
its base URL, ``postgres_database`` creates a uniquely named database on the local PostgreSQL
(127.0.0.1:5432, user postgres, trust authentication) and drops it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
POSTGRES_USER = "postgres"
MYSQL_HOST = "127.0.0.1"
MYSQL_PORT = 3306
MYSQL_USER = "root"
_STARTUP_TIMEOUT_S = 60.0


@dataclass
class ServerProcess:
    """A server subprocess started by ``running_server``: its base URL, process and log file."""

    base_url: str
    process: subprocess.Popen
    log_path: Path

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash or power cut would, and wait for it to exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def log(self) -> str:
        """Return what the server wrote to its standard output and error so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def server_process(
    store: str, token: str | None = None, *, log_dir: Path | None = None, port: int | None = None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[ServerProcess]:
    """Start the CMF server on 127.0.0.1 with ``store`` and ``token``, wait until it serves, then stop it.

    ``store`` is an SQLite path or a ``postgresql://`` URL. The yielded object can ``kill()`` the server in
    the middle of a test. The token travels in the environment, so it never appears in a process listing.
    """
    port = port or free_port()
    log_folder = log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
    log_path = log_folder / f"cmf-server-{port}-{uuid.uuid4().hex[:6]}.log"
    env = os.environ.copy()
    env.pop("CMF_SERVER_TOKEN", None)
    if token is not None:
        env["CMF_SERVER_TOKEN"] = token
    command = [sys.executable, "-m", "cmf_airflow.server", "--host", "127.0.0.1", "--port", str(port),
               "--store", store, "--log-level", "warning", *extra_args]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path)
    try:
        _wait_until_healthy(server)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


@contextlib.contextmanager
def running_server(store: str, token: str | None = None) -> Iterator[str]:
    """Start the CMF server on a free loopback port with ``store`` and ``token`` and yield its base URL."""
    with server_process(store, token) as server:
        yield server.base_url


def _wait_until_healthy(server: ServerProcess) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the CMF server exited with {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"the CMF server did not respond to /health within {_STARTUP_TIMEOUT_S:g} s:\n{server.log()}")


@contextlib.contextmanager
def postgres_database(prefix: str = "cmf_test") -> Iterator[str]:
    """Create a uniquely named PostgreSQL database, yield its ``postgresql://`` URL, then drop it."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = f"host={POSTGRES_HOST} port={POSTGRES_PORT} user={POSTGRES_USER} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def mysql_database(prefix: str = "cmf_test") -> Iterator[str]:
    """Create a uniquely named database on the local MariaDB, yield its ``mysql://`` URL, then drop it.

    It is created first because the local store never creates its database. The ``mysql`` command line
    client creates and drops it.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    subprocess.run(
        ["mysql", f"-h{MYSQL_HOST}", f"-P{MYSQL_PORT}", f"-u{MYSQL_USER}", "-e", f"CREATE DATABASE `{name}`"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"mysql://{MYSQL_USER}@{MYSQL_HOST}:{MYSQL_PORT}/{name}"
    finally:
        subprocess.run(
            ["mysql", f"-h{MYSQL_HOST}", f"-P{MYSQL_PORT}", f"-u{MYSQL_USER}", "-e", f"DROP DATABASE IF EXISTS `{name}`"],
            check=True,
            capture_output=True,
        )


# ---------------------------------------------------------------------------------------------------------
# Documents and store snapshots


def build_document(
    pipeline: str,
    *,
    site: str = "site-a",
    stages: int = 2,
    executions_per_stage: int = 3,
    shared_input_md5: str = "0" * 32,
    state: str = "COMPLETE",
):
    """Build a CMF document as the recorder would write it: each execution reads the shared input and one
    artifact of the previous stage, and writes a dataset and a model.

    Execution uuids and output hashes depend on ``site``, the shared input does not, so two sites meet in it.
    """
    import hashlib

    from cmf_airflow.wire import (EVENT_INPUT, EVENT_OUTPUT, WireArtifact, WireDocument, WireEvent,
                                  WireExecution, WirePipeline, WireStage)

    def md5(*parts: object) -> str:
        return hashlib.md5("/".join(str(part) for part in parts).encode()).hexdigest()

    def dataset(path: str, digest: str) -> WireArtifact:
        return WireArtifact("Dataset", f"{path}:{digest}", digest,
                            {"git_repo": "https://git.example.com/team/pipelines.git", "Commit": digest,
                             "url": f"file://{path}"}, {"hash_state": "hashed", "size": 1024})

    shared = dataset("/data/raw/input.csv", shared_input_md5)
    wire_stages = []
    previous: list[WireArtifact] = []
    for stage_index in range(stages):
        stage_name = f"{pipeline}/task_{stage_index}"
        executions = []
        outputs = []
        for index in range(executions_per_stage):
            execution_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{site}/{stage_name}/{index}"))
            output = dataset(f"/data/{stage_name}/part-{index}.parquet", md5(site, stage_name, index))
            model = WireArtifact("Model", f"/models/{stage_name}/{index}.pkl:{md5('m', site, stage_name, index)}",
                                 md5("m", site, stage_name, index), {"model_framework": "sklearn"}, {})
            events = [WireEvent(EVENT_INPUT, shared), WireEvent(EVENT_OUTPUT, output), WireEvent(EVENT_OUTPUT, model)]
            if previous:
                events.append(WireEvent(EVENT_INPUT, previous[index % len(previous)]))
            executions.append(WireExecution(
                type=stage_name,
                name=execution_uuid,
                properties={"Execution_uuid": execution_uuid, "Context_Type": stage_name,
                            "Execution_type_name": stage_name, "Pipeline_Type": pipeline,
                            "Execution": f"PythonOperator task_{stage_index}", "Git_Repo": "https://git.example.com/a.git",
                            "Git_Start_Commit": "a" * 40, "Git_End_Commit": "a" * 40},
                custom_properties={"airflow_run_id": f"scheduled__{index}", "airflow_try_number": 1,
                                   "airflow_map_index": -1, "airflow_state": "success", "site": site,
                                   "duration_s": 1.5, "hostname": "worker-1", "git_dirty": False},
                events=tuple(events),
                last_known_state=state,
            ))
            outputs.append(output)
        previous = outputs
        wire_stages.append(WireStage(stage_name, {"Pipeline_Stage": stage_name}, {}, tuple(executions)))
    return WireDocument((WirePipeline(pipeline, {"Pipeline": pipeline}, {}, tuple(wire_stages)),))


def stage_documents(document):
    """Split a document into one document per stage, as the sync client sends them."""
    from dataclasses import replace

    from cmf_airflow.wire import WireDocument

    return [
        WireDocument((replace(pipeline, stages=(stage,)),))
        for pipeline in document.pipelines
        for stage in pipeline.stages
    ]


def open_store_for_test(store: str):
    """Open a server's store (SQLite path, PostgreSQL or MySQL URL) from the test process, to inspect it."""
    from cmf_airflow.server.stores import open_server_store

    return open_server_store(store)


def store_snapshot(store) -> dict:
    """Return a comparable picture of an MLMD store: counts, execution uuids, artifact ids, events, contexts."""
    executions = store.get_executions()
    artifacts = store.get_artifacts()
    contexts = store.get_contexts()
    artifact_ids = {artifact.id: artifact.external_id for artifact in artifacts}
    execution_ids = {execution.id: execution.external_id for execution in executions}
    events = store.get_events_by_execution_ids(list(execution_ids)) if execution_ids else []
    associations = sum(len(store.get_executions_by_context(context.id)) for context in contexts)
    attributions = sum(len(store.get_artifacts_by_context(context.id)) for context in contexts)
    return {
        "executions": sorted(execution_ids.values()),
        "artifacts": sorted(artifact_ids.values()),
        "events": sorted((execution_ids[e.execution_id], artifact_ids[e.artifact_id], e.type) for e in events),
        "contexts": sorted(context.name for context in contexts),
        "states": sorted((execution.external_id, execution.last_known_state) for execution in executions),
        "associations": associations,
        "attributions": attributions,
    }
