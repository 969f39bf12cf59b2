"""The task-lifecycle listener: turns Airflow's task hooks into CMF executions.

It runs inside the task's own process, so it must not fail or stall the task. Every error becomes one
warning in the task log, and every wait (store lock, database connection, git) has a time limit. When the
store is unavailable the record goes to the spool (cmf_airflow.spool) and is written later. The task's
outcome is what it would be without the plugin.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from airflow.listeners import hookimpl

from cmf_airflow import api, compat, conf
from cmf_airflow.artifacts import resolve, version_record
from cmf_airflow.environment import capture
from cmf_airflow.hash_cache import HashCache
from cmf_airflow.hooks.store import hash_cache, opened_site
from cmf_airflow.model import ArtifactRecord, EventKind, HashState, RecordKind, TaskOutcome, TaskRecord
from cmf_airflow.provenance import git_info
from cmf_airflow.spool import deliver

logger = logging.getLogger(__name__)

# DAGs with this tag are never recorded: the sync DAG carries it, so that pushing lineage adds none of its own.
NO_LINEAGE_TAG = "cmf:no-lineage"


@dataclass(frozen=True, slots=True)
class _Started:
    inputs: list[ArtifactRecord]
    start_time: datetime


class CmfListener:
    """Records each task try as one CMF execution: inputs when it starts, outputs and state when it ends."""

    def __init__(self) -> None:
        self._warned: set[str] = set()
        # What the start hook recorded, so the end hook neither hashes nor writes the inputs again.
        self._started: dict[str, _Started] = {}

    @hookimpl
    def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
        self._guarded("running", task_instance, self._record_start)

    @hookimpl
    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        self._guarded("success", task_instance, lambda ti, settings: self._record_end(ti, settings, "success"))

    @hookimpl
    def on_task_instance_skipped(self, previous_state: Any, task_instance: Any) -> None:
        # Airflow 3.2 and later call this when a running task skips itself. Earlier versions call no hook then,
        # so the execution keeps the RUNNING state that the start hook wrote.
        self._guarded("skipped", task_instance, lambda ti, settings: self._record_end(ti, settings, "skipped"))

    @hookimpl
    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any = None) -> None:
        self._guarded("failed", task_instance, lambda ti, settings: self._record_end(ti, settings, None, error))

    def _guarded(self, hook: str, task_instance: Any, record: Any) -> None:
        try:
            if compat.is_task_process_instance(task_instance):
                record(task_instance, conf.settings())
        except Exception as error:
            # One warning per task try: a broken store fails the start and the end hook alike.
            key = api.task_try_key(task_instance)
            if key in self._warned:
                logger.debug("CMF lineage not recorded at %s of %s: %s", hook, key, error)
                return
            self._warned.add(key)
            logger.warning("CMF lineage not recorded for task try %s (%s hook): %s", key, hook, error)

    def _record_start(self, task_instance: Any, settings: conf.Settings) -> None:
        if not _dag_selected(task_instance.dag_id, settings):
            return
        facts = compat.task_facts(task_instance, with_params=True)
        if NO_LINEAGE_TAG in facts.tags:
            return
        inputs = self._inputs(facts, hash_cache(settings), settings)
        # Airflow 2's dag.test() leaves start_date unset, so the hook's own clock replaces it.
        run = api.task_run(facts, opened_site(settings), facts.start_date or datetime.now(timezone.utc))
        git = git_info(facts.dag_file)

        events = tuple((EventKind.INPUT, record) for record in inputs)
        delivery = deliver(TaskRecord(RecordKind.START, run, git, events), settings)
        self._started[api.task_try_key(task_instance)] = _Started(inputs=inputs, start_time=run.start_time)
        if delivery.execution is not None:
            logger.debug("CMF execution %s started for %s", delivery.execution.id, run.stage_name)

    def _record_end(
        self, task_instance: Any, settings: conf.Settings, state: str | None, error: Any = None
    ) -> None:
        # A try that logged through cmf_airflow.current() is completed even when the listener would skip it.
        key = api.task_try_key(task_instance)
        logged = api.release(key)
        started = self._started.pop(key, None)
        if not logged and not _dag_selected(task_instance.dag_id, settings):
            return
        facts = compat.task_facts(task_instance, with_params=started is None)
        if not logged and NO_LINEAGE_TAG in facts.tags:
            return
        cache = hash_cache(settings)
        outputs = [self._versioned(record, settings) for record in self._resolve_all(facts.outlets, "outlet", cache)]
        # When the start hook could not record, the inputs and params go along now.
        inputs = self._inputs(facts, cache, settings) if started is None else []
        run = api.task_run(facts, opened_site(settings), started.start_time if started is not None else facts.start_date)
        git = git_info(facts.dag_file)
        outcome = TaskOutcome(
            state=state or _failure_state(facts), end_time=datetime.now(timezone.utc), error=compat.error_text(error)
        )

        events = tuple((EventKind.INPUT, r) for r in inputs) + tuple((EventKind.OUTPUT, r) for r in outputs)
        delivery = deliver(TaskRecord(RecordKind.END, run, git, events, outcome), settings)
        if delivery.execution is None or delivery.store is None:
            return  # spooled, and deliver logged where to
        input_count, output_count = delivery.store.recorder.event_counts(delivery.execution)
        logger.info(
            "CMF recorded execution %s: %s try %s %s, %d input(s), %d output(s), store %s",
            delivery.execution.id,
            run.stage_name,
            run.try_number,
            outcome.state,
            input_count,
            output_count,
            delivery.store.display_name,
        )

    def _inputs(self, facts: compat.TaskFacts, cache: HashCache, settings: conf.Settings) -> list[ArtifactRecord]:
        inputs = self._resolve_all(facts.inlets, "inlet", cache)
        if settings.capture_environment:
            try:
                inputs.append(capture(settings.data_folder).record())
            except OSError as error:
                logger.warning("cannot record the Python environment of %s: %s (recorded without it)",
                               facts.task_id, error)
        return inputs

    def _resolve_all(self, entities: tuple[Any, ...], role: str, cache: HashCache) -> list[ArtifactRecord]:
        records = [resolve(entity, cache) for entity in entities]
        for record in records:
            if record.hash_state is HashState.MISSING:
                logger.warning("cannot hash %s %s: file does not exist (recorded as missing)", role, record.path)
        return records

    def _versioned(self, record: ArtifactRecord, settings: conf.Settings) -> ArtifactRecord:
        # An outlet outside every DVC workspace is recorded unversioned, and so is one that DVC or git reject.
        if not settings.version_artifacts:
            return record
        try:
            return version_record(record, lock_timeout=settings.lock_timeout) or record
        except Exception as error:
            logger.warning("cannot version outlet %s with DVC: %s (recorded unversioned)", record.path, error)
            return record


def _dag_selected(dag_id: str, settings: conf.Settings) -> bool:
    if not settings.enabled or any(fnmatch.fnmatchcase(dag_id, pattern) for pattern in settings.exclude_dags):
        return False
    included = settings.include_dags
    return not included or any(fnmatch.fnmatchcase(dag_id, pattern) for pattern in included)


def _failure_state(facts: compat.TaskFacts) -> str:
    # The failure hook also fires for a try that Airflow will retry.
    if facts.state in ("up_for_retry", "failed"):
        return facts.state
    return "up_for_retry" if facts.try_number <= facts.max_tries else "failed"


listener = CmfListener()
