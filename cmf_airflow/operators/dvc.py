"""An Airflow operator that uploads versioned artifacts to a DVC remote with ``dvc push``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from cmf_airflow.compat import BaseOperator
from cmf_airflow.versioning import push_files

logger = logging.getLogger(__name__)


class DvcPushOperator(BaseOperator):
    """Push artifacts versioned in a git+DVC workspace to its DVC remote.

    :param workspace: root of the git+DVC workspace (the folder that contains ``.dvc``). Templated.
    :param paths: artifacts (or their ``.dvc`` files) to push, relative to the workspace or absolute.
        Empty pushes every versioned artifact of the workspace. Templated.
    :param remote: name of the DVC remote, or None for the workspace's default remote. Templated.
    :param lock_timeout: seconds to wait while other tasks version artifacts in the same workspace.

    The task fails with a message naming the workspace when it has no such remote or a path was never
    versioned. Its return value (an XCom) is a dict with ``workspace``, ``remote``, ``targets`` and
    ``transferred``, the number of files uploaded.
    """

    template_fields: Sequence[str] = ("workspace", "paths", "remote")
    ui_color = "#945dd6"

    def __init__(
        self,
        *,
        workspace: str,
        paths: Sequence[str] | str = (),
        remote: str | None = None,
        lock_timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.workspace = workspace
        self.paths = paths
        self.remote = remote
        self.lock_timeout = lock_timeout

    def execute(self, context: Any) -> dict[str, Any]:
        """Run ``dvc push`` and return what was pushed."""
        # A template that renders one path yields a string, which must not be read as a list of characters.
        if isinstance(self.paths, str):
            paths: tuple[str, ...] = (self.paths,) if self.paths.strip() else ()
        else:
            paths = tuple(self.paths or ())
        result = push_files(self.workspace, paths, remote=self.remote or None, lock_timeout=self.lock_timeout)
        return {
            "workspace": result.workspace,
            "remote": result.remote,
            "targets": list(result.targets),
            "transferred": result.transferred,
        }
