"""Lambda entry point of the schedule sweep (EventBridge "Scheduled Event")."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from on_schedule_tick.logic import sweep
from shared.clients import client
from shared.evaluation import Clients, Evaluator
from shared.observability import logger, metrics, tracer
from shared.settings import settings


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
@event_parser(model=EventBridgeModel)
def lambda_handler(event: EventBridgeModel, context: LambdaContext) -> dict[str, Any]:
    evaluator = Evaluator(clients=Clients(s3=client("s3"), ssm=client("ssm")), settings=settings())
    summary = sweep(ec2=client("ec2"), sfn=client("stepfunctions"), evaluator=evaluator, scheduled_at=event.time.isoformat())
    logger.info("sweep finished", extra=summary.model_dump(mode="json", exclude={"executions"}))
    metrics.add_metric(name="SweepInstances", unit="Count", value=summary.instances)
    metrics.add_metric(name="ExecutionsStarted", unit="Count", value=sum(e.status == "started" for e in summary.executions))
    return summary.model_dump(mode="json")
