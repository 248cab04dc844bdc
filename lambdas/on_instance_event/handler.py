"""Lambda entry point of the EC2 event trigger (Spot interruption warning, rebalance recommendation, state change)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from on_instance_event.logic import handle_event
from shared.clients import client
from shared.evaluation import Clients, Evaluator
from shared.observability import logger, metrics, tracer
from shared.records import RunRecords
from shared.settings import settings

if TYPE_CHECKING:  # the type only: its module is no part of a cold start
    from aws_lambda_powertools.utilities.typing import LambdaContext


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    config = settings()
    evaluator = Evaluator(clients=Clients(s3=client("s3"), ssm=client("ssm")), settings=config)
    result = handle_event(
        event,
        ec2=client("ec2"),
        sfn=client("stepfunctions"),
        evaluator=evaluator,
        records=RunRecords(client("dynamodb"), config.require_runs_table()),
        state_machine_arn=config.require_state_machine_arn(),
    )
    if result.ignored:
        logger.info("event ignored", extra=result.model_dump(mode="json", exclude_none=True))
    metrics.add_metric(name="ExecutionsStarted", unit="Count", value=int(bool(result.execution and result.execution.status == "started")))
    return result.model_dump(mode="json")
