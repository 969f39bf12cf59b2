"""A DAG of 200 cheap tasks for tests/test_scheduler.py, run by a real scheduler with many workers.

The tasks write their files under the folder named by the ``CMF_TEST_DATA_DIR`` environment variable.

- ``produce_NNN`` (60) each write a file of their own, declared as outlet.
- ``consume_NNN`` (60) each read the file of one producer, declared as inlet.
- ``same_bytes_NNN`` (10) write identical bytes to ten paths, so the store contains one artifact for them.
- ``flaky_NNN`` (10) fail on their first try and write their outlet on the second.
- ``nothing_NNN`` (60) do nothing, so that many task tries end close together.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from cmf_airflow import File
from cmf_airflow.compat import DAG, PythonOperator

DAG_ID = "cmf_many_workers"
DATA = Path(os.environ["CMF_TEST_DATA_DIR"])
SAME_BYTES = b"the same bytes, written by ten tasks\n"


def write_file(path: str, content: bytes) -> None:
    """Write ``content`` to ``path``."""
    Path(path).write_bytes(content)


def read_file(path: str) -> None:
    """Read ``path``, failing the task when it is missing or empty."""
    if not Path(path).read_bytes():
        raise ValueError(f"{path} is empty: its producer wrote nothing")


def fail_once(path: str, marker: str) -> None:
    """Fail the first try, which leaves a marker file, then write ``path`` on the next try."""
    if not Path(marker).exists():
        Path(marker).write_text("failed once\n")
        raise RuntimeError(f"planned failure of the first try (marker {marker})")
    Path(path).write_bytes(f"written on the retry to {path}\n".encode())


def do_nothing() -> None:
    """Return at once."""


with DAG(
    DAG_ID,
    schedule="@once",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 0},
) as dag:
    DATA.mkdir(parents=True, exist_ok=True)
    for index in range(60):
        produced = str(DATA / f"produced_{index:03d}.txt")
        producer = PythonOperator(
            task_id=f"produce_{index:03d}",
            python_callable=write_file,
            op_args=[produced, f"row {index}\n".encode()],
            outlets=[File(produced)],
        )
        consumer = PythonOperator(
            task_id=f"consume_{index:03d}",
            python_callable=read_file,
            op_args=[produced],
            inlets=[File(produced)],
        )
        producer >> consumer
    for index in range(10):
        same = str(DATA / f"same_bytes_{index:03d}.txt")
        PythonOperator(
            task_id=f"same_bytes_{index:03d}",
            python_callable=write_file,
            op_args=[same, SAME_BYTES],
            outlets=[File(same)],
        )
    for index in range(10):
        retried = str(DATA / f"retried_{index:03d}.txt")
        PythonOperator(
            task_id=f"flaky_{index:03d}",
            python_callable=fail_once,
            op_args=[retried, str(DATA / f"flaky_{index:03d}.marker")],
            outlets=[File(retried)],
            retries=1,
            retry_delay=timedelta(seconds=0),
        )
    for index in range(60):
        PythonOperator(task_id=f"nothing_{index:03d}", python_callable=do_nothing)
