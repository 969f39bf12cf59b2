"""Parameters, metrics and environment of executions, derived from catalog rows for the execution, model
card and compare pages, and the Jinja2 filters that format durations, times and hashes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cmf_airflow.server.ui.rows import ArtifactRow, ExecutionDetail

# Custom properties the recorder writes about the Airflow task try: shown as details, not as parameters.
TASK_FACTS = frozenset({
    "airflow_run_id", "airflow_try_number", "airflow_map_index", "airflow_state", "airflow_operator",
    "start_time", "end_time", "duration_s", "hostname", "airflow_version", "site", "error", "git_dirty", "params",
})
# Custom properties the recorder adds to every artifact, which are not metric values.
ARTIFACT_FACTS = frozenset({"hash_state", "size", "file_count", "reason", "git_commit", "dvc_file"})
METRICS_TYPES = ("Metrics", "Step_Metrics")
ENVIRONMENT_TYPE = "Environment"


@dataclass(frozen=True, slots=True)
class MetricsSet:
    """The values of one metrics artifact: a ``Metrics`` set, or the last step of ``Step_Metrics``."""

    artifact: ArtifactRow
    name: str
    values: tuple[tuple[str, Any], ...]
    step_count: int | None


@dataclass(frozen=True, slots=True)
class CompareRow:
    """One parameter or metric of two executions side by side."""

    key: str
    kind: str
    a: Any
    b: Any

    @property
    def differs(self) -> bool:
        """Whether the two executions have different values (a missing value differs from any value)."""
        return self.a != self.b


def parameters(detail: ExecutionDetail) -> dict[str, Any]:
    """Return an execution's parameters: the Airflow params the recorder stored as JSON, and any other custom
    property that is not a task fact (a CMF client stores its parameters that way)."""
    values: dict[str, Any] = {}
    for key, value in detail.custom_properties.items():
        if key not in TASK_FACTS:
            values[key] = value
    params = _json_object(detail.custom_properties.get("params"))
    if params is not None:
        values.update(params)
    elif "params" in detail.custom_properties:
        values["params"] = detail.custom_properties["params"]
    return dict(sorted(values.items()))


def task_facts(detail: ExecutionDetail) -> dict[str, Any]:
    """Return the Airflow facts of an execution (run id, try, hostname...), in a stable order."""
    return {key: detail.custom_properties[key] for key in sorted(TASK_FACTS - {"params", "error"})
            if key in detail.custom_properties}


def environments(detail: ExecutionDetail) -> list[ArtifactRow]:
    """Return the ``Environment`` inputs of an execution: the pip freeze of the task's Python."""
    return [artifact for artifact in detail.inputs if artifact.type == ENVIRONMENT_TYPE]


def package_lines(artifact: ArtifactRow) -> list[str]:
    """Return the package list of an Environment artifact when the server has it in a ``packages`` property.

    The recorder keeps the freeze file on the site and sends only its hash, path and package count, so this
    is usually empty.
    """
    packages = artifact.custom_properties.get("packages")
    if not isinstance(packages, str):
        return []
    return [line for line in packages.splitlines() if line.strip()]


def metrics_sets(artifacts: tuple[ArtifactRow, ...] | list[ArtifactRow]) -> list[MetricsSet]:
    """Return the metric values of the ``Metrics`` and ``Step_Metrics`` artifacts among ``artifacts``."""
    sets = []
    for artifact in artifacts:
        if artifact.type not in METRICS_TYPES:
            continue
        name = str(artifact.properties.get("metrics_name") or artifact.name.split(":", 1)[0])
        if artifact.type == "Metrics":
            values = tuple(sorted((key, value) for key, value in artifact.custom_properties.items()
                                  if key not in ARTIFACT_FACTS))
            sets.append(MetricsSet(artifact, name, values, None))
            continue
        steps = _json_list(artifact.custom_properties.get("steps"))
        last = steps[-1] if steps and isinstance(steps[-1], dict) else {}
        step_count = artifact.custom_properties.get("step_count")
        sets.append(MetricsSet(artifact, name, tuple(sorted(last.items())),
                               step_count if isinstance(step_count, int) else len(steps)))
    return sets


def compare_rows(a: ExecutionDetail, b: ExecutionDetail) -> list[CompareRow]:
    """Return one row per parameter and per metric of either execution, parameters first, sorted by key.

    A metric is keyed by its own name, or by ``<metrics name>.<key>`` when two metric sets or a parameter
    use the same name.
    """
    params_a, params_b = parameters(a), parameters(b)
    rows = [CompareRow(key, "parameter", params_a.get(key), params_b.get(key))
            for key in sorted(set(params_a) | set(params_b))]
    metrics_a, metrics_b = _metric_values(a), _metric_values(b)
    plain_counts: dict[str, int] = {}
    for name, key in set(metrics_a) | set(metrics_b):
        plain_counts[key] = plain_counts.get(key, 0) + 1
    parameter_names = set(params_a) | set(params_b)
    for name, key in sorted(set(metrics_a) | set(metrics_b), key=lambda item: (item[1], item[0])):
        label = key if plain_counts[key] == 1 and key not in parameter_names else f"{name}.{key}"
        rows.append(CompareRow(label, "metric", metrics_a.get((name, key)), metrics_b.get((name, key))))
    return rows


def _metric_values(detail: ExecutionDetail) -> dict[tuple[str, str], Any]:
    values = {}
    for metrics in metrics_sets(detail.outputs):
        for key, value in metrics.values:
            values[(metrics.name, key)] = value
    return values


# ---------------------------------------------------------------------------------------------------------
# Jinja2 filters


def format_duration(seconds: float | None) -> str:
    """Format a duration in seconds as ``0.42 s``, ``12.3 s``, ``4 min 05 s`` or ``2 h 03 min``."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, remainder = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {remainder:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_epoch_ms(milliseconds: int | None) -> str:
    """Format milliseconds since the epoch as a UTC time, ``2026-03-01 12:00:00 UTC``."""
    if not milliseconds:
        return ""
    moment = datetime.fromtimestamp(milliseconds / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def format_value(value: Any) -> str:
    """Format a property value for a table cell: JSON for lists and mappings, text for the rest."""
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, Mapping):
        return json.dumps(dict(value), sort_keys=True)
    return str(value)


def short_hash(value: str | None, length: int = 10) -> str:
    """Return the first ``length`` characters of a hash or commit id."""
    return (value or "")[:length]


def _json_object(text: Any) -> dict[str, Any] | None:
    parsed = _json(text)
    return parsed if isinstance(parsed, dict) else None


def _json_list(text: Any) -> list[Any]:
    parsed = _json(text)
    return parsed if isinstance(parsed, list) else []


def _json(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
