"""Payloads exchanged between the lifecycle state machine and its Task states' Lambdas.

The state machine (``infra/constructs/workflow.py``) refers to these field names in its JSONPath
expressions; the workflow tests run the synthesized definition against these models.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, computed_field

from shared import constants as c
from shared.constants import Action


class Payload(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)  # built on first use (shared.models.Frozen)


SESSION_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"
Reason = Literal["complete", "interruption", "rebalance", "resume"]


class LifecycleInput(Payload):
    """Execution input written by the trigger functions (see ``shared.executions``)."""

    instance_id: str = Field(pattern=rf"^{c.INSTANCE_ID_PATTERN}$")
    run_id: str = Field(min_length=1, max_length=63)
    reason: Reason
    """complete (schedule sweep, marker), interruption (Spot interruption warning), rebalance (rebalance
    recommendation, tag on-rebalance=checkpoint), resume (the instance started again)."""
    attempt: int = Field(1, ge=1)
    session: str | None = Field(None, pattern=SESSION_PATTERN)
    """The instance's LaunchTime when the trigger saw it; None (started by hand) means the current one."""
    deadline: AwareDatetime | None = None
    """interruption only: when EC2 interrupts the instance (the warning's time + 120 s); a naive time is malformed."""
    trigger: dict[str, Any] = {}


class CheckpointCommand(Payload):
    """What the Run checkpoint command Task state has the Send command function pass to SSM SendCommand."""

    document: str
    parameters: dict[str, list[str]]
    """Checkpoint document parameters, each value one string (validated by the document's allowedPattern)."""
    delivery_timeout_seconds: int
    """SendCommand ``TimeoutSeconds``: how long SSM may wait for the agent to pick the command up."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def wait_seconds(self) -> int:
        """How long the state machine waits for the command's end before it looks itself: SSM ends a command at the
        latest after its delivery timeout plus its ``executionTimeout`` parameter; one minute more for the event."""
        timeout = (self.parameters.get("executionTimeout") or ["3600"])[0]
        return self.delivery_timeout_seconds + (int(timeout) if timeout.isdigit() else 3600) + 60


class CheckpointLocation(Payload):
    bucket: str
    upload_prefix: str
    """Key prefix of this execution's checkpoint files."""
    manifest_key: str
    manifest_uri: str


class RestorePlan(Payload):
    """What the resume path restores: the previous session's last verified checkpoint."""

    manifest_uri: str
    from_session: str
    files: int
    bytes: int
    step: int | None = None


class EvaluateOutput(Payload):
    """Result of the Evaluate completion Task state (``$.evaluation``).

    ``decision`` routes the execution: ``complete`` → checkpoint, verify, stop; ``spot_checkpoint``
    (interruption, rebalance) → checkpoint, verify, no stop; ``resume`` → wait for the SSM agent, restore;
    any other decision ends the execution with ``outcome``.
    """

    decision: Literal["complete", "spot_checkpoint", "resume", "not_complete", "inconclusive", "skipped", "refused"]
    outcome: str | None
    """The execution outcome when the run ends here (NotComplete, Inconclusive, Skipped, StopFailed for
    ``refused``: the tagged action is impossible, found before the trainer is signalled; SpotCheckpointFailed
    or ResumeFailed when that path cannot start), else None."""
    reason: str
    instance_id: str
    run_id: str
    decided_at: datetime
    lifecycle_reason: Reason = "complete"
    session: str | None = None
    action: Action | None = None
    dry_run: bool = False
    checkpoint: CheckpointLocation | None = None
    command: CheckpointCommand | None = None
    """The checkpoint command (complete, spot_checkpoint) or the restore command (resume)."""
    poll_limit: int = 0
    """How many command-status (or agent) polls the state machine may make before giving up."""
    restore: RestorePlan | None = None
    deadline: datetime | None = None


class VerifyOutput(Payload):
    """Result of the Verify checkpoint Task state (``$.verification``)."""

    verified: bool
    outcome: Literal["Verified", "CheckpointFailed", "UploadUnverified"]
    reason: str
    manifest_uri: str | None = None
    files: int = 0
    bytes: int = 0
    step: int | None = None
    fresh: bool | None = None
    """interruption/rebalance: True when the trainer saved a newer checkpoint after the signal."""
    trainer: str | None = None
    """What the checkpoint script saw of the trainer (exited, still_running, not_running, ...)."""
    selection: str | None = None
    """One line: which checkpoint the instance chose, its step and rule, and the newest one it rejected and why."""
    upload_seconds: float | None = None
    """Seconds the instance spent uploading the checkpoint's files (its result line's ``upload_seconds``)."""
    verified_at: datetime | None = None
    """When Verify found the checkpoint verified (UTC); the start of the verified → stopped duration metric."""


class StopOutput(Payload):
    """Result of the Stop instance Task state (``$.stop``)."""

    outcome: str
    """Stopped, Terminated or Hibernated when the call was made (the state machine then confirms the
    state), DryRun, Skipped or StopFailed otherwise."""
    reason: str
    called: bool
    """True when StopInstances/TerminateInstances was called and accepted."""
    expected_state: Literal["stopped", "terminated", "none"] = "none"
    state: str | None = None
    """The instance's state when the stop was confirmed (EC2's state-change event or the sweep's DescribeInstances);
    None when no call was made."""
    launch_time: str | None = None
    """The instance's LaunchTime at that moment when it was read (``YYYY-MM-DDTHH:MM:SSZ``): another than the
    decision's session means it was started again after the stop."""


class ResumeOutput(Payload):
    """Result of the Confirm resume Task state (``$.resume``)."""

    resumed: bool
    outcome: Literal["Resumed", "ResumeFailed"]
    reason: str
    checkpoint: str | None = None
    trainer: str | None = None
    pid: int | None = None


class RecordOutput(Payload):
    """What the Record outcome Task state wrote (``$.result.record``)."""

    recorded: bool
    tags: bool
    detail: str = ""
    notified: bool = False
    """True when SNS accepted the readable notification (otherwise the state machine's fallback Notify publishes)."""
    event: bool = False
    """True when EventBridge accepted the ``autostop`` outcome event."""
