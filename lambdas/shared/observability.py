"""Powertools singletons shared by every handler (service name from POWERTOOLS_SERVICE_NAME)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

logger = Logger()
tracer = Tracer()
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
