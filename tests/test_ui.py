"""The web UI over HTTP on loopback: the real server, its pages and their values, on SQLite, PostgreSQL and
MariaDB stores (the UI's SQL differs per driver), and token and cookie authentication on SQLite."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from cmf_airflow.server.ui.database import ReadOnlyDatabase, SchemaMismatch
from cmf_airflow.wire import (EVENT_INPUT, EVENT_OUTPUT, WireArtifact, WireDocument, WireEvent, WireExecution,
                              WirePipeline, WireStage, push_request_body)
from server_utils import mysql_database, postgres_database, server_process, stage_documents

TOKEN = "ui-test-token-3f9a"


# ---------------------------------------------------------------------------------------------------------
# A small HTML tree, because the project has no HTML parsing library


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element]
    parts: list[str]

    def text(self) -> str:
        return " ".join(" ".join(self._texts()).split())

    def _texts(self) -> list[str]:
        texts = list(self.parts)
        for child in self.children:
            texts += child._texts()
        return texts

    def iter(self):
        yield self
        for child in self.children:
            yield from child.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Element]:
        return [node for node in self.iter()
                if (tag is None or node.tag == tag)
                and (cls is None or cls in node.attrs.get("class", "").split())
                and all(node.attrs.get(key.replace("_", "-")) == value for key, value in attrs.items())]

    def by_id(self, element_id: str) -> Element:
        found = self.find_all(id=element_id)
        assert found, f"no element with id {element_id!r}"
        return found[0]

    def has_id(self, element_id: str) -> bool:
        return bool(self.find_all(id=element_id))


_VOID = {"meta", "link", "input", "br", "img", "hr", "col", "source"}


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("root", {}, [], [])
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Element(tag, {key: value or "" for key, value in attrs}, [], [])
        self.stack[-1].children.append(node)
        if tag not in _VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Element(tag, {key: value or "" for key, value in attrs}, [], []))

    def handle_endtag(self, tag):
        for index in range(len(self.stack) - 1, 0, -1):
            if self.stack[index].tag == tag:
                del self.stack[index:]
                return

    def handle_data(self, data):
        self.stack[-1].parts.append(data)


def parse(html: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(html)
    return builder.root


def table_rows(table: Element) -> list[list[str]]:
    return [[cell.text() for cell in row.children if cell.tag in ("td", "th")]
            for row in table.find_all("tr") if row.find_all("td")]


# ---------------------------------------------------------------------------------------------------------
# The data: one pipeline recorded at two sites


def _md5(*parts: object) -> str:
    import hashlib

    return hashlib.md5("/".join(str(part) for part in parts).encode()).hexdigest()


def _dataset(path: str, digest: str, **custom: object) -> WireArtifact:
    return WireArtifact("Dataset", f"{path}:{digest}", digest,
                        {"git_repo": "https://git.example.com/ml.git", "Commit": digest, "url": f"file://{path}"},
                        {"hash_state": "hashed", **custom})


@dataclass(frozen=True)
class Facts:
    """What the test pipeline contains, to compare the pages with."""

    pipeline: str
    raw_md5: str
    features_md5: str
    model_md5: str
    environment_md5: str
    failed_uuid: str


def _execution(stage: str, pipeline: str, *, site: str, run_id: str, try_number: int, state: str,
               events: list[WireEvent], params: dict | None = None, error: str | None = None,
               duration: float = 2.5, commit: str = "c" * 40) -> WireExecution:
    execution_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{site}/{stage}/{run_id}/{try_number}"))
    custom: dict[str, object] = {"airflow_run_id": run_id, "airflow_try_number": try_number, "airflow_map_index": -1,
                                 "airflow_state": "success" if state == "COMPLETE" else "failed", "site": site,
                                 "duration_s": duration, "hostname": f"{site}-worker",
                                 "start_time": "2026-03-01T12:00:00+00:00"}
    if params is not None:
        import json

        custom["params"] = json.dumps(params, sort_keys=True)
    if error is not None:
        custom["error"] = error
    return WireExecution(
        type=stage, name=execution_uuid,
        properties={"Execution_uuid": execution_uuid, "Context_Type": stage, "Execution_type_name": stage,
                    "Pipeline_Type": pipeline, "Execution": f"PythonOperator {stage}",
                    "Git_Repo": "https://git.example.com/ml.git", "Git_Start_Commit": commit,
                    "Git_End_Commit": commit},
        custom_properties=custom, events=tuple(events), last_known_state=state)


def build_pipeline(pipeline: str) -> tuple[WireDocument, Facts]:
    """Build a pipeline: ``prepare`` runs twice at site-a and once at site-b, ``train`` fails once and retries.

    Every ``train`` try reads the features of site-a's first run and the environment, and the successful
    tries write a model and metrics.
    """
    raw = _dataset("/data/raw.csv", _md5(pipeline, "raw"), git_commit="d" * 40, dvc_file="data/raw.csv.dvc")
    environment = WireArtifact("Environment", f"/envs/freeze.txt:{_md5(pipeline, 'env')}", _md5(pipeline, "env"),
                               {"url": "file:///envs/freeze.txt"}, {"hash_state": "hashed", "package_count": 212})
    prepare_stage, train_stage = f"{pipeline}/prepare", f"{pipeline}/train"
    prepare, features = [], []
    for site, run_id in (("site-a", "scheduled__1"), ("site-a", "scheduled__2"), ("site-b", "scheduled__1")):
        output = _dataset(f"/data/{site}/features.csv", _md5(pipeline, site, run_id, "features"))
        features.append(output)
        prepare.append(_execution(prepare_stage, pipeline, site=site, run_id=run_id, try_number=1, state="COMPLETE",
                                  events=[WireEvent(EVENT_INPUT, raw), WireEvent(EVENT_OUTPUT, output)],
                                  duration=0.25))
    model = WireArtifact("Model", f"/models/model.pkl:{_md5(pipeline, 'model')}:9", _md5(pipeline, "model"),
                         {"model_framework": "sklearn", "model_type": "RandomForestClassifier",
                          "model_name": "churn", "url": "file:///models/model.pkl"}, {"hash_state": "hashed"})
    inputs = [WireEvent(EVENT_INPUT, features[0]), WireEvent(EVENT_INPUT, environment)]
    train = [
        _execution(train_stage, pipeline, site="site-a", run_id="scheduled__1", try_number=1, state="FAILED",
                   events=inputs, params={"n_estimators": 100, "max_depth": 5},
                   error="ValueError: <bad> input & more"),
        _execution(train_stage, pipeline, site="site-a", run_id="scheduled__1", try_number=2, state="COMPLETE",
                   params={"n_estimators": 100, "max_depth": 5}, events=[
                       *inputs, WireEvent(EVENT_OUTPUT, model), WireEvent(EVENT_OUTPUT, _metrics(1, 0.91, 0.2))]),
        _execution(train_stage, pipeline, site="site-a", run_id="scheduled__2", try_number=1, state="COMPLETE",
                   params={"n_estimators": 200, "max_depth": 5}, duration=125.0, events=[
                       *inputs, WireEvent(EVENT_OUTPUT, _metrics(2, 0.93, 0.2))]),
    ]
    stages = (WireStage(prepare_stage, {"Pipeline_Stage": prepare_stage}, {}, tuple(prepare)),
              WireStage(train_stage, {"Pipeline_Stage": train_stage}, {}, tuple(train)))
    document = WireDocument((WirePipeline(pipeline, {"Pipeline": pipeline}, {}, stages),))
    facts = Facts(pipeline, raw.uri, features[0].uri, model.uri, environment.uri, train[0].name)
    return document, facts


def _metrics(index: int, accuracy: float, loss: float) -> WireArtifact:
    metrics_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"metrics/{index}/{accuracy}"))
    return WireArtifact("Metrics", f"evaluation:{metrics_uuid}:{index}", metrics_uuid, {"metrics_name": "evaluation"},
                        {"hash_state": "not_a_file", "accuracy": accuracy, "loss": loss})


# ---------------------------------------------------------------------------------------------------------
# Servers


@dataclass
class Ui:
    base_url: str
    facts: Facts
    store: str

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=120.0, headers=headers, follow_redirects=False)

    def page(self, path: str, status: int = 200, **params: object) -> Element:
        with self.client() as client:
            # httpx drops a query string already in ``path`` when ``params`` is given, even empty.
            response = client.get(path, params=params) if params else client.get(path)
        assert response.status_code == status, response.text[:2000]
        return parse(response.text)

    def pipeline_id(self) -> int:
        page = self.page("/ui/")
        [row] = page.find_all("tr", data_name=self.facts.pipeline)
        return int(row.attrs["data-id"])

    def ids_by(self, path: str, **params: object) -> list[int]:
        table = self.page(path, **params).find_all(id="executions")
        return [int(row.attrs["data-id"]) for row in table[0].find_all("tr") if "data-id" in row.attrs] if table else []


@contextlib.contextmanager
def _store(kind: str, folder: Path):
    if kind == "sqlite":
        yield str(folder / "server.sqlite")
    elif kind == "postgresql":
        with postgres_database("cmf_ui") as url:
            yield url
    else:
        with mysql_database("cmf_ui") as url:
            yield url


def _push(base_url: str, document: WireDocument, token: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=base_url, timeout=120.0, headers=headers) as client:
        for part in stage_documents(document):
            response = client.post("/api/mlmd_push", json=push_request_body(part.pipelines[0].name, part))
            assert response.status_code == 200, response.text


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mysql"])
def ui(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"ui-{request.param}")
    with _store(request.param, folder) as store, server_process(store, log_dir=folder) as server:
        document, facts = build_pipeline(f"train_{uuid.uuid4().hex[:6]}")
        _push(server.base_url, document)
        yield Ui(server.base_url, facts, store)


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ui-token")
    with server_process(str(folder / "server.sqlite"), TOKEN, log_dir=folder) as server:
        document, facts = build_pipeline("secured")
        _push(server.base_url, document, TOKEN)
        yield Ui(server.base_url, facts, str(folder / "server.sqlite"))


# ---------------------------------------------------------------------------------------------------------
# Pipelines and the pipeline page


def test_root_redirects_to_pipelines(ui):
    with ui.client() as client:
        response = client.get("/")

    assert response.status_code == 302
    assert response.headers["location"] == "/ui/"


def test_pipelines_page_counts(ui):
    page = ui.page("/ui/")
    [row] = page.find_all("tr", data_name=ui.facts.pipeline)

    assert row.find_all("td", cls="stage-count")[0].text() == "2"
    assert row.find_all("td", cls="execution-count")[0].text() == "6"
    assert row.find_all("td", cls="site-count")[0].text() == "2"
    assert {span.attrs["title"]: span.text() for span in row.find_all("span", cls="state")} == {
        "COMPLETE": "COMPLETE 5", "FAILED": "FAILED 1"}
    assert row.find_all("td", cls="last-run")[0].text() == "scheduled__2"


def test_pipeline_page_stages_and_columns(ui):
    page = ui.page(f"/ui/pipelines/{ui.pipeline_id()}")
    stages = {row[0]: row[1:] for row in table_rows(page.by_id("stages"))}
    rows = table_rows(page.by_id("executions"))
    newest = rows[0]

    assert stages == {f"{ui.facts.pipeline}/prepare": ["3", "COMPLETE 3"],
                      f"{ui.facts.pipeline}/train": ["3", "COMPLETE 2 FAILED 1"]}
    assert len(rows) == 6
    assert [int(row[0]) for row in rows] == sorted((int(row[0]) for row in rows), reverse=True)
    assert newest[1:8] == [f"{ui.facts.pipeline}/train", "COMPLETE", "2 min 05 s", "site-a", "1", "c" * 10,
                           "scheduled__2"]
    assert page.by_id("filters").tag == "form"
    assert not page.has_id("next-page")
    assert not page.has_id("prev-page")


def test_pipeline_filters(ui):
    path = f"/ui/pipelines/{ui.pipeline_id()}"
    all_ids = ui.ids_by(path)

    by_stage = ui.page(path, stage=f"{ui.facts.pipeline}/prepare")
    failed = table_rows(ui.page(path, state="FAILED").by_id("executions"))
    airflow_word = ui.ids_by(path, state="failed")
    site_b = table_rows(ui.page(path, site="site-b").by_id("executions"))
    by_run = table_rows(ui.page(path, q="scheduled__2").by_id("executions"))
    by_uuid = table_rows(ui.page(path, q=ui.facts.failed_uuid[:8]).by_id("executions"))
    combined = ui.ids_by(path, stage=f"{ui.facts.pipeline}/train", state="COMPLETE", q="scheduled__1")

    assert {row[1] for row in table_rows(by_stage.by_id("executions"))} == {f"{ui.facts.pipeline}/prepare"}
    assert len(table_rows(by_stage.by_id("executions"))) == 3
    assert [(row[1], row[2]) for row in failed] == [(f"{ui.facts.pipeline}/train", "FAILED")]
    assert airflow_word == [int(failed[0][0])]
    assert [(row[1], row[4]) for row in site_b] == [(f"{ui.facts.pipeline}/prepare", "site-b")]
    assert sorted(row[7] for row in by_run) == ["scheduled__2", "scheduled__2"]
    assert [row[2] for row in by_uuid] == ["FAILED"]
    assert len(combined) == 1
    assert combined[0] in all_ids


def test_pipeline_filter_errors(ui):
    path = f"/ui/pipelines/{ui.pipeline_id()}"

    unknown_state = ui.page(path, 400, state="exploded")
    unknown_stage = ui.page(path, 400, stage="other/task")
    bad_cursor = ui.page(path, 400, before="x")
    bad_limit = ui.page(path, 400, limit=0)
    missing = ui.page("/ui/pipelines/987654", 404)

    assert "exploded" in unknown_state.by_id("error-message").text()
    assert "other/task" in unknown_stage.by_id("error-message").text()
    assert "before='x'" in bad_cursor.by_id("error-message").text()
    assert "limit=0" in bad_limit.by_id("error-message").text()
    assert "987654" in missing.by_id("error-message").text()


def test_keyset_pages_walk_both_ways(ui):
    path = f"/ui/pipelines/{ui.pipeline_id()}"
    everything = ui.ids_by(path)
    forward, pages, url = [], [], f"{path}?limit=4"
    with ui.client() as client:
        while url:
            page = parse(client.get(url).text)
            ids = [int(row.attrs["data-id"]) for row in page.by_id("executions").find_all("tr") if "data-id" in row.attrs]
            pages.append((ids, page.has_id("prev-page")))
            forward += ids
            url = page.by_id("next-page").attrs["href"] if page.has_id("next-page") else None
        last = page
        back = parse(client.get(last.by_id("prev-page").attrs["href"]).text)
    back_ids = [int(row.attrs["data-id"]) for row in back.by_id("executions").find_all("tr") if "data-id" in row.attrs]

    assert forward == everything
    assert [len(ids) for ids, _ in pages] == [4, 2]
    assert [has_previous for _, has_previous in pages] == [False, True]
    assert back_ids == everything[:4]
    assert not back.has_id("prev-page")
    assert parse_qs(urlsplit(back.by_id("next-page").attrs["href"]).query) == {"limit": ["4"],
                                                                                "before": [str(everything[3])]}


def test_filtered_pages_keep_filters(ui):
    path = f"/ui/pipelines/{ui.pipeline_id()}"
    first = ui.page(path, stage=f"{ui.facts.pipeline}/prepare", limit=2)
    link = first.by_id("next-page").attrs["href"]
    query = parse_qs(urlsplit(link).query)
    second = ui.page(link)

    assert query["stage"] == [f"{ui.facts.pipeline}/prepare"]
    assert [row[1] for row in table_rows(second.by_id("executions"))] == [f"{ui.facts.pipeline}/prepare"]
    assert not second.has_id("next-page")


# ---------------------------------------------------------------------------------------------------------
# Executions and compare


def _train_ids(ui: Ui) -> dict[str, int]:
    """The train executions by (run id, try), as 'scheduled__1/1'."""
    rows = table_rows(ui.page(f"/ui/pipelines/{ui.pipeline_id()}", stage=f"{ui.facts.pipeline}/train")
                      .by_id("executions"))
    return {f"{row[7]}/{row[5]}": int(row[0]) for row in rows}


def test_execution_page_sections(ui):
    ids = _train_ids(ui)
    page = ui.page(f"/ui/executions/{ids['scheduled__1/2']}")
    parameters = {row[0]: row[1] for row in table_rows(page.by_id("parameters"))}
    metrics = {row[0]: row[1] for row in table_rows(page.by_id("metrics"))}
    inputs = {link.text() for link in page.by_id("inputs").find_all("a", cls="artifact-link")}
    outputs = page.by_id("outputs").text()
    options = [option.attrs["value"] for option in page.by_id("compare-form").find_all("option")]

    assert parameters == {"max_depth": "5", "n_estimators": "100"}
    assert metrics == {"accuracy": "0.91", "loss": "0.2"}
    assert len(inputs) == 2
    assert "Model" in outputs
    assert "Metrics" in outputs
    assert ui.facts.environment_md5 in page.by_id("environment").text()
    assert "212" in page.by_id("environment").text()
    assert not page.has_id("error")
    assert sorted(int(value) for value in options) == sorted([ids["scheduled__1/1"], ids["scheduled__2/1"]])
    assert page.by_id("compare-form").attrs["action"] == "/ui/compare"


def test_failed_execution_shows_error(ui):
    with ui.client() as client:
        response = client.get(f"/ui/executions/{_train_ids(ui)['scheduled__1/1']}")
    page = parse(response.text)

    assert page.by_id("error").text() == "Error ValueError: <bad> input & more"
    assert "ValueError: &lt;bad&gt; input &amp; more" in response.text
    assert page.by_id("metrics").find_all("p", cls="empty")


def test_artifact_links_open_artifacts(ui):
    page = ui.page(f"/ui/executions/{_train_ids(ui)['scheduled__1/2']}")
    links = page.by_id("inputs").find_all("a", cls="artifact-link")
    targets = {ui.page(link.attrs["href"]).by_id("artifact-hash").text() for link in links}

    assert targets == {ui.facts.features_md5, ui.facts.environment_md5}


def test_compare_marks_differences(ui):
    ids = _train_ids(ui)
    page = ui.page("/ui/compare", a=ids["scheduled__1/2"], b=ids["scheduled__2/1"])
    rows = {row.attrs["data-key"]: row for row in page.by_id("compare").find_all("tr") if "data-key" in row.attrs}

    def cells(key: str) -> tuple[str, str]:
        return rows[key].find_all("td", cls="a")[0].text(), rows[key].find_all("td", cls="b")[0].text()

    assert sorted(rows) == ["accuracy", "loss", "max_depth", "n_estimators"]
    assert cells("n_estimators") == ("100", "200")
    assert cells("accuracy") == ("0.91", "0.93")
    assert {key for key, row in rows.items() if "differs" in row.attrs["class"].split()} == {"n_estimators",
                                                                                             "accuracy"}


def test_compare_errors(ui):
    ids = _train_ids(ui)
    prepare = ui.ids_by(f"/ui/pipelines/{ui.pipeline_id()}", stage=f"{ui.facts.pipeline}/prepare")[0]

    other_stage = ui.page("/ui/compare", 400, a=ids["scheduled__1/2"], b=prepare)
    missing = ui.page("/ui/compare", 404, a=ids["scheduled__1/2"], b=987654)
    invalid = ui.page("/ui/compare", 400, a="one", b=2)

    assert "same stage" in other_stage.by_id("error-message").text()
    assert "987654" in missing.by_id("error-message").text()
    assert "'one'" in invalid.by_id("error-message").text()


# ---------------------------------------------------------------------------------------------------------
# Artifacts and the graph


def _artifact_id(ui: Ui, md5: str) -> int:
    with ui.client() as client:
        response = client.get("/ui/search", params={"q": md5})
    assert response.status_code == 302, response.text[:500]
    return int(response.headers["location"].rsplit("/", 1)[1])


def test_artifact_page_facts(ui):
    page = ui.page(f"/ui/artifacts/{_artifact_id(ui, ui.facts.raw_md5)}")
    consumers = [row[0] for row in table_rows(page.by_id("consumed-by"))]
    producers = page.by_id("produced-by").find_all("a", cls="execution-link")

    assert page.by_id("artifact-hash").text() == ui.facts.raw_md5
    assert page.by_id("artifact-type").text() == "Dataset"
    assert page.by_id("artifact-git-commit").text() == "d" * 40
    assert page.by_id("artifact-url").text() == "file:///data/raw.csv"
    assert len(consumers) == 3
    assert producers == []
    assert page.by_id("lineage-graph").tag == "svg"
    assert not page.has_id("model-card")


def test_model_card(ui):
    page = ui.page(f"/ui/artifacts/{_artifact_id(ui, ui.facts.model_md5)}")
    card = page.by_id("model-card")
    metrics = {row.attrs["data-key"]: row.find_all("td")[-1].text()
               for row in page.by_id("model-metrics").find_all("tr") if "data-key" in row.attrs}
    training = {link.text() for link in page.by_id("training-inputs").find_all("a", cls="artifact-link")}

    assert card.by_id("model-framework").text() == "sklearn"
    assert card.by_id("model-type").text() == "RandomForestClassifier"
    assert card.by_id("model-name").text() == "churn"
    assert metrics == {"accuracy": "0.91", "loss": "0.2"}
    assert training == {f"/data/site-a/features.csv:{ui.facts.features_md5}",
                        f"/envs/freeze.txt:{ui.facts.environment_md5}"}
    assert [row[0] for row in table_rows(page.by_id("produced-by"))] == [str(_train_ids(ui)["scheduled__1/2"])]


def test_graph_json_up_and_down(ui):
    features = _artifact_id(ui, ui.facts.features_md5)
    with ui.client() as client:
        graph = client.get(f"/ui/api/artifacts/{features}/graph", params={"depth": 5}).json()
        shallow = client.get(f"/ui/api/artifacts/{features}/graph", params={"depth": 1}).json()
    kinds = {(node["kind"], node["type"]) for node in graph["nodes"]}
    focus = [node for node in graph["nodes"] if node["focus"]]
    keys = {node["key"] for node in graph["nodes"]}

    assert focus == [next(node for node in graph["nodes"] if node["key"] == f"artifact-{features}")]
    assert ("artifact", "Dataset") in kinds
    assert ("artifact", "Model") in kinds
    assert ("execution", f"{ui.facts.pipeline}/prepare") in kinds
    assert ("execution", f"{ui.facts.pipeline}/train") in kinds
    # Upstream: raw -> prepare -> features. Downstream: three train tries, a model, two metrics.
    assert sum(1 for node in graph["nodes"] if node["kind"] == "execution") == 4
    assert all(edge["source"] in keys and edge["target"] in keys for edge in graph["edges"])
    assert {edge["type"] for edge in graph["edges"]} == {"INPUT", "OUTPUT"}
    assert graph["truncated"] is False
    assert shallow["depth"] == 1
    assert len(shallow["nodes"]) == len(graph["nodes"])


def test_graph_json_errors(ui):
    with ui.client() as client:
        missing = client.get("/ui/api/artifacts/987654/graph")
        invalid = client.get("/ui/api/artifacts/abc/graph")
        too_deep = client.get("/ui/api/artifacts/1/graph", params={"depth": 500})

    assert missing.status_code == 404
    assert "987654" in missing.json()["detail"]
    assert invalid.status_code == 400
    assert too_deep.status_code == 400


def test_artifact_and_execution_not_found(ui):
    assert "987654" in ui.page("/ui/artifacts/987654", 404).by_id("error-message").text()
    assert "987654" in ui.page("/ui/executions/987654", 404).by_id("error-message").text()
    assert "'x1'" in ui.page("/ui/executions/x1", 400).by_id("error-message").text()


# ---------------------------------------------------------------------------------------------------------
# Search and the task instance lookup


def test_search_by_hash_name_and_uuid(ui):
    with ui.client() as client:
        by_hash = client.get("/ui/search", params={"q": ui.facts.model_md5[:10]})
        by_uuid = client.get("/ui/search", params={"q": ui.facts.failed_uuid})
    by_name = ui.page("/ui/search", q="features.csv")
    nothing = ui.page("/ui/search", q="no-such-thing-anywhere")
    wildcard = ui.page("/ui/search", q="%")

    assert by_hash.status_code == 302
    assert ui.page(by_hash.headers["location"]).by_id("artifact-hash").text() == ui.facts.model_md5
    assert by_uuid.status_code == 302
    assert "FAILED" in ui.page(by_uuid.headers["location"]).by_id("summary").text() or \
        ui.page(by_uuid.headers["location"]).find_all("span", cls="state-failed")
    assert len(by_name.by_id("search-results").find_all("tr", data_kind="artifact")) == 3
    assert nothing.has_id("no-results")
    assert wildcard.has_id("no-results")


def test_task_lookup(ui):
    ids = _train_ids(ui)
    dag_id = ui.facts.pipeline
    with ui.client() as client:
        exact = client.get("/ui/task", params={"dag_id": dag_id, "task_id": "train", "run_id": "scheduled__1",
                                                "map_index": -1, "try_number": 1})
        latest = client.get("/ui/task", params={"dag_id": dag_id, "task_id": "train", "run_id": "scheduled__1"})
    two_sites = ui.page("/ui/task", dag_id=dag_id, task_id="prepare", run_id="scheduled__1")
    not_yet = ui.page("/ui/task", 404, dag_id=dag_id, task_id="train", run_id="scheduled__9", try_number=1)
    incomplete = ui.page("/ui/task", 400, dag_id=dag_id, task_id="train")

    assert exact.status_code == 302
    assert exact.headers["location"] == f"/ui/executions/{ids['scheduled__1/1']}"
    assert latest.headers["location"] == f"/ui/executions/{ids['scheduled__1/2']}"
    assert sorted(row[4] for row in table_rows(two_sites.by_id("task-executions"))) == ["site-a", "site-b"]
    assert "has not reached the server yet" in not_yet.by_id("error-message").text()
    assert "sync DAG" in not_yet.by_id("error-message").text()
    assert "run_id" in incomplete.by_id("error-message").text()


def test_pages_send_security_headers(ui):
    with ui.client() as client:
        page = client.get("/ui/")
        script = client.get("/ui/static/graph.js")

    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert "'unsafe-inline'" not in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    assert script.status_code == 200
    assert "lineage-graph" in script.text
    assert "http" not in script.text.replace("http://www.w3.org/2000/svg", "")


# ---------------------------------------------------------------------------------------------------------
# Authentication


def test_pages_redirect_to_login_without_token(secured):
    with secured.client() as client:
        page = client.get("/ui/pipelines/1", params={"state": "FAILED"})
        graph = client.get("/ui/api/artifacts/1/graph")
        static = client.get("/ui/static/ui.css")
        login = client.get(page.headers["location"])

    assert page.status_code == 303
    assert page.headers["location"] == "/ui/login?next=%2Fui%2Fpipelines%2F1%3Fstate%3DFAILED"
    assert graph.status_code == 401
    assert "bearer token" in graph.json()["detail"]
    assert static.status_code == 200
    form = parse(login.text).by_id("login")
    assert form.find_all("input", type="hidden")[0].attrs["value"] == "/ui/pipelines/1?state=FAILED"


def test_login_sets_cookie_that_opens_pages(secured):
    with secured.client() as client:
        wrong = client.post("/ui/login", data={"token": "guess", "next": "/ui/"})
        right = client.post("/ui/login", data={"token": TOKEN, "next": "/ui/pipelines/1?state=FAILED"})
        cookie = right.cookies["cmf_token"]
        page = client.get("/ui/", cookies={"cmf_token": cookie})
        graph = client.get("/ui/api/artifacts/1/graph", cookies={"cmf_token": cookie})
        api = client.get("/api/pipelines", cookies={"cmf_token": cookie})
    # A new client, because the first one keeps the cookie that the login set.
    with secured.client() as client:
        forged = client.get("/ui/", cookies={"cmf_token": "0" * 64})

    set_cookie = right.headers["set-cookie"].lower()
    assert wrong.status_code == 401
    assert parse(wrong.text).by_id("login-error")
    assert right.status_code == 303
    assert right.headers["location"] == "/ui/pipelines/1?state=FAILED"
    assert "httponly" in set_cookie
    assert "samesite=strict" in set_cookie
    assert TOKEN not in set_cookie
    assert page.status_code == 200
    assert parse(page.text).find_all("tr", data_name="secured")
    assert graph.status_code == 200
    assert api.status_code == 401
    assert forged.status_code == 303


def test_bearer_header_opens_pages_and_api(secured):
    with secured.client(Authorization=f"Bearer {TOKEN}") as client:
        page = client.get("/ui/")
        api = client.get("/api/pipelines")

    assert page.status_code == 200
    assert api.status_code == 200
    assert [item["name"] for item in api.json()["pipelines"]] == ["secured"]


def test_login_never_redirects_off_site(secured):
    with secured.client() as client:
        targets = [client.post("/ui/login", data={"token": TOKEN, "next": target}).headers["location"]
                   for target in ("https://example.org/", "//example.org/ui/", "/api/pipelines", "/ui/../x")]

    assert targets[:3] == ["/ui/", "/ui/", "/ui/"]
    assert targets[3] == "/ui/../x"


def test_logout_clears_cookie(secured):
    with secured.client() as client:
        response = client.get("/ui/logout")

    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login"
    assert 'cmf_token=""' in response.headers["set-cookie"] or "max-age=0" in response.headers["set-cookie"].lower()


# ---------------------------------------------------------------------------------------------------------
# The schema check


def test_unknown_schema_version_is_reported(tmp_path, secured):
    copy = tmp_path / "copy.sqlite"
    # The backup API, because the store is in WAL mode and its newest pages are not in the main file.
    with sqlite3.connect(secured.store) as source, sqlite3.connect(copy) as target:
        source.backup(target)
        target.execute("UPDATE MLMDEnv SET schema_version = 11")
    database = ReadOnlyDatabase(str(copy))

    try:
        with pytest.raises(SchemaMismatch, match="schema version \\[11\\].*written for version 10"):
            database.query("SELECT COUNT(*) FROM Execution")
    finally:
        database.close()


def test_pushes_stay_visible_after_pages_are_read(ui):
    # The UI's SQLite reads run in other processes: a second SQLite library in the server process would drop
    # MLMD's file locks and hide the server's writes from every other process.
    from server_utils import open_store_for_test

    ui.page("/ui/")
    ui.page(f"/ui/pipelines/{ui.pipeline_id()}")
    document, _ = build_pipeline(f"later_{uuid.uuid4().hex[:6]}")
    _push(ui.base_url, document)
    store = open_store_for_test(ui.store)
    pipelines = {context.name for context in store.get_contexts_by_type("Parent_Context")}

    assert {ui.facts.pipeline, document.pipelines[0].name} <= pipelines
    assert ui.page("/ui/").find_all("tr", data_name=document.pipelines[0].name)
