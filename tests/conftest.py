"""Test set-up: one throw-away Airflow (home, SQLite database) for the session, one CMF store per test.

Airflow reads AIRFLOW_HOME when it is first imported, so the variables are set here, before any test module
imports Airflow. ``[cmf]`` options are read on every call, so each test points them at its own folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="cmf-airflow-tests-"))
# dag.test() runs only DAGs of a configured bundle, so tests write their DAG files into one of these folders:
# GIT_DAGS is a git repository, PLAIN_DAGS is not inside any.
GIT_DAGS = _SESSION_HOME / "git_dags"
PLAIN_DAGS = _SESSION_HOME / "plain_dags"
EXAMPLE_DATA = _SESSION_HOME / "ml_pipeline_data"
# The example DAGs that ship with the installed Airflow, found without importing Airflow, which must not be
# imported before the variables below are set.
AIRFLOW_EXAMPLE_DAGS = Path(importlib.util.find_spec("airflow").submodule_search_locations[0]) / "example_dags"
EXAMPLE_DAG_BUNDLE = _SESSION_HOME / "airflow_examples"
_BUNDLES = [
    ("tests_git", GIT_DAGS),
    ("tests_plain", PLAIN_DAGS),
    ("examples", REPO_ROOT / "dags_examples"),
    # Holds one of Airflow's example DAG files at a time: dag.test() parses the whole bundle of the DAG it runs.
    ("airflow_examples", EXAMPLE_DAG_BUNDLE),
]
os.environ.update(
    {
        "AIRFLOW_HOME": str(_SESSION_HOME / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PLAIN_DAGS),
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(
            [
                {
                    "name": name,
                    "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                    "kwargs": {"path": str(path), "refresh_interval": 0},
                }
                for name, path in _BUNDLES
            ]
        ),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_SESSION_HOME / 'airflow' / 'airflow.db'}",
        "AIRFLOW__CMF__STORE": str(_SESSION_HOME / "unused-store" / "mlmd.sqlite"),
        "ML_PIPELINE_DATA_DIR": str(EXAMPLE_DATA),
    }
)
for _folder in (PLAIN_DAGS, EXAMPLE_DAG_BUNDLE, _SESSION_HOME / "airflow"):
    _folder.mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session", autouse=True)
def airflow_database() -> Path:
    """Create the session's Airflow database once, with the real ``airflow db migrate``."""
    make_git_repo(GIT_DAGS)
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    return _SESSION_HOME


@pytest.fixture
def cmf_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``[cmf]`` at a fresh store and hash cache for this test, with a fixed site id."""
    store = tmp_path / "cmf" / "mlmd.sqlite"
    monkeypatch.setenv("AIRFLOW__CMF__STORE", str(store))
    monkeypatch.setenv("AIRFLOW__CMF__HASH_CACHE", str(tmp_path / "cmf" / "hash_cache.sqlite"))
    monkeypatch.setenv("AIRFLOW__CMF__SITE", "test-site")
    monkeypatch.setenv("AIRFLOW__CMF__ENABLED", "True")
    return store


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` and return its standard output, stripped."""
    result = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)
    return result.stdout.strip()


def make_git_repo(folder: Path) -> Path:
    """Create a git repository with a committer identity and an ``origin`` remote URL."""
    folder.mkdir(parents=True, exist_ok=True)
    git(folder, "init", "-q", "-b", "main")
    git(folder, "config", "user.email", "tests@example.com")
    git(folder, "config", "user.name", "cmf-airflow tests")
    git(folder, "remote", "add", "origin", "https://git.example.com/team/pipelines.git")
    return folder


def commit_all(repo: Path, message: str = "add DAG") -> str:
    """Commit everything in ``repo`` and return the new HEAD commit id."""
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def write_dag(source: str, name: str, *, in_git: bool = True) -> Path:
    """Write a DAG file into a bundle folder; in the git one it is committed. Returns the file's path."""
    folder = GIT_DAGS if in_git else PLAIN_DAGS
    dag_file = folder / f"{name}.py"
    dag_file.write_text(source, encoding="utf-8")
    if in_git:
        commit_all(GIT_DAGS, f"add {name}")
    return dag_file


def load_dags(dag_file: Path) -> list:
    """Import a DAG file as a fresh module and return its DAGs, sorted by DAG id."""
    from cmf_airflow.compat import DAG

    module_name = f"cmf_test_dag_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(module_name, dag_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    dags = {value.dag_id: value for value in vars(module).values() if isinstance(value, DAG)}
    return [dags[dag_id] for dag_id in sorted(dags)]


def load_dag(dag_file: Path, dag_id: str):
    """Import a DAG file as a fresh module and return the DAG named ``dag_id``."""
    for dag in load_dags(dag_file):
        if dag.dag_id == dag_id:
            return dag
    raise LookupError(f"{dag_file} defines no DAG {dag_id!r}")


def open_read_only(store: Path):
    """Open a CMF store for reading in a test."""
    from cmf_airflow.store import open_store

    return open_store(str(store), read_only=True)


def pytest_terminal_summary(terminalreporter) -> None:
    """Print how many executions the example-DAG test recorded, a figure worth keeping per Airflow version."""
    module = sys.modules.get("test_airflow_example_dags")
    for version, count in sorted(getattr(module, "TRIES_RECORDED", {}).items()):
        terminalreporter.write_line(f"Airflow {version} example DAGs: {count} task tries recorded as executions")
