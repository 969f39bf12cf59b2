"""Git provenance of a DAG file: remote URL, HEAD commit and dirty flag, looked up once per process.

Each task try runs in a process of its own, so the lookup runs the ``git`` command directly (three short
calls) instead of importing GitPython, whose import alone costs a task process more than a quarter second.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess

from cmf_airflow.model import GitInfo

logger = logging.getLogger(__name__)

# A git call that takes longer than this (a repository on a hung network file system) is abandoned, so the
# listener never delays a task for long; the execution is then recorded without git provenance.
GIT_TIMEOUT_SECONDS = 10.0


class _GitError(Exception):
    pass


def git_info(dag_file: str | None) -> GitInfo | None:
    """Return the provenance of the repository that contains ``dag_file``, or None when there is none.

    A DAG outside any git repository is normal for a quick experiment, so it gets one warning per folder and
    per process, not an error.
    """
    if not dag_file:
        return None
    return _git_info_of_folder(os.path.dirname(os.path.abspath(dag_file)))


@functools.lru_cache(maxsize=64)
def _git_info_of_folder(folder: str) -> GitInfo | None:
    try:
        root = _git(folder, "rev-parse", "--show-toplevel")
    except _GitError as error:
        logger.warning(
            "DAG folder %s is not inside a git repository: executions are recorded without git commit", folder
        )
        logger.debug("git rev-parse in %s: %s", folder, error)
        return None
    except (OSError, subprocess.TimeoutExpired) as error:
        logger.warning("cannot read git provenance of %s (%s): executions are recorded without it", folder, error)
        return None

    try:
        status = _git(root, "status", "--porcelain=v2", "--branch", "--untracked-files=no")
        commit, dirty = _parse_status(status)
        if commit is None:
            logger.warning("git repository %s has no commit yet: executions are recorded without one", root)
            return None
        return GitInfo(remote_url=_remote_url(root), commit=commit, dirty=dirty, root=root)
    except (_GitError, OSError, subprocess.TimeoutExpired) as error:
        logger.warning("cannot read git provenance of %s (%s): executions are recorded without it", root, error)
        return None


def _parse_status(status: str) -> tuple[str | None, bool]:
    """Return (HEAD commit or None before the first commit, whether tracked files differ from it)."""
    commit = None
    dirty = False
    for line in status.splitlines():
        if line.startswith("# branch.oid "):
            value = line.removeprefix("# branch.oid ").strip()
            commit = None if value == "(initial)" else value
        elif line and not line.startswith("#"):
            dirty = True
    return commit, dirty


def _remote_url(root: str) -> str:
    # CMF records the remote the code came from: origin when there is one, else the first remote. A
    # repository without remotes is identified by its folder.
    try:
        listing = _git(root, "config", "--get-regexp", r"^remote\..*\.url$")
    except _GitError:
        return root
    urls = {}
    for line in listing.splitlines():
        key, _, url = line.partition(" ")
        urls[key.removeprefix("remote.").removesuffix(".url")] = url
    return urls.get("origin") or next(iter(urls.values()), root)


def _git(folder: str, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", folder, *args],
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        raise _GitError(result.stderr.strip() or f"git {args[0]} exited with {result.returncode}")
    return result.stdout.strip()
