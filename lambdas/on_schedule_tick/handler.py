"""Lambda entry point of the schedule sweep (EventBridge "Scheduled Event", or a continuation the sweep handed
to itself: ``{"continuation": {...}}``, see :class:`on_schedule_tick.logic.Continuation`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from on_schedule_tick.logic import Continuation, invoke_continuation, sweep
from shared.clients import client
from shared.evaluation import Clients, Evaluator
from shared.events import EventBridgeEventModel
from shared.notifications import Outlets
from shared.observability import logger, metrics, tracer
from shared.records import RunRecords
from shared.settings import settings
from shared.triggers import parse_trigger_event
from shared.waiters import Waiters, settle_stale

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


@dataclass(frozen=True)
class Tick:
    """Where this invocation sweeps from: the first page (a scheduled event, hop 0) or a continuation's page."""

    scheduled_at: datetime
    next_token: str | None
    hop: int


def parse_tick(raw: Any) -> Tick | str:
    """The tick this invocation sweeps, or why the event is neither a scheduled event nor a continuation."""
    if isinstance(raw, dict) and "continuation" in raw:
        try:
            cont = Continuation.model_validate(raw["continuation"])
        except ValidationError as exc:
            return f"malformed continuation: {exc.errors()[0]['msg']}"
        return Tick(cont.scheduled_at, cont.next_token, cont.hop)
    event = parse_trigger_event(raw, EventBridgeEventModel, source="aws.events", detail_types=("Scheduled Event",))
    return event if isinstance(event, str) else Tick(event.time, None, 0)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(raw: Any, context: LambdaContext) -> dict[str, Any]:
    tick = parse_tick(raw)
    if isinstance(tick, str):  # never raise for a bad event: it would only be retried
        logger.warning("event ignored", extra={"ignored": tick})
        metrics.add_metric(name="EventsIgnored", unit="Count", value=1)
        return {"ignored": tick}
    evaluator = Evaluator(clients=Clients(s3=client("s3"), ssm=client("ssm")), settings=settings())
    outlets = Outlets(sns=client("sns"), topic_arn=settings().outcome_topic_arn or "", events=client("events"))
    table = settings().runs_table
    scheduled_at = tick.scheduled_at.isoformat()
    # First the waits whose status event was lost (one Query when none): a sweep that fails or runs out of time below
    # must not hold them up. Once per tick, not again in its continuations.
    settled = settle_waiters() if tick.hop == 0 else {}
    if settled:
        logger.info("waiters settled", extra=settled)
        metrics.add_metric(name="TaskTokensSettledBySweep", unit="Count", value=settled["completed"])
    summary = sweep(
        ec2=client("ec2"),
        sfn=client("stepfunctions"),
        evaluator=evaluator,
        scheduled_at=scheduled_at,
        outlets=outlets,
        records=RunRecords(client("dynamodb"), table) if table else None,
        next_token=tick.next_token,
        seconds_left=lambda: context.get_remaining_time_in_millis() / 1000,
        hand_over=invoke_continuation(lambda: client("lambda"), context.function_name, scheduled_at, tick.hop),
    )
    logger.info("sweep finished", extra={**summary.log_line(), "hop": tick.hop})
    metrics.add_metric(name="SweepInstances", unit="Count", value=summary.instances)
    metrics.add_metric(name="ExecutionsStarted", unit="Count", value=sum(e.status == "started" for e in summary.executions))
    return {**summary.model_dump(mode="json"), "waiters": settled}


def settle_waiters() -> dict[str, int]:
    """The fallback for lost status events (shared/waiters.py settle_stale); never fails the sweep."""
    config = settings()
    if not config.runs_table:
        return {}
    try:
        waiters = Waiters(client("dynamodb"), config.runs_table)
        return settle_stale(client("ssm"), client("ec2"), client("stepfunctions"), waiters, older_than=config.settle_after_seconds)
    except Exception:  # the sweep's own work is done; the next sweep tries again
        logger.exception("settling waiters failed")
        return {}
