"""Provider metadata, through which Airflow learns the ``[cmf]`` section and its defaults."""

from __future__ import annotations

from typing import Any

from cmf_airflow.version import __version__


def _option(description: str, kind: str, default: str | None, example: str | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "version_added": "0.1.0",
        "type": kind,
        "example": example,
        "default": default,
    }


CMF_OPTIONS: dict[str, dict[str, Any]] = {
    "enabled": _option(
        "Record every task instance as a CMF execution. Set to False to turn the listener off "
        "without uninstalling the package.",
        "boolean",
        "True",
    ),
    "store": _option(
        "The local ML Metadata store: the path of an SQLite file, or for a site with many workers the URL "
        "postgresql://user:password@host:port/database or mysql://user:password@host:port/database (MariaDB "
        "works as MySQL) of an existing database that all workers share. Empty means "
        "$AIRFLOW_HOME/cmf/mlmd.sqlite.",
        "string",
        "",
        "/var/lib/airflow/cmf/mlmd.sqlite",
    ),
    "store_conn_id": _option(
        "An Airflow connection that completes a database store URL: its password, and its login, host, port "
        "and schema (the database) where the URL leaves them out. Empty means none.",
        "string",
        "",
        "cmf_store",
    ),
    "write_timeout": _option(
        "Seconds one write to the local store retries when it conflicts with other writers (deadlocks, lock "
        "wait timeouts, two tasks that create the same artifact). After that the record is spooled.",
        "float",
        "5.0",
    ),
    "connect_timeout": _option(
        "Seconds to wait for the database of a database store to accept a connection. When it does not, "
        "the record is spooled and the task goes on.",
        "float",
        "5.0",
    ),
    "spool_folder": _option(
        "The folder where records wait that the local store could not take because it was unavailable. "
        "The next task that reaches the store, or cmf-airflow replay, writes them. Empty means cmf_spool "
        "in [logging] base_log_folder.",
        "string",
        "",
        "/var/log/airflow/cmf_spool",
    ),
    "site": _option(
        "The id of this site, written on every execution and part of every execution's uuid. Empty means "
        "an id generated once per local store and kept in it.",
        "string",
        "",
        "edge-lab-01",
    ),
    "include_dags": _option(
        "Comma-separated DAG ids or shell-style patterns (fnmatch) to record. Empty means every DAG.",
        "string",
        "",
        "ml_*, reporting",
    ),
    "exclude_dags": _option(
        "Comma-separated DAG ids or shell-style patterns (fnmatch) never to record. Exclusion wins over "
        "inclusion.",
        "string",
        "",
        "cmf_sync, tmp_*",
    ),
    "hash_cache": _option(
        "The SQLite file that caches file hashes by path, inode, size and modification time. Empty means "
        "hash_cache.sqlite in the folder of the local store.",
        "string",
        "",
        "/var/lib/airflow/cmf/hash_cache.sqlite",
    ),
    "lock_timeout": _option(
        "Seconds the listener waits for the local SQLite store's write lock before it gives up on one record "
        "with a warning; the task itself never waits longer than this.",
        "float",
        "10.0",
    ),
    "version_artifacts": _option(
        "Version the file artifacts that lie inside a DVC workspace (a git repository with DVC initialised): "
        "add each to DVC, commit its .dvc file to git and record that commit with the artifact.",
        "boolean",
        "False",
    ),
    "capture_environment": _option(
        "Record the task's Python environment (its pip freeze) as an Environment input artifact of every "
        "execution. The same environment is stored once.",
        "boolean",
        "True",
    ),
    "conn_id": _option(
        "The Airflow connection of type cmf that points at the central CMF server.",
        "string",
        "cmf_default",
    ),
    "sync_batch_size": _option(
        "The maximum number of executions in one push request; a larger backlog goes in several requests.",
        "integer",
        "500",
    ),
    "sync_timeout": _option(
        "Seconds a push or pull waits for the central server to respond to one request.",
        "float",
        "60.0",
    ),
}


# The layout of Airflow's connection form for a connection of type cmf. Airflow 3 reads it from here without
# importing the hook, and CmfHook.get_ui_field_behaviour returns the same values for Airflow 2.
CMF_CONNECTION_FORM: dict[str, Any] = {
    "hidden-fields": ["login", "extra"],
    "relabeling": {"schema": "Scheme", "password": "Token"},
    "placeholders": {
        "host": "cmf.example.org, or cmf.example.org/prefix behind a proxy",
        "port": "8080",
        "schema": "http or https (default http)",
        "password": "the server's bearer token, empty when it needs none",
    },
}


def get_provider_info() -> dict[str, Any]:
    """Return the provider description that Airflow's providers manager reads through the entry point.

    It declares the ``[cmf]`` section with its defaults and the connection type ``cmf`` of the CMF server.
    """
    return {
        "package-name": "cmf-airflow",
        "name": "Common Metadata Framework (CMF)",
        "description": "Records Airflow task instances, their artifacts and git provenance as CMF lineage in "
        "ML Metadata.",
        "versions": [__version__],
        "connection-types": [
            {
                "hook-class-name": "cmf_airflow.hooks.cmf.CmfHook",
                "connection-type": "cmf",
                "ui-field-behaviour": CMF_CONNECTION_FORM,
            },
        ],
        "config": {
            "cmf": {
                "description": "cmf-airflow: CMF lineage of every task instance.",
                "options": CMF_OPTIONS,
            }
        },
    }
