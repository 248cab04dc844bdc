"""Lambda entry point of the Verify checkpoint Task state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.clients import client
from shared.observability import logger, metrics, tracer
from shared.records import RunRecords
from shared.settings import settings
from shared.workflow import EvaluateOutput
from verify_checkpoint.logic import Verifier

if TYPE_CHECKING:  # the type only: its module is no part of a cold start
    from aws_lambda_powertools.utilities.typing import LambdaContext


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    evaluation = EvaluateOutput.model_validate(event["evaluation"])
    logger.append_keys(instance_id=evaluation.instance_id, run_id=evaluation.run_id)
    table = settings().runs_table
    records = RunRecords(client("dynamodb"), table) if table else None
    result = Verifier(client("s3"), records).verify(evaluation, event.get("invocation") or {}, str(event["execution_name"]))
    logger.info("verified", extra={"outcome": result.outcome, "reason": result.reason})
    metrics.add_metric(name=result.outcome, unit="Count", value=1)
    return result.model_dump(mode="json")
