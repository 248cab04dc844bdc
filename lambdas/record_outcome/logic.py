"""Record outcome Task state: write the execution's outcome into the run record and the instance's
informational tags, right before Notify.

Only executions that acted on a run (they hold its lock: decisions complete, spot_checkpoint, resume) or
found its tagged action impossible (refused) are recorded; an execution that ended before (not complete,
skipped, malformed input) leaves no trace but its own history, and instances that are not opted in are
never tagged. Recording is informational: its failure never changes the outcome.
"""

from __future__ import annotations

import re
from typing import Any

from botocore.exceptions import ClientError

from shared import constants as c
from shared.errors import error_code
from shared.observability import logger
from shared.records import RunKey, RunRecords
from shared.workflow import RecordOutput

ACTED = ("complete", "spot_checkpoint", "resume", "refused")
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9 +\-=._:/@]")
"""Characters outside the set every AWS service accepts in tag values become a space."""


def tag_value(text: str) -> str:
    """``text`` as an EC2 tag value: safe characters only, at most 256 characters."""
    clean = " ".join(_TAG_UNSAFE.sub(" ", text).split())
    return clean if len(clean) <= c.TAG_VALUE_MAX else clean[: c.TAG_VALUE_MAX - 3] + "..."


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
