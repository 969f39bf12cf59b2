"""The Environment artifact: the task's packages in pip freeze form, recorded as an input of every execution."""

from __future__ import annotations

import hashlib
import re
from importlib import metadata

import pytest
from conftest import load_dag, open_read_only, write_dag
from ml_metadata.proto import metadata_store_pb2 as mlmd

from cmf_airflow import environment

TWO_TASKS_DAG = '''
from datetime import datetime

from cmf_airflow.compat import DAG, task

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1)) as dag:

    @task
    def first():
        return 1

    @task
    def second():
        return 2

    first() >> second()
'''


@pytest.fixture(autouse=True)
def _fresh_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the environment that an earlier test captured in this process."""
    monkeypatch.setattr(environment, "_memo", None)


def test_freeze_lines_are_sorted_name_version_pairs():
    lines = environment.freeze_lines()
    names = [line.split("==")[0] for line in lines]

    # Sorted by the normalised name, in which case, "_" and "." do not count: pydantic_core < pydantic-extra-types.
    assert names == sorted(names, key=lambda name: re.sub(r"[-_.]+", "-", name).lower())
    assert all(line.count("==") == 1 for line in lines)
    assert f"apache-airflow=={metadata.version('apache-airflow')}" in lines
    assert f"ml-metadata=={metadata.version('ml-metadata')}" in lines


def test_environment_is_shared_by_executions(cmf_store):
    dag_file = write_dag(TWO_TASKS_DAG.format(dag_id="environment_shared"), "environment_shared")
    dag_run = load_dag(dag_file, "environment_shared").test()
    store = open_read_only(cmf_store)
    executions = sorted(store.get_executions(), key=lambda execution: execution.id)
    [artifact] = store.get_artifacts_by_type("Environment")
    events = store.get_events_by_artifact_ids([artifact.id])
    path = artifact.properties["url"].string_value.removeprefix("file://")
    with open(path, "rb") as file:
        content = file.read()

    assert str(dag_run.state) == "success"
    assert len(executions) == 2
    assert sorted((event.execution_id, event.type) for event in events) == [
        (executions[0].id, mlmd.Event.INPUT),
        (executions[1].id, mlmd.Event.INPUT),
    ]
    assert artifact.uri == hashlib.md5(content).hexdigest()
    assert artifact.name == f"{path}:{artifact.uri}"
    assert path == str(cmf_store.parent / "environments" / f"{artifact.uri}.txt")
    assert content.decode().splitlines()[1:] == environment.freeze_lines()


def test_capture_disabled_records_no_environment(cmf_store, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CMF__CAPTURE_ENVIRONMENT", "False")
    dag_file = write_dag(TWO_TASKS_DAG.format(dag_id="environment_off"), "environment_off")
    dag_run = load_dag(dag_file, "environment_off").test()
    store = open_read_only(cmf_store)

    assert str(dag_run.state) == "success"
    assert len(store.get_executions()) == 2
    assert store.get_artifacts() == []


def test_capture_reuses_the_cached_freeze_across_processes(tmp_path, monkeypatch):
    first = environment.capture(str(tmp_path))
    file_mtime = (tmp_path / "environments" / f"{first.md5}.txt").stat().st_mtime_ns
    # A new process starts without the in-process memo, and must not compute the freeze again.
    monkeypatch.setattr(environment, "_memo", None)
    monkeypatch.setattr(environment, "freeze_text", lambda: pytest.fail("the freeze was computed again"))
    second = environment.capture(str(tmp_path))

    assert second == first
    assert (tmp_path / "environments" / f"{first.md5}.txt").stat().st_mtime_ns == file_mtime
    assert first.package_count == len(environment.freeze_lines())


def test_capture_recomputes_when_packages_change(tmp_path, monkeypatch):
    first = environment.capture(str(tmp_path))
    # A new folder on sys.path, as an installed package would add, changes the key of the cache.
    extra = tmp_path / "new-site-packages"
    extra.mkdir()
    monkeypatch.syspath_prepend(str(extra))
    monkeypatch.setattr(environment, "_memo", None)
    monkeypatch.setattr(environment, "freeze_text", lambda: "# Python x\nnew-package==1.0\n")
    second = environment.capture(str(tmp_path))

    assert second.md5 == hashlib.md5(b"# Python x\nnew-package==1.0\n").hexdigest()
    assert second.md5 != first.md5
    assert second.package_count == 1
