"""Lambda entry point of on_status_event: SSM command status and EC2 state-change events complete waiting tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from on_status_event.logic import handle
from shared.clients import client
from shared.observability import logger, metrics, tracer
from shared.settings import settings
from shared.waiters import Waiters

if TYPE_CHECKING:  # the type only: its module is no part of a cold start
    from aws_lambda_powertools.utilities.typing import LambdaContext


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    waiters = Waiters(client("dynamodb"), settings().require_runs_table())
    result = handle(event, ssm=client("ssm"), sfn=client("stepfunctions"), waiters=waiters)
    logger.info("status event", extra=result)
    for outcome in result.get("results", []):
        metrics.add_metric(name=f"TaskTokens_{outcome}", unit="Count", value=1)
    return result
