"""The example ML pipeline end to end: five real tasks, their lineage, logged model and metrics, and
DVC-identical hashes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import EXAMPLE_DATA, REPO_ROOT, load_dag, make_git_repo, open_read_only
from ml_metadata.proto import metadata_store_pb2 as mlmd

from cmf_airflow.lineage import find_artifacts, format_pipeline, read_pipelines, step_metrics_rows, upstream

DVC = str(Path(sys.executable).with_name("dvc"))


@pytest.fixture(scope="module")
def pipeline_store(tmp_path_factory) -> Path:
    """Run dags_examples/ml_pipeline.py once under Airflow and return its CMF store."""
    folder = tmp_path_factory.mktemp("pipeline")
    store = folder / "mlmd.sqlite"
    patch = pytest.MonkeyPatch()
    patch.setenv("AIRFLOW__CMF__STORE", str(store))
    patch.setenv("AIRFLOW__CMF__HASH_CACHE", str(folder / "hash_cache.sqlite"))
    patch.setenv("AIRFLOW__CMF__SITE", "pipeline-site")
    patch.setenv("AIRFLOW__CMF__ENABLED", "True")
    try:
        dag_run = load_dag(REPO_ROOT / "dags_examples" / "ml_pipeline.py", "ml_pipeline").test()
        assert str(dag_run.state) == "success"
        yield store
    finally:
        patch.undo()


def _dvc_md5(path: Path, workspace: Path) -> str:
    """Copy ``path`` into a fresh git+DVC workspace, ``dvc add`` it and return the md5 of its .dvc file."""
    make_git_repo(workspace)
    subprocess.run([DVC, "init", "-q"], cwd=workspace, check=True)
    copy = workspace / path.name
    if path.is_dir():
        shutil.copytree(path, copy)
    else:
        shutil.copy2(path, copy)
    subprocess.run([DVC, "add", "-q", copy.name], cwd=workspace, check=True)
    document = yaml.safe_load((workspace / f"{copy.name}.dvc").read_text())
    return document["outs"][0]["md5"]


def test_pipeline_records_five_successful_executions(pipeline_store):
    [pipeline] = read_pipelines(open_read_only(pipeline_store), "ml_pipeline")
    executions = [execution for stage in pipeline.stages for execution in stage.executions]

    assert sorted(stage.name for stage in pipeline.stages) == [
        "ml_pipeline/evaluate",
        "ml_pipeline/featurize",
        "ml_pipeline/ingest",
        "ml_pipeline/split",
        "ml_pipeline/train",
    ]
    assert len(executions) == 5
    assert {execution.state for execution in executions} == {"COMPLETE"}
    assert {execution.airflow_state for execution in executions} == {"success"}


def test_model_lineage_reaches_the_raw_data(pipeline_store):
    store = open_read_only(pipeline_store)
    [model] = find_artifacts(store, "model.pkl")
    steps = [
        (execution.stage, source.url)
        for execution, source in upstream(store, model.id)
        if source.type_name == "Dataset"
    ]

    assert steps == [
        ("ml_pipeline/train", f"file://{EXAMPLE_DATA / 'features'}"),
        ("ml_pipeline/featurize", f"file://{EXAMPLE_DATA / 'split'}"),
        ("ml_pipeline/split", f"file://{EXAMPLE_DATA / 'raw' / 'digits.csv'}"),
    ]


def test_pipeline_artifacts_have_the_md5_dvc_gives(pipeline_store, tmp_path):
    store = open_read_only(pipeline_store)
    files = [a for a in store.get_artifacts() if a.properties["url"].string_value.startswith("file://")]
    types = {t.id: t.name for t in store.get_artifact_types()}

    # raw csv, split dir, features dir, model, step metrics rows, environment freeze file
    assert sorted(types[a.type_id] for a in files) == [
        "Dataset", "Dataset", "Dataset", "Environment", "Model", "Step_Metrics"
    ]
    for index, artifact in enumerate(files):
        path = Path(artifact.properties["url"].string_value.removeprefix("file://"))
        assert artifact.uri == _dvc_md5(path, tmp_path / f"workspace-{index}"), path


def _stage(pipeline_store: Path, name: str):
    [pipeline] = read_pipelines(open_read_only(pipeline_store), "ml_pipeline")
    [stage] = [stage for stage in pipeline.stages if stage.name == f"ml_pipeline/{name}"]
    [execution] = stage.executions
    return execution


def test_training_logs_model_and_step_metrics(pipeline_store):
    train = _stage(pipeline_store, "train")
    [model] = [a for a in train.outputs if a.type_name == "Model"]
    [steps] = [a for a in train.outputs if a.type_name == "Step_Metrics"]
    [stored] = open_read_only(pipeline_store).get_artifacts_by_id([steps.id])
    rows = step_metrics_rows(stored)

    assert model.model_framework == "scikit-learn"
    assert model.model_type == "SGDClassifier"
    assert model.model_name == "digits-classifier"
    assert model.url == f"file://{EXAMPLE_DATA / 'model' / 'model.pkl'}"
    assert steps.metrics_name == "training"
    assert steps.step_count == 8
    assert [row["step"] for row in rows] == list(range(8))
    assert all(0.0 < row["accuracy"] <= 1.0 for row in rows)
    assert rows[-1]["log_loss"] < rows[0]["log_loss"]


def test_evaluation_reads_the_trained_model_and_logs_metrics(pipeline_store):
    train = _stage(pipeline_store, "train")
    evaluate = _stage(pipeline_store, "evaluate")
    [model_out] = [a for a in train.outputs if a.type_name == "Model"]
    [model_in] = [a for a in evaluate.inputs if a.type_name == "Model"]
    [metrics] = [a for a in evaluate.outputs if a.type_name == "Metrics"]
    values = dict(metrics.values)

    assert model_in.id == model_out.id
    assert metrics.metrics_name == "evaluation"
    assert sorted(values) == ["accuracy", "f1_macro", "test_rows"]
    assert 0.8 < values["accuracy"] <= 1.0
    assert values["test_rows"] == 450


def test_lineage_report_shows_model_and_metrics(pipeline_store):
    [pipeline] = read_pipelines(open_read_only(pipeline_store), "ml_pipeline")
    lines = format_pipeline(pipeline)
    model_path = EXAMPLE_DATA / "model" / "model.pkl"

    assert lines[0] == "Pipeline ml_pipeline: 5 stage(s), 5 execution(s)"
    assert any(
        line.startswith(f"      output Model digits-classifier (scikit-learn SGDClassifier) file://{model_path}  md5 ")
        for line in lines
    )
    assert any(line.startswith("      input  Model digits-classifier (scikit-learn SGDClassifier)") for line in lines)
    assert any(line.startswith("      output Metrics evaluation: accuracy=") for line in lines)
    assert any(line.startswith("      output Step_Metrics training: 8 step(s), last step log_loss=") for line in lines)


def test_pipeline_executions_carry_the_dag_files_commit(pipeline_store):
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"the checkout at {REPO_ROOT} has no git commit; the pipeline test needs one")
    commits = {
        execution.properties["Git_End_Commit"].string_value
        for execution in open_read_only(pipeline_store).get_executions()
    }

    assert commits == {result.stdout.strip()}


def test_lineage_command_prints_the_pipeline(pipeline_store):
    result = subprocess.run(
        [sys.executable, "-m", "cmf_airflow.cli", "lineage", "--store", str(pipeline_store), "--upstream",
         "model.pkl"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    store = open_read_only(pipeline_store)
    [raw] = find_artifacts(store, "digits.csv")

    assert result.returncode == 0, result.stderr
    assert "Pipeline ml_pipeline: 5 stage(s), 5 execution(s)" in result.stdout
    assert "Stage ml_pipeline/train" in result.stdout
    assert f"output Dataset file://{EXAMPLE_DATA / 'raw' / 'digits.csv'}  md5 {raw.uri}" in result.stdout
    assert "ml_pipeline/split (execution 2) read " + f"{EXAMPLE_DATA / 'raw' / 'digits.csv'}:{raw.uri}" in (
        result.stdout
    )


def test_lineage_command_names_a_missing_store(tmp_path):
    missing = tmp_path / "nowhere.sqlite"
    result = subprocess.run(
        [sys.executable, "-m", "cmf_airflow.cli", "lineage", "--store", str(missing)],
        capture_output=True,
        text=True,
    )

    assert result.returncode == 1
    assert f"no CMF store at {missing}" in result.stderr
    assert not missing.exists()


def test_execution_states_are_mlmd_complete(pipeline_store):
    states = {e.last_known_state for e in open_read_only(pipeline_store).get_executions()}

    assert states == {mlmd.Execution.COMPLETE}


def _lineage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cmf_airflow.cli", "lineage", *args], capture_output=True, text=True
    )


def test_lineage_command_lists_pipelines_when_one_is_unknown(pipeline_store):
    result = _lineage("--store", str(pipeline_store), "--pipeline", "no_such_dag")

    assert result.returncode == 1
    assert result.stdout == ""
    assert "contains no pipeline 'no_such_dag' (pipelines: ml_pipeline)" in result.stderr


@pytest.mark.parametrize(("argument", "status", "message"), [
    ("", 2, "--upstream needs an md5 or part of an artifact name"),
    ("no-such-artifact", 1, "no artifact's md5 or name matches 'no-such-artifact'"),
])
def test_lineage_command_rejects_bad_upstream_before_printing(pipeline_store, argument, status, message):
    result = _lineage("--store", str(pipeline_store), "--upstream", argument)

    assert result.returncode == status
    assert result.stdout == ""
    assert message in result.stderr


def test_lineage_command_names_a_folder_or_foreign_file(tmp_path):
    foreign = tmp_path / "notes.txt"
    foreign.write_text("not a database")
    folder_result = _lineage("--store", str(tmp_path))
    file_result = _lineage("--store", str(foreign))

    assert folder_result.returncode == 1
    assert f"CMF store {tmp_path} is a folder" in folder_result.stderr
    assert file_result.returncode == 1
    assert f"{foreign} is not an MLMD SQLite store" in file_result.stderr


def test_demo_refuses_a_folder_it_did_not_create(tmp_path):
    keep = tmp_path / "notes.txt"
    keep.write_text("precious")
    result = subprocess.run(
        [sys.executable, "-m", "cmf_airflow.cli", "demo", "--home", str(tmp_path)], capture_output=True, text=True
    )

    assert result.returncode == 2
    assert "is a folder with content that an earlier demo did not create" in result.stderr
    assert keep.read_text() == "precious"
