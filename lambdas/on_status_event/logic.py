"""on_status_event: complete the task tokens that wait for a command's end or an instance's stop.

Two EventBridge rules feed it (``infra/constructs/triggers.py``):

* ``EC2 Command Invocation Status-change Notification`` (source ``aws.ssm``) of autostop's checkpoint and restore
  documents, in a status after which nothing more happens (the rule matches anything but Pending, InProgress,
  Delayed and Cancelling): :func:`shared.waiters.complete_command`.
* ``EC2 Instance State-change Notification`` (source ``aws.ec2``) with state ``stopped`` or ``terminated``: each
  stop waiter of that instance is completed with the state (:func:`shared.waiters.complete_stop`).

Event shapes: "Amazon EventBridge events for Systems Manager" (Run Command: detail ``command-id``,
``document-name``, ``instance-id``, ``requested-date-time``, ``status``) and "State change events for Amazon EC2
instances" (detail ``instance-id``, ``state``). An event of any other shape is logged and ignored: it never acts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from shared import constants as c
from shared.errors import TransientAwsError
from shared.waiters import FINAL_STATES, STOP, Waiters, complete_command, complete_stop

INVOCATION_STATUS_CHANGE = "EC2 Command Invocation Status-change Notification"
EVENT_TIME_SLACK_SECONDS = 2
"""An event's ``time`` has whole seconds: a waiter written up to this much after it may still be the event's own."""


class CommandDetail(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    command_id: str = Field(alias="command-id", pattern=r"^[0-9a-f-]{36}$")
    instance_id: str = Field(alias="instance-id", pattern=rf"^{c.INSTANCE_ID_PATTERN}$")
    status: str = ""


class StateDetail(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    instance_id: str = Field(alias="instance-id", pattern=rf"^{c.INSTANCE_ID_PATTERN}$")
    state: str


class StatusEvent(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    source: Literal["aws.ssm", "aws.ec2"]
    detail_type: str = Field(alias="detail-type")
    time: AwareDatetime | None = None
    detail: dict[str, Any]


def handle(event: dict[str, Any], *, ssm: Any, sfn: Any, waiters: Waiters) -> dict[str, Any]:
    """Complete what ``event`` ends. Returns ``{"kind", "instance_id", "results": [...]}`` or ``{"ignored": why}``.

    Raises:
        TransientAwsError: a call was throttled, failed server-side or timed out, or the invocation had not ended
            yet in GetCommandInvocation: the asynchronous invocation is retried by Lambda.
    """
    try:
        parsed = StatusEvent.model_validate(event)
        if parsed.source == "aws.ssm" and parsed.detail_type == INVOCATION_STATUS_CHANGE:
            command = CommandDetail.model_validate(parsed.detail)
            return _command_ended(command, ssm=ssm, sfn=sfn, waiters=waiters)
        if parsed.source == "aws.ec2" and parsed.detail_type == c.STATE_CHANGE:
            change = StateDetail.model_validate(parsed.detail)
            return _state_changed(change, parsed.time, sfn=sfn, waiters=waiters)
    except ValidationError as exc:
        return {"ignored": f"malformed event: {exc.errors(include_url=False)[:3]}"}
    return {"ignored": f"not a status event: {event.get('source')} {event.get('detail-type')}"}


def _command_ended(command: CommandDetail, *, ssm: Any, sfn: Any, waiters: Waiters) -> dict[str, Any]:
    result = complete_command(ssm, sfn, waiters, command_id=command.command_id, instance_id=command.instance_id)
    if result in ("running", "unknown"):
        # The event can come before GetCommandInvocation shows the end: let Lambda's retry look again.
        raise TransientAwsError(f"command {command.command_id} on {command.instance_id}: event says {command.status}, SSM says {result}")
    return {"kind": "command", "instance_id": command.instance_id, "command_id": command.command_id, "results": [result]}


def _state_changed(change: StateDetail, when: datetime | None, *, sfn: Any, waiters: Waiters) -> dict[str, Any]:
    if change.state not in FINAL_STATES:
        return {"ignored": f"state {change.state} ends no stop"}
    stops = [w for w in waiters.query(change.instance_id) if w.get("kind") == STOP]
    if when is not None:  # a late event of an earlier stop never completes a later stop's wait
        stops = [w for w in stops if float(w.get("created", 0)) <= when.timestamp() + EVENT_TIME_SLACK_SECONDS]
    results = [complete_stop(sfn, waiters, w, state=change.state, launch_time=None) for w in stops]
    return {"kind": "stop", "instance_id": change.instance_id, "results": results}
