"""Lambda entry point of the Find command Task state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from find_command.logic import find_command
from shared.clients import client
from shared.observability import logger, metrics, tracer
from shared.workflow import EvaluateOutput

if TYPE_CHECKING:  # the type only: its module is no part of a cold start
    from aws_lambda_powertools.utilities.typing import LambdaContext


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    evaluation = EvaluateOutput.model_validate(event["evaluation"])
    logger.append_keys(instance_id=evaluation.instance_id, run_id=evaluation.run_id)
    result = find_command(
        client("ssm"),
        instance_id=evaluation.instance_id,
        execution=str(event.get("execution_name", "")),
        decided_at=evaluation.decided_at,
        error=event.get("error") if isinstance(event.get("error"), dict) else None,
    )
    logger.info("find command", extra=result.model_dump())
    metrics.add_metric(name="CommandFound" if result.found else "CommandNotFound", unit="Count", value=1)
    return result.model_dump(mode="json")
