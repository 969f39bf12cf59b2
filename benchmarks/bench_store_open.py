"""How long opening a database store takes to fail: a closed port, a silent server, a missing database.

Prints the seconds of each case, on loopback only. Run: ``python benchmarks/bench_store_open.py``. Needs the
local PostgreSQL on 127.0.0.1:5432 (user postgres) for the missing-database case.
"""

from __future__ import annotations

import socket
import time

from cmf_airflow.store import StoreUnavailable, open_store

CONNECT_TIMEOUT_S = 5.0


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _time_open(label: str, url: str) -> None:
    start = time.perf_counter()
    try:
        open_store(url, connect_timeout=CONNECT_TIMEOUT_S)
        outcome = "opened"
    except StoreUnavailable as error:
        outcome = str(error).split(". ")[0][:90]
    print(f"{label:<38} {time.perf_counter() - start:7.3f} s  {outcome}")


def main() -> None:
    """Print the time to fail for each case, with [cmf] connect_timeout = 5 s."""
    port = _closed_port()
    _time_open("postgresql, closed port", f"postgresql://postgres@127.0.0.1:{port}/cmf")
    _time_open("mysql, closed port", f"mysql://root@127.0.0.1:{port}/cmf")
    _time_open("postgresql, database does not exist", "postgresql://postgres@127.0.0.1:5432/cmf_bench_absent")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent_port = silent.getsockname()[1]
        _time_open("postgresql, server never responds", f"postgresql://postgres@127.0.0.1:{silent_port}/cmf")
        _time_open("mysql, server never responds", f"mysql://root@127.0.0.1:{silent_port}/cmf")


if __name__ == "__main__":
    main()
