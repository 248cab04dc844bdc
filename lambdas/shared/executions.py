"""Starting lifecycle executions with deterministic names (StartExecution is the duplicate check)."""

from __future__ import annotations

import json
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel

from shared import constants as c
from shared.errors import error_code
from shared.naming import execution_name

MAX_ATTEMPTS = c.MAX_ATTEMPTS

StartStatus = Literal["started", "already_running", "already_finished", "attempts_exhausted", "claimed"]
"""``claimed``: not asked for: the run record shows an execution already took the reason's lock (never released), so
any new one would end without acting (:meth:`shared.records.RunRecords.lock_holders`)."""


class StartResult(BaseModel):
    """What happened when a trigger asked for an execution."""

    name: str
    status: StartStatus
    execution_arn: str
    detail: str = ""


def execution_arn(state_machine_arn: str, name: str) -> str:
    """``arn:...:execution:<machine>:<name>`` for an execution of ``state_machine_arn``."""
    return state_machine_arn.replace(":stateMachine:", ":execution:", 1) + ":" + name


def closed_outcome(describe: dict[str, Any]) -> str | None:
    """The ``outcome`` of a closed execution from DescribeExecution: its output's field or its error."""
    if describe.get("status") == "SUCCEEDED":
        return _output(describe).get("outcome")
    return describe.get("error")


def may_retry(describe: dict[str, Any]) -> bool:
    """True when a closed execution ended before anything was done on the instance.

    That is a SUCCEEDED execution with a retryable outcome (NotComplete, Inconclusive, Skipped) that never
    reached the checkpoint: outcomes after the checkpoint carry ``manifest_uri`` and are final, because a
    new attempt would signal the trainer again.
    """
    return closed_outcome(describe) in c.RETRYABLE_OUTCOMES and "manifest_uri" not in _output(describe)


def _output(describe: dict[str, Any]) -> dict[str, Any]:
    try:
        value = json.loads(describe.get("output") or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def start_lifecycle_execution(
    sfn: Any,
    state_machine_arn: str,
    *,
    instance_id: str,
    run_id: str,
    reason: str,
    trigger: dict[str, Any],
    session: str | None = None,
    extra: dict[str, Any] | None = None,
) -> StartResult:
    """Start the lifecycle execution for (instance, run, reason, session) unless one already acted.

    ``session`` is the instance's LaunchTime (see :func:`shared.naming.execution_name`); ``extra`` adds
    fields to the execution input (``deadline`` of a Spot interruption). Attempt 1 is named
    ``<instance>-<run>-<reason>-<session>``. ExecutionAlreadyExists is success, not an error:
    a running execution means a duplicate event; a closed one is final unless :func:`may_retry` (nothing
    was done on the instance), in which case the next attempt number is tried. "started" may also be
    StartExecution's idempotent answer to an identical request for a still-running execution.
    AWS calls: StartExecution, plus one DescribeExecution per existing attempt.

    Raises:
        botocore ClientError: any StartExecution/DescribeExecution error other than ExecutionAlreadyExists.
    """
    for attempt in range(1, MAX_ATTEMPTS + 1):
        name = execution_name(instance_id, run_id, reason, attempt, session)
        arn = execution_arn(state_machine_arn, name)
        payload = {"instance_id": instance_id, "run_id": run_id, "reason": reason, "attempt": attempt, "trigger": trigger, **(extra or {})}
        if session:
            payload["session"] = session
        try:
            resp = sfn.start_execution(stateMachineArn=state_machine_arn, name=name, input=json.dumps(payload))
            return StartResult(name=name, status="started", execution_arn=resp["executionArn"])
        except ClientError as exc:
            if error_code(exc) != "ExecutionAlreadyExists":
                raise
        existing = sfn.describe_execution(executionArn=arn)
        if existing["status"] == "RUNNING":
            return StartResult(name=name, status="already_running", execution_arn=arn)
        if not may_retry(existing):
            return StartResult(
                name=name, status="already_finished", execution_arn=arn, detail=f"{existing['status']}: {closed_outcome(existing)}"
            )
    return StartResult(name=name, status="attempts_exhausted", execution_arn=arn, detail=f"{MAX_ATTEMPTS} attempts")
