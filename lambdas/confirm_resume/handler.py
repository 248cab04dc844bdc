"""Lambda entry point of the Confirm resume Task state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from confirm_resume.logic import confirm_resume
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
    result = confirm_resume(evaluation, event.get("invocation") or {})
    logger.info("resume judged", extra={"outcome": result.outcome, "reason": result.reason})
    metrics.add_metric(name=result.outcome, unit="Count", value=1)
    return result.model_dump(mode="json")
