"""Git provenance of a DAG file: remote URL, HEAD commit and dirty flag, looked up once per process."""

from __future__ import annotations

import functools
import logging
import os

from cmf_airflow.model import GitInfo

logger = logging.getLogger(__name__)


def git_info(dag_file: str | None) -> GitInfo | None:
    """Return the provenance of the repository that holds ``dag_file``, or None when there is none.

    A DAG outside any git repository is normal for a quick experiment, so it gets one warning per folder and
    per process, not an error.
    """
    if not dag_file:
        return None
    return _git_info_of_folder(os.path.dirname(os.path.abspath(dag_file)))


@functools.lru_cache(maxsize=64)
def _git_info_of_folder(folder: str) -> GitInfo | None:
    import git

    try:
        repo = git.Repo(folder, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        logger.warning(
            "DAG folder %s is not inside a git repository: executions are recorded without git commit",
            folder,
        )
        return None

    with repo:
        try:
            commit = repo.head.commit.hexsha
        except ValueError:
            logger.warning("git repository %s has no commit yet: executions are recorded without one",
                           repo.working_dir)
            return None
        return GitInfo(
            remote_url=_remote_url(repo),
            commit=commit,
            dirty=repo.is_dirty(untracked_files=False),
            root=str(repo.working_dir),
        )


def _remote_url(repo) -> str:
    # CMF records the remote the code came from; a repository without remotes is identified by its folder.
    remotes = {remote.name: remote for remote in repo.remotes}
    remote = remotes.get("origin") or next(iter(remotes.values()), None)
    if remote is None:
        return str(repo.working_dir)
    try:
        return next(iter(remote.urls))
    except StopIteration:
        return str(repo.working_dir)
