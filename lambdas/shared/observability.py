"""Powertools singletons shared by every handler (service name from POWERTOOLS_SERVICE_NAME)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="Autostop")


def trigger_source(execution_input: Any) -> str:
    """``trigger.source`` of an execution input (``schedule``, ``s3-marker``, ``spot``...), or ``unknown``."""
    trigger = execution_input.get("trigger") if isinstance(execution_input, dict) else None
    source = trigger.get("source") if isinstance(trigger, dict) else None
    return str(source) if source else "unknown"


def count_evaluations(decisions: Mapping[str, int], *, trigger: str) -> None:
    """One ``Evaluations`` metric per decision (dimensions ``service``, ``decision``, ``trigger``; unit Count).

    Each goes out as its own EMF line (Powertools ``single_metric``): one invocation may count several decisions.
    """
    for decision, count in decisions.items():
        with single_metric(name="Evaluations", unit=MetricUnit.Count, value=count, namespace=metrics.namespace) as metric:
            metric.add_dimension(name="decision", value=decision)
            metric.add_dimension(name="trigger", value=trigger)
