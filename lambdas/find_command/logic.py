"""Find command Task state: after an ambiguous SendCommand failure, find the command SSM may have accepted.

SendCommand is never re-sent (the checkpoint command signals the trainer, and a trainer must be signalled at
most once per run). But a 5xx or a timeout can come back after SSM accepted the command, which then runs. Every
command autostop sends carries the comment ``autostop <execution name>`` (:func:`comment_for`); this step
lists the instance's commands issued since the decision (ListCommands, every page) and returns the one with
this execution's comment, so the state machine follows it like one it sent. If none appears after a few
looks, nothing ran and the execution ends in its failure outcome with the original error.

AWS calls: ListCommands (SSM).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel

from shared.errors import TransientAwsError, error_code, is_transient
from shared.waiters import comment_for

LOOKS = 3
LOOK_INTERVAL_SECONDS = 3.0


class FindOutput(BaseModel):
    """Result of the Find command Task state (``$.lookup``)."""

    found: bool
    command_id: str | None = None
    reason: str


def find_command(
    ssm: Any,
    *,
    instance_id: str,
    execution: str,
    decided_at: datetime,
    error: dict[str, Any] | None,
    sleep: Callable[[float], None] = time.sleep,
    looks: int = LOOKS,
) -> FindOutput:
    """The command of ``execution`` on ``instance_id`` issued since ``decided_at``, or why none was found.

    Raises:
        TransientAwsError: ListCommands was throttled, failed server-side or timed out; the Task state retries.
    """
    wanted = comment_for(execution)
    since = (decided_at - timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    original = f"{(error or {}).get('Error', 'error')}: {str((error or {}).get('Cause', ''))[:300]}"
    for look in range(looks):
        if look:
            sleep(LOOK_INTERVAL_SECONDS)
        try:
            pages = ssm.get_paginator("list_commands").paginate(InstanceId=instance_id, Filters=[{"key": "InvokedAfter", "value": since}])
            found = [cmd for page in pages for cmd in page.get("Commands", []) if cmd.get("Comment") == wanted]
        except ClientError as exc:
            if is_transient(exc):
                raise TransientAwsError(f"ListCommands {instance_id}: {error_code(exc)}") from exc
            return FindOutput(found=False, reason=f"SendCommand failed ({original}) and ListCommands failed ({error_code(exc)})")
        except BotoCoreError as exc:
            raise TransientAwsError(f"ListCommands {instance_id}: {error_code(exc)}") from exc
        if found:
            found.sort(key=lambda cmd: str(cmd.get("RequestedDateTime", "")))
            command_id = str(found[0]["CommandId"])
            return FindOutput(
                found=True,
                command_id=command_id,
                reason=f"SendCommand failed ({original}) after SSM accepted the command: following command {command_id}",
            )
    return FindOutput(
        found=False,
        reason=f"SendCommand failed: {original}; no command of this execution reached SSM (looked {looks} times), so nothing ran",
    )
