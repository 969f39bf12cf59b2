"""Reading lineage back out of an MLMD store: pipelines, stages, executions and their artifacts."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ml_metadata.proto import metadata_store_pb2 as mlmd

from cmf_airflow.recorder import PIPELINE_CONTEXT_TYPE

if TYPE_CHECKING:
    from ml_metadata.metadata_store import MetadataStore

_STATE_NAMES = {value: name for name, value in mlmd.Execution.State.items()}


@dataclass(frozen=True, slots=True)
class ArtifactView:
    """An artifact as the lineage report shows it."""

    id: int
    type_name: str
    name: str
    uri: str
    url: str
    hash_state: str
    # Model artifacts: framework, type and name. Metrics and Step_Metrics: the metrics name.
    model_framework: str = ""
    model_type: str = ""
    model_name: str = ""
    metrics_name: str = ""
    # Metrics: the values. Step_Metrics: the number of steps and the values of the last step.
    values: tuple[tuple[str, float | int], ...] = ()
    step_count: int | None = None


@dataclass(frozen=True, slots=True)
class ExecutionView:
    """An execution with its inputs and outputs."""

    id: int
    uuid: str
    stage: str
    state: str
    airflow_state: str
    duration_s: float | None
    run_id: str
    try_number: int
    git_commit: str
    git_dirty: bool | None
    error: str
    inputs: tuple[ArtifactView, ...]
    outputs: tuple[ArtifactView, ...]


@dataclass(frozen=True, slots=True)
class StageView:
    """A stage (task) with its executions, oldest first."""

    name: str
    executions: tuple[ExecutionView, ...]


@dataclass(frozen=True, slots=True)
class PipelineView:
    """A pipeline (DAG) with its stages."""

    name: str
    stages: tuple[StageView, ...]


def read_pipelines(store: MetadataStore, pipeline: str | None = None) -> list[PipelineView]:
    """Read every pipeline, or the one named ``pipeline``, with its stages, executions and artifacts."""
    contexts = store.get_contexts_by_type(PIPELINE_CONTEXT_TYPE)
    if pipeline is not None:
        contexts = [context for context in contexts if context.name == pipeline]
    return [_read_pipeline(store, context) for context in sorted(contexts, key=lambda c: c.name)]


def pipeline_names(store: MetadataStore) -> list[str]:
    """Return the names of all pipelines in the store, sorted."""
    return sorted(context.name for context in store.get_contexts_by_type(PIPELINE_CONTEXT_TYPE))


def upstream(store: MetadataStore, artifact_id: int) -> list[tuple[ExecutionView, ArtifactView]]:
    """Walk from an artifact back to its sources: each step is (producing execution, one of its inputs).

    Returns the steps breadth first; an execution without inputs ends its branch.
    """
    steps: list[tuple[ExecutionView, ArtifactView]] = []
    seen_artifacts = {artifact_id}
    queue = deque([artifact_id])
    while queue:
        current = queue.popleft()
        producers = [
            event.execution_id
            for event in store.get_events_by_artifact_ids([current])
            if event.type == mlmd.Event.OUTPUT
        ]
        for execution in _execution_views(store, store.get_executions_by_id(producers)):
            for artifact in execution.inputs:
                steps.append((execution, artifact))
                if artifact.id not in seen_artifacts:
                    seen_artifacts.add(artifact.id)
                    queue.append(artifact.id)
    return steps


def find_artifacts(store: MetadataStore, text: str) -> list[ArtifactView]:
    """Find artifacts whose md5 equals ``text`` or whose name contains it."""
    matches = [a for a in store.get_artifacts() if a.uri == text or text in a.name]
    return [_artifact_view(store, artifact) for artifact in matches]


def _read_pipeline(store: MetadataStore, pipeline: mlmd.Context) -> PipelineView:
    stages = []
    for stage in store.get_children_contexts_by_context(pipeline.id):
        executions = sorted(store.get_executions_by_context(stage.id), key=lambda e: e.id)
        stages.append(StageView(name=stage.name, executions=tuple(_execution_views(store, executions))))
    # Stages in the order they first ran, which for a pipeline is its topological order.
    stages.sort(key=lambda view: (view.executions[0].id if view.executions else 0, view.name))
    return PipelineView(name=pipeline.name, stages=tuple(stages))


def _execution_views(store: MetadataStore, executions: Iterable[mlmd.Execution]) -> list[ExecutionView]:
    executions = list(executions)
    if not executions:
        return []
    events = store.get_events_by_execution_ids([execution.id for execution in executions])
    artifact_ids = sorted({event.artifact_id for event in events})
    artifacts = {artifact.id: artifact for artifact in store.get_artifacts_by_id(artifact_ids)}
    type_names = _artifact_type_names(store, artifacts.values())

    views = []
    for execution in executions:
        own = [event for event in events if event.execution_id == execution.id]
        inputs = [event.artifact_id for event in own if event.type == mlmd.Event.INPUT]
        outputs = [event.artifact_id for event in own if event.type == mlmd.Event.OUTPUT]
        views.append(
            ExecutionView(
                id=execution.id,
                uuid=execution.properties["Execution_uuid"].string_value,
                stage=execution.type,
                state=_STATE_NAMES.get(execution.last_known_state, "UNKNOWN"),
                airflow_state=_custom_text(execution, "airflow_state"),
                duration_s=_custom_number(execution, "duration_s"),
                run_id=_custom_text(execution, "airflow_run_id"),
                try_number=execution.custom_properties["airflow_try_number"].int_value,
                git_commit=execution.properties["Git_End_Commit"].string_value,
                git_dirty=(
                    execution.custom_properties["git_dirty"].bool_value
                    if "git_dirty" in execution.custom_properties
                    else None
                ),
                error=_custom_text(execution, "error"),
                inputs=tuple(_view(artifacts[i], type_names) for i in inputs),
                outputs=tuple(_view(artifacts[i], type_names) for i in outputs),
            )
        )
    return views


def _artifact_type_names(store: MetadataStore, artifacts: Iterable[mlmd.Artifact]) -> dict[int, str]:
    type_ids = sorted({artifact.type_id for artifact in artifacts})
    return {artifact_type.id: artifact_type.name for artifact_type in store.get_artifact_types_by_id(type_ids)}


def _artifact_view(store: MetadataStore, artifact: mlmd.Artifact) -> ArtifactView:
    return _view(artifact, _artifact_type_names(store, [artifact]))


def _view(artifact: mlmd.Artifact, type_names: dict[int, str]) -> ArtifactView:
    type_name = type_names.get(artifact.type_id, "?")
    values: tuple[tuple[str, float | int], ...] = ()
    step_count = None
    if type_name == "Metrics":
        values = tuple(
            (key, _number(value))
            for key, value in sorted(artifact.custom_properties.items())
            if key not in _BOOKKEEPING_PROPERTIES and value.WhichOneof("value") in ("int_value", "double_value")
        )
    elif type_name == "Step_Metrics":
        step_count = artifact.custom_properties["step_count"].int_value
        rows = _steps_property(artifact)
        if rows:
            values = tuple((key, value) for key, value in rows[-1].items() if key != "step")
    return ArtifactView(
        id=artifact.id,
        type_name=type_name,
        name=artifact.name,
        uri=artifact.uri,
        url=artifact.properties["url"].string_value,
        hash_state=_custom_text(artifact, "hash_state"),
        model_framework=_property_text(artifact, "model_framework"),
        model_type=_property_text(artifact, "model_type"),
        model_name=_property_text(artifact, "model_name"),
        metrics_name=_property_text(artifact, "metrics_name"),
        values=values,
        step_count=step_count,
    )


def step_metrics_rows(artifact: mlmd.Artifact) -> list[dict[str, float | int]]:
    """Return the steps of a ``Step_Metrics`` artifact in order, each a dict with ``step`` and the values.

    The rows come from the ``steps`` custom property, or from the JSON file at the artifact's url when the
    property was left out for size.
    """
    rows = _steps_property(artifact)
    if rows is not None:
        return rows
    path = artifact.properties["url"].string_value.removeprefix("file://")
    with open(path, encoding="utf-8") as file:
        return json.load(file)["steps"]


def describe_artifact(artifact: ArtifactView) -> str:
    """Return one line about an artifact: its type, location and md5, or a model's framework and type, or
    a metrics artifact's values."""
    digest = artifact.uri if artifact.hash_state == "hashed" else artifact.hash_state
    if artifact.type_name == "Model":
        kind = " ".join(part for part in (artifact.model_framework, artifact.model_type) if part)
        return f"Model {artifact.model_name} ({kind}) {artifact.url}  md5 {digest}"
    if artifact.type_name == "Metrics":
        return f"Metrics {artifact.metrics_name}: {_format_values(artifact.values)}"
    if artifact.type_name == "Step_Metrics":
        last = f", last step {_format_values(artifact.values)}" if artifact.values else ""
        return f"Step_Metrics {artifact.metrics_name}: {artifact.step_count} step(s){last}"
    return f"{artifact.type_name} {artifact.url}  md5 {digest}"


def format_pipeline(view: PipelineView) -> list[str]:
    """Return the lines that ``cmf-airflow lineage`` prints for a pipeline: stages, executions, artifacts."""
    count = sum(len(stage.executions) for stage in view.stages)
    lines = [f"Pipeline {view.name}: {len(view.stages)} stage(s), {count} execution(s)"]
    for stage in view.stages:
        lines.append(f"  Stage {stage.name}")
        for execution in stage.executions:
            duration = "-" if execution.duration_s is None else f"{execution.duration_s:.2f} s"
            commit = execution.git_commit[:12] or "no git commit"
            if execution.git_dirty:
                commit += " (uncommitted changes)"
            lines.append(
                f"    Execution {execution.id} {execution.state} ({execution.airflow_state}), {duration}, "
                f"try {execution.try_number}, run {execution.run_id}, git {commit}"
            )
            if execution.error:
                lines.append(f"      error: {execution.error}")
            for label, artifacts in (("input ", execution.inputs), ("output", execution.outputs)):
                lines.extend(f"      {label} {describe_artifact(artifact)}" for artifact in artifacts)
    return lines


# Custom properties that the recorder writes on every artifact, as opposed to metric values.
_BOOKKEEPING_PROPERTIES = frozenset({"hash_state", "size", "file_count", "reason", "step_count"})


def _steps_property(artifact: mlmd.Artifact) -> list[dict[str, float | int]] | None:
    if "steps" not in artifact.custom_properties:
        return None
    return json.loads(artifact.custom_properties["steps"].string_value)


def _format_values(values: tuple[tuple[str, float | int], ...]) -> str:
    return ", ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}" for key, value in values)


def _number(value: mlmd.Value) -> float | int:
    return value.int_value if value.WhichOneof("value") == "int_value" else value.double_value


def _property_text(artifact: mlmd.Artifact, key: str) -> str:
    return artifact.properties[key].string_value if key in artifact.properties else ""


def _custom_text(message: mlmd.Execution | mlmd.Artifact, key: str) -> str:
    return message.custom_properties[key].string_value if key in message.custom_properties else ""


def _custom_number(message: mlmd.Execution, key: str) -> float | None:
    if key not in message.custom_properties:
        return None
    value = message.custom_properties[key]
    return value.double_value if value.HasField("double_value") else float(value.int_value)
