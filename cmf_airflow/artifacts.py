"""Turning inlets and outlets into artifact records: local files are hashed, anything else is kept by URI.

Records of outputs inside a DVC workspace can also be versioned with DVC (``version_record``).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from cmf_airflow.compat import AssetClass
from cmf_airflow.hash_cache import HashCache
from cmf_airflow.hashing import hash_path
from cmf_airflow.model import ArtifactRecord, HashState

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class File:
    """A local file or folder used as an inlet or outlet, for tasks that do not declare Airflow assets.

    ``File("/data/raw.csv")`` in a task's ``inlets`` or ``outlets`` is hashed like an asset with a
    ``file://`` URI, but creates no Airflow asset and no asset events.
    """

    path: str

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"File path must be a non-empty string, got {self.path!r}")

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return f"file://{os.path.abspath(self.path)}"


def file_asset(path: str | os.PathLike[str]) -> AssetClass:
    """Return an Airflow asset (a dataset on Airflow 2) for a local path, with a percent-encoded file:// URI."""
    absolute = os.path.abspath(os.fspath(path))
    return AssetClass(uri=f"file://{quote(absolute)}")


def local_path(entity: Any) -> tuple[str | None, str]:
    """Return ``(local path or None, URI)`` for an inlet or outlet.

    Accepts our ``File``, an Airflow Asset or Dataset (``uri``), Airflow 2's lineage ``File`` (``url``),
    a path-like object and a string that is a path or a ``file://`` URI.
    """
    if isinstance(entity, File):
        path = os.path.abspath(entity.path)
        return path, f"file://{path}"
    uri = getattr(entity, "uri", None) or getattr(entity, "url", None)
    if uri is None and isinstance(entity, os.PathLike):
        path = os.path.abspath(os.fspath(entity))
        return path, f"file://{path}"
    text = str(uri if uri is not None else entity)
    parts = urlsplit(text)
    if parts.scheme == "file":
        path = unquote(parts.path)
        return path, f"file://{path}"
    if not parts.scheme and text.startswith("/"):
        return text, f"file://{text}"
    return None, text


def resolve(entity: Any, cache: HashCache | None) -> ArtifactRecord:
    """Hash a local inlet or outlet; return a record without hash, with the reason, for anything else."""
    path, uri = local_path(entity)
    if path is None:
        scheme = urlsplit(uri).scheme
        reason = f"URI scheme {scheme!r} is not a local file" if scheme else "not a path or a file:// URI"
        return ArtifactRecord(uri=uri, path=None, md5=None, hash_state=HashState.UNHASHED, reason=reason)
    try:
        content = hash_path(path, cache)
    except FileNotFoundError:
        return ArtifactRecord(
            uri=uri, path=path, md5=None, hash_state=HashState.MISSING, reason="file does not exist"
        )
    except OSError as error:
        return ArtifactRecord(
            uri=uri,
            path=path,
            md5=None,
            hash_state=HashState.UNHASHED,
            reason=f"cannot read: {error.strerror or error}",
        )
    return ArtifactRecord(
        uri=uri,
        path=path,
        md5=content.md5,
        hash_state=HashState.HASHED,
        size=content.size,
        file_count=content.file_count,
    )


def versioning_module() -> ModuleType:
    """Return ``cmf_airflow.versioning``, imported on first use because it loads DVC and git.

    Raises ImportError when the module is missing from this installation.
    """
    return importlib.import_module("cmf_airflow.versioning")


def version_record(record: ArtifactRecord, *, lock_timeout: float, message: str | None = None) -> ArtifactRecord | None:
    """Add a hashed local artifact to DVC and commit its ``.dvc`` file to git.

    Returns the record with the custom properties ``git_commit`` and ``dvc_file`` (its ``Commit`` property
    stays the md5), or None when the path is outside every DVC workspace. Raises the versioning module's
    ``VersioningError`` when DVC or git fail.
    """
    if record.path is None or record.hash_state is not HashState.HASHED:
        return None
    versioning = versioning_module()
    if versioning.find_workspace(record.path) is None:
        return None
    versioned = versioning.version_file(record.path, message=message, lock_timeout=lock_timeout)
    extra = (("git_commit", versioned.git_commit), ("dvc_file", versioned.dvc_file))
    return dataclasses.replace(record, custom_properties=record.custom_properties + extra)
