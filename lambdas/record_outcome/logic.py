"""Record outcome Task state: write the execution's outcome into the run record and the instance's
informational tags, then notify (SNS, people and machines) and put the ``autostop`` outcome event (EventBridge).

Only executions that acted on a run (they hold its lock: decisions complete, spot_checkpoint, resume) or
found its tagged action impossible (refused) are recorded; an execution that ended before (not complete,
skipped, malformed input) leaves no trace but its own history, and instances that are not opted in are
never tagged. Recording is informational: its failure never changes the outcome.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from shared import constants as c
from shared.errors import error_code
from shared.instances import describe_instance
from shared.notifications import Outlets, clean_reason, outcome_notice, publish, put_event, tag_value
from shared.observability import logger
from shared.records import RunKey, RunRecords
from shared.times import parse_time
from shared.workflow import RecordOutput

ACTED = ("complete", "spot_checkpoint", "resume", "refused")


TRAINER_GONE = ("exited", "not_running")
"""What the checkpoint script reports when no trainer process is left on the instance (Verify's ``trainer``)."""


def trainer_left(verification: dict[str, Any]) -> bool:
    """True when the checkpoint command left no trainer in memory: it exited on the signal (or was not running),
    or it saved a fresh checkpoint after the signal and is not reported as still running."""
    if not verification.get("verified"):
        return False
    trainer = verification.get("trainer")
    return trainer in TRAINER_GONE or (verification.get("fresh") is True and trainer != "still_running")


def record_outcome(state: dict[str, Any], execution: str, *, records: RunRecords, ec2: Any, tag_prefix: str) -> RecordOutput:
    """Write ``state["result"]`` into the run record and the instance tags.

    Args:
        state: the execution's state (``$``): ``result`` {outcome, reason, manifest_uri?}, ``evaluation``.
        execution: the execution name.
        records: run records (UpdateItem/PutItem through :class:`RunRecords`).
        ec2: boto3 EC2 client (CreateTags, DeleteTags).
        tag_prefix: the deployment's tag prefix (``autostop``).

    Returns:
        What was written; never raises for an AWS error (the outcome stands without its record).
    """
    result = state.get("result") or {}
    evaluation = state.get("evaluation") or {}
    outcome, reason = str(result.get("outcome", "")), str(result.get("reason", ""))
    session = evaluation.get("session")
    if evaluation.get("decision") not in ACTED or not session:
        return RecordOutput(recorded=False, tags=False, detail="this execution did not act on a run; nothing to record")
    key = RunKey(str(evaluation["instance_id"]), str(evaluation["run_id"]), str(session))
    verification = state.get("verification") or {}

    def change(record: dict[str, Any]) -> None:
        record["outcome"] = outcome
        record["reason"] = reason[:1000]
        executions = list(record.get("executions") or [])
        if execution not in executions:
            executions.append(execution)
        record["executions"] = executions[-20:]
        if outcome in (c.OUTCOME_STOPPED, c.OUTCOME_TERMINATED, c.OUTCOME_HIBERNATED):
            record["auto_stopped"] = True
        # What a later start resumes from (shared/records.py resume_source): set by a stop or a saved Spot
        # checkpoint, never cleared by a later failure in the same session.
        if outcome in c.RESUMABLE_OUTCOMES and record.get("last_checkpoint"):
            record["resumable"] = True
        # A Spot warning's hibernate action happens whatever this execution's outcome: a trainer still in memory
        # comes back with it, so no older session's checkpoint may be restored under it. But a trainer that this
        # execution signalled and that exited (saved and left, as the trainer contract asks) is gone from memory:
        # the session then resumes from its verified checkpoint like a stopped one.
        spot_action = (state.get("trigger") or {}).get("action")
        if outcome == c.OUTCOME_HIBERNATED:
            record["hibernated"] = True
        elif spot_action == "hibernate":
            if trainer_left(verification) and record.get("last_checkpoint"):
                record["resumable"] = True
                record.pop("hibernated", None)
            else:
                record["hibernated"] = True
        if record.get("active") == execution:
            record.pop("active")
            record.pop("active_until", None)

    recorded, detail = True, ""
    try:
        records.update(key, change, status=outcome, execution=execution, detail=reason)
    except Exception as exc:  # informational: the outcome stands, the notification says what was not recorded
        logger.exception("run record not written")
        recorded, detail = False, f"run record not written: {type(exc).__name__}: {exc}"

    tags = [{"Key": f"{tag_prefix}:{c.TAG_STATE}", "Value": tag_value(outcome)}]
    if verification.get("verified") and verification.get("manifest_uri"):
        tags.append({"Key": f"{tag_prefix}:{c.TAG_LAST_CHECKPOINT}", "Value": tag_value(str(verification["manifest_uri"]))})
    failed = outcome in c.FAILED_OUTCOMES
    if failed:
        tags.append({"Key": f"{tag_prefix}:{c.TAG_LAST_ERROR}", "Value": tag_value(f"{outcome}: {reason}")})
    tagged = True
    try:
        ec2.create_tags(Resources=[key.instance_id], Tags=tags)
        if not failed:
            ec2.delete_tags(Resources=[key.instance_id], Tags=[{"Key": f"{tag_prefix}:{c.TAG_LAST_ERROR}"}])
    except ClientError as exc:
        logger.warning("instance tags not written", extra={"error": error_code(exc)})
        tagged = False
        detail = "; ".join(filter(None, [detail, f"instance tags not written: {error_code(exc)}"]))
    return RecordOutput(recorded=recorded, tags=tagged, detail=detail)


class NotificationNotSent(RuntimeError):
    """SNS refused the outcome notification; the state machine's fallback Notify state publishes the raw result."""


def finish(
    state: dict[str, Any], execution: str, execution_arn: str, *, records: RunRecords, ec2: Any, tag_prefix: str, outlets: Outlets
) -> dict[str, Any]:
    """Record, tag, notify and publish the outcome event of one execution; returns the new ``$.result``.

    The result's ``reason`` loses any Lambda error object (``clean_reason``), so the run record, the last-error tag,
    the notification and the execution's Fail cause read the same sentence. ``result["record"]`` says what was written.
    AWS calls: those of :func:`record_outcome`, DescribeInstances (the Name tag), SNS Publish, EventBridge PutEvents.
    Raises :class:`NotificationNotSent` when SNS refuses (after recording), so the fallback Notify publishes instead.
    """
    result = dict(state.get("result") or {})
    result["reason"] = clean_reason(str(result.get("reason", "")))
    written = record_outcome({**state, "result": result}, execution, records=records, ec2=ec2, tag_prefix=tag_prefix)
    notice = outcome_notice(result, instance_name=instance_name(ec2, result.get("instance_id")), execution_arn=execution_arn)
    event = False
    try:
        event = put_event(outlets.events, notice, resources=[execution_arn])
    except (ClientError, BotoCoreError) as exc:  # the event is an extra outlet: its loss is logged, never fatal
        logger.warning("outcome event not put", extra={"error": error_code(exc)})
    if not outlets.topic_arn:
        raise NotificationNotSent(f"no outcome topic is configured ({c.ENV_OUTCOME_TOPIC_ARN})")
    try:
        publish(outlets.sns, outlets.topic_arn, notice, outcome=str(result.get("outcome") or "Unknown"))
    except (ClientError, BotoCoreError) as exc:
        raise NotificationNotSent(f"SNS Publish failed: {error_code(exc)}") from exc
    record = written.model_copy(update={"notified": True, "event": event})
    return {**result, "console_url": notice.data["console_url"], "record": record.model_dump(mode="json")}


def instance_name(ec2: Any, instance_id: Any) -> str | None:
    """The instance's ``Name`` tag (DescribeInstances), or None when it has none or cannot be read."""
    if not isinstance(instance_id, str) or not instance_id.startswith("i-"):
        return None
    try:
        snap = describe_instance(ec2, instance_id)
    except (ClientError, BotoCoreError):
        return None
    return snap.tags.get("Name") if snap else None


REASON_CLASSES: tuple[tuple[str, str], ...] = (
    ("invalid tags", "invalid_tags"),
    ("cannot read tags", "invalid_tags"),
    ("is spelled", "invalid_tags"),
    ("not opted in", "not_opted_in"),
    ("SSM agent is not online", "agent_offline"),
    ("probe", "probe"),
    ("Auto Scaling group", "action_impossible"),
    ("cannot be stopped", "action_impossible"),
    ("hibernat", "action_impossible"),
    ("timed out", "timeout"),
    ("failed:", "task_error"),
)
"""Reason text to a reason class (first match): a metric dimension of a few values, not a free-form sentence."""


def reason_class(outcome: str, reason: str) -> str:
    """A bounded label for a metric dimension: ``ok`` for outcomes that did what the tags asked, else from the reason."""
    if outcome in c.DESTRUCTIVE_OUTCOMES or outcome in (c.OUTCOME_SPOT_CHECKPOINT_SAVED, c.OUTCOME_RESUMED, c.OUTCOME_DRY_RUN):
        return "ok"
    if outcome == c.OUTCOME_NOT_COMPLETE:
        return "not_complete"
    lowered = reason.lower()
    return next((label for text, label in REASON_CLASSES if text.lower() in lowered), "other")


def outcome_metrics(
    state: dict[str, Any], result: dict[str, Any], started_at: str | None, now: datetime
) -> tuple[dict[str, str], dict[str, float]]:
    """(dimensions, metric name to value) for one execution's outcome.

    Dimensions: ``outcome``, ``reason_class``, ``trigger`` (the execution input's ``trigger.source``). Metrics:
    ``Outcomes`` (count 1), and where known ``CheckpointBytes`` (bytes), ``UploadSeconds`` (on the instance),
    ``DecisionToVerifiedSeconds`` (Evaluate's ``decided_at``, else the execution's start, to Verify's
    ``verified_at``) and ``VerifiedToStoppedSeconds`` (``verified_at`` to now, for a stop).
    """
    outcome = str(result.get("outcome", "Unknown"))
    dims = {
        "outcome": outcome,
        "reason_class": reason_class(outcome, str(result.get("reason", ""))),
        "trigger": str((state.get("trigger") or {}).get("source") or "unknown"),
    }
    values: dict[str, float] = {"Outcomes": 1}
    verification = state.get("verification") or {}
    if verification.get("verified"):
        values["CheckpointBytes"] = float(verification.get("bytes") or 0)
        if isinstance(verification.get("upload_seconds"), int | float):
            values["UploadSeconds"] = float(verification["upload_seconds"])
        decided = (state.get("evaluation") or {}).get("decided_at")
        verified_at, started = parse_time(verification.get("verified_at")), parse_time(decided) or parse_time(started_at)
        if verified_at and started:
            values["DecisionToVerifiedSeconds"] = max(0.0, (verified_at - started).total_seconds())
        if verified_at and outcome in c.DESTRUCTIVE_OUTCOMES:
            values["VerifiedToStoppedSeconds"] = max(0.0, (now - verified_at).total_seconds())
    return dims, values
