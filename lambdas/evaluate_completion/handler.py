"""Lambda entry point of the Evaluate completion Task state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit

from evaluate_completion.logic import evaluate
from shared.clients import client
from shared.evaluation import Clients, Evaluator
from shared.observability import logger, metrics, tracer, trigger_source
from shared.records import RunRecords
from shared.settings import settings

if TYPE_CHECKING:  # the type only: its module is no part of a cold start
    from aws_lambda_powertools.utilities.typing import LambdaContext


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    evaluator = Evaluator(clients=Clients(s3=client("s3"), ssm=client("ssm")), settings=settings())
    table = settings().runs_table
    records = RunRecords(client("dynamodb"), table) if table else None
    result = evaluate(event, ec2=client("ec2"), evaluator=evaluator, records=records)
    logger.info("evaluated", extra={"decision": result.decision, "reason": result.reason})
    metrics.add_dimension(name="decision", value=result.decision)
    metrics.add_dimension(name="trigger", value=trigger_source(event.get("input")))
    metrics.add_metric(name="Evaluations", unit=MetricUnit.Count, value=1)
    return result.model_dump(mode="json")
