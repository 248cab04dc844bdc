"""The Record outcome and Confirm resume Task states' handlers: what an execution leaves in its run record
and on the instance's informational tags, and how a restore command's result becomes Resumed/ResumeFailed."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from shared.records import RunKey, RunRecords, checkpoint_entry, resume_source
from tests.integration.conftest import BUCKET, CTX, RUNS_TABLE, World

SESSION = "2026-11-30T03:18:03Z"
MANIFEST = f"s3://{BUCKET}/runs/run-a/manifests/exec.json"
TAG_VALUE_CHARS = re.compile(r"^[A-Za-z0-9 +\-=._:/@]*$")


def run_tags(run: str = "run-a") -> dict[str, str]:
    return {"autostop:enabled": "true", "autostop:run-id": run, "autostop:checkpoint-dir": "{root}/ckpt"}


def records(world: World) -> RunRecords:
    return RunRecords(world.client("dynamodb"), RUNS_TABLE)


def instance_tags(world: World, instance_id: str) -> dict[str, str]:
    raw = world.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {t["Key"]: t["Value"] for t in raw.get("Tags", [])}


def state(
    instance_id: str,
    decision: str,
    outcome: str,
    reason: str,
    *,
    verified: bool = False,
    manifest: str | None = None,
    session: str | None = SESSION,
    trigger: dict[str, Any] | None = None,
) -> dict[str, Any]:
    evaluation = {"decision": decision, "instance_id": instance_id, "run_id": "run-a", "session": session}
    result: dict[str, Any] = {"outcome": outcome, "reason": reason}
    if manifest:
        result["manifest_uri"] = manifest
    return {
        # the execution input is the state's root: its trigger stays there (infra/constructs/workflow.py)
        **({"trigger": trigger} if trigger is not None else {}),
        "input": {"instance_id": instance_id, "run_id": "run-a", "reason": "complete"},
        "evaluation": evaluation,
        "verification": {"verified": verified, "manifest_uri": manifest},
        "result": result,
    }


def record(state_: dict[str, Any], execution: str) -> dict[str, Any]:
    from record_outcome.handler import lambda_handler

    out = lambda_handler({"state": state_, "execution_name": execution}, CTX)
    assert out.get("outcome") == (state_.get("result") or {}).get("outcome")  # the new $.result: the outcome stands, with what was written
    return out["record"]


# --- Record outcome -----------------------------------------------------------------------------------------


def test_a_stop_is_recorded_and_tagged_and_releases_the_trainer(world: World) -> None:
    inst = world.instance("a", run_tags())
    key = RunKey(inst.instance_id, "run-a", SESSION)
    assert records(world).claim(key, "complete", "exec-1", acting=True).owned

    out = record(state(inst.instance_id, "complete", "Stopped", "stopped after checkpoint", verified=True, manifest=MANIFEST), "exec-1")

    assert out == {"recorded": True, "tags": True, "detail": "", "notified": True, "event": True}
    stored = records(world).get(key)
    assert stored is not None
    assert (stored["outcome"], stored["status"], stored["reason"]) == ("Stopped", "Stopped", "stopped after checkpoint")
    assert stored["auto_stopped"] is True
    assert "active" not in stored  # another execution may act on the trainer now
    assert stored["locks"] == {"complete": "exec-1"}  # the lock stays: the reason is done for this session
    assert stored["executions"] == ["exec-1"]
    assert [(h["status"], h["execution"]) for h in stored["history"]] == [("claimed:complete", "exec-1"), ("Stopped", "exec-1")]
    assert stored["version"] == 2
    tags = instance_tags(world, inst.instance_id)
    assert tags["autostop:state"] == "Stopped"
    assert tags["autostop:last-checkpoint"] == MANIFEST
    assert "autostop:last-error" not in tags


def test_a_failure_tags_a_sanitized_short_error_and_a_later_success_removes_it(world: World) -> None:
    inst = world.instance("a", run_tags())
    key = RunKey(inst.instance_id, "run-a", SESSION)
    records(world).claim(key, "interruption", "exec-1", acting=True)
    reason = 'upload failed: "AccessDenied"; $(whoami) `id` <b>\n\tretry & see {logs} ' + "é" * 10 + "x" * 1200

    out = record(state(inst.instance_id, "spot_checkpoint", "SpotCheckpointFailed", reason), "exec-1")

    assert (out["recorded"], out["tags"]) == (True, True)
    tags = instance_tags(world, inst.instance_id)
    assert tags["autostop:state"] == "SpotCheckpointFailed"
    error = tags["autostop:last-error"]
    assert error.startswith("SpotCheckpointFailed: upload failed: AccessDenied whoami id b retry see logs x")
    assert len(error) <= 256 and error.endswith("...")
    assert TAG_VALUE_CHARS.fullmatch(error) and "  " not in error
    assert "autostop:last-checkpoint" not in tags  # nothing was verified
    stored = records(world).get(key)
    assert stored["outcome"] == "SpotCheckpointFailed" and "active" not in stored  # type: ignore[index]
    assert not stored.get("auto_stopped")  # type: ignore[union-attr]
    assert len(stored["reason"]) == 1000  # type: ignore[index]

    # a later execution of the session succeeds: the error tag goes, the state follows
    records(world).claim(key, "rebalance", "exec-2", acting=True)
    manifest = f"s3://{BUCKET}/runs/run-a/manifests/exec-2.json"
    again = record(state(inst.instance_id, "spot_checkpoint", "SpotCheckpointSaved", "saved", verified=True, manifest=manifest), "exec-2")

    assert (again["recorded"], again["tags"]) == (True, True)
    tags = instance_tags(world, inst.instance_id)
    assert tags["autostop:state"] == "SpotCheckpointSaved"
    assert tags["autostop:last-checkpoint"] == manifest
    assert "autostop:last-error" not in tags
    assert records(world).get(key)["executions"] == ["exec-1", "exec-2"]  # type: ignore[index]


def verified_checkpoint(world: World, key: RunKey) -> None:
    """What Verify checkpoint writes before Record outcome runs."""
    entry = checkpoint_entry(manifest_uri=MANIFEST, execution="exec-1", files=[], total_bytes=0, step=7, fresh=True, verified_at=SESSION)
    records(world).update(key, lambda r: r.update(last_checkpoint=entry), status="checkpoint-verified", execution="exec-1")


@pytest.mark.parametrize(
    ("decision", "outcome", "action", "checkpoint", "resumable", "hibernated"),
    [
        ("complete", "Stopped", None, True, True, False),
        ("complete", "Stopped", None, False, False, False),  # nothing verified: nothing to resume from
        ("complete", "Hibernated", None, True, False, True),
        ("complete", "Terminated", None, True, False, False),
        ("complete", "CheckpointFailed", None, True, False, False),
        ("complete", "UploadUnverified", None, True, False, False),
        ("spot_checkpoint", "SpotCheckpointSaved", "stop", True, True, False),
        ("spot_checkpoint", "SpotCheckpointSaved", "terminate", True, True, False),
        ("spot_checkpoint", "SpotCheckpointSaved", None, True, True, False),  # a rebalance upload: no instance action
        ("spot_checkpoint", "SpotCheckpointSaved", "hibernate", True, True, True),
        ("spot_checkpoint", "SpotCheckpointSaved", "hibernate", False, False, True),
        ("spot_checkpoint", "SpotCheckpointFailed", "stop", True, False, False),
        # EC2 hibernates the instance whatever the upload did: an older session must not be restored under the trainer
        ("spot_checkpoint", "SpotCheckpointFailed", "hibernate", False, False, True),
        ("refused", "SpotCheckpointFailed", "hibernate", False, False, True),
    ],
)
def test_the_outcome_marks_the_session_resumable_or_hibernated(
    world: World, decision: str, outcome: str, action: str | None, checkpoint: bool, resumable: bool, hibernated: bool
) -> None:
    inst = world.instance("a", run_tags())
    key = RunKey(inst.instance_id, "run-a", SESSION)
    if checkpoint:
        verified_checkpoint(world, key)
    trigger = {"source": "EC2 Spot Instance Interruption Warning", **({"action": action} if action else {})}

    out = record(state(inst.instance_id, decision, outcome, "r", trigger=trigger), "exec-1")

    assert out["recorded"] is True, out["detail"]
    stored = records(world).get(key)
    assert stored is not None and stored["outcome"] == outcome
    assert stored.get("resumable", False) is resumable
    assert stored.get("hibernated", False) is hibernated


def test_a_later_failure_in_the_session_keeps_it_resumable(world: World) -> None:
    inst = world.instance("a", run_tags())
    key = RunKey(inst.instance_id, "run-a", SESSION)
    verified_checkpoint(world, key)
    warning = {"source": "EC2 Spot Instance Interruption Warning", "action": "stop"}
    record(state(inst.instance_id, "spot_checkpoint", "SpotCheckpointSaved", "saved", trigger=warning), "exec-1")

    record(state(inst.instance_id, "complete", "StopFailed", "the stop failed"), "exec-2")

    stored = records(world).get(key)
    assert stored is not None
    assert (stored["outcome"], stored["resumable"]) == ("StopFailed", True)
    assert "hibernated" not in stored
    assert resume_source([stored]) == (stored, "")


@pytest.mark.parametrize(
    ("trainer", "fresh", "restores", "hibernated"),
    [
        ("exited", True, True, False),  # saved on the signal and exited: nothing comes back from memory
        ("exited", False, True, False),  # exited without a newer save: its last verified checkpoint is its state
        ("not_running", None, True, False),  # no trainer process was left to hibernate
        ("still_running", False, False, True),  # ignored the signal: it comes back from memory
        ("not_configured", None, False, True),  # nothing was signalled: it comes back from memory
    ],
)
def test_a_hibernate_interruption_whose_trainer_exited_is_resumable_not_hibernated(
    world: World, trainer: str, fresh: bool | None, restores: bool, hibernated: bool
) -> None:
    """F12: the interruption execution signalled the trainer, which saved and exited as the contract asks;
    hibernation keeps memory, but the trainer is gone from it: the next start must restore and restart it."""
    inst = world.instance("a", run_tags())
    key = RunKey(inst.instance_id, "run-a", SESSION)
    verified_checkpoint(world, key)
    st = state(
        inst.instance_id,
        "spot_checkpoint",
        "SpotCheckpointSaved",
        "saved",
        verified=True,
        manifest=MANIFEST,
        trigger={"source": "EC2 Spot Instance Interruption Warning", "action": "hibernate"},
    )
    st["verification"].update(trainer=trainer, fresh=fresh)

    out = record(st, "exec-1")

    assert out["recorded"] is True, out["detail"]
    stored = records(world).get(key)
    assert stored is not None
    assert stored.get("hibernated", False) is hibernated
    assert stored.get("resumable", False) is True  # a saved Spot checkpoint; "hibernated" decides below
    source, why = resume_source([stored])
    assert (source is not None) is restores, why


def test_last_checkpoint_only_moves_forward_by_step_then_time(world: World) -> None:
    """F11: a rebalance Verify (older step) finishing after the completion Verify must not replace its checkpoint."""
    inst = world.instance("a", run_tags())
    key = RunKey(inst.instance_id, "run-a", SESSION)
    recs = records(world)

    def verify(execution: str, step: int | None, at: str) -> None:
        entry = checkpoint_entry(
            manifest_uri=f"s3://{BUCKET}/runs/run-a/manifests/{execution}.json",
            execution=execution,
            files=[],
            total_bytes=0,
            step=step,
            fresh=None,
            verified_at=at,
        )
        recs.update(key, lambda r: r.update(last_checkpoint=entry), status="checkpoint-verified", execution=execution)

    verify("complete-exec", 300, "2026-11-30T04:00:00Z")
    verify("rebalance-exec", 200, "2026-11-30T04:00:05Z")  # finished later, but an older step
    assert records(world).get(key)["last_checkpoint"]["execution"] == "complete-exec"  # type: ignore[index]
    verify("unknown-step", None, "2026-11-30T04:00:09Z")  # a None step counts lowest
    assert records(world).get(key)["last_checkpoint"]["execution"] == "complete-exec"  # type: ignore[index]
    verify("same-step-later", 300, "2026-11-30T04:01:00Z")  # same step, verified later: newer
    stored = records(world).get(key)
    assert stored is not None and stored["last_checkpoint"]["execution"] == "same-step-later"
    assert "kept that one" in stored["history"][-2]["detail"]
    verify("next-step", 301, "2026-11-30T03:00:00Z")  # a higher step wins whatever its time
    assert records(world).get(key)["last_checkpoint"]["execution"] == "next-step"  # type: ignore[index]


def test_a_long_manifest_uri_tag_is_cut_to_the_ec2_limit(world: World) -> None:
    inst = world.instance("a", run_tags())
    manifest = f"s3://{BUCKET}/" + "deep/" * 80 + "m.json"

    record(state(inst.instance_id, "complete", "Stopped", "ok", verified=True, manifest=manifest), "exec-1")

    value = instance_tags(world, inst.instance_id)["autostop:last-checkpoint"]
    assert len(value) == 256 and value == manifest[:253] + "..."


def test_executions_that_did_not_act_leave_no_record_and_no_tags(world: World) -> None:
    inst = world.instance("a", run_tags())
    before = instance_tags(world, inst.instance_id)
    cases = [
        state(inst.instance_id, "not_complete", "NotComplete", "trainer still running"),
        state(inst.instance_id, "skipped", "Skipped", "not acting: complete of this run was already handled"),
        state(inst.instance_id, "inconclusive", "Inconclusive", "probe failed"),
        state(inst.instance_id, "complete", "Stopped", "no session known", session=None),
        {},
    ]

    for n, case in enumerate(cases):
        out = record(case, f"exec-{n}")

        assert out == {
            "recorded": False,
            "tags": False,
            "detail": "this execution did not act on a run; nothing to record",
            "notified": True,
            "event": True,
        }
    assert world.client("dynamodb").scan(TableName=RUNS_TABLE)["Items"] == []
    assert instance_tags(world, inst.instance_id) == before


def test_a_refused_action_is_recorded_as_an_error(world: World) -> None:
    inst = world.instance("a", run_tags())

    out = record(state(inst.instance_id, "refused", "StopFailed", "its Spot request is one-time"), "exec-1")

    assert (out["recorded"], out["tags"]) == (True, True)
    assert records(world).get(RunKey(inst.instance_id, "run-a", SESSION))["outcome"] == "StopFailed"  # type: ignore[index]
    assert instance_tags(world, inst.instance_id)["autostop:last-error"] == "StopFailed: its Spot request is one-time"


def test_a_terminated_instance_is_recorded_as_auto_stopped(world: World) -> None:
    inst = world.instance("a", run_tags())
    records(world).claim(RunKey(inst.instance_id, "run-a", SESSION), "complete", "exec-1")
    world.client("ec2").terminate_instances(InstanceIds=[inst.instance_id])

    out = record(
        state(inst.instance_id, "complete", "Terminated", "terminated after checkpoint", verified=True, manifest=MANIFEST), "exec-1"
    )

    assert out["recorded"] is True
    stored = records(world).get(RunKey(inst.instance_id, "run-a", SESSION))
    assert stored["outcome"] == "Terminated" and stored["auto_stopped"] is True  # type: ignore[index]


class TagsRefused:
    """EC2 as AWS answers for an instance that is gone (moto tags any id, so the error is injected here)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _gone(self, operation: str, **kwargs: Any) -> None:
        self.calls.append(operation)
        error = {"Error": {"Code": "InvalidInstanceID.NotFound", "Message": f"The instance ID '{kwargs['Resources'][0]}' does not exist"}}
        raise ClientError(error, operation)

    def create_tags(self, **kwargs: Any) -> None:
        self._gone("CreateTags", **kwargs)

    def delete_tags(self, **kwargs: Any) -> None:
        self._gone("DeleteTags", **kwargs)


def test_tags_that_cannot_be_written_do_not_fail_the_record(world: World) -> None:
    from record_outcome.logic import record_outcome

    ec2 = TagsRefused()
    iid = "i-0123456789abcdef0"

    out = record_outcome(
        state(iid, "complete", "Stopped", "ok", verified=True, manifest=MANIFEST),
        "exec-1",
        records=records(world),
        ec2=ec2,
        tag_prefix="autostop",
    )

    assert (out.recorded, out.tags) == (True, False)
    assert out.detail == "instance tags not written: InvalidInstanceID.NotFound"
    assert ec2.calls == ["CreateTags"]
    assert records(world).get(RunKey(iid, "run-a", SESSION))["outcome"] == "Stopped"  # type: ignore[index]


def test_a_record_that_cannot_be_written_does_not_fail_the_step(world: World) -> None:
    from record_outcome.logic import record_outcome

    inst = world.instance("a", run_tags())
    missing = RunRecords(world.client("dynamodb"), "no-such-table")

    out = record_outcome(
        state(inst.instance_id, "complete", "Stopped", "ok"), "exec-1", records=missing, ec2=world.client("ec2"), tag_prefix="autostop"
    )

    assert (out.recorded, out.tags) == (False, True)
    assert out.detail.startswith("run record not written: ") and "ResourceNotFoundException" in out.detail
    assert instance_tags(world, inst.instance_id)["autostop:state"] == "Stopped"


# --- Confirm resume -------------------------------------------------------------------------------------------


def evaluation() -> dict[str, Any]:
    return {
        "decision": "resume",
        "outcome": None,
        "reason": "restore",
        "instance_id": "i-0123456789abcdef0",
        "run_id": "run-a",
        "decided_at": datetime(2026, 11, 30, 3, 20, tzinfo=UTC).isoformat(),
        "lifecycle_reason": "resume",
        "session": SESSION,
        "restore": {"manifest_uri": MANIFEST, "from_session": "2026-11-29T00:00:00Z", "files": 2, "bytes": 2048, "step": 700},
    }


def confirm(invocation: dict[str, Any] | None) -> dict[str, Any]:
    from confirm_resume.handler import lambda_handler

    event: dict[str, Any] = {"evaluation": evaluation()}
    if invocation is not None:
        event["invocation"] = invocation
    return lambda_handler(event, CTX)


def invocation(status: str, line: dict[str, Any] | None, *, code: int = 0, stderr: str = "") -> dict[str, Any]:
    stdout = "downloading 2 files\nverifying sha256\n" + (json.dumps(line) + "\n" if line is not None else "")
    return {
        "Status": status,
        "StatusDetails": status,
        "ResponseCode": code,
        "StandardOutputContent": stdout,
        "StandardErrorContent": stderr,
    }


RESTORED = {
    "result": "restored",
    "checkpoint": "step_000700",
    "files": 2,
    "bytes": 2048,
    "step": 700,
    "present": "downloaded",
    "trainer": "started",
    "pid": 4242,
}


def test_a_restored_line_with_a_started_trainer_is_resumed() -> None:
    out = confirm(invocation("Success", RESTORED))

    assert (out["resumed"], out["outcome"]) == (True, "Resumed")
    assert (out["checkpoint"], out["trainer"], out["pid"]) == ("step_000700", "started", 4242)
    assert "checkpoint step_000700 (step 700, 2 file(s), 2048 bytes)" in out["reason"]
    assert f"from {MANIFEST} downloaded and verified on the instance" in out["reason"]
    assert "resume command started (pid 4242)" in out["reason"]


def test_an_already_present_checkpoint_without_a_resume_command_is_resumed() -> None:
    line = {**RESTORED, "present": "already_present", "trainer": "not_configured", "pid": None}

    out = confirm(invocation("Success", line))

    assert (out["outcome"], out["trainer"], out["pid"]) == ("Resumed", "not_configured", None)
    assert "was already on disk and matches" in out["reason"]
    assert "no resume-command tag, so no trainer was started" in out["reason"]


def test_a_failed_line_is_resume_failed_with_the_scripts_error() -> None:
    line = {"result": "failed", "error": "ChecksumMismatch", "message": "step_000700/w.bin: sha256 differs from the manifest"}

    out = confirm(invocation("Failed", line, code=67))

    assert (out["resumed"], out["outcome"]) == (False, "ResumeFailed")
    assert out["reason"].startswith("ChecksumMismatch: step_000700/w.bin: sha256 differs from the manifest")
    assert "nothing was deleted and the instance keeps running" in out["reason"]
    assert out["checkpoint"] is None and out["pid"] is None


def test_a_success_status_with_a_failed_line_is_still_resume_failed() -> None:
    out = confirm(invocation("Success", {"result": "failed", "error": "RestoreConflict", "message": "w.bin exists and differs"}))
    assert out["outcome"] == "ResumeFailed"
    assert out["reason"].startswith("RestoreConflict: w.bin exists and differs")


def test_a_command_still_in_progress_is_resume_failed() -> None:
    out = confirm(invocation("InProgress", None))
    assert out["outcome"] == "ResumeFailed"
    assert out["reason"].startswith("restore command still InProgress when the state machine stopped waiting")


def test_a_command_that_printed_no_result_is_resume_failed_with_its_stderr() -> None:
    out = confirm(invocation("Failed", None, code=70, stderr="line 1\nrestore.sh: line 80: aws: command not found\n"))
    assert out["outcome"] == "ResumeFailed"
    assert "restore command Failed (Failed), exit code 70" in out["reason"]
    assert "stderr: restore.sh: line 80: aws: command not found" in out["reason"]


def test_an_empty_invocation_is_resume_failed() -> None:
    for inv in (None, {}):
        out = confirm(inv)
        assert (out["resumed"], out["outcome"]) == (False, "ResumeFailed")
        assert out["reason"] == "the restore command was not run"
