"""Lambda entry point of the Record outcome Task state."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit

from record_outcome.logic import finish, outcome_metrics
from shared.clients import client
from shared.notifications import Outlets, clean_reason
from shared.observability import logger, metrics, tracer
from shared.records import RunRecords
from shared.settings import settings

if TYPE_CHECKING:  # the type only: its module is no part of a cold start
    from aws_lambda_powertools.utilities.typing import LambdaContext

UNITS = {"Outcomes": MetricUnit.Count, "CheckpointBytes": MetricUnit.Bytes}


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    config = settings()
    state = event.get("state") or {}
    outlets = Outlets(sns=client("sns"), topic_arn=config.outcome_topic_arn or "", events=client("events"))
    count_outcome(state, event.get("started_at"))  # before the notification: an execution whose notification fails is still counted
    result = finish(
        state,
        str(event.get("execution_name", "")),
        str(event.get("execution_arn", "")),
        records=RunRecords(client("dynamodb"), config.require_runs_table()),
        ec2=client("ec2"),
        tag_prefix=config.tag_prefix,
        outlets=outlets,
    )
    logger.info("recorded", extra={"outcome": result.get("outcome"), "record": result.get("record")})
    return result


def count_outcome(state: dict[str, Any], started_at: str | None) -> None:
    """The outcome's metrics (:func:`outcome_metrics`; ``started_at``: the execution's start, ISO 8601) on this
    invocation's Powertools ``metrics``."""
    result = {**(state.get("result") or {}), "reason": clean_reason(str((state.get("result") or {}).get("reason", "")))}
    dims, values = outcome_metrics(state, result, started_at, datetime.now(UTC))
    metrics.add_dimension(name="outcome", value=dims["outcome"])  # with service: what the alarms watch
    metrics.add_dimensions(**dims)  # outcome × reason class × trigger: what the dashboard breaks down
    for name, value in values.items():
        metrics.add_metric(name=name, unit=UNITS.get(name, MetricUnit.Seconds), value=value)
