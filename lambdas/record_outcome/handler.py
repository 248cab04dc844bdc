"""Lambda entry point of the Record outcome Task state."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from record_outcome.logic import record_outcome
from shared.clients import client
from shared.observability import logger, metrics, tracer
from shared.records import RunRecords
from shared.settings import settings


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    config = settings()
    result = record_outcome(
        event.get("state") or {},
        str(event.get("execution_name", "")),
        records=RunRecords(client("dynamodb"), config.require_runs_table()),
        ec2=client("ec2"),
        tag_prefix=config.tag_prefix,
    )
    logger.info("recorded", extra=result.model_dump())
    return result.model_dump(mode="json")
