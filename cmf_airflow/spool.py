"""The spool: records that the local store could not take wait in a file, and are written later, in order.

When the store is unavailable (its database is down or unreachable, a connection or lock times out), the
listener and the task-level API append the record to ``<[cmf] spool_folder>/pending.jsonl`` and the task
goes on. The next process that reaches the store, or ``cmf-airflow replay``, writes what waits there.

Spool format, one JSON object per line::

    {"format": 1, "spooled_at": "<ISO time>", "store": "<store, password redacted>", "record": {...}}

where ``record`` is ``TaskRecord.to_json()``: ``kind`` (start, end or logged), ``run`` (the TaskRun, whose
``site`` is empty when the store's own id was not known yet), ``git``, ``events`` (pairs of direction and
artifact record), ``outcome`` and ``execution_properties``.

Why one shared file with ``flock`` rather than one file per process: one file keeps the order in which
records were spooled across all the processes of a worker, and a replay finds everything in one place. A
writer keeps the lock only for one ``write()`` and does not wait for a replay. A replay claims the file by
renaming it to ``claimed-<time>-<pid>.jsonl``, then takes its lock, which waits for an append in progress.
A writer that opened the old name checks after locking that the name still points to its file, and opens
the new file otherwise. A replay keeps the lock of the file it claimed until it is done, so two replays
never write the same file. Writing a record twice would do no harm anyway: executions and artifacts have
external ids, and the recorder never adds an event twice.

The spool folder is local to each worker unless it is on shared storage, so ``cmf-airflow replay`` writes
the records of the worker where it runs.

Lines that are not valid JSON records go to ``corrupt.jsonl``, records that the store rejects as invalid go
to ``rejected.jsonl``, both in the spool folder and with a warning that names the file. Nothing is dropped.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from cmf_airflow import conf
from cmf_airflow.hooks.store import LocalStore, forget_store, local_store
from cmf_airflow.model import TaskRecord
from cmf_airflow.store import StoreError, is_unavailable, write_lock
from cmf_airflow.store_url import redact

if TYPE_CHECKING:
    from ml_metadata.proto import metadata_store_pb2 as mlmd

logger = logging.getLogger(__name__)

SPOOL_FORMAT = 1
PENDING_FILE = "pending.jsonl"
CLAIMED_PREFIX = "claimed-"
CORRUPT_FILE = "corrupt.jsonl"
REJECTED_FILE = "rejected.jsonl"
# A writer waits at most this long for the spool file's lock, which other writers hold for one append.
_APPEND_LOCK_TIMEOUT_S = 5.0

_spooled_in_process = 0
# Task tries whose record found the store unavailable, with the cause. Their later records go straight to the
# spool: a database that accepts connections and never responds would otherwise cost each hook and each
# logged artifact of the try a whole [cmf] connect_timeout.
_unavailable_tries: dict[tuple[str, str, str, str, int, int], Exception] = {}
_MAX_REMEMBERED_TRIES = 1000


class SpoolError(Exception):
    """A record could not be appended to the spool; the message names the file and the cause."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """The result of delivering one record: written into the store (``execution`` set) or appended to the spool."""

    execution: mlmd.Execution | None
    store: LocalStore | None
    spool_file: str | None = None

    @property
    def spooled(self) -> bool:
        """Whether the record waits in the spool instead of the store."""
        return self.execution is None


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """Counts of one replay: records written, set aside, and left waiting because the store failed again."""

    written: int = 0
    corrupt: int = 0
    rejected: int = 0
    remaining: int = 0
    error: str | None = None

    def __add__(self, other: ReplayResult) -> ReplayResult:
        return ReplayResult(
            written=self.written + other.written,
            corrupt=self.corrupt + other.corrupt,
            rejected=self.rejected + other.rejected,
            remaining=self.remaining + other.remaining,
            error=other.error or self.error,
        )


class Spool:
    """The spool folder of one worker: ``pending.jsonl`` and the files that replays claimed from it."""

    def __init__(self, folder: str) -> None:
        self.folder = os.path.abspath(folder)

    @property
    def pending_path(self) -> str:
        """The file that writers append to."""
        return os.path.join(self.folder, PENDING_FILE)

    def append(self, record: TaskRecord, store: str) -> str:
        """Append ``record`` as one line and flush it to disk; return the file's path. Raises SpoolError."""
        line = json.dumps(
            {
                "format": SPOOL_FORMAT,
                "spooled_at": datetime.now(timezone.utc).isoformat(),
                "store": redact(store),
                "record": record.to_json(),
            },
            separators=(",", ":"),
            default=str,
        )
        try:
            os.makedirs(self.folder, exist_ok=True)
            self._append_line((line + "\n").encode())
        except OSError as error:
            raise SpoolError(
                f"cannot append to the CMF spool {self.pending_path}: {error.strerror or error}. Check that the "
                "folder is writable, or set [cmf] spool_folder"
            ) from error
        return self.pending_path

    def has_pending(self) -> bool:
        """Tell, with one or two system calls, whether any record waits to be written."""
        try:
            if os.path.getsize(self.pending_path) > 0:
                return True
        except OSError:
            pass
        try:
            return any(name.startswith(CLAIMED_PREFIX) for name in os.listdir(self.folder))
        except OSError:
            return False

    def replay(self, write: Callable[[TaskRecord], object], store: str, deadline: float | None = None) -> ReplayResult:
        """Write the waiting records with ``write``, oldest first, and remove each file once it is written.

        Stops at the first record that fails because the store is unavailable, or when ``deadline``
        (``time.monotonic()``) has passed, and keeps what is left for the next replay.
        """
        result = ReplayResult()
        if not os.path.isdir(self.folder):
            return result
        self._claim_pending()
        for name in sorted(os.listdir(self.folder)):
            if not name.startswith(CLAIMED_PREFIX) or not name.endswith(".jsonl"):
                continue
            result += self._replay_file(os.path.join(self.folder, name), write, store, deadline)
            if result.error is not None or (deadline is not None and time.monotonic() >= deadline):
                break
        return result

    def _append_line(self, data: bytes) -> None:
        give_up = time.monotonic() + _APPEND_LOCK_TIMEOUT_S
        while True:
            descriptor = os.open(self.pending_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                if self._lock_if_current(descriptor, give_up):
                    size = os.fstat(descriptor).st_size
                    if size and os.pread(descriptor, 1, size - 1) != b"\n":
                        # A writer that crashed mid-line left it unfinished: end it, so that it alone is corrupt.
                        data = b"\n" + data
                    _write_all(descriptor, data)
                    os.fsync(descriptor)
                    return
            finally:
                os.close(descriptor)  # also releases the lock

    def _lock_if_current(self, descriptor: int, give_up: float) -> bool:
        """Lock the opened spool file; return False when a replay renamed it away meanwhile."""
        while True:
            if not _names_file(self.pending_path, descriptor):
                return False
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= give_up:
                    raise OSError(errno.ETIMEDOUT, f"timed out after {_APPEND_LOCK_TIMEOUT_S:g} s waiting for its lock")
                time.sleep(0.001)
                continue
            return _names_file(self.pending_path, descriptor)

    def _claim_pending(self) -> None:
        claimed = os.path.join(self.folder, f"{CLAIMED_PREFIX}{time.time_ns():020d}-{os.getpid()}.jsonl")
        try:
            if os.path.getsize(self.pending_path) == 0:
                return
            os.rename(self.pending_path, claimed)
        except FileNotFoundError:
            return

    def _replay_file(
        self, path: str, write: Callable[[TaskRecord], object], store: str, deadline: float | None
    ) -> ReplayResult:
        try:
            descriptor = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return ReplayResult()  # another replay wrote it meanwhile
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # Another replay has locked it, or a writer is appending the last line before the rename.
                time.sleep(0.01)
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return ReplayResult()
            if not _names_file(path, descriptor):
                return ReplayResult()
            with os.fdopen(os.dup(descriptor), "rb") as source:
                lines = source.read().splitlines(keepends=True)
            result, remaining = self._replay_lines(path, lines, write, store, deadline)
            if remaining:
                _replace_atomically(path, b"".join(remaining))
            else:
                os.unlink(path)
            return result
        finally:
            os.close(descriptor)

    def _replay_lines(
        self,
        path: str,
        lines: list[bytes],
        write: Callable[[TaskRecord], object],
        store: str,
        deadline: float | None,
    ) -> tuple[ReplayResult, list[bytes]]:
        written = corrupt = rejected = 0
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            if deadline is not None and time.monotonic() >= deadline:
                remaining = lines[index:]
                return ReplayResult(written, corrupt, rejected, _count(remaining)), remaining
            try:
                record = _parse(line)
            except (ValueError, KeyError, TypeError) as error:
                self._set_aside(CORRUPT_FILE, line, f"line {index + 1} of {path} is not a spooled record ({error})")
                corrupt += 1
                continue
            try:
                write(record)
            except Exception as error:
                if is_unavailable(error, store):
                    remaining = lines[index:]
                    result = ReplayResult(written, corrupt, rejected, _count(remaining), error=str(error))
                    return result, remaining
                self._set_aside(
                    REJECTED_FILE, line,
                    f"the store rejected the {record.kind.value} record of {record.run.stage_name} from line "
                    f"{index + 1} of {path}: {type(error).__name__}: {error}",
                )
                rejected += 1
                continue
            written += 1
        return ReplayResult(written, corrupt, rejected), []

    def _set_aside(self, file_name: str, line: bytes, reason: str) -> None:
        target = os.path.join(self.folder, file_name)
        with open(target, "ab") as kept:
            kept.write(line if line.endswith(b"\n") else line + b"\n")
        logger.warning("%s: kept it in %s and went on", reason, target)


def deliver(record: TaskRecord, settings: conf.Settings) -> Delivery:
    """Write ``record`` into the local store, or append it to the spool when the store is unavailable.

    Records that wait in the spool are written first, within ``[cmf] write_timeout`` seconds, so that a
    try's start reaches the store before its end. Raises StoreError for a store that is invalid (not
    unavailable), and SpoolError when the record can be neither written nor spooled.
    """
    spool = Spool(settings.spool_folder)
    try_key = _try_key(record, settings)
    earlier_error = _unavailable_tries.get(try_key)
    if earlier_error is not None:
        return _spool(spool, record, settings, earlier_error)
    try:
        opened = local_store(settings)
    except StoreError as error:
        if not is_unavailable(error, settings.store):
            raise
        _remember_unavailable(try_key, error)
        return _spool(spool, record, settings, error)

    if spool.has_pending():
        _replay_before_write(spool, opened, settings)
    try:
        execution = write_record(opened, record)
    except Exception as error:
        if not is_unavailable(error, settings.store):
            raise
        forget_store(settings)
        _remember_unavailable(try_key, error)
        return _spool(spool, record, settings, error)
    return Delivery(execution=execution, store=opened)


def _try_key(record: TaskRecord, settings: conf.Settings) -> tuple[str, str, str, str, int, int]:
    run = record.run
    return (settings.store, run.dag_id, run.task_id, run.run_id, run.map_index, run.try_number)


def _remember_unavailable(try_key: tuple[str, str, str, str, int, int], error: Exception) -> None:
    if len(_unavailable_tries) >= _MAX_REMEMBERED_TRIES:
        _unavailable_tries.clear()
    _unavailable_tries[try_key] = error


def write_record(opened: LocalStore, record: TaskRecord) -> mlmd.Execution:
    """Write ``record`` into the opened store under its write lock, filling in the store's site id if needed."""
    if not record.run.site:
        record = dataclasses.replace(record, run=dataclasses.replace(record.run, site=opened.site))
    with write_lock(opened.path, opened.lock_timeout):
        return opened.recorder.apply(record)


def replay(settings: conf.Settings, *, deadline: float | None = None) -> ReplayResult:
    """Write the records waiting in ``[cmf] spool_folder`` into ``[cmf] store``, as ``cmf-airflow replay`` does.

    Raises StoreUnavailable (a StoreError) when the store cannot be opened, and StoreError when it is invalid.
    """
    opened = local_store(settings)
    spool = Spool(settings.spool_folder)
    result = spool.replay(lambda record: write_record(opened, record), settings.store, deadline)
    if result.error is not None:
        forget_store(settings)
    return result


def _replay_before_write(spool: Spool, opened: LocalStore, settings: conf.Settings) -> None:
    # A failed replay leaves the spool as it was, and must not keep the current record from the store.
    try:
        deadline = time.monotonic() + settings.write_timeout
        result = spool.replay(lambda record: write_record(opened, record), settings.store, deadline)
    except Exception as error:
        logger.warning("cannot replay the CMF spool %s: %s (the records stay there)", spool.folder, error)
        return
    if result.written or result.corrupt or result.rejected:
        logger.info(
            "CMF spool %s replayed: %d record(s) written, %d corrupt, %d rejected, %d still waiting",
            spool.folder, result.written, result.corrupt, result.rejected, result.remaining,
        )


def _spool(spool: Spool, record: TaskRecord, settings: conf.Settings, error: Exception) -> Delivery:
    global _spooled_in_process
    path = spool.append(record, settings.store)
    _spooled_in_process += 1
    # The first spooled record of a process is a warning in the task log, later ones repeat the cause.
    level = logging.WARNING if _spooled_in_process == 1 else logging.INFO
    logger.log(
        level,
        "CMF store%s unavailable (%s): spooled the %s record of %s try %s to %s (%d in this process). "
        "The next task that reaches the store, or 'cmf-airflow replay', writes it",
        "" if redact(settings.store) in str(error) else f" {redact(settings.store)}", error, record.kind.value, record.run.stage_name, record.run.try_number, path,
        _spooled_in_process,
    )
    return Delivery(execution=None, store=None, spool_file=path)


def _parse(line: bytes) -> TaskRecord:
    data = json.loads(line)
    if not isinstance(data, dict) or data.get("format") != SPOOL_FORMAT:
        raise ValueError(f"expected an object with format {SPOOL_FORMAT}")
    return TaskRecord.from_json(data["record"])


def _count(lines: list[bytes]) -> int:
    return sum(1 for line in lines if line.strip())


def _names_file(path: str, descriptor: int) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]


def _replace_atomically(path: str, content: bytes) -> None:
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "wb") as target:
        target.write(content)
        target.flush()
        os.fsync(target.fileno())
    os.replace(temporary, path)
