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
