"""DVC versioning and the DVC push operator, on real git and DVC repositories in temporary folders."""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import git, load_dag, write_dag

from cmf_airflow.hashing import hash_path
from cmf_airflow.versioning import (
    LOCK_FILE_NAME,
    PushResult,
    VersionedFile,
    VersioningError,
    find_workspace,
    push_files,
    version_file,
)


def dvc(folder: Path, *args: str) -> str:
    """Run the dvc command line of the test environment in ``folder``."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=folder, check=True, capture_output=True, text=True
    )
    return result.stdout.strip()


def make_workspace(folder: Path, *, subdir: bool = False) -> Path:
    """Initialise DVC in ``folder`` (a git repository is created unless ``subdir``) and commit it."""
    from dvc.repo import Repo

    folder.mkdir(parents=True, exist_ok=True)
    if not subdir:
        git(folder, "init", "-q", "-b", "main")
        git(folder, "config", "user.email", "tests@example.com")
        git(folder, "config", "user.name", "cmf-airflow tests")
    Repo.init(str(folder), subdir=subdir).close()
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", f"dvc init in {folder.name}")
    return folder


def add_local_remote(workspace: Path, remote: Path, name: str = "local") -> Path:
    """Configure a local-folder DVC remote as the workspace default, as a user does on the command line."""
    dvc(workspace, "remote", "add", "-d", name, str(remote))
    return remote


def committed_files(repo: Path, commit: str) -> list[str]:
    """The paths that ``commit`` changed, sorted."""
    return sorted(git(repo, "show", "--name-only", "--format=", commit).splitlines())


def dvc_file_md5(dvc_file: str) -> str:
    """The md5 written in a ``.dvc`` file, read as text."""
    for line in Path(dvc_file).read_text().splitlines():
        if line.strip().startswith("- md5:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no md5 line in {dvc_file}")


def status_lines(repo: Path) -> list[str]:
    """``git status --porcelain`` lines, with the leading blank that marks an unstaged change."""
    result = subprocess.run(["git", "status", "--porcelain"], cwd=repo, check=True, capture_output=True, text=True)
    return result.stdout.splitlines()


def commit_count(repo: Path) -> int:
    return int(git(repo, "rev-list", "--count", "HEAD"))


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return make_workspace(tmp_path / "project")


def test_version_file_commits_its_dvc_file(workspace):
    data = workspace / "data" / "train.csv"
    data.parent.mkdir()
    data.write_text("x,y\n1,2\n")

    versioned = version_file(str(data))

    assert isinstance(versioned, VersionedFile)
    assert versioned.path == str(data)
    assert versioned.dvc_file == str(data) + ".dvc"
    assert versioned.workspace == str(workspace)
    assert Path(versioned.dvc_file).is_file()
    assert versioned.git_commit == git(workspace, "rev-parse", "HEAD")
    assert committed_files(workspace, versioned.git_commit) == ["data/.gitignore", "data/train.csv.dvc"]
    assert "data/train.csv" in git(workspace, "log", "-1", "--format=%s")
    assert git(workspace, "show", "HEAD:data/.gitignore") == "/train.csv"
    assert versioned.md5 == dvc_file_md5(versioned.dvc_file)
    assert versioned.md5 == hash_path(data).md5
    assert git(workspace, "status", "--porcelain") == ""


def test_folder_md5_matches_hashing(workspace):
    folder = workspace / "features"
    (folder / "part").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "part" / "b.txt").write_text("beta")

    versioned = version_file(str(folder), message="Version the feature folder")

    assert versioned.md5.endswith(".dir")
    assert versioned.md5 == hash_path(folder).md5
    assert versioned.md5 == dvc_file_md5(versioned.dvc_file)
    assert git(workspace, "log", "-1", "--format=%s") == "Version the feature folder"
    assert committed_files(workspace, "HEAD") == [".gitignore", "features.dvc"]


def test_unchanged_content_makes_no_second_commit(workspace):
    data = workspace / "model.bin"
    data.write_bytes(b"\x00\x01weights")
    first = version_file(str(data))
    count = commit_count(workspace)

    again = version_file(str(data))

    assert again.git_commit == first.git_commit
    assert again.md5 == first.md5
    assert commit_count(workspace) == count

    data.write_bytes(b"\x00\x02weights")
    changed = version_file(str(data))

    assert changed.git_commit != first.git_commit
    assert commit_count(workspace) == count + 1
    assert committed_files(workspace, changed.git_commit) == ["model.bin.dvc"]
    assert changed.md5 == hash_path(data).md5


def test_unrelated_changes_are_not_committed(workspace):
    (workspace / "README.md").write_text("v1\n")
    (workspace / ".gitignore").write_text("# build outputs\n\n*.log\n")
    git(workspace, "add", "README.md", ".gitignore")
    git(workspace, "commit", "-q", "-m", "add readme")
    (workspace / "README.md").write_text("v2, unstaged\n")
    (workspace / "staged.py").write_text("print('staged')\n")
    git(workspace, "add", "staged.py")
    (workspace / "untracked.txt").write_text("untracked\n")
    # An uncommitted line in the very .gitignore that DVC extends.
    with open(workspace / ".gitignore", "a") as stream:
        stream.write("scratch/\n")
    (workspace / "out.csv").write_text("a\n")

    versioned = version_file(str(workspace / "out.csv"))

    assert committed_files(workspace, versioned.git_commit) == [".gitignore", "out.csv.dvc"]
    assert git(workspace, "show", "HEAD:.gitignore").splitlines() == ["# build outputs", "", "*.log", "/out.csv"]
    assert git(workspace, "show", "HEAD:README.md") == "v1"
    status = status_lines(workspace)
    assert " M .gitignore" in status
    assert " M README.md" in status
    assert "A  staged.py" in status
    assert "?? untracked.txt" in status
    assert not [line for line in status if "out.csv" in line]
    worktree_lines = (workspace / ".gitignore").read_text().splitlines()
    assert worktree_lines == ["# build outputs", "", "*.log", "scratch/", "/out.csv"]


def test_parallel_processes_all_commit(workspace):
    outputs = []
    for number in range(8):
        output = workspace / "outputs" / f"part-{number}.txt"
        output.parent.mkdir(exist_ok=True)
        output.write_text(f"output {number}\n")
        outputs.append(str(output))
    start = commit_count(workspace)

    # Separate processes (spawned, so each imports DVC afresh like an Airflow task process) run at once.
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        results = pool.map(version_file, outputs, chunksize=1)

    assert [result.path for result in results] == outputs
    assert commit_count(workspace) == start + 8
    assert len({result.git_commit for result in results}) == 8
    history = git(workspace, "rev-list", "HEAD").splitlines()
    assert all(result.git_commit in history for result in results)
    tracked = git(workspace, "ls-tree", "-r", "--name-only", "HEAD", "outputs").splitlines()
    assert sorted(tracked) == sorted(
        ["outputs/.gitignore", *(f"outputs/part-{number}.txt.dvc" for number in range(8))]
    )
    ignored = git(workspace, "show", "HEAD:outputs/.gitignore").splitlines()
    assert sorted(ignored) == sorted(f"/part-{number}.txt" for number in range(8))
    for result in results:
        assert result.md5 == hash_path(result.path).md5
    assert git(workspace, "status", "--porcelain") == ""


def test_push_puts_content_in_local_remote(workspace, tmp_path):
    remote = add_local_remote(workspace, tmp_path / "remote")
    git(workspace, "commit", "-q", "-am", "add remote")
    data = workspace / "data.txt"
    data.write_text("pushed content\n")
    folder = workspace / "images"
    folder.mkdir()
    (folder / "one.txt").write_text("one")
    file_md5 = version_file(str(data)).md5
    version_file(str(folder))

    only_file = push_files(str(workspace), ["data.txt"])

    assert isinstance(only_file, PushResult)
    assert only_file.remote == "local"
    assert only_file.targets == (str(data),)
    assert only_file.transferred == 1
    stored = remote / "files" / "md5" / file_md5[:2] / file_md5[2:]
    assert stored.read_text() == "pushed content\n"
    assert not (remote / "files" / "md5" / hash_path(folder / "one.txt").md5[:2]).exists()

    everything = push_files(str(workspace), remote="local")

    assert everything.targets == ()
    # The folder's listing (the .dir object) and its one file. data.txt is already on the remote.
    assert everything.transferred == 2
    one_md5 = hash_path(folder / "one.txt").md5
    assert (remote / "files" / "md5" / one_md5[:2] / one_md5[2:]).read_text() == "one"
    dir_md5 = hash_path(folder).md5
    assert (remote / "files" / "md5" / dir_md5[:2] / dir_md5[2:]).is_file()


def test_find_workspace_returns_innermost(tmp_path):
    outer = make_workspace(tmp_path / "outer")
    inner = make_workspace(outer / "sub", subdir=True)
    no_scm = tmp_path / "no_scm"
    no_scm.mkdir()
    from dvc.repo import Repo

    Repo.init(str(no_scm), no_scm=True).close()

    assert find_workspace(str(outer / "a.csv")) == str(outer)
    assert find_workspace(str(outer / "deep" / "er" / "a.csv")) == str(outer)
    assert find_workspace(str(inner / "a.csv")) == str(inner)
    assert find_workspace(str(no_scm / "a.csv")) is None
    assert find_workspace(str(tmp_path / "a.csv")) is None

    (inner / "b.csv").write_text("b\n")
    versioned = version_file(str(inner / "b.csv"))

    assert versioned.workspace == str(inner)
    assert committed_files(outer, versioned.git_commit) == ["sub/.gitignore", "sub/b.csv.dvc"]


def test_missing_path_is_rejected(workspace):
    with pytest.raises(VersioningError, match=r"missing\.csv: the path does not exist"):
        version_file(str(workspace / "missing.csv"))


def test_path_outside_workspace_is_rejected(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.csv").write_text("a\n")

    with pytest.raises(VersioningError, match=r"a\.csv: it is not inside a git\+DVC workspace.*dvc init"):
        version_file(str(plain / "a.csv"))


def test_git_tracked_path_is_rejected(workspace):
    tracked = workspace / "tracked.csv"
    tracked.write_text("a\n")
    git(workspace, "add", "tracked.csv")
    git(workspace, "commit", "-q", "-m", "track csv in git")
    count = commit_count(workspace)

    with pytest.raises(VersioningError, match=r"tracked\.csv: git tracks it.*git rm -r --cached tracked\.csv"):
        version_file(str(tracked))

    assert not (workspace / "tracked.csv.dvc").exists()
    assert commit_count(workspace) == count


def test_held_lock_times_out(workspace):
    data = workspace / "a.txt"
    data.write_text("a\n")
    lock_path = workspace / ".dvc" / "tmp" / LOCK_FILE_NAME
    lock_path.parent.mkdir(parents=True, exist_ok=True)

    with open(lock_path, "a+b") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        with pytest.raises(VersioningError, match=r"timed out after 0\.2 s waiting for the versioning lock"):
            version_file(str(data), lock_timeout=0.2)

    assert not (workspace / "a.txt.dvc").exists()


def test_push_errors_name_the_problem(workspace, tmp_path):
    data = workspace / "a.txt"
    data.write_text("a\n")
    version_file(str(data))

    with pytest.raises(VersioningError, match=r"has no default DVC remote.*dvc remote add -d"):
        push_files(str(workspace))
    with pytest.raises(VersioningError, match=r"DVC remote 'backup' is not configured \(configured: none\)"):
        push_files(str(workspace), remote="backup")
    with pytest.raises(VersioningError, match=r"never\.txt: it has no \.dvc file"):
        push_files(str(workspace), ["never.txt"])
    with pytest.raises(VersioningError, match=r"not the root of a git\+DVC workspace"):
        push_files(str(tmp_path))
    with pytest.raises(VersioningError, match=r"elsewhere\.txt: it is outside the workspace"):
        push_files(str(workspace), [str(tmp_path / "elsewhere.txt")])


PUSH_DAG = '''
import json
import logging
from datetime import datetime
from pathlib import Path

from cmf_airflow.compat import DAG, task
from cmf_airflow.operators.dvc import DvcPushOperator

PARAMS = {{"workspace": {workspace!r}, "path": "data.txt"}}

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), params=PARAMS) as dag:
    push = DvcPushOperator(task_id="push", workspace="{{{{ params.workspace }}}}", paths={paths!r})

    @task
    def record(result):
        Path({report!r}).write_text(json.dumps(result))

    record(push.output)
'''


def _push_dag(tmp_path: Path, dag_id: str, workspace: Path, paths: list[str]):
    source = PUSH_DAG.format(dag_id=dag_id, workspace=str(workspace), paths=paths, report=str(tmp_path / "report.json"))
    return load_dag(write_dag(source, dag_id, in_git=False), dag_id)


def _task_states(dag_run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def test_push_operator_pushes_in_dag_run(workspace, tmp_path, cmf_store):
    remote = add_local_remote(workspace, tmp_path / "remote")
    data = workspace / "data.txt"
    data.write_text("from the DAG\n")
    md5 = version_file(str(data)).md5

    dag_run = _push_dag(tmp_path, "dvc_push_ok", workspace, ["{{ params.path }}"]).test()

    assert _task_states(dag_run) == {"push": "success", "record": "success"}
    assert (remote / "files" / "md5" / md5[:2] / md5[2:]).read_text() == "from the DAG\n"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == {"workspace": str(workspace), "remote": "local", "targets": [str(data)], "transferred": 1}


def test_push_operator_fails_without_remote(workspace, tmp_path, cmf_store, caplog, capfd):
    (workspace / "data.txt").write_text("no remote\n")
    version_file(str(workspace / "data.txt"))

    dag_run = _push_dag(tmp_path, "dvc_push_no_remote", workspace, []).test()

    assert _task_states(dag_run)["push"] == "failed"
    assert str(dag_run.state) == "failed"
    assert not (tmp_path / "report.json").exists()
    # Airflow 3 prints the task's error through structlog to the console, Airflow 2 logs it.
    captured = capfd.readouterr()
    task_log = captured.out + captured.err + caplog.text
    assert f"cannot push {workspace}: the workspace has no default DVC remote" in task_log


def test_lock_file_stays_out_of_git(workspace):
    (workspace / "a.txt").write_text("a\n")
    version_file(str(workspace / "a.txt"))

    assert (workspace / ".dvc" / "tmp" / LOCK_FILE_NAME).exists()
    assert git(workspace, "status", "--porcelain", "--ignored=no") == ""
    assert not [name for name in os.listdir(workspace / ".dvc" / "tmp") if name.startswith("cmf-airflow-index")]


class _RemoveLockWhenBusy(logging.Handler):
    """Delete a git lock file as soon as versioning reports that git is busy, like a user's git finishing."""

    def __init__(self, lock: Path) -> None:
        super().__init__(level=logging.DEBUG)
        self.git_lock = lock
        self.busy_reports = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("git is busy"):
            self.busy_reports += 1
            self.git_lock.unlink(missing_ok=True)


def test_busy_git_index_is_retried(workspace):
    data = workspace / "a.txt"
    data.write_text("a\n")
    # Another git command (for example the user's `git add`) has taken the index lock when versioning starts.
    index_lock = workspace / ".git" / "index.lock"
    index_lock.write_text("")
    handler = _RemoveLockWhenBusy(index_lock)
    logger = logging.getLogger("cmf_airflow.versioning")
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        versioned = version_file(str(data))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)

    assert handler.busy_reports >= 1
    assert not index_lock.exists()
    assert versioned.git_commit == git(workspace, "rev-parse", "HEAD")
    assert committed_files(workspace, versioned.git_commit) == [".gitignore", "a.txt.dvc"]
    assert status_lines(workspace) == []


def test_first_commit_of_new_repository(tmp_path):
    from dvc.repo import Repo

    workspace = tmp_path / "fresh"
    workspace.mkdir()
    git(workspace, "init", "-q", "-b", "main")
    git(workspace, "config", "user.email", "tests@example.com")
    git(workspace, "config", "user.name", "cmf-airflow tests")
    Repo.init(str(workspace)).close()
    (workspace / "a.txt").write_text("a\n")

    versioned = version_file(str(workspace / "a.txt"))

    assert git(workspace, "rev-list", "HEAD").splitlines() == [versioned.git_commit]
    assert git(workspace, "log", "-1", "--format=%P") == ""
    assert committed_files(workspace, versioned.git_commit) == [".gitignore", "a.txt.dvc"]
    # DVC's own files were not committed by versioning: they stay for the user to commit.
    assert "A  .dvc/config" in status_lines(workspace)


def test_missing_git_identity_is_reported(tmp_path, monkeypatch):
    workspace = tmp_path / "anonymous"
    make_workspace(workspace)
    git(workspace, "config", "--unset", "user.email")
    git(workspace, "config", "--unset", "user.name")
    # Keep git from finding an identity elsewhere: no global or system configuration, no name variables.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("EMAIL", "")
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(name, raising=False)
    (workspace / "a.txt").write_text("a\n")
    count = commit_count(workspace)

    with pytest.raises(VersioningError, match=r"a\.txt: git has no committer identity .*git config user\.email"):
        version_file(str(workspace / "a.txt"))

    assert commit_count(workspace) == count
