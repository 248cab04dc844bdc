"""Task tokens of executions waiting for an event: a command's end on the instance, or the instance's stop.

The lifecycle state machine does not poll. A Task state of the ``.waitForTaskToken`` kind hands its token to a
Lambda (Send command, Stop instance), which records it here as a **waiter** and returns; the execution then waits,
costing no state transitions, until an event completes the token:

* SSM's ``EC2 Command Invocation Status-change Notification`` (EventBridge) for a command that ended: the
  on_status_event function reads the command invocation (GetCommandInvocation: status and output), finds the
  waiter by the command's comment (``autostop <execution>``), and calls SendTaskSuccess with the invocation.
* EC2's ``EC2 Instance State-change Notification`` with state ``stopped`` or ``terminated``: the same function
  completes the instance's stop waiter with the state.

Events are delivered at least once and on a best-effort basis, so every completion is idempotent (a second
SendTaskSuccess for a closed task is answered TaskTimedOut / TaskDoesNotExist and ignored) and a lost event is
caught up by :func:`settle_stale` on every schedule sweep (one Query when nothing waits); the Task state's own
timeout is the last resort.

Table: the run records table (``shared/records.py``), partition ``instance_id = "waiter"`` (never an instance id),
sort key ``run = "<instance id>#<execution name>#<kind>"`` (kind ``command`` or ``stop``). Item attributes:
``token``, ``kind``, ``instance_id_of`` (the instance), ``execution``, ``command_id`` (once SendCommand answered),
``stop`` (the Stop instance output the token completes with), ``session`` (the decision's LaunchTime), ``created``
(epoch seconds) and ``expires`` (epoch seconds, the table's TTL attribute).
AWS calls: PutItem, UpdateItem, GetItem, Query, DeleteItem (DynamoDB); GetCommandInvocation (SSM);
DescribeInstances (EC2); SendTaskSuccess (Step Functions).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from shared import constants as c
from shared.errors import TransientAwsError, error_code, is_transient, transient
from shared.records import from_item, query_all, to_item

PARTITION = c.WAITER_PARTITION
COMMAND = "command"
STOP = "stop"
KEEP_SECONDS = 3 * 86400
"""A waiter older than this is gone (TTL ``expires``): longer than any execution may run."""
SETTLE_AFTER_SECONDS = 120
"""The sweep looks at a waiter only when it is older than this: its event normally comes within seconds."""
COMMENT_PREFIX = "autostop "
ENDED = frozenset({"Success", "Failed", "TimedOut", "Cancelled", "DeliveryTimedOut", "ExecutionTimedOut", "Undeliverable", "Terminated"})
"""Command invocation statuses after which nothing more happens on the instance (GetCommandInvocation ``Status``)."""
STILL_RUNNING = ("Pending", "InProgress", "Delayed", "Cancelling")
"""Statuses of an invocation that has not ended; the event rule matches anything but these."""
FINAL_STATES = frozenset({"stopped", "terminated"})
CLOSED_TASK = frozenset({"TaskTimedOut", "TaskDoesNotExist", "InvalidToken"})
"""SendTaskSuccess errors meaning the task is no longer waiting (completed, timed out, or its execution ended)."""


def comment_for(execution: str) -> str:
    """The SendCommand ``Comment`` of every command an execution sends (at most 100 characters: names are ≤ 80)."""
    return f"{COMMENT_PREFIX}{execution}"


def execution_of(comment: str | None) -> str | None:
    """The execution name a command's comment names, or None for a command autostop did not send."""
    if not comment or not comment.startswith(COMMENT_PREFIX):
        return None
    return comment.removeprefix(COMMENT_PREFIX) or None


def invocation_output(resp: dict[str, Any]) -> dict[str, Any]:
    """The fields of a GetCommandInvocation response the state machine passes on (``$.invocation``): Status,
    StatusDetails, ResponseCode, StandardOutputContent, StandardErrorContent (at most 24,000 and 8,000 characters)."""
    return {
        "Status": resp.get("Status", ""),
        "StatusDetails": resp.get("StatusDetails", ""),
        "ResponseCode": resp.get("ResponseCode", -1),
        "StandardOutputContent": resp.get("StandardOutputContent", ""),
        "StandardErrorContent": resp.get("StandardErrorContent", ""),
    }


@dataclass
class Waiters:
    """The waiters in the run records table ``table`` (see module docstring)."""

    dynamodb: Any
    table: str
    now: Callable[[], float] = time.time

    @staticmethod
    def sort_key(instance_id: str, execution: str, kind: str) -> str:
        return f"{instance_id}#{execution}#{kind}"

    def _key(self, instance_id: str, execution: str, kind: str) -> dict[str, Any]:
        return {"instance_id": {"S": PARTITION}, "run": {"S": self.sort_key(instance_id, execution, kind)}}

    def put(self, instance_id: str, execution: str, kind: str, token: str, **fields: Any) -> None:
        """Record (or replace: a retried Task state has a new token) the waiter. PutItem."""
        created = int(self.now())
        item = {
            "instance_id": PARTITION,
            "run": self.sort_key(instance_id, execution, kind),
            "kind": kind,
            "instance_id_of": instance_id,
            "execution": execution,
            "token": token,
            "created": created,
            "expires": created + KEEP_SECONDS,
            **{k: v for k, v in fields.items() if v is not None},
        }
        self.dynamodb.put_item(TableName=self.table, Item=to_item(item))

    def set_command(self, instance_id: str, execution: str, command_id: str) -> None:
        """Note the command the waiter is for (the sweep's fallback needs it). UpdateItem, only if the waiter exists."""
        try:
            self.dynamodb.update_item(
                TableName=self.table,
                Key=self._key(instance_id, execution, COMMAND),
                UpdateExpression="SET command_id = :c",
                ConditionExpression="attribute_exists(instance_id)",
                ExpressionAttributeValues={":c": {"S": command_id}},
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":  # already completed by its event
                raise

    def get(self, instance_id: str, execution: str, kind: str) -> dict[str, Any] | None:
        resp = self.dynamodb.get_item(TableName=self.table, Key=self._key(instance_id, execution, kind), ConsistentRead=True)
        return from_item(resp["Item"]) if "Item" in resp else None

    def delete(self, instance_id: str, execution: str, kind: str, token: str | None = None) -> None:
        """Remove the waiter; with ``token``, only while it still holds that token (a retried Task state's newer
        waiter is never removed by the completion of its stale token). DeleteItem."""
        kwargs: dict[str, Any] = {"TableName": self.table, "Key": self._key(instance_id, execution, kind)}
        if token is not None:
            kwargs.update(
                ConditionExpression="#t = :t", ExpressionAttributeNames={"#t": "token"}, ExpressionAttributeValues={":t": {"S": token}}
            )
        try:
            self.dynamodb.delete_item(**kwargs)
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise

    def query(self, instance_id: str | None = None) -> list[dict[str, Any]]:
        """Every waiter (of ``instance_id`` when given), all pages. Query on the ``waiter`` partition."""
        values: dict[str, Any] = {":p": {"S": PARTITION}}
        condition = "instance_id = :p"
        if instance_id:
            condition += " AND begins_with(#run, :i)"
            values[":i"] = {"S": f"{instance_id}#"}
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ConsistentRead": True,
        }
        if instance_id:
            kwargs["ExpressionAttributeNames"] = {"#run": "run"}
        return query_all(self.dynamodb, **kwargs)


def send_task_success(sfn: Any, token: str, output: dict[str, Any]) -> bool:
    """SendTaskSuccess; False when the task no longer waits (a duplicate event, or a task that timed out).

    Raises:
        TransientAwsError: throttled, 5xx or a timeout; the caller's retry (async Lambda, next sweep) repeats it.
    """
    try:
        sfn.send_task_success(taskToken=token, output=json.dumps(output, separators=(",", ":"), default=str))
    except (ClientError, BotoCoreError) as exc:  # is_transient: every BotoCoreError (timeouts, connection errors)
        if error_code(exc) in CLOSED_TASK:
            return False
        if is_transient(exc):
            raise transient("SendTaskSuccess", exc) from exc
        raise
    return True


def read_invocation(ssm: Any, command_id: str, instance_id: str) -> dict[str, Any] | None:
    """GetCommandInvocation, or None when SSM does not know it (yet).

    Raises:
        TransientAwsError: throttled, 5xx or a timeout.
    """
    try:
        return dict(ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id))
    except (ClientError, BotoCoreError) as exc:
        if error_code(exc) in ("InvocationDoesNotExist", "InvalidCommandId"):
            return None
        if is_transient(exc):
            raise transient("GetCommandInvocation", exc) from exc
        raise


def complete_command(ssm: Any, sfn: Any, waiters: Waiters, *, command_id: str, instance_id: str) -> str:
    """Complete the waiter of the execution that sent ``command_id`` to ``instance_id`` with the command invocation.

    Returns what happened, one of ``completed``, ``duplicate`` (the task no longer waited), ``not_ours`` (no
    autostop comment), ``no_waiter``, ``other_command`` (the waiter names another command id), ``running`` (the
    invocation has not ended: its event came early, nothing done), ``unknown`` (SSM does not know the invocation).
    """
    resp = read_invocation(ssm, command_id, instance_id)
    if resp is None:
        return "unknown"
    if resp.get("Status") not in ENDED:
        return "running"
    execution = execution_of(resp.get("Comment"))
    if execution is None:
        return "not_ours"
    waiter = waiters.get(instance_id, execution, COMMAND)
    if waiter is None:
        return "no_waiter"
    if waiter.get("command_id") not in (None, command_id):
        return "other_command"  # the execution waits for another command of its own (never completed by this one)
    token = str(waiter["token"])
    done = send_task_success(sfn, token, {**invocation_output(resp), "CommandId": command_id})
    waiters.delete(instance_id, execution, COMMAND, token=token)
    return "completed" if done else "duplicate"


def complete_stop(sfn: Any, waiters: Waiters, waiter: dict[str, Any], *, state: str, launch_time: str | None) -> str:
    """Complete a stop waiter with the instance's ``state`` (and LaunchTime, ``YYYY-MM-DDTHH:MM:SSZ``, when known).

    The output is the Stop instance output recorded with the waiter plus ``state`` and ``launch_time``.
    Returns ``completed`` or ``duplicate``.
    """
    output = {**(waiter.get("stop") or {}), "state": state, "launch_time": launch_time}
    token = str(waiter["token"])
    done = send_task_success(sfn, token, output)
    waiters.delete(str(waiter["instance_id_of"]), str(waiter["execution"]), STOP, token=token)
    return "completed" if done else "duplicate"


def session_of(launch_time: Any) -> str | None:
    """An instance's LaunchTime (datetime or string) as a session, ``YYYY-MM-DDTHH:MM:SSZ`` in UTC; None if absent."""
    if isinstance(launch_time, datetime):
        return launch_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(launch_time) if launch_time else None


def stop_settled(state: str, launch_time: str | None, session: str | None) -> bool:
    """True when a stop waiter can be completed: the instance reached a final state, or it runs again in a new
    session (started again after our stop, a LaunchTime other than the decision's ``session``)."""
    if state in FINAL_STATES:
        return True
    return state in ("pending", "running") and bool(launch_time) and bool(session) and launch_time != session


def settle_stale(ssm: Any, ec2: Any, sfn: Any, waiters: Waiters, *, older_than: float = SETTLE_AFTER_SECONDS) -> dict[str, int]:
    """Complete the waiters whose event was lost: every waiter older than ``older_than`` seconds whose command has
    ended or whose instance has stopped (or runs again in a new session). Run by every schedule sweep.

    AWS calls: one Query (every page); per stale command waiter one GetCommandInvocation; for stale stop waiters one
    DescribeInstances per 200 instances; one SendTaskSuccess and DeleteItem per completed waiter.
    Returns counts: ``waiting`` (all waiters), ``stale``, ``completed``.
    """
    cutoff = waiters.now() - older_than
    every = waiters.query()
    stale = [w for w in every if float(w.get("created", 0)) <= cutoff]
    completed = 0
    for waiter in (w for w in stale if w.get("kind") == COMMAND and w.get("command_id")):
        try:
            outcome = complete_command(ssm, sfn, waiters, command_id=str(waiter["command_id"]), instance_id=str(waiter["instance_id_of"]))
        except TransientAwsError:
            continue  # the next sweep tries again
        completed += outcome == "completed"
    stops = [w for w in stale if w.get("kind") == STOP]
    states = _instance_states(ec2, [str(w["instance_id_of"]) for w in stops])
    for waiter in stops:
        state, launch = states.get(str(waiter["instance_id_of"]), ("terminated", None))  # gone: terminated long ago
        if stop_settled(state, launch, waiter.get("session")):
            try:
                completed += complete_stop(sfn, waiters, waiter, state=state, launch_time=launch) == "completed"
            except TransientAwsError:
                continue
    return {"waiting": len(every), "stale": len(stale), "completed": completed}


def _instance_states(ec2: Any, ids: Iterable[str]) -> dict[str, tuple[str, str | None]]:
    """{instance id: (state, LaunchTime)} by DescribeInstances, 200 ids per call; ids EC2 no longer knows are absent.

    The ids go in an ``instance-id`` filter, not ``InstanceIds``: with ``InstanceIds`` one id EC2 no longer knows
    (terminated more than about an hour ago) fails the whole call with InvalidInstanceID.NotFound and would keep the
    other 199 waiters from settling; a filter only leaves it out. 200 is EC2's limit on a filter's values per call
    (FilterLimitExceeded above it)."""
    wanted = sorted(set(ids))
    out: dict[str, tuple[str, str | None]] = {}
    for start in range(0, len(wanted), 200):
        try:
            batch = wanted[start : start + 200]
            pages = ec2.get_paginator("describe_instances").paginate(Filters=[{"Name": "instance-id", "Values": batch}])
            for page in pages:
                for reservation in page.get("Reservations", []):
                    for inst in reservation.get("Instances", []):
                        out[inst["InstanceId"]] = (inst["State"]["Name"], session_of(inst.get("LaunchTime")))
        except (ClientError, BotoCoreError):
            for iid in wanted[start : start + 200]:
                out.setdefault(iid, ("unknown", None))  # never settled on a failed read
    return out
