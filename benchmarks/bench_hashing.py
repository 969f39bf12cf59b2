"""Benchmark cmf_airflow.hashing against hashlib and DVC, and the hash cache warm against cold.

Run: ``uv run python benchmarks/bench_hashing.py [--workdir DIR] [--quick]``

Scenarios, each repeated with the contenders alternating so drift in machine load
affects both, and reported as medians:

(a) one large file of random bytes: ``hash_path`` without a cache against a plain
    ``hashlib.md5`` loop with the same 1 MiB ``readinto`` buffer (target ratio >= 0.9);
(b) a directory of many small files: ``hash_path`` with an empty cache against
    dvc-data's ``build()`` with a fresh State (target ratio <= 1.0);
(c) the same directory unchanged: ``hash_path`` with the cache filled by (b) against
    the cold run of the same round (target ratio <= 0.05).

"Cold" means nothing cached: an empty hash cache (or a fresh DVC State). Before each cold
run the files' pages are also evicted from the operating system's page cache with
``posix_fadvise(DONTNEED)``, so the contenders read from the disk as they would on data
that was not just written. Directory entries and inodes stay cached, as they would on a
worker that listed the folder recently. Scenario (c) also prints the warm time against
a cold run whose files are still in the page cache ("hot cold"): a warm re-hash must
stat every file, so that ratio cannot fall below the cost of one stat per file relative
to one open, read and close per file. The script prints figures only and checks no
timing, but it exits with status 1 if a hash differs from the reference.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cmf_airflow.hash_cache import RACY_WINDOW_NS, HashCache
from cmf_airflow.hashing import READ_BUFFER_SIZE, hash_path

MIB = 1 << 20
MB = 1_000_000


@dataclass(frozen=True, slots=True)
class Sizes:
    """Data sizes and repetition counts for one benchmark run."""

    large_file_bytes: int
    file_rounds: int
    small_file_count: int
    subdirectory_count: int
    min_small_file_bytes: int
    max_small_file_bytes: int
    directory_rounds: int


FULL = Sizes(
    large_file_bytes=1 << 30,
    file_rounds=5,
    small_file_count=20_000,
    subdirectory_count=100,
    min_small_file_bytes=100,
    max_small_file_bytes=600,
    directory_rounds=5,
)
QUICK = Sizes(
    large_file_bytes=64 * MIB,
    file_rounds=3,
    small_file_count=2_000,
    subdirectory_count=20,
    min_small_file_bytes=100,
    max_small_file_bytes=600,
    directory_rounds=3,
)


class HashMismatchError(Exception):
    """A contender returned a different hash than the reference implementation."""


def _timed(function: Callable[[], str]) -> tuple[float, str]:
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def _hashlib_md5(path: Path) -> str:
    """Hash *path* the plain way, with the same buffer size as hash_path."""
    hasher = hashlib.md5(usedforsecurity=False)
    buffer = memoryview(bytearray(READ_BUFFER_SIZE))
    with open(path, "rb", buffering=0) as stream:
        while count := stream.readinto(buffer):
            hasher.update(buffer[:count])
    return hasher.hexdigest()


def _write_random_file(path: Path, size: int) -> None:
    chunk_size = 16 * MIB
    with open(path, "wb") as stream:
        remaining = size
        while remaining:
            count = min(chunk_size, remaining)
            stream.write(os.urandom(count))
            remaining -= count


def _write_small_files(root: Path, sizes: Sizes) -> int:
    """Write the small-file tree below *root* and return its total size in bytes."""
    generator = random.Random(20_000)
    total = 0
    for index in range(sizes.small_file_count):
        directory = root / f"part-{index % sizes.subdirectory_count:03d}"
        if index < sizes.subdirectory_count:
            directory.mkdir(parents=True)
        size = generator.randint(sizes.min_small_file_bytes, sizes.max_small_file_bytes)
        (directory / f"record-{index:05d}.json").write_bytes(generator.randbytes(size))
        total += size
    return total


def _wait_out_racy_window(written_at_ns: int) -> float:
    """Sleep until files written at *written_at_ns* are old enough for the cache to store them."""
    remaining_s = (written_at_ns + RACY_WINDOW_NS - time.time_ns()) / 1e9
    if remaining_s > 0:
        time.sleep(remaining_s + 0.05)
        return remaining_s
    return 0.0


def bench_large_file(workdir: Path, sizes: Sizes) -> None:
    """Run scenario (a) and print its figures."""
    path = workdir / "large.bin"
    print(f"(a) one file of {sizes.large_file_bytes / MIB:.0f} MiB of random bytes")
    _write_random_file(path, sizes.large_file_bytes)
    megabytes = sizes.large_file_bytes / MB

    # An untimed pass, so both contenders find the file in the page cache.
    reference = _hashlib_md5(path)
    ours_mbps: list[float] = []
    hashlib_mbps: list[float] = []
    ratios: list[float] = []
    for round_index in range(sizes.file_rounds):
        contenders = [
            ("hash_path", lambda: hash_path(path).md5),
            ("hashlib", lambda: _hashlib_md5(path)),
        ]
        if round_index % 2:
            contenders.reverse()
        seconds: dict[str, float] = {}
        for name, function in contenders:
            elapsed, value = _timed(function)
            if value != reference:
                raise HashMismatchError(f"{name} returned {value}, hashlib returned {reference}")
            seconds[name] = elapsed
        ours_mbps.append(megabytes / seconds["hash_path"])
        hashlib_mbps.append(megabytes / seconds["hashlib"])
        ratios.append(seconds["hashlib"] / seconds["hash_path"])
        print(
            f"    round {round_index + 1}: hash_path {ours_mbps[-1]:8.1f} MB/s,"
            f" hashlib {hashlib_mbps[-1]:8.1f} MB/s, throughput ratio {ratios[-1]:.3f}"
        )
    print(
        f"    median: hash_path {statistics.median(ours_mbps):.1f} MB/s,"
        f" hashlib.md5 {statistics.median(hashlib_mbps):.1f} MB/s"
    )
    print(f"    median throughput ratio hash_path/hashlib: {statistics.median(ratios):.3f}"
          " (target >= 0.9)")
    path.unlink()


def _evict_page_cache(tree: Path) -> None:
    """Drop the cached pages of every file below *tree*, so the next read goes to the disk."""
    for directory, _, names in os.walk(tree):
        for name in names:
            descriptor = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)


def _dvc_build_md5(
    tree: Path, scratch: Path
) -> tuple[Callable[[], str], Callable[[], None]]:
    """Return a function that hashes *tree* with DVC and a fresh State, and one that closes the State."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_data.hashfile.state import State
    from dvc_objects.fs.local import LocalFileSystem

    filesystem = LocalFileSystem()
    state = State(root_dir=str(tree), tmp_dir=str(scratch / "state"))
    odb = HashFileDB(filesystem, str(scratch / "odb"), state=state)

    def run() -> str:
        _, _, obj = build(odb, str(tree), filesystem, "md5", dry_run=True)
        return obj.hash_info.value

    def close() -> None:
        state.close()

    return run, close


def bench_directory(workdir: Path, sizes: Sizes) -> None:
    """Run scenarios (b) and (c) and print their figures."""
    tree = workdir / "tree"
    print(
        f"(b) directory of {sizes.small_file_count} files of"
        f" {sizes.min_small_file_bytes}-{sizes.max_small_file_bytes} bytes in"
        f" {sizes.subdirectory_count} subdirectories"
    )
    total_bytes = _write_small_files(tree, sizes)
    os.sync()  # dirty pages cannot be evicted
    waited_s = _wait_out_racy_window(time.time_ns())
    print(f"    {total_bytes / MB:.1f} MB written; waited {waited_s:.2f} s so the cache may"
          " store every file")
    print("    DVC contender: dvc_data.hashfile.build.build(dry_run=True) in-process, with a"
          " fresh dvc_data State in a temporary directory per round (no .dvcignore filter,"
          " no progress bar)")

    reference = hash_path(tree).md5
    cold_s: list[float] = []
    dvc_cold_s: list[float] = []
    dvc_warm_s: list[float] = []
    warm_s: list[float] = []
    hot_s: list[float] = []
    for round_index in range(sizes.directory_rounds):
        scratch = Path(tempfile.mkdtemp(prefix=f"round-{round_index}-", dir=workdir))
        cache = HashCache(scratch / "hashes.db")
        dvc_run, dvc_close = _dvc_build_md5(tree, scratch)

        def ours() -> str:
            return hash_path(tree, cache).md5

        contenders = [("hash_path cold", ours), ("dvc cold", dvc_run)]
        if round_index % 2:
            contenders.reverse()
        seconds: dict[str, float] = {}
        for name, function in contenders:
            _evict_page_cache(tree)
            elapsed, value = _timed(function)
            if value != reference:
                raise HashMismatchError(f"{name} returned {value}, expected {reference}")
            seconds[name] = elapsed
        warm_elapsed, warm_value = _timed(ours)
        dvc_warm_elapsed, dvc_warm_value = _timed(dvc_run)
        hot_cache = HashCache(scratch / "hot-hashes.db")
        hot_elapsed, hot_value = _timed(lambda: hash_path(tree, hot_cache).md5)
        hot_cache.close()
        checks = (("hash_path warm", warm_value), ("dvc warm", dvc_warm_value), ("hash_path hot", hot_value))
        for name, value in checks:
            if value != reference:
                raise HashMismatchError(f"{name} returned {value}, expected {reference}")

        cache.close()
        dvc_close()
        shutil.rmtree(scratch)
        cold_s.append(seconds["hash_path cold"])
        dvc_cold_s.append(seconds["dvc cold"])
        warm_s.append(warm_elapsed)
        dvc_warm_s.append(dvc_warm_elapsed)
        hot_s.append(hot_elapsed)
        print(
            f"    round {round_index + 1}: hash_path cold {cold_s[-1] * 1000:7.1f} ms,"
            f" dvc cold {dvc_cold_s[-1] * 1000:7.1f} ms,"
            f" hash_path warm {warm_s[-1] * 1000:7.1f} ms,"
            f" dvc warm {dvc_warm_s[-1] * 1000:7.1f} ms,"
            f" hash_path hot cold {hot_s[-1] * 1000:7.1f} ms"
        )

    cold_vs_dvc = [ours / dvc for ours, dvc in zip(cold_s, dvc_cold_s)]
    warm_vs_cold = [warm / cold for warm, cold in zip(warm_s, cold_s)]
    print(
        f"    median: hash_path cold {statistics.median(cold_s) * 1000:.1f} ms,"
        f" dvc cold {statistics.median(dvc_cold_s) * 1000:.1f} ms"
    )
    print(f"    median time ratio hash_path cold/dvc cold: {statistics.median(cold_vs_dvc):.3f}"
          " (target <= 1.0)")
    print("(c) same directory unchanged, cache filled by the cold run of the same round")
    print(
        f"    median: hash_path warm {statistics.median(warm_s) * 1000:.1f} ms,"
        f" dvc warm (its State filled) {statistics.median(dvc_warm_s) * 1000:.1f} ms"
    )
    warm_vs_hot = [warm / hot for warm, hot in zip(warm_s, hot_s)]
    print(f"    median time ratio hash_path warm/cold: {statistics.median(warm_vs_cold):.3f}"
          " (target <= 0.05)")
    print(f"    median hash_path hot cold {statistics.median(hot_s) * 1000:.1f} ms; ratio warm/hot cold:"
          f" {statistics.median(warm_vs_hot):.3f} (one stat per file against one read per file)")


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="directory in which a temporary benchmark directory is created and removed"
        " at the end (default: the system temporary directory); needs about 1.1 GiB",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: a {QUICK.large_file_bytes // MIB} MiB file and"
        f" {QUICK.small_file_count} small files instead of 1 GiB and"
        f" {FULL.small_file_count}",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run all scenarios and return the process exit status."""
    arguments = _parse_arguments(argv)
    sizes = QUICK if arguments.quick else FULL
    if arguments.workdir is not None:
        arguments.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-hashing-", dir=arguments.workdir))

    print(f"bench_hashing ({'quick' if arguments.quick else 'full'} run) in {workdir}")
    print(
        f"python {platform.python_version()}, {platform.system()} {platform.release()},"
        f" {platform.machine()}, {os.cpu_count()} CPUs, processor {platform.processor() or 'unknown'!r}"
    )
    try:
        bench_large_file(workdir, sizes)
        bench_directory(workdir, sizes)
    except HashMismatchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
