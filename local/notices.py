"""The README's notification examples: ``python -m local.notices`` prints, for every outcome and for a sweep's
not-evaluated notice, the e-mail a subscriber receives, composed by the functions' own code
(:mod:`shared.notifications`). tests/unit/test_readme_notices.py keeps the README in step with it."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lambdas"))

from shared import constants as c  # noqa: E402
from shared.notifications import not_evaluated_notice, outcome_notice  # noqa: E402
from shared.visibility import MARK, what_to_do  # noqa: E402

MACHINE = "arn:aws:states:us-east-1:123456789012:execution:LifecycleStateMachineE3B1C2D4-Xq7Lw2Vn9Ab0:x"
IID, RUN, SESSION = "i-0abc12345def67890", "llama-ft-7", "261205093015"
BUCKET = "autostop-checkpointstorage-1x2y3z4w5v6u"


def execution(reason: str) -> str:
    """An execution's name as the triggers give it: ``<instance>-<run>-<reason>-<session>``."""
    return f"{IID}-{RUN}-{reason}-{SESSION}"


def manifest(reason: str) -> str:
    return f"s3://{BUCKET}/instances/arn:aws:ec2:us-east-1:123456789012:instance/{IID}/runs/{RUN}/manifests/{execution(reason)}.json"


REASONS: dict[str, str] = {
    c.OUTCOME_STOPPED: "completion marker present; checkpoint step_012000 (step 12000, 3 files, 15.2 GB) verified in S3; "
    "StopInstances accepted and the instance is stopped",
    c.OUTCOME_TERMINATED: "completion marker present; checkpoint step_012000 verified in S3; the instance is terminated",
    c.OUTCOME_HIBERNATED: "completion marker present; checkpoint step_012000 verified in S3; the instance is hibernated",
    c.OUTCOME_DRY_RUN: "checkpoint step_012000 verified in S3; autostop:dry-run=true, so StopInstances was not called",
    c.OUTCOME_NOT_COMPLETE: "trainer (pid 4242) is still running and no completion marker is present",
    c.OUTCOME_INCONCLUSIVE: "completion marker present; but the SSM agent is not online (PingStatus=ConnectionLost), "
    "so no checkpoint can be taken",
    c.OUTCOME_SKIPPED: "invalid tags: autostop:action 'halt' is not one of stop, terminate, hibernate",
    c.OUTCOME_CHECKPOINT_FAILED: "checkpoint command Failed, exit code 67: /data/ckpt/step_012000/model.safetensors changed "
    "during the checkpoint (size 15200000000 -> 15300000000); nothing was stopped",
    c.OUTCOME_UPLOAD_UNVERIFIED: "the manifest's VersionId is not in the command's result line (is the bucket versioned?)",
    c.OUTCOME_STOP_FAILED: "checkpoint verified; StopInstances failed: UnauthorizedOperation",
    c.OUTCOME_SPOT_CHECKPOINT_SAVED: "Spot interruption warning (2 minutes); the trainer saved step_012050 after SIGTERM; verified in S3",
    c.OUTCOME_SPOT_CHECKPOINT_FAILED: "Spot interruption warning; the checkpoint command did not finish within the 75 s grace",
    c.OUTCOME_RESUMED: "checkpoint step_012000 (step 12000, 3 file(s), 15200000000 bytes) downloaded and verified on the "
    "instance; resume command started (pid 5151)",
    c.OUTCOME_RESUME_FAILED: "ChecksumMismatch: s3://ckpt-bucket/.../step_012000/model.safetensors has composite CRC32 "
    "q0Xm5w==-75 on the instance, the manifest says 8PZ1Yg==-75; the checkpoint object was replaced or corrupted; "
    "nothing was deleted and the instance keeps running",
    "ExecutionTimedOut": f"execution {execution('complete')} timed out (the state machine's timeout); no outcome was "
    "recorded by the execution. Nothing more is done for this run and reason in this session; check the instance's "
    "state and the execution's history",
    "ExecutionAborted": f"execution {execution('complete')} was aborted (StopExecution); no outcome was recorded by the "
    "execution. Nothing more is done for this run and reason in this session; check the instance's state and the "
    "execution's history",
    "ExecutionFailed": f"execution {execution('complete')} failed outside its outcome states: States.Runtime: An error "
    "occurred while executing the state 'Verify checkpoint'; no outcome was recorded by the execution",
    "AttemptsExhausted": "attempt 20 of this run ended Inconclusive; no trigger starts another attempt for this run and session",
}
REASON_KIND = {
    c.OUTCOME_SPOT_CHECKPOINT_SAVED: "interruption",
    c.OUTCOME_SPOT_CHECKPOINT_FAILED: "interruption",
    c.OUTCOME_RESUMED: "resume",
    c.OUTCOME_RESUME_FAILED: "resume",
}
"""The reason in an outcome's execution name (complete for the rest)."""
WITH_CHECKPOINT = (c.OUTCOME_STOPPED, c.OUTCOME_TERMINATED, c.OUTCOME_HIBERNATED, c.OUTCOME_DRY_RUN, c.OUTCOME_SPOT_CHECKPOINT_SAVED)


def blocks() -> list[tuple[str, str, str]]:
    """(title, subject, text) for every outcome, in the README's order, and one not-evaluated notice."""
    out = []
    for outcome in REASONS:
        name = execution(REASON_KIND.get(outcome, "complete"))
        result = {
            "outcome": outcome,
            "reason": REASONS[outcome],
            "instance_id": IID,
            "run_id": RUN,
            "execution": name,
            **({"manifest_uri": manifest(REASON_KIND.get(outcome, "complete"))} if outcome in WITH_CHECKPOINT else {}),
        }
        ended = outcome not in c.ALL_OUTCOMES  # published by on_execution_ended, which does not read the Name tag
        notice = outcome_notice(
            result, instance_name=None if ended else "llama-ft-a100", execution_arn=f"{MACHINE.rsplit(':', 1)[0]}:{name}"
        )
        out.append((outcome, notice.subject, notice.text))
    skipped = {
        "i-0abc12345def67890": "not opted in: the opt-in tag key is spelled 'Autostop:Enabled'; autostop reads 'autostop:enabled' "
        "exactly (EC2 tag keys are case-sensitive)",
        "i-0fed98765cba43210": "completion marker present; but the SSM agent is not online (PingStatus=ConnectionLost), so no "
        "checkpoint can be taken",
    }
    names = {"i-0abc12345def67890": "bert-sweep-3"}
    problems = {iid: {"name": names.get(iid, ""), "reason": why, "what_to_do": what_to_do(why)} for iid, why in skipped.items()}
    notice = not_evaluated_notice(problems, trigger="schedule")
    out.append(
        (f"Not evaluated (one per sweep; each instance also gets `autostop:last-error` = `{MARK}<reason>`)", notice.subject, notice.text)
    )
    return out


def markdown() -> str:
    parts = []
    for title, subject, text in blocks():
        parts.append(f"**{title}**\n\n```text\nSubject: {subject}\n\n{text}```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(markdown(), end="")
