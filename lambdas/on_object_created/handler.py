"""Lambda entry point of the completion-marker trigger (S3 "Object Created" via EventBridge)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from on_object_created.logic import on_marker
from shared.clients import client
from shared.evaluation import Clients, Evaluator
from shared.events import ObjectCreatedEventModel
from shared.notifications import Outlets
from shared.observability import logger, metrics, tracer
from shared.settings import settings
from shared.triggers import parse_trigger_event

if TYPE_CHECKING:  # the type only: its module is no part of a cold start
    from aws_lambda_powertools.utilities.typing import LambdaContext


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(raw: Any, context: LambdaContext) -> dict[str, Any]:
    event = parse_trigger_event(raw, ObjectCreatedEventModel, source="aws.s3", detail_types=("Object Created",))
    if isinstance(event, str):  # never raise for a bad event: it would only be retried
        logger.warning("event ignored", extra={"ignored": event})
        metrics.add_metric(name="EventsIgnored", unit="Count", value=1)
        return {"ignored": event}
    evaluator = Evaluator(clients=Clients(s3=client("s3"), ssm=client("ssm")), settings=settings())
    outlets = Outlets(sns=client("sns"), topic_arn=settings().outcome_topic_arn or "", events=client("events"))
    summary = on_marker(
        ec2=client("ec2"),
        sfn=client("stepfunctions"),
        evaluator=evaluator,
        bucket=event.detail.bucket.name,
        key=event.detail.object.key,
        event_time=event.time.isoformat(),
        outlets=outlets,
    )
    metrics.add_metric(name="ExecutionsStarted", unit="Count", value=sum(e.status == "started" for e in summary.executions))
    return summary.model_dump(mode="json")
