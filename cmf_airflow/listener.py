"""The task-lifecycle listener: turns Airflow's task hooks into CMF executions.

It runs inside the task's own process, so it must not fail or stall the task. Every error becomes one
warning in the task log, and every wait (store lock, git) has a time limit. The task's outcome is what it
would be without the plugin.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.listeners import hookimpl

from cmf_airflow import compat, conf
from cmf_airflow.artifacts import resolve
from cmf_airflow.hash_cache import HashCache
from cmf_airflow.model import ArtifactRecord, HashState, TaskOutcome, TaskRun
from cmf_airflow.provenance import git_info
from cmf_airflow.store import open_store, write_lock

if TYPE_CHECKING:
    from cmf_airflow.recorder import Recorder

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Started:
    inputs: list[ArtifactRecord]
    start_time: datetime


@dataclass(slots=True)
class _OpenStore:
    recorder: Recorder
    hash_cache: HashCache
    site: str


class CmfListener:
    """Records each task try as one CMF execution: inputs when it starts, outputs and state when it ends."""

    def __init__(self) -> None:
        self._open: dict[tuple[int, str], _OpenStore] = {}
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
            settings = conf.settings()
            if not settings.enabled or not compat.is_task_process_instance(task_instance):
                return
            if not _dag_selected(task_instance.dag_id, settings):
                return
            record(task_instance, settings)
        except Exception as error:
            # One warning per task try: a broken store fails the start and the end hook alike.
            key = _try_key(task_instance)
            if key in self._warned:
                logger.debug("CMF lineage not recorded at %s of %s: %s", hook, key, error)
                return
            self._warned.add(key)
            logger.warning("CMF lineage not recorded for task try %s (%s hook): %s", key, hook, error)

    def _record_start(self, task_instance: Any, settings: conf.Settings) -> None:
        facts = compat.task_facts(task_instance, with_params=True)
        opened = self._store_for_process(settings)
        inputs = self._resolve_all(facts.inlets, "inlet", opened)
        # Airflow 2's dag.test() leaves start_date unset, so the hook's own clock replaces it.
        run = _task_run(facts, opened.site, facts.start_date or datetime.now(timezone.utc))
        git = git_info(facts.dag_file)

        with write_lock(settings.store, settings.lock_timeout):
            execution = opened.recorder.record_start(run, inputs, git)
        self._started[_try_key(task_instance)] = _Started(inputs=inputs, start_time=run.start_time)
        logger.debug("CMF execution %s started for %s", execution.id, run.stage_name)

    def _record_end(
        self, task_instance: Any, settings: conf.Settings, state: str | None, error: Any = None
    ) -> None:
        # When the start hook could not record, the inputs and params go along now and the execution is
        # created whole.
        started = self._started.pop(_try_key(task_instance), None)
        inputs = started.inputs if started is not None else None
        facts = compat.task_facts(task_instance, with_params=started is None)
        opened = self._store_for_process(settings)
        outputs = self._resolve_all(facts.outlets, "outlet", opened)
        unrecorded_inputs = [] if inputs is not None else self._resolve_all(facts.inlets, "inlet", opened)
        run = _task_run(facts, opened.site, started.start_time if started is not None else facts.start_date)
        git = git_info(facts.dag_file)
        outcome = TaskOutcome(
            state=state or _failure_state(facts),
            end_time=datetime.now(timezone.utc),
            error=compat.error_text(error),
        )

        with write_lock(settings.store, settings.lock_timeout):
            execution = opened.recorder.record_end(run, outcome, outputs, git, unrecorded_inputs)
        inputs = inputs if inputs is not None else unrecorded_inputs
        logger.info(
            "CMF recorded execution %s: %s try %s %s, %d input(s), %d output(s), store %s",
            execution.id,
            run.stage_name,
            run.try_number,
            outcome.state,
            len(inputs),
            len(outputs),
            settings.store,
        )

    def _resolve_all(self, entities: tuple[Any, ...], role: str, opened: _OpenStore) -> list[ArtifactRecord]:
        records = [resolve(entity, opened.hash_cache) for entity in entities]
        for record in records:
            if record.hash_state is HashState.MISSING:
                logger.warning("cannot hash %s %s: file does not exist (recorded as missing)", role, record.path)
        return records

    def _store_for_process(self, settings: conf.Settings) -> _OpenStore:
        # Keyed by process id: an SQLite connection inherited across fork() must not be used by the child.
        key = (os.getpid(), settings.store)
        opened = self._open.get(key)
        if opened is not None and os.path.exists(settings.store):
            return opened

        # Imported here, not at the top: ML Metadata takes most of a second to import, and the scheduler and
        # API server load this plugin without ever recording.
        from cmf_airflow.recorder import Recorder

        recorder = Recorder(open_store(settings.store))
        site = settings.site
        if site is None:
            with write_lock(settings.store, settings.lock_timeout):
                site = recorder.site_id()
        opened = _OpenStore(recorder=recorder, hash_cache=HashCache(settings.hash_cache), site=site)
        self._open[key] = opened
        return opened


def _dag_selected(dag_id: str, settings: conf.Settings) -> bool:
    if any(fnmatch.fnmatchcase(dag_id, pattern) for pattern in settings.exclude_dags):
        return False
    included = settings.include_dags
    return not included or any(fnmatch.fnmatchcase(dag_id, pattern) for pattern in included)


def _task_run(facts: compat.TaskFacts, site: str, start_time: datetime | None) -> TaskRun:
    return TaskRun(
        site=site,
        dag_id=facts.dag_id,
        task_id=facts.task_id,
        run_id=facts.run_id,
        map_index=facts.map_index,
        try_number=facts.try_number,
        operator=facts.operator,
        hostname=facts.hostname,
        airflow_version=compat.AIRFLOW_VERSION,
        start_time=start_time,
        dag_file=facts.dag_file,
        params=facts.params,
    )


def _failure_state(facts: compat.TaskFacts) -> str:
    # The failure hook also fires for a try that Airflow will retry.
    if facts.state in ("up_for_retry", "failed"):
        return facts.state
    return "up_for_retry" if facts.try_number <= facts.max_tries else "failed"


def _try_key(task_instance: Any) -> str:
    parts = [getattr(task_instance, name, "?") for name in ("dag_id", "task_id", "run_id", "try_number")]
    map_index = getattr(task_instance, "map_index", -1)
    if map_index not in (-1, None):
        parts.insert(2, f"map {map_index}")
    return "/".join(str(part) for part in parts)


listener = CmfListener()
