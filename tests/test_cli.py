"""The ``cmf-airflow`` subcommands push, pull, export and server, against the real server on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from server_utils import free_port, running_server

# Airflow sets up its logging on first import and keeps the streams it found. Importing it here, before
# capsys replaces sys.stdout and sys.stderr for a test, keeps its log output off the captured streams.
import cmf_airflow.compat  # noqa: F401
from cmf_airflow.cli import main
from cmf_airflow.model import ArtifactRecord, HashState, TaskOutcome, TaskRun
from cmf_airflow.recorder import Recorder
from cmf_airflow.sync.cli import resolve_target
from cmf_airflow.sync.local import open_local_store

START = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory) -> str:
    with running_server(str(tmp_path_factory.mktemp("server") / "mlmd.sqlite"), token="cli-token") as url:
        yield url


@pytest.fixture(autouse=True)
def no_cmf_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test without a cmf_default connection in the environment."""
    monkeypatch.delenv("AIRFLOW_CONN_CMF_DEFAULT", raising=False)


def _store(tmp_path: Path, dag_id: str, count: int = 2, site: str = "cli-site") -> Path:
    path = tmp_path / site / "mlmd.sqlite"
    recorder = Recorder(open_local_store(str(path)))
    for index in range(count):
        run = TaskRun(
            site=site,
            dag_id=dag_id,
            task_id="train",
            run_id=f"manual__{index}",
            map_index=-1,
            try_number=1,
            operator="PythonOperator",
            hostname="worker-1",
            airflow_version="3.3.2",
            start_time=START,
        )
        data = ArtifactRecord(uri="file:///d/x.csv", path="/d/x.csv", md5=f"{index:032x}", hash_state=HashState.HASHED)
        recorder.record_end(run, TaskOutcome("success", START + timedelta(seconds=1)), [data], None)
    return path


def _connection(monkeypatch: pytest.MonkeyPatch, url: str, token: str | None) -> None:
    host, port = url.removeprefix("http://").split(":")
    connection = {"conn_type": "cmf", "host": host, "port": int(port), "schema": "http", "password": token}
    monkeypatch.setenv("AIRFLOW_CONN_CMF_DEFAULT", json.dumps(connection))


def test_push_prints_summary_then_nothing_to_push(tmp_path, server_url, capsys):
    store = _store(tmp_path, "cli_push")
    capsys.readouterr()  # drop what writing the store logged
    arguments = ["push", "--server", server_url, "--token", "cli-token", "--store", str(store)]

    first = main(arguments)
    first_output = capsys.readouterr().out
    second = main(arguments)
    second_output = capsys.readouterr().out

    assert first == 0
    assert first_output.startswith(f"pushed 2 execution(s) of 1 pipeline(s) to {server_url} in 1 request(s)")
    assert second == 0
    assert second_output.strip() == f"nothing to push to {server_url}: it acknowledged every execution of the local store"


def test_push_of_unknown_pipeline_names_the_pipelines(tmp_path, server_url, capsys):
    store = _store(tmp_path, "cli_known")
    capsys.readouterr()

    status = main(["push", "--server", server_url, "--token", "cli-token", "--store", str(store), "--pipeline", "nope"])
    error = capsys.readouterr().err

    assert status == 1
    assert "the local store contains no pipeline nope (pipelines: cli_known)" in error


def test_invalid_batch_size_is_one_line_error(tmp_path, server_url, monkeypatch, capsys):
    store = _store(tmp_path, "cli_batch")
    monkeypatch.setenv("AIRFLOW__CMF__SYNC_BATCH_SIZE", "0")
    capsys.readouterr()

    status = main(["push", "--server", server_url, "--token", "cli-token", "--store", str(store)])
    error = capsys.readouterr().err

    assert status == 1
    assert "invalid Airflow configuration: [cmf] sync_batch_size is 0: set it to 1 or more" in error
    assert "Traceback" not in error


def test_push_reads_server_and_token_from_cmf_default(tmp_path, server_url, monkeypatch, capsys):
    store = _store(tmp_path, "cli_connection")
    _connection(monkeypatch, server_url, "cli-token")

    status = main(["push", "--store", str(store)])

    assert status == 0
    assert "pushed 2 execution(s)" in capsys.readouterr().out


def test_connection_token_goes_only_to_its_own_server(monkeypatch):
    _connection(monkeypatch, "http://127.0.0.1:9", "secret-token")

    own = resolve_target(None, None, None)
    other = resolve_target("http://127.0.0.1:10", None, None)
    flagged = resolve_target("http://127.0.0.1:10", "flag-token", None)

    assert (own.url, own.token) == ("http://127.0.0.1:9", "secret-token")
    assert (other.url, other.token) == ("http://127.0.0.1:10", None)
    assert flagged.token == "flag-token"


def test_push_without_server_or_connection_is_clear(tmp_path, capsys):
    store = _store(tmp_path, "cli_no_server")

    status = main(["push", "--store", str(store), "--conn-id", "cmf_no_such_connection"])
    error = capsys.readouterr().err

    assert status == 2
    assert "no CMF server: pass --server URL, or define the Airflow connection cmf_no_such_connection" in error


def test_push_to_stopped_server_fails_clearly(tmp_path, monkeypatch, server_url, capsys):
    store = _store(tmp_path, "cli_down")
    down = f"http://127.0.0.1:{free_port()}"

    status = main(["push", "--server", down, "--store", str(store)])
    error = capsys.readouterr().err
    retried = main(["push", "--server", server_url, "--token", "cli-token", "--store", str(store)])

    assert status == 1
    assert f"cmf-airflow push: cannot reach the CMF server at {down}: " in error
    assert error.strip().endswith("nothing was lost, the next push sends it")
    assert retried == 0
    assert "pushed 2 execution(s)" in capsys.readouterr().out


def test_push_with_wrong_token_names_the_fix(tmp_path, server_url, capsys):
    store = _store(tmp_path, "cli_token")

    status = main(["push", "--server", server_url, "--token", "wrong", "--store", str(store)])

    assert status == 1
    assert "HTTP 401" in capsys.readouterr().err


def test_push_of_missing_store_is_clear(tmp_path, server_url, capsys):
    missing = tmp_path / "none" / "mlmd.sqlite"

    status = main(["push", "--server", server_url, "--store", str(missing)])

    assert status == 1
    assert f"no CMF store at {missing}" in capsys.readouterr().err
    assert not missing.exists()


def test_push_shows_progress_bar_when_asked(tmp_path, server_url, capsys, monkeypatch):
    store = _store(tmp_path, "cli_progress", count=3)
    monkeypatch.setenv("AIRFLOW__CMF__SYNC_BATCH_SIZE", "2")

    status = main(["push", "--server", server_url, "--token", "cli-token", "--store", str(store), "--progress"])
    captured = capsys.readouterr()

    assert status == 0
    assert "3/3" in captured.err
    assert "in 2 request(s)" in captured.out


def test_pull_copies_a_pipeline_into_a_new_store(tmp_path, server_url, capsys):
    source = _store(tmp_path, "cli_pull", site="source-site")
    target = tmp_path / "target" / "mlmd.sqlite"
    common = ["--server", server_url, "--token", "cli-token"]
    assert main(["push", *common, "--store", str(source)]) == 0

    status = main(["pull", *common, "--store", str(target), "--pipeline", "cli_pull"])
    output = capsys.readouterr().out
    sites = {e.custom_properties["site"].string_value for e in open_local_store(str(target)).get_executions()}

    assert status == 0
    assert "pulled 2 execution(s) of 1 pipeline(s)" in output
    assert "2 created" in output
    assert sites == {"source-site"}


def test_export_writes_a_document_the_server_accepts(tmp_path, server_url, capsys):
    store = _store(tmp_path, "cli_export")
    output = tmp_path / "export.json"

    status = main(["export", "--store", str(store), "--pipeline", "cli_export", "--output", str(output)])
    message = capsys.readouterr().err
    document = json.loads(output.read_text())
    body = {"pipeline_name": "cli_export", "exec_uuid": None, "json_payload": json.dumps(document)}
    answer = httpx.post(f"{server_url}/api/mlmd_push", json=body, headers={"Authorization": "Bearer cli-token"})

    assert status == 0
    assert message.strip() == f"exported 2 execution(s) of 1 pipeline(s) to {output}"
    assert [p["name"] for p in document["Pipeline"]] == ["cli_export"]
    assert answer.status_code == 200
    assert answer.json() == {"status": "success"}


def test_export_to_stdout_and_missing_pipeline(tmp_path, capsys):
    store = _store(tmp_path, "cli_stdout")
    capsys.readouterr()  # drop what writing the store logged

    status = main(["export", "--store", str(store)])
    document = json.loads(capsys.readouterr().out)
    missing = main(["export", "--store", str(store), "--pipeline", "nope"])
    error = capsys.readouterr().err

    assert status == 0
    assert document["Pipeline"][0]["stages"][0]["name"] == "cli_stdout/train"
    assert missing == 1
    assert "the local store contains no pipeline nope (pipelines: cli_stdout)" in error


def test_server_subcommand_is_registered(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["server", "--help"])

    assert exited.value.code == 0
    assert "--store" in capsys.readouterr().out


def test_console_script_runs_export(tmp_path):
    store = _store(tmp_path, "cli_script")
    result = subprocess.run(
        [sys.executable, "-m", "cmf_airflow.cli", "export", "--store", str(store)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Pipeline"][0]["name"] == "cli_script"
