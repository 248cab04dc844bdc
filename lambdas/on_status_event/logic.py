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
The event is read by hand, without pydantic: nothing else this function runs needs it (benchmarks/imports.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared import constants as c
from shared.errors import TransientAwsError
from shared.waiters import FINAL_STATES, STOP, Waiters, complete_command, complete_stop

INVOCATION_STATUS_CHANGE = "EC2 Command Invocation Status-change Notification"
EVENT_TIME_SLACK_SECONDS = 2
"""An event's ``time`` has whole seconds: a waiter written up to this much after it may still be the event's own."""
COMMAND_ID_PATTERN = r"[0-9a-f-]{36}"
SOURCES = ("aws.ssm", "aws.ec2")


@dataclass(frozen=True)
class CommandDetail:
    command_id: str
    instance_id: str
    status: str


@dataclass(frozen=True)
class StateDetail:
    instance_id: str
    state: str


def _text(record: Mapping[str, Any], key: str, pattern: str | None = None, default: str | None = None) -> str:
    """``record[key]``, a string (matching ``pattern`` whole, if given); raises ValueError naming the key."""
    value = record.get(key, default)
    if not isinstance(value, str) or (pattern is not None and not re.fullmatch(pattern, value)):
        raise ValueError(f"{key}: {value!r} is not a string" + (f" matching {pattern}" if pattern else ""))
    return value


def _time(value: Any) -> datetime | None:
    """The event's ``time`` (ISO 8601 with a zone, or Unix seconds), None when absent; raises ValueError."""
    if value is None:
        return None
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except (ValueError, OverflowError, OSError):  # out of range (1e20, inf: OverflowError), NaN, not ISO 8601
        when = None
    if when is None or when.tzinfo is None:
        raise ValueError(f"time: {value!r} is not a time with a zone")
    return when


def handle(event: dict[str, Any], *, ssm: Any, sfn: Any, waiters: Waiters) -> dict[str, Any]:
    """Complete what ``event`` ends. Returns ``{"kind", "instance_id", "results": [...]}`` or ``{"ignored": why}``
    (``malformed event: ...`` when a field the event needs is missing or of the wrong shape).

    Raises:
        TransientAwsError: a call was throttled, failed server-side or timed out, or the invocation had not ended
            yet in GetCommandInvocation: the asynchronous invocation is retried by Lambda.
    """
    try:
        source = _text(event, "source", "|".join(re.escape(s) for s in SOURCES))
        detail_type, when, detail = _text(event, "detail-type"), _time(event.get("time")), event.get("detail")
        if not isinstance(detail, dict):
            raise ValueError(f"detail: {detail!r} is not an object")
        if source == "aws.ssm" and detail_type == INVOCATION_STATUS_CHANGE:
            instance_id = _text(detail, "instance-id", c.INSTANCE_ID_PATTERN)
            command = CommandDetail(_text(detail, "command-id", COMMAND_ID_PATTERN), instance_id, _text(detail, "status", default=""))
            return _command_ended(command, ssm=ssm, sfn=sfn, waiters=waiters)
        if source == "aws.ec2" and detail_type == c.STATE_CHANGE:
            change = StateDetail(_text(detail, "instance-id", c.INSTANCE_ID_PATTERN), _text(detail, "state"))
            return _state_changed(change, when, sfn=sfn, waiters=waiters)
    except ValueError as exc:
        return {"ignored": f"malformed event: {exc}"}
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
