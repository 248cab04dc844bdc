"""Confirm resume Task state: judge the restore command's result (Resumed or ResumeFailed).

The restore document verifies every downloaded file's size and checksum on the instance against the
manifest and prints one JSON result line; this step reads that line and the command status. Nothing is
deleted on failure: a partial download stays in a hidden folder of the checkpoint directory.
"""

from __future__ import annotations

from typing import Any

from shared.probe import last_json_line
from shared.workflow import EvaluateOutput, ResumeOutput


def confirm_resume(evaluation: EvaluateOutput, invocation: dict[str, Any]) -> ResumeOutput:
    """Resumed when the restore command succeeded and reported ``restored``; else ResumeFailed with the reason.

    ``invocation`` holds GetCommandInvocation's Status, StatusDetails, ResponseCode, StandardOutputContent
    and StandardErrorContent, or is empty when the agent never came online.
    """
    if not invocation:
        return ResumeOutput(resumed=False, outcome="ResumeFailed", reason="the restore command was not run")
    status = invocation.get("Status", "Unknown")
    line = last_json_line(invocation.get("StandardOutputContent", "") or "") or {}
    if status != "Success" or line.get("result") != "restored":
        if line.get("result") == "failed":
            why = f"{line.get('error', 'Failed')}: {line.get('message', '')}".strip()
        elif status in ("Pending", "InProgress", "Delayed"):
            why = f"restore command still {status} when the state machine stopped waiting"
        else:
            err = (invocation.get("StandardErrorContent", "") or "").strip().splitlines()
            why = f"restore command {status} ({invocation.get('StatusDetails', status)}), exit code {invocation.get('ResponseCode', -1)}"
            why += f"; stderr: {err[-1][:300]}" if err else ""
        return ResumeOutput(resumed=False, outcome="ResumeFailed", reason=f"{why}; nothing was deleted and the instance keeps running")
    restore = evaluation.restore
    where = restore.manifest_uri if restore else "the last verified checkpoint"
    trainer = str(line.get("trainer", "not_configured"))
    pid = line.get("pid") if isinstance(line.get("pid"), int) else None
    started = f"; resume command started (pid {pid})" if trainer == "started" else "; no resume-command tag, so no trainer was started"
    how = "was already on disk and matches" if line.get("present") == "already_present" else "downloaded and verified on the instance"
    return ResumeOutput(
        resumed=True,
        outcome="Resumed",
        reason=f"checkpoint {line.get('checkpoint')} (step {line.get('step')}, {line.get('files')} file(s), {line.get('bytes')} bytes) "
        f"from {where} {how}{started}",
        checkpoint=str(line.get("checkpoint")) if line.get("checkpoint") else None,
        trainer=trainer,
        pid=pid,
    )
