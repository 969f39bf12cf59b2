"""The server's web UI in headless Chromium, on lineage from two real runs of dags_examples/ml_pipeline.py.

The two runs differ in their ``epochs`` and ``alpha`` params. Both are pushed with the sync client to a real
server process on a loopback port, and every step of a test saves a screenshot under test-output/screenshots/.
The tests run under Airflow 3 only, because the pages do not depend on the Airflow version and a second pass
would only add CI time (the module took 46 s on a shared two-core machine).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser_utils import browser, page, screenshots  # noqa: F401 (pytest fixtures)
from conftest import REPO_ROOT, load_dag
from server_utils import running_server

from cmf_airflow.compat import AIRFLOW_V_3_0_PLUS

pytestmark = pytest.mark.skipif(
    not AIRFLOW_V_3_0_PLUS,
    reason="the web UI does not depend on the Airflow version, so its browser tests run under Airflow 3 only",
)

PIPELINE = "ml_pipeline"
FIRST_RUN_CONF = {"epochs": 8, "alpha": 0.0001}
SECOND_RUN_CONF = {"epochs": 4, "alpha": 0.001}
TOKEN = "browser-test-token"
GRAPH_READY = 'svg#lineage-graph[data-ready="true"]'


@dataclass(frozen=True)
class Lineage:
    """Ids on the server of what the two pipeline runs recorded."""

    run_ids: tuple[str, str]
    train_ids: tuple[int, int]
    model_ids: tuple[int, int]
    featurize_id: int
    raw_id: int
    raw_md5: str
    train_uuid: str


@dataclass(frozen=True)
class FilledServer:
    """A running server with both runs pushed, the local store they came from and their ids on the server."""

    url: str
    store: Path
    lineage: Lineage


def _run_pipeline(run_conf: dict[str, Any]) -> str:
    dag = load_dag(REPO_ROOT / "dags_examples" / f"{PIPELINE}.py", PIPELINE)
    dag_run = dag.test(run_conf=run_conf)
    assert str(dag_run.state) == "success", f"{PIPELINE} with {run_conf} ended {dag_run.state}"
    return dag_run.run_id


def _push(store: Path, url: str, token: str | None = None) -> None:
    from cmf_airflow.sync import CmfClient, push

    with CmfClient(url, token) as client:
        result = push(str(store), client)
    assert result.executions_sent == 10


def _read_lineage(url: str, run_ids: tuple[str, str], token: str | None = None) -> Lineage:
    """Find the ids of the runs' executions and artifacts through the server's JSON API."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url, headers=headers, timeout=30.0) as client:
        executions = client.get(f"/api/pipelines/{PIPELINE}/executions", params={"limit": 100}).json()["executions"]
        artifacts = client.get(f"/api/pipelines/{PIPELINE}/artifacts", params={"limit": 100}).json()["artifacts"]
        by_run = {
            (execution["type"].rsplit("/", 1)[1], execution["custom_properties"]["airflow_run_id"]): execution
            for execution in executions
        }
        train = tuple(by_run[("train", run_id)] for run_id in run_ids)
        models = {}
        for artifact in (a for a in artifacts if a["type"] == "Model"):
            upstream = client.get(f"/api/artifacts/{artifact['id']}/lineage", params={"depth": 1}).json()["upstream"]
            [producer] = upstream["executions"]
            models[producer["id"]] = artifact["id"]
    [raw] = [artifact for artifact in artifacts if artifact["name"].split(":")[0].endswith("raw/digits.csv")]
    return Lineage(
        run_ids=run_ids,
        train_ids=(train[0]["id"], train[1]["id"]),
        model_ids=(models[train[0]["id"]], models[train[1]["id"]]),
        featurize_id=by_run[("featurize", run_ids[0])]["id"],
        raw_id=raw["id"],
        raw_md5=raw["uri"],
        train_uuid=train[0]["properties"]["Execution_uuid"],
    )


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, tuple[str, str]]]:
    """Run ml_pipeline twice, with different params, into a fresh local store. Yields the store and run ids."""
    folder = tmp_path_factory.mktemp("browser")
    store = folder / "cmf" / "mlmd.sqlite"
    patch = pytest.MonkeyPatch()
    patch.setenv("AIRFLOW__CMF__STORE", str(store))
    patch.setenv("AIRFLOW__CMF__HASH_CACHE", str(folder / "cmf" / "hash_cache.sqlite"))
    patch.setenv("AIRFLOW__CMF__SITE", "browser-site")
    patch.setenv("AIRFLOW__CMF__ENABLED", "True")
    # The DAG file reads its data folder when it is imported, so each load uses this one.
    patch.setenv("ML_PIPELINE_DATA_DIR", str(folder / "data"))
    try:
        run_ids = (_run_pipeline(FIRST_RUN_CONF), _run_pipeline(SECOND_RUN_CONF))
        yield store, run_ids
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def server(pipeline_runs: tuple[Path, tuple[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[FilledServer]:
    """The server without a token, filled with both runs."""
    store, run_ids = pipeline_runs
    server_store = tmp_path_factory.mktemp("browser-server") / "server.sqlite"
    with running_server(str(server_store)) as url:
        _push(store, url)
        yield FilledServer(url, store, _read_lineage(url, run_ids))


def _node(kind: str, node_id: int) -> str:
    return f'{GRAPH_READY} g.node[data-kind="{kind}"][data-id="{node_id}"]'


def test_model_page_shows_card_and_graph(server, page, screenshots):
    lineage = server.lineage
    model_id = lineage.model_ids[0]

    page.goto(f"{server.url}/ui/artifacts/{model_id}")
    page.wait_for_selector(GRAPH_READY)
    screenshots.take(page, "model page")
    card = page.locator("#model-card")
    producers = page.locator("#produced-by a.execution-link")

    assert page.locator(f'{_node("artifact", model_id)}.focus').count() == 1
    assert page.locator(_node("artifact", lineage.raw_id)).count() == 1
    assert page.locator(_node("execution", lineage.featurize_id)).count() == 1
    assert "scikit-learn" in card.inner_text()
    assert "SGDClassifier" in card.inner_text()
    assert "digits-classifier" in card.inner_text()
    assert "f1_macro" in page.locator("#model-metrics").inner_text()
    assert "/data/features:" in page.locator("#training-inputs").inner_text()
    assert producers.count() == 1
    assert producers.first.get_attribute("href").endswith(f"/ui/executions/{lineage.train_ids[0]}")


def test_graph_zoom_buttons_change_the_view(server, page, screenshots):
    page.goto(f"{server.url}/ui/artifacts/{server.lineage.model_ids[0]}")
    page.wait_for_selector(GRAPH_READY)
    before = _graph_view(page)

    page.click("#zoom-in")
    zoomed = _graph_view(page)
    screenshots.take(page, "zoomed in")
    page.click("#zoom-reset")
    fitted = _graph_view(page)
    screenshots.take(page, "fitted")

    assert zoomed != before
    assert fitted != zoomed
    assert _nodes_outside_frame(page) == []


def _nodes_outside_frame(page: Any) -> list[str]:
    """Return the data-id of every graph node whose box is not wholly inside the svg's frame."""
    return page.eval_on_selector(
        "svg#lineage-graph",
        "svg => { const frame = svg.getBoundingClientRect();"
        " return [...svg.querySelectorAll('g.node')].filter(node => { const box = node.getBoundingClientRect();"
        " return box.left < frame.left - 1 || box.right > frame.right + 1 || box.top < frame.top - 1"
        " || box.bottom > frame.bottom + 1; }).map(node => node.dataset.kind + '-' + node.dataset.id); }",
    )


def _graph_view(page: Any) -> str:
    """Return what places the drawing in the svg: the viewBox and the transform of the graph's top group."""
    return page.eval_on_selector(
        "svg#lineage-graph",
        "svg => (svg.getAttribute('viewBox') || '') + '|' + "
        "((svg.querySelector(':scope > g') || svg).getAttribute('transform') || '')",
    )


def test_clicking_an_upstream_execution_opens_it(server, page, screenshots):
    lineage = server.lineage
    page.goto(f"{server.url}/ui/artifacts/{lineage.model_ids[0]}")
    page.wait_for_selector(GRAPH_READY)

    page.locator(_node("execution", lineage.featurize_id)).click()
    page.wait_for_url(re.compile(rf"/ui/executions/{lineage.featurize_id}$"))
    screenshots.take(page, "featurize execution")
    inputs = _artifact_links(page, "#inputs")
    outputs = _artifact_links(page, "#outputs")

    assert "ml_pipeline/featurize" in page.locator("body").inner_text()
    # The environment (the pip freeze of the task's Python) is an input of every execution, beside the data.
    assert len(inputs) == 2
    assert "/data/split:" in page.locator("#inputs").inner_text()
    assert len(outputs) == 1
    assert "/data/features:" in page.locator("#outputs").inner_text()
    assert page.locator("#error").count() == 0


def _artifact_links(page: Any, section: str) -> set[str]:
    """Return the distinct artifact pages that the links of one section of an execution page point to."""
    links = page.locator(f"{section} a.artifact-link")
    return {links.nth(index).get_attribute("href") for index in range(links.count())}


def test_compare_two_train_runs(server, page, screenshots):
    first, second = server.lineage.train_ids
    page.goto(f"{server.url}/ui/executions/{first}")
    screenshots.take(page, "first train execution")

    page.select_option("form#compare-form select[name=b]", str(second))
    page.locator("form#compare-form").locator("button, input[type=submit]").first.click()
    page.wait_for_url(re.compile(r"/ui/compare\?"))
    screenshots.take(page, "comparison")
    table = page.locator("table#compare")

    assert f"a={first}" in page.url
    assert f"b={second}" in page.url
    for key, a, b in (("epochs", "8", "4"), ("alpha", "0.0001", "0.001")):
        row = table.locator(f'tr[data-key="{key}"]')
        assert row.count() == 1, key
        assert "differs" in (row.get_attribute("class") or "").split(), key
        assert row.locator("td.a").inner_text().strip() == a
        assert row.locator("td.b").inner_text().strip() == b
    for metric in ("accuracy", "log_loss"):
        assert "differs" in (table.locator(f'tr[data-key="{metric}"]').get_attribute("class") or "").split(), metric
    same = table.locator('tr[data-key="seed"]')
    assert same.count() == 1
    assert "differs" not in (same.get_attribute("class") or "").split()


def test_search_by_hash_name_and_uuid(server, page, screenshots):
    lineage = server.lineage
    page.goto(f"{server.url}/ui/")

    page.fill("form#search input[name=q]", lineage.raw_md5[:10])
    page.press("form#search input[name=q]", "Enter")
    page.wait_for_url(re.compile(rf"/ui/artifacts/{lineage.raw_id}$"))
    screenshots.take(page, "hash prefix hit")
    page.fill("form#search input[name=q]", "model.pkl")
    page.press("form#search input[name=q]", "Enter")
    page.wait_for_url(re.compile(r"/ui/search\?"))
    screenshots.take(page, "two models listed")
    listed = {link.get_attribute("href") for link in page.locator("a").all()}
    page.fill("form#search input[name=q]", lineage.train_uuid)
    page.press("form#search input[name=q]", "Enter")
    page.wait_for_url(re.compile(rf"/ui/executions/{lineage.train_ids[0]}$"))
    screenshots.take(page, "uuid hit")

    for model_id in lineage.model_ids:
        assert any(href and href.endswith(f"/ui/artifacts/{model_id}") for href in listed), model_id


def test_airflow_link_opens_the_train_execution(server, page, screenshots, monkeypatch):
    from airflow.models.taskinstancekey import TaskInstanceKey

    from cmf_airflow.links import CmfLineageLink

    host, port = server.url.removeprefix("http://").split(":")
    monkeypatch.setenv("AIRFLOW_CONN_CMF_DEFAULT", json.dumps({"conn_type": "cmf", "host": host, "port": int(port)}))
    run_id = server.lineage.run_ids[1]
    link = CmfLineageLink().get_link(None, ti_key=TaskInstanceKey(PIPELINE, "train", run_id, 1, -1))

    page.goto(link)
    page.wait_for_url(re.compile(rf"/ui/executions/{server.lineage.train_ids[1]}$"))
    screenshots.take(page, "execution from airflow link")

    assert link.startswith(f"{server.url}/ui/task?")
    assert page.locator("#parameters").count() == 1


def test_pipeline_page_filters_by_stage(server, page, screenshots):
    page.goto(f"{server.url}/ui/")
    page.locator(f'a[href*="/ui/pipelines/"]:has-text("{PIPELINE}")').first.click()
    page.wait_for_selector("table#executions")
    screenshots.take(page, "pipeline page")
    all_rows = page.locator("table#executions tbody tr").count()

    page.select_option("form#filters [name=stage]", label=f"{PIPELINE}/train")
    page.locator("form#filters").locator("button, input[type=submit]").first.click()
    page.wait_for_url(re.compile(r"stage="))
    screenshots.take(page, "train executions")
    rows = page.locator("table#executions tbody tr")

    assert all_rows == 10
    assert rows.count() == 2
    assert {int(rows.nth(i).locator("td").first.inner_text()) for i in range(2)} == set(server.lineage.train_ids)


@pytest.fixture(scope="module")
def token_server(pipeline_runs: tuple[Path, tuple[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second server, which requires ``TOKEN``, filled with both runs."""
    store, _ = pipeline_runs
    server_store = tmp_path_factory.mktemp("browser-token-server") / "server.sqlite"
    with running_server(str(server_store), token=TOKEN) as url:
        _push(store, url, TOKEN)
        yield url


def test_login_form_guards_the_pages(token_server, page, screenshots):
    page.goto(f"{token_server}/ui/")
    page.wait_for_url(re.compile(r"/ui/login\?next="))
    screenshots.take(page, "login form")
    page.fill("form#login input[name=token]", "wrong-token")
    page.locator("form#login").locator("button, input[type=submit]").first.click()
    screenshots.take(page, "wrong token")
    rejected_url = page.url

    page.fill("form#login input[name=token]", TOKEN)
    page.locator("form#login").locator("button, input[type=submit]").first.click()
    page.wait_for_url(re.compile(r"/ui/$"))
    screenshots.take(page, "signed in")
    [cookie] = [c for c in page.context.cookies() if c["name"] == "cmf_token"]
    api_without_cookie = httpx.get(f"{token_server}/ui/api/artifacts/1/graph", timeout=30.0)

    assert "/ui/login" in rejected_url
    assert page.locator(f'a[href*="/ui/pipelines/"]:has-text("{PIPELINE}")').count() == 1
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert api_without_cookie.status_code == 401
    assert api_without_cookie.headers["content-type"].startswith("application/json")

    page.click("#sign-out")
    page.goto(f"{token_server}/ui/")
    page.wait_for_url(re.compile(r"/ui/login\?next="))
    assert [c for c in page.context.cookies() if c["name"] == "cmf_token"] == []
