"""Installation: the entry points make Airflow load the plugin and know the [cmf] section."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _airflow(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airflow", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )


def test_airflow_loads_the_plugin_with_its_listener():
    result = _airflow("plugins", "--output", "json")
    plugins = {plugin["name"]: plugin for plugin in json.loads(result.stdout)}

    assert result.returncode == 0, result.stderr
    assert "cmf" in plugins
    assert "cmf_airflow.listener" in json.dumps(plugins["cmf"]["listeners"])


def test_airflow_config_shows_cmf_defaults():
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW__CMF__")}
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "config", "get-value", "cmf", "lock_timeout"],
        capture_output=True,
        text=True,
        env=env,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "10.0"


def test_cmf_environment_variable_overrides_default():
    result = _airflow("config", "get-value", "cmf", "exclude_dags", AIRFLOW__CMF__EXCLUDE_DAGS="cmf_sync")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cmf_sync"


def test_providers_manager_knows_the_cmf_connection_type():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    hook = manager.hooks.get("cmf")

    assert hook is not None
    assert hook.hook_class_name == "cmf_airflow.hooks.cmf.CmfHook"
    assert hook.connection_id_attribute_name == "cmf_conn_id"
    assert manager.field_behaviours["cmf"]["relabeling"] == {"schema": "Scheme", "password": "Token"}


def test_cmf_hook_reads_server_and_token_from_connection(monkeypatch):
    from cmf_airflow.hooks.cmf import CmfHook

    connection = {"conn_type": "cmf", "host": "cmf.example.org/prefix", "port": 8443, "schema": "https",
                  "password": "secret-token"}
    monkeypatch.setenv("AIRFLOW_CONN_CMF_TEST", json.dumps(connection))
    hook = CmfHook("cmf_test")

    assert hook.base_url == "https://cmf.example.org:8443/prefix"
    assert hook.token == "secret-token"
    assert CmfHook().cmf_conn_id == "cmf_default"


def test_cmf_hook_client_uses_sync_timeout(monkeypatch):
    from cmf_airflow.hooks.cmf import CmfHook

    monkeypatch.setenv("AIRFLOW_CONN_CMF_TEST", "cmf://:tok@127.0.0.1:8080/http")
    monkeypatch.setenv("AIRFLOW__CMF__SYNC_TIMEOUT", "7.5")
    with CmfHook("cmf_test").get_client() as client:
        assert client.base_url == "http://127.0.0.1:8080"
        assert client.timeout == 7.5


def test_cmf_hook_rejects_a_schema_other_than_http(monkeypatch):
    import pytest

    from cmf_airflow.hooks.cmf import CmfHook

    monkeypatch.setenv("AIRFLOW_CONN_CMF_TEST", json.dumps({"conn_type": "cmf", "host": "h", "schema": "ftp"}))

    with pytest.raises(ValueError, match="set it to http or https"):
        CmfHook("cmf_test").base_url
