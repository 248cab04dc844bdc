"""Powertools singletons shared by every handler (service name from POWERTOOLS_SERVICE_NAME)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit


class NoTracer:
    """Stands in for Powertools' Tracer when tracing is off: its decorators return the function unchanged, and the
    X-Ray SDK (about 0.2 s of every cold start) is never imported."""

    @staticmethod
    def capture_lambda_handler(handler: Callable[..., Any]) -> Callable[..., Any]:
        return handler

    @staticmethod
    def capture_method(method: Callable[..., Any]) -> Callable[..., Any]:
        return method


def tracing_on(environ: Mapping[str, str] = os.environ) -> bool:
    """False when ``POWERTOOLS_TRACE_DISABLED`` is true (the stack sets it false only with ``tracing`` and ``trace_aws_calls``)."""
    return environ.get("POWERTOOLS_TRACE_DISABLED", "false").strip().lower() not in ("true", "1")


logger = Logger()


TRACED_MODULES = ("botocore",)
"""What the X-Ray SDK patches: every AWS call of a function goes through botocore. Powertools' default patches every
library the SDK supports that it finds installed (``requests``, ``httplib``, ``sqlite3``...), importing each one
into the cold start for calls the functions never make."""


def _tracer() -> Any:
    if not tracing_on():
        return NoTracer()
    from aws_lambda_powertools import Tracer

    try:
        return Tracer(auto_patch=False)  # patched by trace_aws_calls, from shared.clients
    except Exception:  # tracing must never keep a function from starting (a broken AWS config, say)  # noqa: BLE001
        return NoTracer()


def trace_aws_calls() -> None:
    """With tracing on, patch TRACED_MODULES so that every AWS call is an X-Ray subsegment. shared.clients (the only
    way the functions make clients) calls it when it is imported: a function that makes no AWS call (Confirm resume)
    neither patches nor imports botocore's client for it (about 0.5x of ``import boto3`` in its cold start)."""
    if isinstance(tracer, NoTracer):
        return
    try:
        tracer.patch(TRACED_MODULES)
    except Exception:  # as in _tracer: the calls go untraced rather than the function failing  # noqa: BLE001
        logger.exception("X-Ray patch failed; AWS calls are not traced")


tracer: Any = _tracer()
metrics = Metrics(namespace="Autostop")


def trigger_source(execution_input: Any) -> str:
    """``trigger.source`` of an execution input (``schedule``, ``s3-marker``, ``spot``...), or ``unknown``."""
    trigger = execution_input.get("trigger") if isinstance(execution_input, dict) else None
    source = trigger.get("source") if isinstance(trigger, dict) else None
    return str(source) if source else "unknown"


def count_evaluations(decisions: Mapping[str, int], *, trigger: str) -> None:
    """One ``Evaluations`` metric per decision (dimensions ``service``, ``decision``, ``trigger``; unit Count)."""
    for decision, count in decisions.items():
        emit("Evaluations", MetricUnit.Count, count, decision=decision, trigger=trigger)


def emit(name: str, unit: MetricUnit, value: float, **dimensions: str) -> None:
    """One metric with its own dimensions, flushed now as its own EMF line (Powertools ``EphemeralMetrics``: state
    of its own, unlike ``metrics``, and off like it when POWERTOOLS_METRICS_DISABLED is set)."""
    one = EphemeralMetrics(namespace=metrics.namespace)
    for key, val in dimensions.items():
        one.add_dimension(name=key, value=val)
    one.add_metric(name=name, unit=unit, value=value)
    one.flush_metrics()
