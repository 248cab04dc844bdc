"""EC2 events that start work for one instance: Spot interruption warnings, rebalance recommendations, and
state changes to ``running`` (resume after a stop).

Only these three start executions, each with its own reason. A state change to any other state (our own
StopInstances makes ``stopping`` and ``stopped``) starts nothing, a rebalance recommendation only starts an
early checkpoint when the instance is tagged ``autostop:on-rebalance=checkpoint``, and a start only resumes
a run whose earlier session ended with a verified checkpoint (Stopped or SpotCheckpointSaved).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from shared import constants as c
from shared.evaluation import Evaluator
from shared.executions import StartResult, start_lifecycle_execution
from shared.instances import describe_instance
from shared.models import Evaluation
from shared.observability import logger
from shared.records import RunRecords, resume_source
from shared.triggers import oversized

SPOT_WARNING = c.SPOT_WARNING
REBALANCE = c.REBALANCE_RECOMMENDATION
STATE_CHANGE = c.STATE_CHANGE


class InstanceDetail(BaseModel):
    """The ``detail`` of the three EC2 events (EventBridge, source aws.ec2)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    instance_id: str = Field(alias="instance-id", pattern=rf"^{c.INSTANCE_ID_PATTERN}$")
    instance_action: str | None = Field(None, alias="instance-action", max_length=32)
    """Spot warning only: terminate, stop or hibernate."""
    state: str | None = Field(None, max_length=32)
    """State-change only: pending, running, stopping, stopped, shutting-down, terminated."""


class InstanceEvent(BaseModel):
    """The EventBridge envelope fields used here."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    detail_type: Literal[SPOT_WARNING, REBALANCE, STATE_CHANGE] = Field(alias="detail-type")  # type: ignore[valid-type]
    source: Literal["aws.ec2"]
    time: AwareDatetime
    """EventBridge always gives the zone (``Z``); a naive time would make a naive interruption deadline."""
    detail: InstanceDetail


class EventResult(BaseModel):
    """What one event did: the function's return value, also logged."""

    instance_id: str | None = None
    reason: str | None = None
    """The lifecycle reason (interruption, rebalance, resume) when the event asks for one."""
    ignored: str | None = None
    """Why no execution was started."""
    execution: StartResult | None = None


def parse_event(raw: Any) -> InstanceEvent | str:
    """The event, or a sentence saying why it cannot be one of ours (never raises)."""
    try:
        event = InstanceEvent.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "event"
        return f"malformed EC2 event: {where}: {err['msg']}"
    too_big = oversized(raw)
    return f"malformed EC2 event: {too_big}" if too_big else event


def handle_event(raw: Any, *, ec2: Any, sfn: Any, evaluator: Evaluator, records: RunRecords | None, state_machine_arn: str) -> EventResult:
    """Start the lifecycle execution an EC2 event asks for, if any.

    Args:
        raw: the EventBridge event (dict) as delivered to the function.
        ec2: boto3 EC2 client (DescribeInstances; not called for a start of an instance without run records).
        sfn: boto3 Step Functions client (StartExecution, DescribeExecution).
        evaluator: reads the instance's tags (opt-in, run id, on-rebalance).
        records: run records, to see whether a started instance has a run to resume.
        state_machine_arn: the lifecycle state machine.

    Returns:
        The execution started, or ``ignored`` with the reason. A malformed event is ignored with a clear
        reason and nothing else happens.
    """
    event = parse_event(raw)
    if isinstance(event, str):
        return EventResult(ignored=event)
    iid = event.detail.instance_id
    if event.detail_type == SPOT_WARNING:
        reason = c.REASON_INTERRUPTION
    elif event.detail_type == REBALANCE:
        reason = c.REASON_REBALANCE
    elif event.detail.state == "running":
        reason = c.REASON_RESUME
    else:
        return EventResult(instance_id=iid, ignored=f"state change to {event.detail.state} starts nothing")
    result = EventResult(instance_id=iid, reason=reason)
    if reason == c.REASON_RESUME and records is not None and not records.any_for(iid):
        # Every start in the region arrives here (EventBridge cannot match tags): one that autostop never claimed a
        # run on has nothing to resume, and costs one DynamoDB Query instead of a DescribeInstances.
        return result.model_copy(update={"ignored": "no run record: autostop never acted on this instance"})

    snap = describe_instance(ec2, iid)
    if snap is None:
        return result.model_copy(update={"ignored": "instance does not exist"})
    config = evaluator.configure(snap)
    if isinstance(config, Evaluation):
        return result.model_copy(update={"ignored": config.reason})
    if reason == c.REASON_REBALANCE and not config.checkpoint_on_rebalance:
        return result.model_copy(update={"ignored": "rebalance recommendation: tag autostop:on-rebalance is not 'checkpoint'"})
    if reason == c.REASON_RESUME:
        earlier = [r for r in (records.sessions(iid, config.run_id) if records else []) if str(r.get("session")) < str(snap.session)]
        source, why_not = resume_source(earlier)
        if source is None:
            return result.model_copy(update={"ignored": f"nothing to resume for run {config.run_id}: {why_not}"})
    extra: dict[str, Any] = {}
    if reason == c.REASON_INTERRUPTION:
        # The deadline comes from the warning's own time: a notice delivered late leaves less time.
        extra["deadline"] = (event.time + timedelta(seconds=c.SPOT_NOTICE_SECONDS)).isoformat()
    started = start_lifecycle_execution(
        sfn,
        state_machine_arn,
        instance_id=iid,
        run_id=config.run_id,
        reason=reason,
        trigger={
            "source": event.detail_type,
            "time": event.time.isoformat(),
            **({"action": event.detail.instance_action} if event.detail.instance_action else {}),
        },
        session=snap.session,
        extra=extra,
    )
    logger.info("lifecycle execution", extra={"instance_id": iid, "reason": reason, "execution": started.name, "status": started.status})
    return result.model_copy(update={"execution": started})
