"""The web UI's pages: pipelines, a pipeline's executions, an execution, a comparison, an artifact, search,
and the lookup of an Airflow task instance try.

The endpoints are plain functions, so FastAPI runs them in its thread pool and the SQL stays off the event
loop. Every page is rendered on the server and works without JavaScript, except the lineage graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from cmf_airflow.server.ui import present
from cmf_airflow.server.ui.catalog import Catalog
from cmf_airflow.server.ui.graph import artifact_graph
from cmf_airflow.server.ui.rows import EXECUTION_STATES, ExecutionFilter

_STATE_NUMBERS = {name: number for number, name in EXECUTION_STATES.items()}
# Airflow's words for the states the recorder maps to MLMD states, accepted in the state filter.
_AIRFLOW_STATES = {"success": "COMPLETE", "failed": "FAILED", "running": "RUNNING", "skipped": "CANCELED",
                   "up_for_retry": "FAILED"}


class PageError(Exception):
    """A request the UI cannot serve with its page, rendered as an error page with ``status``."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


@dataclass(frozen=True, slots=True)
class UiLimits:
    """Page sizes and graph bounds of the web UI."""

    page_size: int = 50
    max_page_size: int = 500
    graph_depth: int = 5
    max_graph_depth: int = 20
    max_graph_nodes: int = 300
    # Producers and consumers listed on an artifact page, and executions offered in the compare form.
    list_limit: int = 100
    search_limit: int = 50
    # Executions whose metrics a model card reads.
    model_card_executions: int = 10


class Pages:
    """Renders the UI's pages from one catalog."""

    def __init__(self, catalog: Catalog, templates: Jinja2Templates, limits: UiLimits) -> None:
        self._catalog = catalog
        self._templates = templates
        self._limits = limits

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        """Render ``template`` with ``context``."""
        return self._templates.TemplateResponse(request, template, context, status_code=status)

    # -----------------------------------------------------------------------------------------------------

    def pipelines(self, request: Request) -> Response:
        """Render the pipelines page: one row per pipeline with its counts and last run."""
        return self.render(request, "pipelines.html", pipelines=self._catalog.pipelines())

    def pipeline(self, request: Request, pipeline_id: str) -> Response:
        """Render a pipeline's stages and one page of its executions, filtered."""
        identifier = _id(pipeline_id, "pipeline")
        found = self._catalog.pipeline(identifier)
        if found is None:
            raise PageError(404, "Pipeline not found", f"The server has no pipeline with id {identifier}.")
        name, stages = found
        query = request.query_params
        stage_names = {stage.name: stage.id for stage in stages}
        filters = ExecutionFilter(
            stage_id=_stage_filter(query.get("stage"), stage_names, {stage.id for stage in stages}),
            state=_state_filter(query.get("state")),
            site=(query.get("site") or "").strip() or None,
            query=(query.get("q") or "").strip() or None,
        )
        limit = _bounded_int(query.get("limit"), "limit", self._limits.page_size, 1, self._limits.max_page_size)
        before = _optional_int(query.get("before"), "before")
        after = _optional_int(query.get("after"), "after")
        page = self._catalog.execution_page(identifier, filters, limit, before=before, after=after)

        active_filters = {key: query.get(key) for key in ("stage", "state", "site", "q") if query.get(key)}
        if "limit" in query:
            active_filters["limit"] = str(limit)
        base = f"/ui/pipelines/{identifier}?"
        return self.render(
            request, "pipeline.html",
            pipeline_id=identifier, name=name, stages=stages, page=page, filters=active_filters,
            states=[state for state in EXECUTION_STATES.values() if state != "UNKNOWN"],
            sites=self._catalog.sites(),
            next_url=base + urlencode({**active_filters, "before": page.next_before}) if page.next_before else None,
            previous_url=base + urlencode({**active_filters, "after": page.previous_after}) if page.previous_after else None,
        )

    def execution(self, request: Request, execution_id: str) -> Response:
        """Render an execution's parameters, environment, inputs, outputs, error, metrics and compare form."""
        identifier = _id(execution_id, "execution")
        detail = self._catalog.execution(identifier)
        if detail is None:
            raise PageError(404, "Execution not found", f"The server has no execution with id {identifier}.")
        others = []
        if detail.stage_id is not None:
            ids = self._catalog.stage_execution_ids(detail.stage_id, self._limits.list_limit + 1)
            others = self._catalog.execution_rows([item for item in ids if item != identifier][:self._limits.list_limit])
        error = detail.custom_properties.get("error")
        return self.render(
            request, "execution.html",
            detail=detail, row=detail.row, parameters=present.parameters(detail),
            facts=present.task_facts(detail), environments=present.environments(detail),
            package_lines=present.package_lines, metrics=present.metrics_sets(detail.outputs),
            error=error, failed=detail.row.state == "FAILED" or bool(error), others=others,
        )

    def compare(self, request: Request) -> Response:
        """Render two executions of one stage side by side: every parameter and metric, differences marked."""
        query = request.query_params
        first = _id(query.get("a") or "", "execution a")
        second = _id(query.get("b") or "", "execution b")
        a = self._catalog.execution(first)
        b = self._catalog.execution(second)
        for identifier, detail in ((first, a), (second, b)):
            if detail is None:
                raise PageError(404, "Execution not found", f"The server has no execution with id {identifier}.")
        assert a is not None and b is not None
        if a.type_id != b.type_id:
            raise PageError(400, "Executions of different stages",
                            f"Execution {first} is of stage {a.row.stage} and execution {second} of stage "
                            f"{b.row.stage}: compare two executions of the same stage.")
        rows = present.compare_rows(a, b)
        return self.render(request, "compare.html", a=a, b=b, rows=rows,
                           differences=sum(1 for row in rows if row.differs))

    def artifact(self, request: Request, artifact_id: str) -> Response:
        """Render an artifact's hash, type, commit, url, producers, consumers, lineage graph and model card."""
        identifier = _id(artifact_id, "artifact")
        detail = self._catalog.artifact(identifier, self._limits.list_limit)
        if detail is None:
            raise PageError(404, "Artifact not found", f"The server has no artifact with id {identifier}.")
        depth = _bounded_int(request.query_params.get("depth"), "depth", self._limits.graph_depth, 1,
                             self._limits.max_graph_depth)
        card = self._model_card(detail) if detail.artifact.type == "Model" else None
        return self.render(request, "artifact.html", detail=detail, artifact=detail.artifact, card=card,
                           depth=depth, max_depth=self._limits.max_graph_depth)

    def _model_card(self, detail: Any) -> dict[str, Any]:
        executions = [row.id for row in (*detail.producers, *detail.consumers)]
        metrics = []
        for execution_id in executions[:self._limits.model_card_executions]:
            found = self._catalog.execution(execution_id)
            if found is not None:
                metrics += [(found.row, item) for item in present.metrics_sets(found.outputs)]
        training = []
        for producer in detail.producers[:self._limits.model_card_executions]:
            found = self._catalog.execution(producer.id)
            if found is not None:
                training += [(found.row, item) for item in found.inputs]
        return {"metrics": metrics, "training_inputs": training}

    def graph(self, artifact_id: str, depth: str | None = None) -> Response:
        """Send the lineage graph of an artifact as JSON nodes and edges."""
        try:
            identifier = _id(artifact_id, "artifact")
            levels = _bounded_int(depth, "depth", self._limits.graph_depth, 1, self._limits.max_graph_depth)
        except PageError as error:
            return JSONResponse({"detail": error.message}, status_code=error.status)
        graph = artifact_graph(self._catalog, identifier, levels, self._limits.max_graph_nodes)
        if graph is None:
            return JSONResponse({"detail": f"artifact {identifier} not found on this server"}, status_code=404)
        return JSONResponse(graph)

    def search(self, request: Request) -> Response:
        """Search by artifact hash or name, or execution uuid. A single hit opens its page."""
        text = (request.query_params.get("q") or "").strip()
        hits = self._catalog.search(text, self._limits.search_limit) if text else []
        if len(hits) == 1:
            return RedirectResponse(f"/ui/{hits[0].kind}s/{hits[0].id}", status_code=302)
        return self.render(request, "search.html", q=text, hits=hits, limit=self._limits.search_limit)

    def task(self, request: Request) -> Response:
        """Find the execution of an Airflow task instance try, and open it or list the sites' executions."""
        query = request.query_params
        missing = [key for key in ("dag_id", "task_id", "run_id") if not query.get(key)]
        if missing:
            raise PageError(400, "Incomplete task instance",
                            f"The link misses {', '.join(missing)}: it needs dag_id, task_id and run_id, and may "
                            "give map_index and try_number.")
        dag_id, task_id, run_id = query["dag_id"], query["task_id"], query["run_id"]
        map_index = _bounded_int(query.get("map_index"), "map_index", -1, -1, 2**31 - 1)
        try_number = _optional_int(query.get("try_number"), "try_number")
        stage_id = self._catalog.stage_by_name(f"{dag_id}/{task_id}")
        ids = self._catalog.task_executions(stage_id, run_id, map_index, try_number) if stage_id else []
        if len(ids) == 1:
            return RedirectResponse(f"/ui/executions/{ids[0]}", status_code=302)
        described = f"{dag_id}.{task_id} in run {run_id}" + (f", map index {map_index}" if map_index >= 0 else "") \
            + (f", try {try_number}" if try_number is not None else "")
        if not ids:
            raise PageError(404, "Execution not on the server yet",
                            f"The execution of task {described} has not reached the server yet. The site's "
                            "sync DAG pushes it: look again after its next run.")
        return self.render(request, "task.html", described=described, rows=self._catalog.execution_rows(ids))


def build_page_router(pages: Pages) -> APIRouter:
    """Return the routes of the UI's pages and of its graph JSON."""
    router = APIRouter()
    router.add_api_route("/ui/", pages.pipelines, methods=["GET"], response_class=HTMLResponse)
    router.add_api_route("/ui/pipelines/{pipeline_id}", pages.pipeline, methods=["GET"], response_class=HTMLResponse)
    router.add_api_route("/ui/executions/{execution_id}", pages.execution, methods=["GET"],
                         response_class=HTMLResponse)
    router.add_api_route("/ui/compare", pages.compare, methods=["GET"], response_class=HTMLResponse)
    router.add_api_route("/ui/artifacts/{artifact_id}", pages.artifact, methods=["GET"], response_class=HTMLResponse)
    router.add_api_route("/ui/search", pages.search, methods=["GET"], response_class=HTMLResponse)
    router.add_api_route("/ui/task", pages.task, methods=["GET"], response_class=HTMLResponse)
    router.add_api_route("/ui/api/artifacts/{artifact_id}/graph", pages.graph, methods=["GET"])
    return router


# ---------------------------------------------------------------------------------------------------------
# Parameters


def _id(text: str, kind: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise PageError(400, "Invalid id", f"{text!r} is not a valid {kind} id: use the number shown on the pages.")
    return int(text)


def _optional_int(text: str | None, name: str) -> int | None:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise PageError(400, "Invalid parameter", f"{name}={text!r} is not a whole number.") from None


def _bounded_int(text: str | None, name: str, default: int, low: int, high: int) -> int:
    value = _optional_int(text, name)
    if value is None:
        return default
    if not low <= value <= high:
        raise PageError(400, "Invalid parameter", f"{name}={value} is out of range: use {low} to {high}.")
    return value


def _stage_filter(text: str | None, by_name: dict[str, int], ids: set[int]) -> int | None:
    if not text:
        return None
    if text in by_name:
        return by_name[text]
    if text.isdigit() and int(text) in ids:
        return int(text)
    raise PageError(400, "Unknown stage",
                    f"This pipeline has no stage {text!r}: choose one of {', '.join(sorted(by_name)) or 'none'}.")


def _state_filter(text: str | None) -> int | None:
    if not text:
        return None
    name = _AIRFLOW_STATES.get(text.lower(), text.upper())
    if name not in _STATE_NUMBERS:
        raise PageError(400, "Unknown state",
                        f"{text!r} is not an execution state: use one of {', '.join(_STATE_NUMBERS)}.")
    return _STATE_NUMBERS[name]
