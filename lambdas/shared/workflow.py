"""Payloads exchanged between the lifecycle state machine and its Task states' Lambdas.

The state machine (``infra/constructs/workflow.py``) refers to these field names in its JSONPath
expressions; the workflow tests run the synthesized definition against these models.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.models import Action


class Payload(BaseModel):
    model_config = ConfigDict(frozen=True)


class LifecycleInput(Payload):
    """Execution input written by the trigger functions (see ``shared.executions``)."""

    instance_id: str = Field(pattern=r"^i-[0-9a-f]{8,17}$")
    run_id: str = Field(min_length=1, max_length=63)
    reason: Literal["complete"]
    attempt: int = Field(1, ge=1)
    trigger: dict[str, Any] = {}


class CheckpointCommand(Payload):
    """What the Send checkpoint command Task state passes to SSM SendCommand."""

    document: str
    parameters: dict[str, list[str]]
    """Checkpoint document parameters, each value one string (validated by the document's allowedPattern)."""
    delivery_timeout_seconds: int
    """SendCommand ``TimeoutSeconds``: how long SSM may wait for the agent to pick the command up."""


class CheckpointLocation(Payload):
    bucket: str
    upload_prefix: str
    """Key prefix of this execution's checkpoint files."""
    manifest_key: str
    manifest_uri: str


class EvaluateOutput(Payload):
    """Result of the Evaluate completion Task state (``$.evaluation``)."""

    decision: Literal["complete", "not_complete", "inconclusive", "skipped", "refused"]
    outcome: str | None
    """The execution outcome when the run ends here (NotComplete, Inconclusive, Skipped, or StopFailed for
    ``refused``: the tagged action is impossible, found before the trainer is signalled), else None."""
    reason: str
    instance_id: str
    run_id: str
    decided_at: datetime
    action: Action | None = None
    dry_run: bool = False
    checkpoint: CheckpointLocation | None = None
    command: CheckpointCommand | None = None


class VerifyOutput(Payload):
    """Result of the Verify checkpoint Task state (``$.verification``)."""

    verified: bool
    outcome: Literal["Verified", "CheckpointFailed", "UploadUnverified"]
    reason: str
    manifest_uri: str | None = None
    files: int = 0
    bytes: int = 0
    step: int | None = None


class StopOutput(Payload):
    """Result of the Stop instance Task state (``$.stop``)."""

    outcome: str
    """Stopped, Terminated or Hibernated when the call was made (the state machine then confirms the
    state), DryRun, Skipped or StopFailed otherwise."""
    reason: str
    called: bool
    """True when StopInstances/TerminateInstances was called and accepted."""
    expected_state: Literal["stopped", "terminated", "none"] = "none"
