"""Send command Task state (``.waitForTaskToken``): record the execution's task token, then SendCommand.

The checkpoint, emergency checkpoint and restore commands report their end by event, not by polling: this step
records a waiter (:mod:`shared.waiters`) holding the Task state's token, then sends the command once, with the
comment ``autostop <execution>``; the execution waits until on_status_event completes the token with the command
invocation (SSM's status-change event), or the schedule sweep does when that event was lost. The waiter is written
*before* SendCommand, so an event can never arrive before its waiter.

In **follow** mode (``command_id`` given: a command found by its comment after an ambiguous SendCommand failure, or
after the wait timed out) nothing is sent: the waiter is recorded for that command and, if the command has already
ended, the token is completed at once.

AWS calls: PutItem, UpdateItem (DynamoDB); SendCommand (one attempt, never repeated) or GetCommandInvocation; SendTaskSuccess.
"""

from __future__ import annotations

import contextlib
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel

from shared import constants as c
from shared.errors import RETRYABLE_CODES, CommandNotSent, CommandOutcomeUnknown, TransientAwsError, error_code
from shared.waiters import COMMAND, ENDED, Waiters, comment_for, invocation_output, read_invocation, send_task_success
from shared.workflow import EvaluateOutput

THROTTLED = frozenset({"ThrottlingException", "TooManyUpdates", "Throttling"})
"""SendCommand errors that prove SSM did not accept the command (safe to send again)."""


class SendOutput(BaseModel):
    """What this step did (its return value is only logged: the Task state's result is the completed token)."""

    command_id: str
    mode: str
    completed: bool = False


def send_command(ssm: Any, waiters: Waiters, evaluation: EvaluateOutput, *, execution: str, token: str) -> SendOutput:
    """Record the waiter, then send ``evaluation.command`` to the instance once.

    Raises:
        TransientAwsError: SendCommand was throttled (SSM accepted nothing; the waiter is removed): the Task state
            sends again.
        CommandNotSent: SSM refused the command (4xx): nothing runs on the instance.
        CommandOutcomeUnknown: 5xx, a timeout or a lost connection (SSM may have accepted the command), or an
            earlier attempt of this Task state already recorded its waiter (it may have sent it).
    """
    command = evaluation.command
    if command is None:
        raise CommandNotSent("the evaluation planned no command")
    iid = evaluation.instance_id
    if waiters.get(iid, execution, COMMAND) is not None:
        # An earlier attempt of this Task state got as far as its waiter and may have sent the command (a Lambda
        # service error after the function ran): look it up, never send again.
        raise CommandOutcomeUnknown(f"an earlier attempt of this step may have sent the command to {iid}; not sending again")
    waiters.put(iid, execution, COMMAND, token)
    try:
        resp = ssm.send_command(
            DocumentName=command.document,
            DocumentVersion=c.PINNED_DOCUMENT_VERSION,
            InstanceIds=[iid],
            Parameters=command.parameters,
            TimeoutSeconds=command.delivery_timeout_seconds,
            Comment=comment_for(execution),
        )
    except ClientError as exc:
        code = error_code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        message = exc.response.get("Error", {}).get("Message", "")
        if status >= 500:
            raise CommandOutcomeUnknown(f"SendCommand {iid}: {code} (HTTP {status}): {message}") from exc
        waiters.delete(iid, execution, COMMAND, token=token)  # SSM accepted nothing: the waiter goes with it
        if code in THROTTLED or code in RETRYABLE_CODES:
            raise TransientAwsError(f"SendCommand {iid}: {code}") from exc
        raise CommandNotSent(f"{code}: {message}") from exc
    except BotoCoreError as exc:
        raise CommandOutcomeUnknown(f"SendCommand {iid}: {type(exc).__name__}: {exc}") from exc
    command_id = str(resp["Command"]["CommandId"])
    # The status event finds the waiter by the command's comment; only the sweep's fallback needs the id.
    with contextlib.suppress(ClientError, BotoCoreError):
        waiters.set_command(iid, execution, command_id)
    return SendOutput(command_id=command_id, mode="send")


def follow_command(ssm: Any, sfn: Any, waiters: Waiters, *, instance_id: str, execution: str, token: str, command_id: str) -> SendOutput:
    """Record the waiter for an existing command; complete the token now if the command already ended.

    Raises:
        TransientAwsError: GetCommandInvocation or SendTaskSuccess was throttled, failed server-side or timed out.
    """
    waiters.put(instance_id, execution, COMMAND, token, command_id=command_id)
    resp = read_invocation(ssm, command_id, instance_id)
    if resp is None or resp.get("Status") not in ENDED:
        return SendOutput(command_id=command_id, mode="follow")
    send_task_success(sfn, token, {**invocation_output(resp), "CommandId": command_id})
    waiters.delete(instance_id, execution, COMMAND, token=token)
    return SendOutput(command_id=command_id, mode="follow", completed=True)
