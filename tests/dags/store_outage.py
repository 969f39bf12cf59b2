"""A DAG of 40 tasks for tests/test_scheduler.py, which cuts the CMF store's database while they run.

Each task ``write_NNN`` sleeps for two seconds, so that tasks are running when the test cuts the
connection, then writes a file of its own (declared as outlet) under the folder named by the
``CMF_TEST_DATA_DIR`` environment variable.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

from cmf_airflow import File
from cmf_airflow.compat import DAG, PythonOperator

DAG_ID = "cmf_store_outage"
DATA = Path(os.environ["CMF_TEST_DATA_DIR"])
TASKS = 40
TASK_SECONDS = 2.0


def write_after_a_while(path: str, content: str) -> None:
    """Sleep for ``TASK_SECONDS``, then write ``content`` to ``path``."""
    time.sleep(TASK_SECONDS)
    Path(path).write_text(content)


with DAG(DAG_ID, schedule="@once", start_date=datetime(2024, 1, 1), catchup=False, max_active_runs=1) as dag:
    DATA.mkdir(parents=True, exist_ok=True)
    for index in range(TASKS):
        written = str(DATA / f"written_{index:03d}.txt")
        PythonOperator(
            task_id=f"write_{index:03d}",
            python_callable=write_after_a_while,
            # op_args are rendered as Jinja templates, which drop a trailing newline, so the content has none.
            op_args=[written, f"output of task {index}"],
            outlets=[File(written)],
        )
