"""The "CMF lineage" extra link that the plugin adds to every task: it opens the task instance try on the server.

The link points at ``<base URL>/ui/task`` with the task instance's DAG id, task id, run id, map index and try
number. The server looks up the execution recorded for that try and redirects to its page. The base URL comes
from the ``[cmf] conn_id`` connection (``cmf_default``), read each time a link is built, so an edited
connection takes effect without a restart.

Airflow builds a global extra link outside the task, from the task instance key. The webserver does it on
Airflow 2.10 and 2.11, the API server on Airflow 3.x (checked on 3.3). On Airflow 3 only the links declared on
the operator itself are computed by the task and stored as XComs. Neither process catches an exception from
``get_link``, so a missing or invalid connection gives an empty link, which the Airflow UI does not show.

NOTE: the link uses the address that the workers use to push. Where browsers reach the server under another
name (a proxy, an internal host name), the link does not open from the user's browser.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from cmf_airflow.compat import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey

logger = logging.getLogger(__name__)

LINK_NAME = "CMF lineage"
TASK_PAGE_PATH = "/ui/task"
# Warnings already logged, so that a missing connection is reported once per process, not on every page view.
_reported: set[str] = set()
_MAX_REPORTED = 100


def task_page_url(base_url: str, dag_id: str, task_id: str, run_id: str, map_index: int, try_number: int) -> str:
    """Build the address of the server page that opens the execution of one task instance try."""
    query = urlencode(
        {
            "dag_id": dag_id,
            "task_id": task_id,
            "run_id": run_id,
            "map_index": map_index,
            "try_number": try_number,
        }
    )
    return f"{base_url.rstrip('/')}{TASK_PAGE_PATH}?{query}"


def server_base_url(conn_id: str | None = None) -> str | None:
    """Return the CMF server's base URL from its Airflow connection, or None when there is no usable one.

    ``conn_id`` defaults to ``[cmf] conn_id``. A missing connection or one without a valid host and scheme is
    logged once per process and gives None.
    """
    from cmf_airflow import conf
    from cmf_airflow.hooks.cmf import CmfHook

    conn_id = conn_id or conf.conn_id()
    try:
        return CmfHook(conn_id).base_url
    # The lookup goes through the secrets backends, which raise their own types (AirflowNotFoundException for
    # an unknown id, errors of a remote vault) and a ValueError for an invalid host or schema. Whatever it is,
    # the Airflow UI must keep working, so the link is dropped and the reason logged.
    except Exception as error:
        _warn_once(f"no {LINK_NAME!r} link: cannot read the CMF server from the Airflow connection {conn_id}: {error}")
        return None


class CmfLineageLink(BaseOperatorLink):
    """The "CMF lineage" button on every task instance, which opens its execution on the central CMF server."""

    name = LINK_NAME

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        """Return the server page of the task instance try ``ti_key``, or "" when the link cannot be built.

        The empty string is returned when the connection is missing or invalid and when the try has not
        started yet (try number 0), since then the server has no execution to show.
        """
        try:
            try_number = int(ti_key.try_number)
            if try_number < 1:
                return ""
            base_url = server_base_url()
            if base_url is None:
                return ""
            return task_page_url(
                base_url, ti_key.dag_id, ti_key.task_id, ti_key.run_id, int(ti_key.map_index), try_number
            )
        # Airflow's extra-link endpoints do not catch exceptions, so one here would fail the whole request.
        except Exception as error:
            _warn_once(f"no {LINK_NAME!r} link for {ti_key!r}: {type(error).__name__}: {error}")
            return ""


def _warn_once(message: str) -> None:
    if message in _reported:
        return
    if len(_reported) >= _MAX_REPORTED:
        # Bounds the memory of a long-running API server. Later distinct reasons still reach the debug log.
        logger.debug(message)
        return
    _reported.add(message)
    logger.warning(message)
