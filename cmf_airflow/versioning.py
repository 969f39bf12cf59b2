"""DVC versioning of artifacts: ``dvc add`` a path, commit its ``.dvc`` file to git, and ``dvc push``.

An artifact inside a DVC workspace (a git repository in which ``dvc init`` ran, possibly in a subfolder) is
added to DVC's cache, and only its ``.dvc`` file and the ``.gitignore`` entry DVC wrote for it are committed.
The commit is built with git's plumbing on a temporary index, so whatever else the user changed, staged or
not, stays out of it, and the branch moves only if no one else moved it in between.

DVC is driven through its Python API (``dvc.repo.Repo``), imported on first use, and git through its
command line. benchmarks/bench_versioning.py measured (DVC 3.67, Python 3.11, 2 CPUs shared with other jobs,
median of 5 rounds): ``version_file`` in a new process took 5.0 s, and ``dvc add`` + ``git add`` +
``git commit`` took 5.3 s. A process that had already imported DVC took 0.22 s per call. Most of the cost is
DVC's imports, which a task process pays once, so a task that versions several artifacts pays it only for
the first.

Writers of one workspace are serialised by an ``flock`` on ``.dvc/tmp/cmf-airflow.lock``, so parallel tasks
never meet on git's ``index.lock`` or on DVC's repository lock. DVC's imports run before the lock is taken,
so a writer holds it for the add and the commit only. In a new process on a loaded 2-CPU machine, that was
0.5 s, against 4.7 s when the first add imported under the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from dvc.repo import Repo

logger = logging.getLogger(__name__)

LOCK_FILE_NAME = "cmf-airflow.lock"
# A git call that takes longer than this (a repository on a hung network file system) is abandoned.
GIT_TIMEOUT_SECONDS = 60.0
# Seconds between two attempts to take a busy lock (the workspace lock, git's index or ref locks).
_RETRY_INTERVAL = 0.05
_NULL_COMMIT = "0" * 40
_T = TypeVar("_T")
# Whether this process imported what ``dvc add`` needs (see _load_dvc).
_dvc_loaded = False
_MODULES_IMPORTED_BY_ADD = (
    "dulwich.index",
    "dvc.rwlock",
    "dvc_data.hashfile.build",
    "dvc_data.hashfile.status",
    "rich.live",
    "rich.status",
    "rich.table",
)
# Variables that would point git at another repository or index than the workspace's own.
_GIT_LOCATION_VARIABLES = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY")


@dataclass(frozen=True, slots=True)
class VersionedFile:
    """An artifact added to DVC, with the git commit that contains its ``.dvc`` file."""

    path: str
    """Absolute path of the artifact (file or folder)."""

    dvc_file: str
    """Absolute path of its ``.dvc`` file."""

    git_commit: str
    """The commit that added or updated the ``.dvc`` file, or HEAD when nothing changed."""

    md5: str
    """DVC's md5 as written in the ``.dvc`` file (``<md5>.dir`` for a folder)."""

    workspace: str
    """Root of the git+DVC workspace (the folder that contains ``.dvc``)."""


@dataclass(frozen=True, slots=True)
class PushResult:
    """The outcome of one ``dvc push``."""

    workspace: str
    """Root of the git+DVC workspace that was pushed."""

    remote: str
    """Name of the DVC remote the data went to."""

    targets: tuple[str, ...]
    """Absolute paths of the artifacts pushed, empty when every versioned artifact was pushed."""

    transferred: int
    """Number of files uploaded (files the remote already had are not counted)."""


class VersioningError(Exception):
    """Versioning or pushing an artifact failed. The message names the path and what to do."""


@dataclass(frozen=True, slots=True)
class _Workspace:
    dvc_root: str
    git_root: str


# --- public API ---------------------------------------------------------------------------------------------


def find_workspace(path: str) -> str | None:
    """Return the root of the innermost git+DVC workspace that contains ``path``, or None.

    The root is the nearest folder above ``path`` with a ``.dvc`` folder, provided that it lies in a git
    repository. A DVC repository initialised without git (``dvc init --no-scm``) is not a workspace here.
    """
    workspace = _locate(os.path.abspath(path))
    return workspace.dvc_root if workspace else None


def version_file(path: str, *, message: str | None = None, lock_timeout: float = 60.0) -> VersionedFile:
    """Add ``path`` to DVC and commit its ``.dvc`` file (and DVC's ``.gitignore`` entry) to git.

    ``message`` replaces the default commit message, which names the artifact. Unchanged content makes no new
    commit and returns HEAD. Raises VersioningError when the path is missing, outside a git+DVC workspace,
    tracked by git itself, or when the workspace lock is not free within ``lock_timeout`` seconds.
    """
    absolute = os.path.abspath(path)
    if not os.path.lexists(absolute):
        raise VersioningError(f"cannot version {absolute}: the path does not exist (write the artifact first)")
    workspace = _locate(absolute)
    if workspace is None:
        raise VersioningError(
            f"cannot version {absolute}: it is not inside a git+DVC workspace"
            " (run `git init` and `dvc init` in a folder above it, or move the artifact into one)"
        )
    if os.path.isdir(absolute) and os.path.isdir(os.path.join(absolute, ".dvc")):
        raise VersioningError(f"cannot version {absolute}: it is the root of a DVC repository, not an artifact")
    relative = _git_relative(workspace, absolute)
    _load_dvc(workspace.dvc_root)
    deadline = time.monotonic() + lock_timeout

    with _workspace_lock(workspace.dvc_root, lock_timeout):
        _reject_git_tracked(workspace, absolute, relative)
        md5 = _dvc_add(workspace.dvc_root, absolute)
        dvc_file = absolute + ".dvc"
        commit = _commit_artifact(
            workspace, absolute, message or f"Version {relative} with DVC (cmf-airflow)", deadline
        )

    logger.debug("Versioned %s as %s in commit %s", absolute, md5, commit)
    return VersionedFile(
        path=absolute, dvc_file=dvc_file, git_commit=commit, md5=md5, workspace=workspace.dvc_root
    )


def push_files(
    workspace: str, paths: Sequence[str] = (), *, remote: str | None = None, lock_timeout: float = 60.0
) -> PushResult:
    """Run ``dvc push`` for the given versioned artifacts, or for every one in ``workspace`` when empty.

    Relative ``paths`` are taken from the workspace root, and each may name the artifact or its ``.dvc``
    file. ``remote`` names a DVC remote, None uses the workspace's default one. Raises VersioningError when
    the workspace has no such remote, a path was never versioned, or the upload fails.
    """
    root = os.path.abspath(workspace)
    # _locate starts from the parent folder of its argument, so a name inside root makes it start at root.
    located = _locate(os.path.join(root, "artifact"))
    if located is None or located.dvc_root != root:
        raise VersioningError(
            f"cannot push {root}: it is not the root of a git+DVC workspace (give the folder that contains .dvc)"
        )
    targets = tuple(_push_target(root, path) for path in paths)

    with _workspace_lock(root, lock_timeout), _open_repo(root) as repo:
        remote_name = _remote_name(repo, root, remote)
        transferred = _dvc_push(repo, root, targets, remote_name)

    logger.info("Pushed %d files of %s to DVC remote %s", transferred, root, remote_name)
    return PushResult(workspace=root, remote=remote_name, targets=targets, transferred=transferred)


# --- workspace and lock -------------------------------------------------------------------------------------


def _locate(path: str) -> _Workspace | None:
    folder = os.path.dirname(path)
    dvc_root = None
    while True:
        if dvc_root is None and os.path.isdir(os.path.join(folder, ".dvc")):
            dvc_root = folder
        # A .git file (not a folder) marks a linked worktree or a submodule, which git handles the same way.
        if dvc_root is not None and os.path.exists(os.path.join(folder, ".git")):
            return _Workspace(dvc_root=dvc_root, git_root=folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


@contextlib.contextmanager
def _workspace_lock(dvc_root: str, timeout: float) -> Iterator[None]:
    """Hold the workspace's inter-process lock, waiting at most ``timeout`` seconds for it."""
    folder = os.path.join(dvc_root, ".dvc", "tmp")
    os.makedirs(folder, exist_ok=True)
    lock_path = os.path.join(folder, LOCK_FILE_NAME)
    deadline = time.monotonic() + timeout
    with open(lock_path, "a+b") as lock_file:
        while True:
            try:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                raise VersioningError(
                    f"timed out after {timeout:g} s waiting for the versioning lock {lock_path}"
                    " (another task is versioning in this workspace: raise lock_timeout or retry)"
                )
            time.sleep(_RETRY_INTERVAL)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


# --- DVC ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _open_repo(dvc_root: str) -> Iterator[Repo]:
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        repo = Repo(dvc_root)
    except DvcException as error:
        raise VersioningError(f"cannot open the DVC repository {dvc_root}: {error}") from error
    # DVC prints a hint to `git add` the .dvc file after each add. This module commits the file itself.
    repo.scm_context.quiet = True
    try:
        yield repo
    finally:
        repo.close()


def _load_dvc(dvc_root: str) -> None:
    """Import the modules of DVC that an add needs, before the caller takes the workspace lock.

    The first add of a process spends seconds importing (dulwich, networkx, rich and others). Doing that
    outside the lock keeps parallel tasks from waiting for each other's imports. Building the stage graph
    only reads the workspace, so a failure here is left for the add to report.
    """
    global _dvc_loaded
    if _dvc_loaded:
        return
    from dvc.exceptions import DvcException

    try:
        with _open_repo(dvc_root) as repo:
            repo.scm  # noqa: B018 (opening git imports dulwich)
            repo.index.graph  # noqa: B018 (the stage graph imports networkx)
    except (VersioningError, DvcException, OSError) as error:
        logger.debug("Loading DVC for %s failed, the add reports it: %s", dvc_root, error)
    # Modules that DVC 3.67 imports only inside an add. A name missing in another release is skipped.
    for module in _MODULES_IMPORTED_BY_ADD:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    _dvc_loaded = True


def _dvc_add(dvc_root: str, path: str) -> str:
    """Add ``path`` to DVC and return the md5 that DVC wrote into its ``.dvc`` file."""
    from dvc.exceptions import DvcException

    # NOTE: the workspace lock only orders cmf-airflow writers. A `dvc` command that a user runs meanwhile can
    # still hold DVC's repository lock, and DVC then raises LockError, reported here as a VersioningError.

    with _open_repo(dvc_root) as repo:
        try:
            [stage] = repo.add(path)
        except (DvcException, OSError) as error:
            raise VersioningError(f"dvc add {path} failed: {error}") from error
    return stage.outs[0].hash_info.value


def _push_target(root: str, path: str) -> str:
    absolute = os.path.normpath(os.path.join(root, path))
    absolute = absolute.removesuffix(".dvc")
    if os.path.commonpath([root, absolute]) != root:
        raise VersioningError(f"cannot push {absolute}: it is outside the workspace {root}")
    if not os.path.exists(absolute + ".dvc"):
        raise VersioningError(
            f"cannot push {absolute}: it has no .dvc file (version it first with version_file or `dvc add`)"
        )
    return absolute


def _remote_name(repo: Repo, root: str, remote: str | None) -> str:
    remotes = repo.config.get("remote", {})
    if remote is not None:
        if remote not in remotes:
            known = ", ".join(sorted(remotes)) or "none"
            raise VersioningError(
                f"cannot push {root}: DVC remote {remote!r} is not configured (configured: {known}),"
                f" add it with `dvc remote add {remote} URL`"
            )
        return remote
    default = repo.config.get("core", {}).get("remote")
    if not default:
        raise VersioningError(
            f"cannot push {root}: the workspace has no default DVC remote"
            " (add one with `dvc remote add -d NAME URL`, or pass remote=)"
        )
    return str(default)


def _dvc_push(repo: Repo, root: str, targets: tuple[str, ...], remote: str) -> int:
    from dvc.exceptions import DvcException

    try:
        return int(repo.push(targets=list(targets) or None, remote=remote))
    except DvcException as error:
        raise VersioningError(f"dvc push of {root} to remote {remote!r} failed: {error}") from error


# --- git ----------------------------------------------------------------------------------------------------


class _GitError(Exception):
    def __init__(self, args: Sequence[str], stderr: str) -> None:
        # The subcommand and git's message on one line: the full arguments repeat blob ids and the message.
        super().__init__(f"git {args[0]} failed: {' '.join(stderr.split())}")
        self.stderr = stderr


def _git(git_root: str, *args: str, index: str | None = None, stdin: bytes | None = None, raw: bool = False) -> str:
    """Run git in ``git_root`` and return its output, stripped unless ``raw`` (file content must stay exact)."""
    env = {key: value for key, value in os.environ.items() if key not in _GIT_LOCATION_VARIABLES}
    if index is not None:
        env["GIT_INDEX_FILE"] = index
    result = subprocess.run(
        ["git", "-C", git_root, *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=GIT_TIMEOUT_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()
        raise _GitError(args, stderr or f"exit status {result.returncode}")
    output = result.stdout.decode(errors="surrogateescape")
    return output if raw else output.strip()


def _git_relative(workspace: _Workspace, path: str) -> str:
    return os.path.relpath(path, workspace.git_root).replace(os.sep, "/")


def _reject_git_tracked(workspace: _Workspace, path: str, relative: str) -> None:
    if _git(workspace.git_root, "ls-files", "--", relative):
        raise VersioningError(
            f"cannot version {path}: git tracks it directly, and DVC only versions what git does not"
            f" (run `git rm -r --cached {relative}` in {workspace.git_root} and commit, then version it again)"
        )


def _commit_artifact(workspace: _Workspace, path: str, message: str, deadline: float) -> str:
    """Commit the ``.dvc`` file of ``path`` and DVC's ``.gitignore`` entry, retrying while git is busy."""
    commit, old_head, changes = _retry_while_busy(
        lambda: _write_commit(workspace, path, message), path, workspace.git_root, deadline
    )
    _retry_while_busy(lambda: _sync_index(workspace.git_root, old_head, changes), path, workspace.git_root, deadline)
    return commit


def _retry_while_busy(step: Callable[[], _T], path: str, git_root: str, deadline: float) -> _T:
    while True:
        try:
            return step()
        except _GitError as error:
            # Another git command has taken index.lock or a ref lock, or moved the branch meanwhile.
            busy = ".lock" in error.stderr or "but expected" in error.stderr
            if not busy or time.monotonic() >= deadline:
                raise _commit_error(path, git_root, error) from error
            logger.debug("git is busy in %s, retrying: %s", git_root, error.stderr)
            time.sleep(_RETRY_INTERVAL)


def _commit_error(path: str, git_root: str, error: _GitError) -> VersioningError:
    if "tell me who you are" in error.stderr or "identity unknown" in error.stderr:
        return VersioningError(
            f"cannot commit the .dvc file of {path}: git has no committer identity in {git_root}"
            " (run `git config user.name NAME` and `git config user.email EMAIL` in the repository)"
        )
    return VersioningError(f"cannot commit the .dvc file of {path}: {error}")


def _write_commit(workspace: _Workspace, path: str, message: str) -> tuple[str, str | None, dict[str, str]]:
    """Commit the changes and return (new commit or unchanged HEAD, HEAD before, path-to-blob changes)."""
    root = workspace.git_root
    head = _head(root)
    changes = {_git_relative(workspace, path + ".dvc"): _hash_object(root, path + ".dvc")}
    gitignore_blob = _gitignore_blob(workspace, path, head)
    if gitignore_blob is not None:
        changes[_git_relative(workspace, os.path.join(os.path.dirname(path), ".gitignore"))] = gitignore_blob

    tree = _tree_with(workspace, head, changes)
    if head is not None and tree == _git(root, "rev-parse", f"{head}^{{tree}}"):
        return head, head, changes

    parents = ["-p", head] if head else []
    commit = _git(root, "commit-tree", tree, *parents, "-m", message)
    # The old value makes update-ref a compare-and-swap: it fails if a user commit moved the branch meanwhile.
    _git(root, "update-ref", "-m", f"cmf-airflow: {message}", "HEAD", commit, head or _NULL_COMMIT)
    return commit, head, changes


def _head(git_root: str) -> str | None:
    try:
        return _git(git_root, "rev-parse", "--verify", "-q", "HEAD^{commit}")
    except _GitError:
        return None  # A new repository: the branch has no commit yet.


def _hash_object(git_root: str, file: str) -> str:
    return _git(git_root, "hash-object", "-w", "--", file)


def _tree_with(workspace: _Workspace, head: str | None, changes: dict[str, str]) -> str:
    """Write the tree of HEAD plus ``changes`` (path to blob id), built on a temporary index."""
    root = workspace.git_root
    index = os.path.join(workspace.dvc_root, ".dvc", "tmp", f"cmf-airflow-index-{os.getpid()}")
    try:
        _git(root, "read-tree", *([head] if head else ["--empty"]), index=index)
        _git(root, "update-index", "--add", *_cacheinfo(changes), index=index)
        return _git(root, "write-tree", index=index)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(index)


def _gitignore_blob(workspace: _Workspace, path: str, head: str | None) -> str | None:
    """Return the blob of HEAD's ``.gitignore`` plus DVC's entry for ``path``, or None when none is needed.

    Only the entry DVC wrote is committed, so other uncommitted lines in the same ``.gitignore`` stay out.
    """
    from pathspec.patterns.gitwildmatch import GitWildMatchPattern

    gitignore = os.path.join(os.path.dirname(path), ".gitignore")
    # The entry as DVC (scmrepo) writes it: the name relative to the .gitignore folder, anchored and escaped.
    entry = GitWildMatchPattern.escape("/" + os.path.basename(path))
    try:
        with open(gitignore, encoding="utf-8") as stream:
            if entry not in stream.read().splitlines():
                return None  # Git already ignored the path through another rule, so DVC added nothing.
    except FileNotFoundError:
        return None

    committed = ""
    if head is not None:
        with contextlib.suppress(_GitError):
            blob = f"{head}:{_git_relative(workspace, gitignore)}"
            committed = _git(workspace.git_root, "cat-file", "blob", blob, raw=True)
    if entry in committed.splitlines():
        return None
    separator = "\n" if committed and not committed.endswith("\n") else ""
    content = f"{committed}{separator}{entry}\n".encode(errors="surrogateescape")
    return _git(workspace.git_root, "hash-object", "-w", "--stdin", stdin=content)


def _sync_index(git_root: str, old_head: str | None, changes: dict[str, str]) -> None:
    """Stage the committed blobs in the user's index, so that ``git status`` shows them as committed.

    An index entry that the user staged with other content is left alone.
    """
    updates = {}
    for relative, blob in changes.items():
        staged = _git(git_root, "ls-files", "-s", "--", relative).split()
        if staged and staged[1] == blob:
            continue
        if staged and staged[1] != _blob_at(git_root, old_head, relative):
            logger.debug("Leaving the staged version of %s in the index of %s", relative, git_root)
            continue
        updates[relative] = blob
    if updates:
        _git(git_root, "update-index", "--add", *_cacheinfo(updates))


def _cacheinfo(changes: dict[str, str]) -> list[str]:
    return [argument for relative, blob in changes.items() for argument in ("--cacheinfo", f"100644,{blob},{relative}")]


def _blob_at(git_root: str, commit: str | None, relative: str) -> str | None:
    if commit is None:
        return None
    try:
        return _git(git_root, "rev-parse", "--verify", "-q", f"{commit}:{relative}")
    except _GitError:
        return None
