"""SQLite cache of file md5 values, keyed by path and stat fields, shared between processes."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

#: Cached stat fields and md5 of one file: ``(inode, size, mtime_ns, md5)``. Plain tuples
#: rather than a dataclass, because a directory lookup builds one per file and a warm
#: re-hash of 20,000 files must stay within a few milliseconds per thousand files.
CachedFile = tuple[int, int, int, str]

#: A row to store: ``(absolute path as bytes, inode, size, mtime_ns, md5)``.
CacheRow = tuple[bytes, int, int, int, str]

#: Files modified less than this long before they were examined are not cached.
#: Filesystems store mtime with limited granularity (1 s on ext3 and HFS+, 2 s on FAT).
#: A second write inside the same tick leaves size and mtime unchanged, so a cached md5
#: of the first content would be returned for the second.
RACY_WINDOW_NS = 2_000_000_000

DEFAULT_BUSY_TIMEOUT_S = 0.25

_SCHEMA = """
CREATE TABLE IF NOT EXISTS file_md5 (
    path BLOB PRIMARY KEY,
    inode INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    md5 TEXT NOT NULL
) WITHOUT ROWID
"""

# One row per hashed directory: a fingerprint of the stat fields of all its files and the resulting
# ``.dir`` md5. A warm re-hash whose walk yields the same fingerprint skips the per-file comparison.
_DIRECTORY_SCHEMA = """
CREATE TABLE IF NOT EXISTS directory_md5 (
    path BLOB PRIMARY KEY,
    fingerprint BLOB NOT NULL,
    md5 TEXT NOT NULL,
    size INTEGER NOT NULL,
    file_count INTEGER NOT NULL
) WITHOUT ROWID
"""

#: A cached directory: ``(fingerprint, md5 with ".dir", total size, file count)``.
CachedDirectory = tuple[bytes, str, int, int]

_INT64_LIMIT = 1 << 63


def to_sqlite_int(value: int) -> int:
    """Map an unsigned 64-bit stat field (an inode can use all 64 bits) onto SQLite's signed INTEGER."""
    if value >= _INT64_LIMIT:
        return value - (1 << 64)
    return value


class HashCache:
    """Cache of file md5 values in a SQLite database, safe to share between processes.

    A row maps an absolute path to the inode, size and mtime_ns seen when the file was
    read, and the md5 of its content. A lookup returns the md5 only while all three stat
    fields still match, so a replaced, resized or touched file is read again. Files
    modified within ``RACY_WINDOW_NS`` of being examined are never stored.

    The database runs in WAL mode with a short busy timeout, so many Airflow task
    processes can read it while one writes. Every ``sqlite3.Error`` and ``OSError`` is
    logged at debug level and turns that one call into a cache miss (or a skipped
    write), so a locked, corrupt or unwritable database slows hashing down without
    raising. The connection opens on first use and reopens after an error or in a
    forked child process.

    NOTE: a row is deleted only when a re-hash of a directory above it finds the file
    gone, so rows for files hashed on their own and later deleted stay in the database.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S
    ) -> None:
        """Create a cache stored in the SQLite file *path*, whose parent directories are created on first use."""
        if busy_timeout_s < 0:
            raise ValueError(f"busy_timeout_s must be >= 0, got {busy_timeout_s!r}")
        self._path = Path(os.path.abspath(os.fspath(path)))
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._connection_pid: int | None = None

    @property
    def path(self) -> Path:
        """Absolute path of the SQLite database file."""
        return self._path

    def lookup(self, path: bytes, inode: int, size: int, mtime_ns: int) -> str | None:
        """Return the cached md5 of the file at absolute *path*, or None if it is missing or stale."""
        with self._lock:
            try:
                row = (
                    self._connect()
                    .execute(
                        "SELECT inode, size, mtime_ns, md5 FROM file_md5 WHERE path = ?", (path,)
                    )
                    .fetchone()
                )
            except (sqlite3.Error, OSError) as exc:
                self._drop_connection("look up a file", exc)
                return None
        if row is None:
            return None
        if row[:3] != (to_sqlite_int(inode), size, mtime_ns):
            return None
        return row[3]

    def lookup_tree(self, directory: bytes) -> dict[bytes, CachedFile]:
        """Return every cached file below the absolute *directory*, keyed by absolute path, in one query.

        The caller compares each ``(inode, size, mtime_ns)`` against a fresh stat, with the
        inode passed through ``to_sqlite_int``. Returns an empty dict when the cache is
        unavailable.
        """
        low, high = _prefix_bounds(directory)
        with self._lock:
            try:
                cursor = self._connect().execute(
                    "SELECT path, inode, size, mtime_ns, md5 FROM file_md5"
                    " WHERE path >= ? AND path < ?",
                    (low, high),
                )
                return {row[0]: row[1:] for row in cursor}
            except (sqlite3.Error, OSError) as exc:
                self._drop_connection("look up a directory", exc)
                return {}

    def lookup_directory(self, directory: bytes) -> CachedDirectory | None:
        """Return the cached fingerprint and hash of the absolute *directory*, or None."""
        with self._lock:
            try:
                row = (
                    self._connect()
                    .execute(
                        "SELECT fingerprint, md5, size, file_count FROM directory_md5 WHERE path = ?",
                        (directory,),
                    )
                    .fetchone()
                )
            except (sqlite3.Error, OSError) as exc:
                self._drop_connection("look up a directory hash", exc)
                return None
        return None if row is None else (bytes(row[0]), row[1], row[2], row[3])

    def store_directory(
        self,
        directory: bytes,
        entry: CachedDirectory,
        *,
        newest_mtime_ns: int,
        observed_at_ns: int,
    ) -> None:
        """Store the fingerprint and hash of *directory*, unless a file in it changed too recently.

        *newest_mtime_ns* is the newest mtime among the directory's files. The racy window of single files
        applies here too, because a fingerprint of stat fields cannot see a second write in one tick.
        """
        if newest_mtime_ns > observed_at_ns - RACY_WINDOW_NS:
            return
        with self._lock:
            try:
                self._connect().execute(
                    "INSERT OR REPLACE INTO directory_md5 (path, fingerprint, md5, size, file_count)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (directory, *entry),
                )
            except (sqlite3.Error, OSError) as exc:
                self._drop_connection("store a directory hash", exc)

    def store_many(
        self,
        rows: Iterable[CacheRow],
        *,
        observed_at_ns: int,
        remove: Iterable[bytes] = (),
    ) -> None:
        """Insert or replace *rows* and delete the paths in *remove*, in one transaction.

        *observed_at_ns* is a ``time.time_ns()`` value taken before the files were
        stat-ed. Rows whose mtime is less than ``RACY_WINDOW_NS`` before it are skipped.
        Inodes may be unsigned 64-bit values, because they are converted here.
        """
        newest_safe_mtime_ns = observed_at_ns - RACY_WINDOW_NS
        safe_rows = [
            (path, to_sqlite_int(inode), size, mtime_ns, md5)
            for path, inode, size, mtime_ns, md5 in rows
            if mtime_ns <= newest_safe_mtime_ns
        ]
        removed_paths = [(path,) for path in remove]
        if not safe_rows and not removed_paths:
            return

        with self._lock:
            try:
                connection = self._connect()
                # IMMEDIATE takes the write lock up front, so a busy database fails here
                # within the busy timeout instead of halfway through the statements.
                connection.execute("BEGIN IMMEDIATE")
                try:
                    connection.executemany(
                        "INSERT OR REPLACE INTO file_md5 (path, inode, size, mtime_ns, md5)"
                        " VALUES (?, ?, ?, ?, ?)",
                        safe_rows,
                    )
                    connection.executemany("DELETE FROM file_md5 WHERE path = ?", removed_paths)
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
            except (sqlite3.Error, OSError) as exc:
                self._drop_connection(f"store {len(safe_rows)} entries", exc)

    def close(self) -> None:
        """Close the database connection, which the next lookup or store reopens."""
        with self._lock:
            if self._connection is not None and self._connection_pid == os.getpid():
                try:
                    self._connection.close()
                except sqlite3.Error as exc:
                    logger.debug("Closing hash cache %s failed: %s", self._path, exc)
            self._connection = None
            self._connection_pid = None

    def __enter__(self) -> HashCache:
        """Return the cache itself, so a ``with`` block closes it at the end."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the database connection."""
        self.close()

    def __repr__(self) -> str:
        """Return the class name and database path."""
        return f"HashCache({str(self._path)!r})"

    def _connect(self) -> sqlite3.Connection:
        pid = os.getpid()
        if self._connection is not None and self._connection_pid == pid:
            return self._connection
        # SQLite connections must not be used across fork(), and closing the parent's
        # connection from the child could release the parent's locks, so a child drops
        # the inherited object without closing it.
        self._connection = None

        self._path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable enough in WAL mode for a cache, because a crash loses at
            # most the last transactions and those files are simply hashed again.
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(_SCHEMA)
            connection.execute(_DIRECTORY_SCHEMA)
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        self._connection_pid = pid
        return connection

    def _drop_connection(self, action: str, exc: BaseException) -> None:
        logger.debug(
            "Hash cache %s is unavailable, so this call runs without it (failed to %s): %s",
            self._path,
            action,
            exc,
        )
        if self._connection is not None and self._connection_pid == os.getpid():
            try:
                self._connection.close()
            except sqlite3.Error:
                pass
        self._connection = None
        self._connection_pid = None


def _prefix_bounds(directory: bytes) -> tuple[bytes, bytes]:
    """Return the half-open BLOB range that contains exactly the paths below *directory*."""
    separator = os.sep.encode()
    prefix = directory if directory.endswith(separator) else directory + separator
    # Incrementing the separator byte gives the smallest key that no longer starts with
    # the prefix, so the range is a single index scan on the primary key.
    return prefix, prefix[:-1] + bytes([prefix[-1] + 1])


def rows_to_remove(
    cached: Mapping[bytes, CachedFile], seen_paths: Iterable[bytes]
) -> list[bytes]:
    """Return cached paths that a directory walk did not see and that no longer exist on disk."""
    unseen = cached.keys() - set(seen_paths)
    # A path can be unseen but still present (for example inside a skipped nested DVC
    # repository after being hashed on its own), so only rows for vanished paths go.
    return [path for path in unseen if not os.path.lexists(path)]
