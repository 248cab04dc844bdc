"""Starting lifecycle executions with deterministic names (StartExecution is the duplicate check)."""

from __future__ import annotations

import json
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel

from shared import constants as c
from shared.errors import error_code
from shared.naming import execution_name

MAX_ATTEMPTS = 20
"""Upper bound on attempts per (instance, run, reason); each attempt is one execution."""

StartStatus = Literal["started", "already_running", "already_finished", "attempts_exhausted"]


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
        try:
            return str(json.loads(describe.get("output") or "{}").get("outcome"))
        except ValueError:
            return None
    return describe.get("error")


def start_lifecycle_execution(
    sfn: Any,
    state_machine_arn: str,
    *,
    instance_id: str,
    run_id: str,
    reason: str,
    trigger: dict[str, Any],
) -> StartResult:
    """Start the lifecycle execution for (instance, run, reason) unless one already acted.

    Attempt 1 is named ``<instance>-<run>-<reason>``. ExecutionAlreadyExists is success, not an error:
    a running execution means a duplicate event; a closed one is final unless its outcome is one of
    ``RETRYABLE_OUTCOMES`` (nothing was done on the instance), in which case the next attempt number
    is tried. AWS calls: StartExecution, plus one DescribeExecution per existing attempt.

    Raises:
        botocore ClientError: any StartExecution/DescribeExecution error other than ExecutionAlreadyExists.
    """
    for attempt in range(1, MAX_ATTEMPTS + 1):
        name = execution_name(instance_id, run_id, reason, attempt)
        arn = execution_arn(state_machine_arn, name)
        payload = {"instance_id": instance_id, "run_id": run_id, "reason": reason, "attempt": attempt, "trigger": trigger}
        try:
            resp = sfn.start_execution(stateMachineArn=state_machine_arn, name=name, input=json.dumps(payload))
            return StartResult(name=name, status="started", execution_arn=resp["executionArn"])
        except ClientError as exc:
            if error_code(exc) != "ExecutionAlreadyExists":
                raise
        existing = sfn.describe_execution(executionArn=arn)
        if existing["status"] == "RUNNING":
            return StartResult(name=name, status="already_running", execution_arn=arn)
        outcome = closed_outcome(existing)
        if outcome not in c.RETRYABLE_OUTCOMES:
            return StartResult(
                name=name, status="already_finished", execution_arn=arn, detail=f"{existing['status']}: {outcome}"
            )
    return StartResult(name=name, status="attempts_exhausted", execution_arn=arn, detail=f"{MAX_ATTEMPTS} attempts")
