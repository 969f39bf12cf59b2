"""Tests for cmf_airflow.hashing and cmf_airflow.hash_cache against real git and DVC.

The DVC cases build every layout in one repository and run one ``dvc add`` over all of
them, because each DVC start-up costs about a second. Each case then compares
``hash_path`` with the ``md5``, ``size`` and ``nfiles`` that DVC wrote into its
``.dvc`` file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from cmf_airflow.hash_cache import RACY_WINDOW_NS, HashCache
from cmf_airflow.hashing import READ_BUFFER_SIZE, ContentHash, hash_path

# An mtime safely outside the cache's racy window, so cache tests can rely on a store.
ONE_HOUR_AGO_NS = time.time_ns() - 3600 * 1_000_000_000
EMPTY_LISTING_MD5 = hashlib.md5(b"[]").hexdigest() + ".dir"


def _write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def _build_empty_file(target: Path) -> None:
    _write(target, b"")


def _build_binary_file(target: Path) -> None:
    # Larger than the read buffer, so the md5 spans several reads.
    _write(target, random.Random(7).randbytes(2 * READ_BUFFER_SIZE + 123))


def _build_crlf_text_file(target: Path) -> None:
    # DVC 3 hashes the raw bytes. DVC 2 converted CRLF to LF first ("md5-dos2unix").
    _write(target, "id,name\r\n1,caf\u00e9\r\n2,na\u00efve\r\n".encode())


def _build_empty_directory(target: Path) -> None:
    target.mkdir(parents=True)


def _build_nested_directories(target: Path) -> None:
    _write(target / "top.txt", b"top\n")
    _write(target / "a" / "x", b"1\n")
    _write(target / "a" / "b" / "c" / "deep.bin", bytes(range(256)))
    # "a-b/x" < "a.b" < "a/x" as whole strings, while a per-directory sort would put
    # "a/" first, so these names pin down how DVC orders the listing.
    _write(target / "a-b" / "x", b"2\n")
    _write(target / "a.b", b"3\n")
    _write(target / "B" / "upper", b"4\n")


def _build_non_ascii_names(target: Path) -> None:
    _write(target / "donn\u00e9es" / "\u00e9t\u00e9.csv", b"jour,temp\n1,30\n")
    _write(target / "\u6570\u636e.txt", b"\xe6\x95\xb0\n")
    # Above U+FFFF, so JSON escapes it as a UTF-16 surrogate pair.
    _write(target / "\U0001d11e" / "clef.txt", b"g\n")
    _write(target / "Ω.txt", b"omega\n")


def _build_directory_with_empty_subdirectories(target: Path) -> None:
    _write(target / "keep.txt", b"kept\n")
    (target / "empty").mkdir()
    (target / "deeper" / "also_empty").mkdir(parents=True)


def _build_only_empty_subdirectories(target: Path) -> None:
    (target / "one" / "two").mkdir(parents=True)
    (target / "three").mkdir()


def _build_symbolic_links(target: Path) -> None:
    _write(target / "target.txt", b"linked content\n")
    _write(target / "real_dir" / "inner.txt", b"inner\n")
    (target / "file_link.txt").symlink_to("target.txt")
    (target / "dir_link").symlink_to("real_dir", target_is_directory=True)


def _build_ignored_entries(target: Path) -> None:
    _write(target / "kept.txt", b"kept\n")
    _write(target / ".git" / "HEAD", b"ref: refs/heads/main\n")
    _write(target / ".hg" / "store", b"hg\n")
    _write(target / "sub" / ".git", b"gitdir: elsewhere\n")
    _write(target / "sub" / "kept_too.txt", b"also kept\n")
    _write(target / "nested_repo" / ".dvc" / "config", b"[core]\n")
    _write(target / "nested_repo" / "data.csv", b"skipped,with,its,repository\n")
    _write(target / "marker_repo" / ".dvc", b"a file named .dvc also marks a repository\n")
    _write(target / "marker_repo" / "data.csv", b"skipped\n")
    _write(target / ".hgfile", b"only directories named .hg are ignored\n")


DVC_CASES: dict[str, Callable[[Path], None]] = {
    "empty_file.bin": _build_empty_file,
    "binary_file.bin": _build_binary_file,
    "crlf_text.csv": _build_crlf_text_file,
    "empty_directory": _build_empty_directory,
    "nested_directories": _build_nested_directories,
    "non_ascii_names": _build_non_ascii_names,
    "with_empty_subdirectories": _build_directory_with_empty_subdirectories,
    "only_empty_subdirectories": _build_only_empty_subdirectories,
    "symbolic_links": _build_symbolic_links,
    "ignored_entries": _build_ignored_entries,
}


def _isolated_environment(home: Path) -> dict[str, str]:
    """Return an environment in which git and DVC read no user or system config and contact no server."""
    env = dict(os.environ)
    env.update(
        {
            "HOME": str(home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": str(home / "gitconfig"),
            "DVC_NO_ANALYTICS": "1",
            # DVC_TEST also turns off DVC's update check.
            "DVC_TEST": "true",
            "DVC_GLOBAL_CONFIG_DIR": str(home / "dvc_global"),
            "DVC_SYSTEM_CONFIG_DIR": str(home / "dvc_system"),
            "DVC_SITE_CACHE_DIR": str(home / "dvc_site_cache"),
        }
    )
    return env


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} failed with exit code {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )


@pytest.fixture(scope="module")
def dvc_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build every DVC case in a fresh git + DVC repository and ``dvc add`` them all."""
    home = tmp_path_factory.mktemp("home")
    repository = tmp_path_factory.mktemp("repository")
    env = _isolated_environment(home)
    for name, build in DVC_CASES.items():
        build(repository / name)

    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q"], repository, env)
    _run([*dvc, "init", "-q"], repository, env)
    _run([*dvc, "add", "-q", *DVC_CASES], repository, env)
    return repository


def _recorded_output(repository: Path, name: str) -> dict[str, object]:
    """Return the single ``outs`` entry of ``<name>.dvc``."""
    document = yaml.safe_load((repository / f"{name}.dvc").read_text(encoding="utf-8"))
    (output,) = document["outs"]
    return output


@pytest.mark.parametrize("name", list(DVC_CASES))
def test_hash_path_matches_dvc_add(dvc_repository: Path, name: str) -> None:
    recorded = _recorded_output(dvc_repository, name)

    result = hash_path(dvc_repository / name)

    assert recorded["hash"] == "md5"
    assert result.md5 == recorded["md5"]
    assert result.size == recorded["size"]
    assert result.file_count == recorded.get("nfiles")
    assert result.is_dir == ("nfiles" in recorded)


@pytest.mark.parametrize("name", list(DVC_CASES))
def test_hash_path_with_cache_matches_dvc_add(
    dvc_repository: Path, tmp_path: Path, name: str
) -> None:
    recorded = _recorded_output(dvc_repository, name)
    cache = HashCache(tmp_path / "cache.db")

    cold = hash_path(dvc_repository / name, cache)
    warm = hash_path(dvc_repository / name, cache)

    assert cold.md5 == recorded["md5"]
    assert warm.md5 == recorded["md5"]
    assert warm.size == recorded["size"]


def test_empty_directory_hashes_empty_listing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()

    result = hash_path(tmp_path / "empty")

    assert result == ContentHash(md5=EMPTY_LISTING_MD5, size=0, file_count=0)


def test_empty_subdirectories_do_not_change_hash(tmp_path: Path) -> None:
    _write(tmp_path / "plain" / "keep.txt", b"kept\n")
    _build_directory_with_empty_subdirectories(tmp_path / "with_empty")

    assert hash_path(tmp_path / "with_empty") == hash_path(tmp_path / "plain")


def test_non_utf8_name_matches_dvc_data_tree(tmp_path: Path) -> None:
    # The dvc CLI (3.67) aborts on such names, so the oracle is dvc-data's own tree
    # builder, which escapes the undecodable byte as a lone surrogate like hash_path.
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    directory = tmp_path / "data"
    directory.mkdir()
    try:
        (directory / os.fsdecode(b"caf\xe9.txt")).write_bytes(b"latin-1 name\n")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this filesystem rejects file names that are not valid UTF-8")
    _write(directory / "ok.txt", b"fine\n")
    filesystem = LocalFileSystem()
    odb = HashFileDB(filesystem, str(tmp_path / "odb"))

    _, meta, tree = build(odb, str(directory), filesystem, "md5", dry_run=True)
    result = hash_path(directory)

    assert result.md5 == tree.hash_info.value
    assert result.size == meta.size
    assert result.file_count == meta.nfiles


def test_symbolic_link_argument_is_followed(tmp_path: Path) -> None:
    _write(tmp_path / "real.txt", b"content\n")
    (tmp_path / "link.txt").symlink_to("real.txt")
    _build_nested_directories(tmp_path / "real_dir")
    (tmp_path / "dir_link").symlink_to("real_dir", target_is_directory=True)

    assert hash_path(tmp_path / "link.txt") == hash_path(tmp_path / "real.txt")
    assert hash_path(tmp_path / "dir_link") == hash_path(tmp_path / "real_dir")


def test_missing_path_raises_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "does" / "not" / "exist.csv"

    with pytest.raises(FileNotFoundError) as raised:
        hash_path(missing)

    assert str(missing) in str(raised.value)


def test_broken_link_in_directory_raises_naming_link(tmp_path: Path) -> None:
    _write(tmp_path / "data" / "ok.txt", b"ok\n")
    (tmp_path / "data" / "dangling").symlink_to("nowhere")

    with pytest.raises(FileNotFoundError) as raised:
        hash_path(tmp_path / "data")

    assert str(tmp_path / "data" / "dangling") in str(raised.value)
    assert "symbolic link" in str(raised.value)


def test_special_file_argument_raises_value_error(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    with pytest.raises(ValueError, match="neither a regular file nor a directory"):
        hash_path(fifo)


def test_special_file_in_directory_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write(tmp_path / "plain" / "ok.txt", b"ok\n")
    _write(tmp_path / "with_fifo" / "ok.txt", b"ok\n")
    os.mkfifo(tmp_path / "with_fifo" / "pipe")

    with caplog.at_level(logging.WARNING, logger="cmf_airflow.hashing"):
        result = hash_path(tmp_path / "with_fifo")

    assert result == hash_path(tmp_path / "plain")
    assert "Skipped 1 special files" in caplog.text


def test_content_hash_rejects_malformed_md5() -> None:
    with pytest.raises(ValueError, match="32 lowercase hex digits"):
        ContentHash(md5="not-an-md5", size=0)
    with pytest.raises(ValueError, match="must end with '.dir'"):
        ContentHash(md5="d41d8cd98f00b204e9800998ecf8427e", size=0, file_count=0)


def test_content_hash_rejects_negative_size() -> None:
    with pytest.raises(ValueError, match="size must be >= 0"):
        ContentHash(md5="d41d8cd98f00b204e9800998ecf8427e", size=-1)


def test_content_hash_is_dir_follows_file_count() -> None:
    assert not ContentHash(md5="d41d8cd98f00b204e9800998ecf8427e", size=0).is_dir
    assert ContentHash(md5=EMPTY_LISTING_MD5, size=0, file_count=0).is_dir


# --- cache -------------------------------------------------------------------------------


def _rewrite_in_place(path: Path, content: bytes, mtime_ns: int) -> None:
    """Overwrite *path* keeping its inode, then set its mtime to *mtime_ns*."""
    with open(path, "r+b") as stream:
        stream.write(content)
        stream.truncate()
    os.utime(path, ns=(mtime_ns, mtime_ns))


def _old_file(path: Path, content: bytes) -> Path:
    _write(path, content)
    os.utime(path, ns=(ONE_HOUR_AGO_NS, ONE_HOUR_AGO_NS))
    return path


def _uncached_md5(path: Path) -> str:
    return hash_path(path).md5


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[HashCache]:
    """A hash cache in a fresh database below tmp_path."""
    with HashCache(tmp_path / "cache" / "hashes.db") as hash_cache:
        yield hash_cache


def test_cache_hit_does_not_read_file(tmp_path: Path, cache: HashCache) -> None:
    data = _old_file(tmp_path / "data.bin", b"original")
    first = hash_path(data, cache)
    inode = data.stat().st_ino

    # Same size, same inode, same mtime but other bytes: only a read could notice.
    _rewrite_in_place(data, b"replaced", ONE_HOUR_AGO_NS)
    second = hash_path(data, cache)

    assert data.stat().st_ino == inode
    assert _uncached_md5(data) != first.md5
    assert second == first


def test_cache_hit_does_not_read_files_in_directory(tmp_path: Path, cache: HashCache) -> None:
    directory = tmp_path / "data"
    for index in range(5):
        _old_file(directory / f"part-{index}.csv", f"row,{index}\n".encode())
    first = hash_path(directory, cache)

    _rewrite_in_place(directory / "part-3.csv", b"row,X\n", ONE_HOUR_AGO_NS)
    second = hash_path(directory, cache)

    assert _uncached_md5(directory) != first.md5
    assert second == first


def test_changed_mtime_rehashes_file(tmp_path: Path, cache: HashCache) -> None:
    data = _old_file(tmp_path / "data.bin", b"original")
    hash_path(data, cache)

    _rewrite_in_place(data, b"replaced", ONE_HOUR_AGO_NS + 1_000)
    result = hash_path(data, cache)

    assert result.md5 == hashlib.md5(b"replaced").hexdigest()


def test_changed_size_rehashes_file(tmp_path: Path, cache: HashCache) -> None:
    data = _old_file(tmp_path / "data.bin", b"original")
    hash_path(data, cache)

    _rewrite_in_place(data, b"longer content", ONE_HOUR_AGO_NS)
    result = hash_path(data, cache)

    assert result.md5 == hashlib.md5(b"longer content").hexdigest()
    assert result.size == len(b"longer content")


def test_changed_inode_rehashes_file(tmp_path: Path, cache: HashCache) -> None:
    data = _old_file(tmp_path / "data.bin", b"original")
    hash_path(data, cache)
    old_inode = data.stat().st_ino

    # Keep the old file alive so the new one cannot reuse its inode number.
    os.link(data, tmp_path / "keep-inode-busy")
    replacement = _old_file(tmp_path / "replacement.bin", b"replaced")
    os.replace(replacement, data)
    result = hash_path(data, cache)

    assert data.stat().st_ino != old_inode
    assert result.md5 == hashlib.md5(b"replaced").hexdigest()


def test_changed_file_in_directory_rehashes_it(tmp_path: Path, cache: HashCache) -> None:
    directory = tmp_path / "data"
    for index in range(5):
        _old_file(directory / f"part-{index}.csv", f"row,{index}\n".encode())
    hash_path(directory, cache)

    _rewrite_in_place(directory / "part-3.csv", b"row,X\n", ONE_HOUR_AGO_NS + 1_000)
    result = hash_path(directory, cache)

    assert result.md5 == _uncached_md5(directory)


def test_recently_modified_file_is_not_cached(tmp_path: Path, cache: HashCache) -> None:
    data = tmp_path / "fresh.bin"
    data.write_bytes(b"original")
    mtime_ns = data.stat().st_mtime_ns
    assert time.time_ns() - mtime_ns < RACY_WINDOW_NS
    hash_path(data, cache)

    # A second write inside one mtime tick leaves size and mtime unchanged.
    _rewrite_in_place(data, b"replaced", mtime_ns)
    result = hash_path(data, cache)

    assert result.md5 == hashlib.md5(b"replaced").hexdigest()


def test_corrupt_cache_database_falls_back_to_hashing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = tmp_path / "corrupt.db"
    database.write_bytes(b"this is not a SQLite database" * 200)
    data = _old_file(tmp_path / "data.bin", b"content")
    _old_file(tmp_path / "dir" / "a.txt", b"a\n")

    with caplog.at_level(logging.DEBUG, logger="cmf_airflow.hash_cache"):
        file_result = hash_path(data, HashCache(database))
        directory_result = hash_path(tmp_path / "dir", HashCache(database))

    assert file_result.md5 == hashlib.md5(b"content").hexdigest()
    assert directory_result == hash_path(tmp_path / "dir")
    assert str(database) in caplog.text


def test_unusable_cache_location_falls_back_to_hashing(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_directory"
    blocker.write_bytes(b"")
    data = _old_file(tmp_path / "data.bin", b"content")

    result = hash_path(data, HashCache(blocker / "cache.db"))

    assert result.md5 == hashlib.md5(b"content").hexdigest()


def test_cache_creates_parent_directories(tmp_path: Path) -> None:
    database = tmp_path / "a" / "b" / "hashes.db"
    data = _old_file(tmp_path / "data.bin", b"content")

    with HashCache(database) as hash_cache:
        hash_path(data, hash_cache)

    assert database.is_file()


def test_cache_uses_wal_journal(tmp_path: Path, cache: HashCache) -> None:
    hash_path(_old_file(tmp_path / "data.bin", b"content"), cache)

    with sqlite3.connect(cache.path) as connection:
        (mode,) = connection.execute("PRAGMA journal_mode").fetchone()

    assert mode == "wal"


def test_cache_forgets_deleted_files(tmp_path: Path, cache: HashCache) -> None:
    directory = tmp_path / "data"
    for index in range(3):
        _old_file(directory / f"part-{index}.csv", f"row,{index}\n".encode())
    hash_path(directory, cache)

    (directory / "part-1.csv").unlink()
    hash_path(directory, cache)
    with sqlite3.connect(cache.path) as connection:
        stored = {row[0] for row in connection.execute("SELECT path FROM file_md5")}

    assert os.fsencode(directory / "part-0.csv") in stored
    assert os.fsencode(directory / "part-1.csv") not in stored


def test_cache_shared_by_concurrent_processes(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    for index in range(400):
        _old_file(directory / f"d{index % 8}" / f"f{index}.txt", f"{index}\n".encode() * 20)
    database = tmp_path / "shared.db"
    script = textwrap.dedent(
        """
        import sys
        from cmf_airflow.hash_cache import HashCache
        from cmf_airflow.hashing import hash_path
        cache = HashCache(sys.argv[2])
        for _ in range(5):
            print(hash_path(sys.argv[1], cache).md5)
        """
    )

    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(directory), str(database)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    outputs = [worker.communicate(timeout=120) for worker in workers]
    expected = hash_path(directory).md5

    for worker, (stdout, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr
        assert stdout.split() == [expected] * 5


def _directory_rows(cache: HashCache) -> list[tuple[bytes, str]]:
    with sqlite3.connect(cache.path) as connection:
        return [(bytes(path), md5) for path, md5 in connection.execute("SELECT path, md5 FROM directory_md5")]


@pytest.mark.parametrize("change", ["add", "remove", "rename"])
def test_directory_layout_change_rehashes(tmp_path: Path, cache: HashCache, change: str) -> None:
    directory = tmp_path / "data"
    for index in range(3):
        _old_file(directory / f"part-{index}.csv", f"row,{index}\n".encode())
    first = hash_path(directory, cache)

    if change == "add":
        _old_file(directory / "nested" / "part-9.csv", b"row,9\n")
    elif change == "remove":
        (directory / "part-1.csv").unlink()
    else:
        os.rename(directory / "part-1.csv", directory / "part-1-renamed.csv")
    result = hash_path(directory, cache)

    assert result.md5 != first.md5
    assert result.md5 == _uncached_md5(directory)


def test_directory_hash_is_cached_once_files_are_old(tmp_path: Path, cache: HashCache) -> None:
    old = tmp_path / "old"
    fresh = tmp_path / "fresh"
    _old_file(old / "a.csv", b"a\n")
    _write(fresh / "a.csv", b"a\n")
    old_hash = hash_path(old, cache)
    hash_path(fresh, cache)

    assert _directory_rows(cache) == [(os.fsencode(str(old)), old_hash.md5)]
