"""The web UI's read-only queries over MLMD's tables: pipelines, stages, pages of executions, artifacts, search.

Every method costs a fixed number of SQL statements, whatever the size of the store: the listing pages read
a page of ids through an index, then the properties of that page in one statement. Stage and pipeline counts
are one GROUP BY each. The SQL runs unchanged on SQLite, PostgreSQL and MySQL (see ``database.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from cmf_airflow.server.ui.database import ReadOnlyDatabase, Row
from cmf_airflow.server.ui.rows import (
    ARTIFACT_STATES,
    EXECUTION_STATES,
    INPUT_EVENT_TYPES,
    OUTPUT_EVENT_TYPES,
    ArtifactDetail,
    ArtifactRow,
    ExecutionDetail,
    ExecutionFilter,
    ExecutionPage,
    ExecutionRow,
    PipelineSummary,
    SearchHit,
    StageSummary,
    StateCount,
)

PIPELINE_TYPE = "Parent_Context"
STAGE_TYPE = "Pipeline_Stage"
# MLMD's Type.type_kind values.
_EXECUTION_KIND = 0
_ARTIFACT_KIND = 1
_CONTEXT_KIND = 2
# The execution properties a row of an executions table shows.
_ROW_PROPERTIES = ("airflow_run_id", "airflow_try_number", "airflow_map_index", "site", "duration_s",
                   "Git_End_Commit", "Git_Start_Commit", "Execution_uuid", "start_time")
_VALUE_COLUMNS = "name, is_custom_property, string_value, int_value, double_value, bool_value, proto_value, byte_value"
# The escape character of LIKE patterns. A backslash would need doubling in MySQL's string literals.
_LIKE_ESCAPE = "!"


class Catalog:
    """Read-only queries for the web UI's pages over one MLMD store."""

    def __init__(self, database: ReadOnlyDatabase) -> None:
        self._db = database

    @property
    def database(self) -> ReadOnlyDatabase:
        """The connections this catalog reads through."""
        return self._db

    # -----------------------------------------------------------------------------------------------------
    # Pipelines and stages

    def pipelines(self) -> list[PipelineSummary]:
        """Return every pipeline with its stage, execution and site counts, counts by state and last run."""
        pipelines = self._contexts_of_type(PIPELINE_TYPE)
        if not pipelines:
            return []
        ids = [context_id for context_id, _ in pipelines]
        marks = _marks(ids)
        stage_counts = dict(self._db.query(
            f"SELECT parent_context_id, COUNT(*) FROM ParentContext WHERE parent_context_id IN ({marks}) "
            "GROUP BY parent_context_id", ids))
        states = self._state_counts(ids)
        last_updates = dict(self._db.query(
            "SELECT a.context_id, MAX(e.last_update_time_since_epoch) FROM Association a "
            f"JOIN Execution e ON e.id = a.execution_id WHERE a.context_id IN ({marks}) GROUP BY a.context_id", ids))
        latest = dict(self._db.query(
            f"SELECT context_id, MAX(execution_id) FROM Association WHERE context_id IN ({marks}) "
            "GROUP BY context_id", ids))
        site_counts = dict(self._db.query(
            "SELECT a.context_id, COUNT(DISTINCT p.string_value) FROM Association a "
            "JOIN ExecutionProperty p ON p.execution_id = a.execution_id AND p.name = 'site' "
            f"AND p.is_custom_property = ? WHERE a.context_id IN ({marks}) GROUP BY a.context_id", [True, *ids]))
        run_ids = self._property_values(list(latest.values()), "airflow_run_id")

        summaries = []
        for context_id, name in pipelines:
            counts = states.get(context_id, ())
            summaries.append(PipelineSummary(
                id=context_id,
                name=name,
                stage_count=int(stage_counts.get(context_id, 0)),
                execution_count=sum(item.count for item in counts),
                site_count=int(site_counts.get(context_id, 0)),
                states=tuple(counts),
                last_update_ms=_int_or_none(last_updates.get(context_id)),
                last_run_id=run_ids.get(latest.get(context_id)),
            ))
        return summaries

    def pipeline(self, pipeline_id: int) -> tuple[str, list[StageSummary]] | None:
        """Return a pipeline's name and its stages with their counts by state, or None if it does not exist."""
        found = self._db.query(
            "SELECT c.name FROM Context c JOIN Type t ON t.id = c.type_id WHERE c.id = ? AND t.name = ? "
            "AND t.type_kind = ?", [pipeline_id, PIPELINE_TYPE, _CONTEXT_KIND])
        if not found:
            return None
        stages = self._db.query(
            "SELECT c.id, c.name FROM ParentContext p JOIN Context c ON c.id = p.context_id "
            "WHERE p.parent_context_id = ? ORDER BY c.name", [pipeline_id])
        states = self._state_counts([stage_id for stage_id, _ in stages])
        summaries = [
            StageSummary(stage_id, name, sum(item.count for item in states.get(stage_id, ())),
                         tuple(states.get(stage_id, ())))
            for stage_id, name in stages
        ]
        return found[0][0], summaries

    def sites(self) -> list[str]:
        """Return the site names that executions in the store carry, sorted."""
        rows = self._db.query(
            "SELECT DISTINCT string_value FROM ExecutionProperty WHERE name = 'site' AND is_custom_property = ? "
            "AND string_value IS NOT NULL ORDER BY string_value", [True])
        return [row[0] for row in rows]

    def stage_by_name(self, name: str) -> int | None:
        """Return the id of the stage context named ``name`` (``<dag_id>/<task_id>``), or None."""
        rows = self._db.query(
            "SELECT c.id FROM Context c JOIN Type t ON t.id = c.type_id WHERE c.name = ? AND t.name = ? "
            "AND t.type_kind = ?", [name, STAGE_TYPE, _CONTEXT_KIND])
        return rows[0][0] if rows else None

    # -----------------------------------------------------------------------------------------------------
    # Executions

    def execution_page(
        self,
        pipeline_id: int,
        filters: ExecutionFilter,
        limit: int,
        *,
        before: int | None = None,
        after: int | None = None,
    ) -> ExecutionPage:
        """Return one page of a pipeline's executions, newest (highest id) first.

        Keyset pagination: ``before`` returns the executions older than that id, ``after`` the newest ones
        newer than it, so a deep page costs what the first page costs.
        """
        context_id = filters.stage_id if filters.stage_id is not None else pipeline_id
        where, parameters = self._filter_clause(context_id, filters)
        if after is not None:
            ids = self._page_ids(where + " AND a.execution_id > ?", [*parameters, after], "ASC", limit + 1)
            has_newer = len(ids) > limit
            ids = list(reversed(ids[:limit]))
            has_older = bool(ids) and self._exists(where + " AND a.execution_id < ?", [*parameters, ids[-1]])
        else:
            extra, extra_parameters = ("", []) if before is None else (" AND a.execution_id < ?", [before])
            ids = self._page_ids(where + extra, [*parameters, *extra_parameters], "DESC", limit + 1)
            has_older = len(ids) > limit
            ids = ids[:limit]
            has_newer = bool(ids) and before is not None and self._exists(
                where + " AND a.execution_id > ?", [*parameters, ids[0]])
        rows = self.execution_rows(ids)
        return ExecutionPage(
            rows=tuple(rows),
            next_before=ids[-1] if has_older and ids else None,
            previous_after=ids[0] if has_newer and ids else None,
        )

    def execution_rows(self, ids: Sequence[int]) -> list[ExecutionRow]:
        """Return the table rows of the executions ``ids``, in the order given, leaving out unknown ids."""
        if not ids:
            return []
        marks = _marks(ids)
        executions = self._db.query(
            f"SELECT e.id, t.name, e.last_known_state, e.name FROM Execution e JOIN Type t ON t.id = e.type_id "
            f"WHERE e.id IN ({marks})", list(ids))
        properties = self._properties("ExecutionProperty", "execution_id", ids, _ROW_PROPERTIES)
        by_id = {row[0]: row for row in executions}
        return [_execution_row(by_id[item], properties.get(item, {})) for item in ids if item in by_id]

    def execution(self, execution_id: int) -> ExecutionDetail | None:
        """Return an execution with its properties, pipeline, stage, inputs and outputs, or None."""
        found = self._db.query(
            "SELECT e.id, t.name, e.last_known_state, e.name, e.type_id FROM Execution e "
            "JOIN Type t ON t.id = e.type_id WHERE e.id = ?", [execution_id])
        if not found:
            return None
        properties = self._properties("ExecutionProperty", "execution_id", [execution_id])
        values = properties.get(execution_id, {})
        row = _execution_row(found[0][:4], values)
        contexts = self._db.query(
            "SELECT c.id, c.name, t.name FROM Association a JOIN Context c ON c.id = a.context_id "
            "JOIN Type t ON t.id = c.type_id WHERE a.execution_id = ?", [execution_id])
        pipeline = next(((context_id, name) for context_id, name, kind in contexts if kind == PIPELINE_TYPE), None)
        stage = next((context_id for context_id, _, kind in contexts if kind == STAGE_TYPE), None)

        events = self._db.query("SELECT artifact_id, type FROM Event WHERE execution_id = ? ORDER BY artifact_id",
                                [execution_id])
        artifacts = {item.id: item for item in self.artifacts([artifact_id for artifact_id, _ in events])}
        inputs = tuple(artifacts[a] for a, kind in events if kind in INPUT_EVENT_TYPES and a in artifacts)
        outputs = tuple(artifacts[a] for a, kind in events if kind in OUTPUT_EVENT_TYPES and a in artifacts)
        return ExecutionDetail(
            row=row,
            type_id=found[0][4],
            pipeline_id=pipeline[0] if pipeline else None,
            pipeline=pipeline[1] if pipeline else None,
            stage_id=stage,
            properties={name: value for (name, custom), value in values.items() if not custom},
            custom_properties={name: value for (name, custom), value in values.items() if custom},
            inputs=inputs,
            outputs=outputs,
        )

    def stage_execution_ids(self, stage_id: int, limit: int) -> list[int]:
        """Return the ids of the newest ``limit`` executions of a stage."""
        return self._page_ids("a.context_id = ?", [stage_id], "DESC", limit)

    def task_executions(self, stage_id: int, run_id: str, map_index: int, try_number: int | None) -> list[int]:
        """Return the ids of a task instance try's executions (one per site), the latest try when none given."""
        rows = self._db.query(
            "SELECT a.execution_id FROM Association a WHERE a.context_id = ? AND a.execution_id IN ("
            "SELECT execution_id FROM ExecutionProperty WHERE name = 'airflow_run_id' AND is_custom_property = ? "
            "AND string_value = ?) ORDER BY a.execution_id", [stage_id, True, run_id])
        ids = [row[0] for row in rows]
        names = ("airflow_map_index", "airflow_try_number")
        properties = self._properties("ExecutionProperty", "execution_id", ids, names)
        tries: dict[int, int | None] = {}
        for execution_id in ids:
            values = properties.get(execution_id, {})
            if _as_int(values.get(("airflow_map_index", True))) != map_index:
                continue
            tries[execution_id] = _as_int(values.get(("airflow_try_number", True)))
        if try_number is not None:
            return [execution_id for execution_id, number in tries.items() if number == try_number]
        known = [number for number in tries.values() if number is not None]
        latest = max(known) if known else None
        return [execution_id for execution_id, number in tries.items() if number == latest]

    # -----------------------------------------------------------------------------------------------------
    # Artifacts and events

    def artifacts(self, ids: Sequence[int]) -> list[ArtifactRow]:
        """Return the artifacts ``ids`` with all their properties, in the order given, leaving out unknown ids."""
        if not ids:
            return []
        rows = self._db.query(
            "SELECT a.id, t.name, a.name, a.uri, a.state, a.create_time_since_epoch FROM Artifact a "
            f"JOIN Type t ON t.id = a.type_id WHERE a.id IN ({_marks(ids)})", list(ids))
        properties = self._properties("ArtifactProperty", "artifact_id", ids)
        by_id = {}
        for artifact_id, type_name, name, uri, state, created in rows:
            values = properties.get(artifact_id, {})
            by_id[artifact_id] = ArtifactRow(
                id=artifact_id, type=type_name, name=name or "", uri=uri or "",
                state=ARTIFACT_STATES.get(state or 0, str(state)), create_time_ms=int(created or 0),
                properties={key: value for (key, custom), value in values.items() if not custom},
                custom_properties={key: value for (key, custom), value in values.items() if custom},
            )
        return [by_id[item] for item in ids if item in by_id]

    def artifact(self, artifact_id: int, limit: int) -> ArtifactDetail | None:
        """Return an artifact with its newest ``limit`` producers and consumers, or None."""
        found = self.artifacts([artifact_id])
        if not found:
            return None
        counts = dict(self._db.query(
            "SELECT type, COUNT(*) FROM Event WHERE artifact_id = ? GROUP BY type", [artifact_id]))
        producers = self._event_execution_ids(artifact_id, OUTPUT_EVENT_TYPES, limit)
        consumers = self._event_execution_ids(artifact_id, INPUT_EVENT_TYPES, limit)
        return ArtifactDetail(
            artifact=found[0],
            producers=tuple(self.execution_rows(producers)),
            consumers=tuple(self.execution_rows(consumers)),
            producer_count=sum(int(counts.get(kind, 0)) for kind in OUTPUT_EVENT_TYPES),
            consumer_count=sum(int(counts.get(kind, 0)) for kind in INPUT_EVENT_TYPES),
        )

    def events_of_artifacts(self, ids: Sequence[int], types: Sequence[int], limit: int) -> list[Row]:
        """Return up to ``limit`` (artifact_id, execution_id, type) events of ``types`` on the artifacts ``ids``.

        The newest executions come first, so a widely used artifact is cut at its oldest consumers.
        """
        if not ids:
            return []
        return self._db.query(
            f"SELECT artifact_id, execution_id, type FROM Event WHERE artifact_id IN ({_marks(ids)}) "
            f"AND type IN ({_marks(types)}) ORDER BY execution_id DESC LIMIT ?", [*ids, *types, limit])

    def events_of_executions(self, ids: Sequence[int], types: Sequence[int], limit: int) -> list[Row]:
        """Return up to ``limit`` (artifact_id, execution_id, type) events of ``types`` of the executions ``ids``."""
        if not ids:
            return []
        return self._db.query(
            f"SELECT artifact_id, execution_id, type FROM Event WHERE execution_id IN ({_marks(ids)}) "
            f"AND type IN ({_marks(types)}) ORDER BY artifact_id DESC LIMIT ?", [*ids, *types, limit])

    def artifact_labels(self, ids: Sequence[int]) -> dict[int, tuple[str, str, str]]:
        """Return (type, name, uri) of each artifact in ``ids``, without properties."""
        if not ids:
            return {}
        rows = self._db.query(
            "SELECT a.id, t.name, a.name, a.uri FROM Artifact a JOIN Type t ON t.id = a.type_id "
            f"WHERE a.id IN ({_marks(ids)})", list(ids))
        return {row[0]: (row[1], row[2] or "", row[3] or "") for row in rows}

    def execution_labels(self, ids: Sequence[int]) -> dict[int, tuple[str, str]]:
        """Return (stage, state) of each execution in ``ids``."""
        if not ids:
            return {}
        rows = self._db.query(
            "SELECT e.id, t.name, e.last_known_state FROM Execution e JOIN Type t ON t.id = e.type_id "
            f"WHERE e.id IN ({_marks(ids)})", list(ids))
        return {row[0]: (row[1], EXECUTION_STATES.get(row[2] or 0, str(row[2]))) for row in rows}

    # -----------------------------------------------------------------------------------------------------
    # Search

    def search(self, text: str, limit: int) -> list[SearchHit]:
        """Find artifacts by hash (uri prefix) or name (substring), and executions by uuid (prefix).

        Returns at most ``limit`` hits of each kind.
        """
        text = text.strip()
        if not text:
            return []
        prefix = _like_escape(text) + "%"
        substring = "%" + _like_escape(text) + "%"
        escape = f" ESCAPE '{_LIKE_ESCAPE}'"
        artifact_rows = self._db.query(
            "SELECT a.id, t.name, a.name, a.uri FROM Artifact a JOIN Type t ON t.id = a.type_id "
            f"WHERE a.uri LIKE ?{escape} OR a.name LIKE ?{escape} ORDER BY a.id DESC LIMIT ?",
            [prefix, substring, limit])
        execution_ids = [row[0] for row in self._db.query(
            "SELECT execution_id FROM ExecutionProperty WHERE name = 'Execution_uuid' AND is_custom_property = ? "
            f"AND string_value LIKE ?{escape} ORDER BY execution_id DESC LIMIT ?", [False, prefix.lower(), limit])]
        execution_ids += [row[0] for row in self._db.query(
            "SELECT id FROM Execution WHERE name = ? ORDER BY id DESC LIMIT ?", [text, limit])
            if row[0] not in execution_ids]

        hits = [SearchHit("artifact", artifact_id, name or uri, f"{type_name} {uri}")
                for artifact_id, type_name, name, uri in artifact_rows]
        for row in self.execution_rows(execution_ids[:limit]):
            hits.append(SearchHit("execution", row.id, row.execution_uuid, f"{row.stage} {row.state}"))
        return hits

    # -----------------------------------------------------------------------------------------------------
    # Helpers

    def _contexts_of_type(self, type_name: str) -> list[Row]:
        return self._db.query(
            "SELECT c.id, c.name FROM Context c JOIN Type t ON t.id = c.type_id WHERE t.name = ? "
            "AND t.type_kind = ? ORDER BY c.id", [type_name, _CONTEXT_KIND])

    def _state_counts(self, context_ids: Sequence[int]) -> dict[int, list[StateCount]]:
        if not context_ids:
            return {}
        rows = self._db.query(
            "SELECT a.context_id, e.last_known_state, COUNT(*) FROM Association a "
            f"JOIN Execution e ON e.id = a.execution_id WHERE a.context_id IN ({_marks(context_ids)}) "
            "GROUP BY a.context_id, e.last_known_state ORDER BY a.context_id, e.last_known_state", list(context_ids))
        counts: dict[int, list[StateCount]] = {}
        for context_id, state, count in rows:
            counts.setdefault(context_id, []).append(
                StateCount(EXECUTION_STATES.get(state or 0, str(state)), int(count)))
        return counts

    def _filter_clause(self, context_id: int, filters: ExecutionFilter) -> tuple[str, list[Any]]:
        clauses = ["a.context_id = ?"]
        parameters: list[Any] = [context_id]
        if filters.state is not None:
            clauses.append("e.last_known_state = ?")
            parameters.append(filters.state)
        if filters.site:
            clauses.append("a.execution_id IN (SELECT execution_id FROM ExecutionProperty WHERE name = 'site' "
                           "AND is_custom_property = ? AND string_value = ?)")
            parameters += [True, filters.site]
        if filters.query:
            # A run id matches exactly, an Execution_uuid by prefix: both go through the property index.
            clauses.append(
                "(a.execution_id IN (SELECT execution_id FROM ExecutionProperty WHERE name = 'airflow_run_id' "
                "AND is_custom_property = ? AND string_value = ?) OR a.execution_id IN (SELECT execution_id "
                "FROM ExecutionProperty WHERE name = 'Execution_uuid' AND is_custom_property = ? "
                f"AND string_value LIKE ? ESCAPE '{_LIKE_ESCAPE}'))")
            parameters += [True, filters.query, False, _like_escape(filters.query.lower()) + "%"]
        return " AND ".join(clauses), parameters

    def _page_ids(self, where: str, parameters: list[Any], order: str, limit: int) -> list[int]:
        rows = self._db.query(
            f"SELECT a.execution_id FROM Association a JOIN Execution e ON e.id = a.execution_id WHERE {where} "
            f"ORDER BY a.execution_id {order} LIMIT ?", [*parameters, limit])
        return [row[0] for row in rows]

    def _exists(self, where: str, parameters: list[Any]) -> bool:
        return bool(self._page_ids(where, parameters, "ASC", 1))

    def _event_execution_ids(self, artifact_id: int, types: Sequence[int], limit: int) -> list[int]:
        rows = self._db.query(
            f"SELECT execution_id FROM Event WHERE artifact_id = ? AND type IN ({_marks(types)}) "
            "ORDER BY execution_id DESC LIMIT ?", [artifact_id, *types, limit])
        return [row[0] for row in rows]

    def _property_values(self, execution_ids: list[int], name: str) -> dict[int, Any]:
        properties = self._properties("ExecutionProperty", "execution_id", execution_ids, (name,))
        return {key: values.get((name, True), values.get((name, False))) for key, values in properties.items()}

    def _properties(
        self, table: str, key: str, ids: Sequence[int], names: Iterable[str] | None = None
    ) -> dict[int, dict[tuple[str, bool], Any]]:
        """Return the properties of ``ids`` as {id: {(name, is_custom): value}}, only ``names`` when given."""
        if not ids:
            return {}
        sql = f"SELECT {key}, {_VALUE_COLUMNS} FROM {table} WHERE {key} IN ({_marks(ids)})"
        parameters: list[Any] = list(ids)
        if names is not None:
            names = list(names)
            sql += f" AND name IN ({_marks(names)})"
            parameters += names
        result: dict[int, dict[tuple[str, bool], Any]] = {}
        for row in self._db.query(sql, parameters):
            result.setdefault(row[0], {})[(row[1], bool(row[2]))] = _value(row[3:])
        return result


def _execution_row(row: Row, values: dict[tuple[str, bool], Any]) -> ExecutionRow:
    execution_id, stage, state, name = row

    def custom(key: str) -> Any:
        return values.get((key, True))

    duration = custom("duration_s")
    return ExecutionRow(
        id=execution_id,
        stage=stage,
        state=EXECUTION_STATES.get(state or 0, str(state)),
        execution_uuid=str(values.get(("Execution_uuid", False)) or name or ""),
        run_id=_as_str(custom("airflow_run_id")),
        try_number=_as_int(custom("airflow_try_number")),
        map_index=_as_int(custom("airflow_map_index")),
        site=_as_str(custom("site")),
        duration_s=float(duration) if isinstance(duration, (int, float)) and not isinstance(duration, bool) else None,
        git_commit=_as_str(values.get(("Git_End_Commit", False)) or values.get(("Git_Start_Commit", False))),
        start_time=_as_str(custom("start_time")),
    )


def _value(columns: Row) -> Any:
    string_value, int_value, double_value, bool_value, proto_value, byte_value = columns
    if string_value is not None:
        return string_value
    if int_value is not None:
        return int(int_value)
    if double_value is not None:
        return float(double_value)
    if bool_value is not None:
        return bool(bool_value)
    if proto_value is not None or byte_value is not None:
        return "(binary value)"
    return None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


def _as_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


def _like_escape(text: str) -> str:
    return (text.replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2).replace("%", _LIKE_ESCAPE + "%")
            .replace("_", _LIKE_ESCAPE + "_"))

