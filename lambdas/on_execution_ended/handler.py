"""Lambda entry point of the execution-ended rule (Step Functions Execution Status Change of the lifecycle machine)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit

from on_execution_ended.logic import ENV_TOPIC_ARN, handle_ended
from shared.clients import client
from shared.observability import emit, logger, metrics, tracer
from shared.records import RunRecords
from shared.settings import settings

if TYPE_CHECKING:  # the type only: its module is no part of a cold start
    from aws_lambda_powertools.utilities.typing import LambdaContext


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    config = settings()
    result = handle_ended(
        event,
        records=RunRecords(client("dynamodb"), config.runs_table) if config.runs_table else None,
        sns=client("sns"),
        topic_arn=os.environ[ENV_TOPIC_ARN],
        state_machine_arn=config.state_machine_arn,
    )
    if result.ignored:
        logger.info("event ignored", extra=result.as_dict())
    metrics.add_metric(name="SilentEndingsNotified", unit="Count", value=int(result.notified))
    if result.outcome:  # an outcome no Record outcome counted: the same Outcomes metric (service, outcome)
        emit("Outcomes", MetricUnit.Count, 1, outcome=result.outcome)
    return result.as_dict()
