"""Content hashes identical to the md5 values that ``dvc add`` (DVC 3.x) writes into ``.dvc`` files.

A file hashes to the plain md5 of its bytes. A directory hashes to ``<md5>.dir``, where
the md5 covers the JSON listing that DVC builds for the directory (checked against
dvc-data 3.x, ``dvc_data/hashfile/tree.py`` and ``build.py``):

* one entry ``{"md5": <file md5>, "relpath": <path below the directory>}`` per file,
  with ``/`` as the separator on every platform;
* entries sorted by relpath as Python strings (code point order), so ``a-b/x`` sorts
  before ``a.b`` and ``a/x``;
* serialised by ``json.dumps(entries, sort_keys=True)``: separators ``", "`` and
  ``": "``, non-ASCII characters escaped as ``\\uXXXX`` (UTF-16 surrogate pairs above
  U+FFFF), then encoded as UTF-8;
* directories without files contribute nothing, so an empty directory and a directory
  that contains only empty directories both hash to ``md5(b"[]") + ".dir"``.

The walk follows DVC's local walk (``os.walk`` without following links) and its default
ignore rules, in every directory below the hashed one:

* a symbolic link to a file counts as a file with the target's content and size;
* a symbolic link to a directory is skipped, and a broken link raises FileNotFoundError;
* an entry named ``.git``, and directories named ``.hg`` or ``.dvc``, are skipped;
* a subdirectory that contains a ``.dvc`` entry is a nested DVC repository and is
  skipped with everything in it.
"""

from __future__ import annotations

import errno
import hashlib
import json.encoder
import logging
import marshal
import os
import re
import stat
import sys
import time
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING

from cmf_airflow.hash_cache import CacheRow, rows_to_remove, to_sqlite_int

if TYPE_CHECKING:
    from cmf_airflow.hash_cache import HashCache

logger = logging.getLogger(__name__)

#: Bytes read per system call. 1 MiB is also DVC's chunk size (dvc_data.hashfile.hash.fobj_md5)
#: and makes md5 itself, not the per-read Python overhead, the cost on large files.
READ_BUFFER_SIZE = 1 << 20

#: Suffix that DVC appends to the md5 of a directory listing.
DIR_SUFFIX = ".dir"

_MD5_PATTERN = re.compile(r"[0-9a-f]{32}")

# json.dumps(..., ensure_ascii=True) quotes strings with this function, so calling it
# directly produces the same bytes without building a dict per file.
_quote_json_string = json.encoder.encode_basestring_ascii

# os.fsdecode() with its arguments bound once, because the walk decodes every name.
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()

# The stat fields that the cache compares; attrgetter keeps the per-file loop in C.
_STAT_FIELDS = attrgetter("st_ino", "st_size", "st_mtime_ns")

_GIT_NAME = b".git"
_DVC_NAME = b".dvc"
_IGNORED_DIRECTORY_NAMES = frozenset({b".hg", _DVC_NAME})


@dataclass(frozen=True, slots=True)
class ContentHash:
    """Content hash of a file or directory, in the form DVC 3 records it in a ``.dvc`` file."""

    md5: str
    """Hex md5 of a file, or ``<hex md5>.dir`` for a directory."""

    size: int
    """Size in bytes of the file, or the sum of the sizes of the files in the directory."""

    file_count: int | None = None
    """Number of files in the directory (``nfiles`` in a ``.dvc`` file), None for a file."""

    def __post_init__(self) -> None:
        """Reject an md5 that is not DVC's form for the kind of path, and negative counts."""
        digest = self.md5
        if self.file_count is not None:
            if not digest.endswith(DIR_SUFFIX):
                raise ValueError(
                    f"directory md5 must end with {DIR_SUFFIX!r}, got {self.md5!r}"
                )
            digest = digest[: -len(DIR_SUFFIX)]
            if self.file_count < 0:
                raise ValueError(f"file_count must be >= 0, got {self.file_count}")
        if _MD5_PATTERN.fullmatch(digest) is None:
            raise ValueError(
                f"md5 must be 32 lowercase hex digits (plus {DIR_SUFFIX!r} for a directory),"
                f" got {self.md5!r}"
            )
        if self.size < 0:
            raise ValueError(f"size must be >= 0, got {self.size}")

    @property
    def is_dir(self) -> bool:
        """Whether the hash describes a directory."""
        return self.file_count is not None


# One file found by the directory walk: (relpath with "/" separators, absolute path,
# stat result with links followed). A tuple rather than a dataclass, because the walk
# creates one per file and its cost shows in a warm re-hash of a large directory.
_ScannedFile = tuple[str, bytes, os.stat_result]


def hash_path(path: str | os.PathLike[str], cache: HashCache | None = None) -> ContentHash:
    """Compute the md5 that ``dvc add`` (DVC 3.x) writes into the ``.dvc`` file for *path*.

    A symbolic link given as *path* is followed. With *cache*, files whose inode, size
    and mtime match a cached entry are not read, and newly read files are stored.

    Unlike ``dvc add``, this function does not apply ``.dvcignore`` files: a
    ``.dvcignore`` inside the directory is hashed as an ordinary file (``dvc add``
    rejects such a directory), and patterns from ``.dvcignore`` files above it are not
    known here. A ``.dvc`` entry directly inside the hashed directory is hashed like
    any other entry, while ``dvc add`` would take the directory for a nested DVC
    repository and record an empty listing. Sockets, FIFOs and device files inside a
    directory are skipped with a warning (``dvc add`` would try to read them).

    Raises:
        FileNotFoundError: *path* does not exist, or a symbolic link below it is broken.
        ValueError: *path* is neither a regular file nor a directory.
        OSError: a file or directory could not be read.
    """
    absolute = os.path.abspath(os.fspath(path))
    # Taken before any stat, because the cache must compare mtimes against a time at
    # which the content had not been read yet.
    observed_at_ns = time.time_ns()
    try:
        status = os.stat(absolute)
    except FileNotFoundError:
        if os.path.islink(absolute):
            raise FileNotFoundError(
                errno.ENOENT, "Cannot hash a broken symbolic link", absolute
            ) from None
        raise FileNotFoundError(
            errno.ENOENT, "Cannot hash a path that does not exist", absolute
        ) from None

    encoded = os.fsencode(absolute)
    if stat.S_ISDIR(status.st_mode):
        return _hash_directory(encoded, cache, observed_at_ns)
    if stat.S_ISREG(status.st_mode):
        return _hash_single_file(encoded, status, cache, observed_at_ns)
    raise ValueError(f"Cannot hash {absolute!r}: it is neither a regular file nor a directory")


def _hash_single_file(
    path: bytes, status: os.stat_result, cache: HashCache | None, observed_at_ns: int
) -> ContentHash:
    if cache is not None:
        cached = cache.lookup(path, status.st_ino, status.st_size, status.st_mtime_ns)
        if cached is not None:
            return ContentHash(md5=cached, size=status.st_size)

    md5 = _md5_of_file(path, memoryview(bytearray(READ_BUFFER_SIZE)))
    if cache is not None:
        row = (path, status.st_ino, status.st_size, status.st_mtime_ns, md5)
        cache.store_many([row], observed_at_ns=observed_at_ns)
    return ContentHash(md5=md5, size=status.st_size)


def _hash_directory(
    root: bytes, cache: HashCache | None, observed_at_ns: int
) -> ContentHash:
    files = _scan_directory(root)
    files.sort(key=itemgetter(0))

    fingerprint = b""
    if cache is not None:
        fingerprint = _fingerprint(files)
        known = cache.lookup_directory(root)
        if known is not None and known[0] == fingerprint:
            return ContentHash(md5=known[1], size=known[2], file_count=known[3])

    cached = cache.lookup_tree(root) if cache is not None else {}
    buffer = memoryview(bytearray(READ_BUFFER_SIZE))
    new_rows: list[CacheRow] = []
    parts: list[str] = []
    total_size = 0
    hits = 0
    for relpath, path, status in files:
        size = status.st_size
        mtime_ns = status.st_mtime_ns
        entry = cached.get(path)
        if (
            entry is not None
            and entry[2] == mtime_ns
            and entry[1] == size
            and entry[0] == to_sqlite_int(status.st_ino)
        ):
            md5 = entry[3]
            hits += 1
        else:
            md5 = _md5_of_file(path, buffer)
            new_rows.append((path, status.st_ino, size, mtime_ns, md5))
        total_size += size
        parts.append(f'{{"md5": "{md5}", "relpath": {_quote_json_string(relpath)}}}')

    if cache is not None:
        # Every cached row was a hit, so no row can belong to a vanished file.
        stale = rows_to_remove(cached, [file[1] for file in files]) if hits < len(cached) else []
        cache.store_many(new_rows, observed_at_ns=observed_at_ns, remove=stale)

    listing = "[" + ", ".join(parts) + "]"
    digest = hashlib.md5(listing.encode("ascii"), usedforsecurity=False).hexdigest()
    result = ContentHash(md5=digest + DIR_SUFFIX, size=total_size, file_count=len(files))
    if cache is not None:
        newest_mtime_ns = max((file[2].st_mtime_ns for file in files), default=0)
        cache.store_directory(
            root,
            (fingerprint, result.md5, result.size, len(files)),
            newest_mtime_ns=newest_mtime_ns,
            observed_at_ns=observed_at_ns,
        )
    return result


def _fingerprint(files: list[_ScannedFile]) -> bytes:
    """Digest the path and (inode, size, mtime) of every file, in listing order.

    Equal fingerprints mean no file was added, removed, renamed, replaced, resized or touched since the
    directory was last hashed. marshal is the fastest stable serialisation of these tuples; its format
    may change between Python versions, which only turns a hit into a miss.
    """
    # A NUL byte cannot occur in a path, so joining on it keeps the path list unambiguous.
    digest = hashlib.md5(b"\0".join(map(itemgetter(1), files)), usedforsecurity=False)
    digest.update(marshal.dumps(list(map(_STAT_FIELDS, map(itemgetter(2), files)))))
    return digest.digest()


def _scan_directory(root: bytes) -> list[_ScannedFile]:
    """List the files DVC would track below *root*, with the stat fields of each (links followed)."""
    files: list[_ScannedFile] = []
    special_files: list[bytes] = []
    # Each item is (directory path, relpath prefix of its entries, such as "a/b/").
    pending: list[tuple[bytes, str]] = [(root, "")]
    while pending:
        directory, prefix = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                name = entry.name
                if name == _GIT_NAME:
                    continue
                # Like os.walk, is_dir() follows links, so a link to a directory lands
                # here and is then skipped rather than listed as a file.
                if entry.is_dir():
                    if entry.is_symlink() or name in _IGNORED_DIRECTORY_NAMES:
                        continue
                    if os.path.exists(os.path.join(entry.path, _DVC_NAME)):
                        logger.debug("Skipping nested DVC repository %r", os.fsdecode(entry.path))
                        continue
                    relpath = prefix + name.decode(_FS_ENCODING, _FS_ERRORS)
                    pending.append((entry.path, relpath + "/"))
                    continue

                try:
                    status = entry.stat()
                except FileNotFoundError:
                    reason = (
                        "Broken symbolic link in the directory being hashed"
                        if entry.is_symlink()
                        else "File removed while its directory was being hashed"
                    )
                    raise FileNotFoundError(
                        errno.ENOENT, reason, os.fsdecode(entry.path)
                    ) from None
                if not stat.S_ISREG(status.st_mode):
                    special_files.append(entry.path)
                    continue
                relpath = prefix + name.decode(_FS_ENCODING, _FS_ERRORS)
                files.append((relpath, entry.path, status))

    if special_files:
        logger.warning(
            "Skipped %d special files (sockets, FIFOs or devices) while hashing %r, first: %r",
            len(special_files),
            os.fsdecode(root),
            os.fsdecode(special_files[0]),
        )
    return files


def _md5_of_file(path: bytes, buffer: memoryview) -> str:
    """Return the hex md5 of the file at *path*, read through the reusable *buffer*."""
    hasher = hashlib.md5(usedforsecurity=False)
    with open(path, "rb", buffering=0) as stream:
        while True:
            count = stream.readinto(buffer)
            if not count:
                break
            hasher.update(buffer[:count])
    return hasher.hexdigest()
