"""The task's Python environment as a CMF ``Environment`` artifact: its packages in pip freeze form.

The listener records it as an input of every execution, so it has to be cheap. The package list is read from
``importlib.metadata`` (no pip subprocess), and its md5 is cached in a file keyed by the state of every
``sys.path`` folder (path, inode, modification time). Installing, upgrading or removing a package creates or
deletes a ``.dist-info`` folder, which changes the modification time of its ``site-packages`` folder, so a
changed environment gets a new key. The freeze file itself is written once per distinct content.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata

from cmf_airflow.model import ArtifactRecord, HashState

logger = logging.getLogger(__name__)

ENVIRONMENT_TYPE = "Environment"
_FOLDER_NAME = "environments"


@dataclass(frozen=True, slots=True)
class EnvironmentFile:
    """A pip freeze file of one environment, named by the md5 of its content."""

    path: str
    md5: str
    size: int
    package_count: int

    def record(self) -> ArtifactRecord:
        """Return the ``Environment`` artifact of this file: named ``<file>:<md5>``, uri = md5."""
        return ArtifactRecord(
            uri=f"file://{self.path}",
            path=self.path,
            md5=self.md5,
            hash_state=HashState.HASHED,
            size=self.size,
            type_name=ENVIRONMENT_TYPE,
            custom_properties=(("package_count", self.package_count),),
        )


# The last capture in this process: the sys.path state key, the store folder and the file there.
_memo: tuple[str, str, EnvironmentFile] | None = None


def freeze_lines() -> list[str]:
    """Return the installed distributions as ``name==version`` lines, sorted by normalised name.

    When a distribution is installed in two ``sys.path`` folders, the one that Python imports (the first)
    is listed, as pip does.
    """
    seen: dict[str, str] = {}
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        if not name:
            continue  # a broken .dist-info folder without metadata, which pip skips too
        key = name.lower().replace("_", "-").replace(".", "-")
        seen.setdefault(key, f"{name}=={distribution.version}")
    return [seen[key] for key in sorted(seen)]


def freeze_text() -> str:
    """Return the freeze file's content: the Python version as a comment line, then ``freeze_lines()``."""
    header = f"# Python {platform.python_version()} ({platform.python_implementation()})"
    return "\n".join([header, *freeze_lines()]) + "\n"


def capture(folder: str) -> EnvironmentFile:
    """Return the freeze file of this process's environment under ``folder/environments``.

    Computed only when no process has computed it for the same ``sys.path`` state, and written only when no
    file with the same content exists.
    """
    global _memo
    key = _path_state_key()
    environments = os.path.join(os.path.abspath(folder), _FOLDER_NAME)
    if _memo is not None and _memo[:2] == (key, environments) and os.path.exists(_memo[2].path):
        return _memo[2]

    cache_file = os.path.join(environments, f"state-{key}.json")
    captured = _read_cached(cache_file)
    if captured is None:
        captured = _write_freeze_file(environments, key)
        write_atomically(cache_file, json.dumps(_as_json(captured)).encode())
    _memo = (key, environments, captured)
    return captured


def _path_state_key() -> str:
    # The working folder (an empty sys.path entry) is left out: tasks create files there, which would change
    # the key at every task. NOTE: a distribution installed into the working folder goes unnoticed.
    working_folder = os.getcwd()
    parts = [sys.executable, sys.version]
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == working_folder:
            continue
        try:
            status = os.stat(entry)
        except OSError:
            continue
        parts.append(f"{entry}\0{status.st_ino}\0{status.st_mtime_ns}")
    return hashlib.md5("\n".join(parts).encode()).hexdigest()


def _read_cached(cache_file: str) -> EnvironmentFile | None:
    try:
        with open(cache_file, encoding="utf-8") as file:
            values = json.load(file)
        captured = EnvironmentFile(**values)
    except (OSError, ValueError, TypeError):
        return None
    return captured if os.path.exists(captured.path) else None


@functools.lru_cache(maxsize=4)
def _freeze_text_for(key: str) -> str:
    # Per sys.path state, so that a process writing to a second store folder does not list packages again.
    return freeze_text()


def _write_freeze_file(environments: str, key: str) -> EnvironmentFile:
    text = _freeze_text_for(key)
    content = text.encode()
    md5 = hashlib.md5(content).hexdigest()
    path = os.path.join(environments, f"{md5}.txt")
    if not os.path.exists(path):
        write_atomically(path, content)
    package_count = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    return EnvironmentFile(path=path, md5=md5, size=len(content), package_count=package_count)


def write_atomically(path: str, content: bytes) -> None:
    """Write ``content`` to ``path`` through a temporary file renamed into place, creating the folder.

    A concurrent reader sees the whole file or none, and two writers of the same content both succeed.
    """
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _as_json(captured: EnvironmentFile) -> dict[str, object]:
    return {
        "path": captured.path,
        "md5": captured.md5,
        "size": captured.size,
        "package_count": captured.package_count,
    }
