"""CMF operators for Python callables: ``CmfPythonOperator`` and the TaskFlow decorator ``@cmf_task``.

Both pass the task-level API object (``cmf_airflow.api.CmfExecution``) to the callable as its ``cmf``
keyword argument when the callable has a ``cmf`` parameter or ``**kwargs``, and commit the step metrics
that are still buffered when the callable returns or raises.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

from cmf_airflow import api, compat

logger = logging.getLogger(__name__)

CMF_ARGUMENT = "cmf"


def accepts_cmf(python_callable: Callable[..., Any]) -> bool:
    """Return whether a callable takes the ``cmf`` keyword argument, by name or through ``**kwargs``."""
    try:
        parameters = inspect.signature(python_callable).parameters.values()
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return False
    return any(
        parameter.kind is inspect.Parameter.VAR_KEYWORD
        or (parameter.name == CMF_ARGUMENT and parameter.kind is not inspect.Parameter.VAR_POSITIONAL)
        for parameter in parameters
    )


class _CmfCallableMixin:
    """Adds the ``cmf`` argument to a Python operator's callable and commits step metrics at the end."""

    python_callable: Callable[..., Any]

    def determine_kwargs(self, context: Mapping[str, Any]) -> Mapping[str, Any]:
        kwargs = dict(super().determine_kwargs(context))  # type: ignore[misc]
        if accepts_cmf(self.python_callable):
            kwargs[CMF_ARGUMENT] = api.for_task_instance(context["ti"])
        return kwargs

    def execute(self, context: Any, **kwargs: Any) -> Any:
        # Airflow 2 passes a keyword that its wrapper around the parent's execute checks, so it goes along.
        try:
            return super().execute(context, **kwargs)  # type: ignore[misc]
        finally:
            _commit_pending(context)


def _commit_pending(context: Any) -> None:
    # Buffered steps are worth keeping even when the callable failed, because they show how training went.
    task_instance = context["ti"]
    try:
        api.for_task_instance(task_instance).commit_pending_step_metrics()
    except Exception as error:
        logger.warning("cannot commit the step metrics of task try %s: %s", api.task_try_key(task_instance), error)


class CmfPythonOperator(_CmfCallableMixin, compat.PythonOperator):
    """A PythonOperator whose callable receives the CMF API object as its ``cmf`` keyword argument.

    ``def train(cmf): cmf.log_model("model.pkl", framework="sklearn", model_type="SGDClassifier")``
    """


class _CmfDecoratedOperator(_CmfCallableMixin, compat.PythonDecoratedOperator):
    """The operator behind ``@cmf_task``."""

    custom_operator_name = "@cmf_task"

    def __init__(self, *, python_callable: Callable[..., Any], op_args: Any = None, op_kwargs: Any = None,
                 **kwargs: Any) -> None:
        # The TaskFlow call binds the DAG author's arguments to the callable's signature. A ``cmf`` parameter
        # without a default would be reported missing there, so it gets a placeholder that execution replaces.
        op_kwargs = dict(op_kwargs or {})
        if _cmf_parameter_without_default(python_callable):
            op_kwargs.setdefault(CMF_ARGUMENT, None)
        super().__init__(python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, **kwargs)


def _cmf_parameter_without_default(python_callable: Callable[..., Any]) -> bool:
    try:
        parameter = inspect.signature(python_callable).parameters.get(CMF_ARGUMENT)
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is inspect.Parameter.empty


def cmf_task(python_callable: Callable[..., Any] | None = None, multiple_outputs: bool | None = None,
             **kwargs: Any) -> Any:
    """Turn a function into a TaskFlow task that receives the CMF API object as ``cmf``.

    Use it as ``@cmf_task`` or ``@cmf_task(retries=2, outlets=[...])``, with the arguments of ``@task``.
    """
    return compat.task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=multiple_outputs,
        decorated_operator_class=_CmfDecoratedOperator,
        **kwargs,
    )
