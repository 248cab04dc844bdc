"""Table-driven fault injection over the local control plane: AWS calls, the instance, S3, the stop.

For each fault the right ending is either "retried and succeeded" (the verified checkpoint, then the stop)
or a named outcome with no destructive action, a reason and a notification. Every case adds a row to the
session's reliability table (build/reliability/faults.json).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from local import faults as lf
from tests import checkpoint_layouts as layouts
from tests.faults.conftest import Collector, Plane, Row, launch_done, marker_tags, observe
from tests.workflow.conftest import checkpoint_commands, keys, session_of, start_and_wait, start_as_trigger, wait_closed

SAFE_OUTCOMES = {"NotComplete", "Inconclusive", "Skipped", "CheckpointFailed", "UploadUnverified", "StopFailed", "DryRun"}


def stop_function(params: dict[str, Any]) -> bool:
    return "StopInstance" in str(params.get("FunctionName", ""))


def manifest_key(params: dict[str, Any]) -> bool:
    return "/manifests/" in str(params.get("Key", ""))


@dataclass
class Case:
    id: str
    where: str
    expected: str
    """The outcome the execution must end in."""
    aws: list[dict[str, Any]] = field(default_factory=list)
    """AwsFault keyword arguments (service, operation, kind, ...)."""
    instance: list[str] = field(default_factory=list)
    """SimulatedInstance faults."""
    tags: dict[str, str] = field(default_factory=dict)
    launch: dict[str, Any] = field(default_factory=dict)
    reason_has: str = ""
    states: list[str] = field(default_factory=list)
    """States the execution must pass through (e.g. the retried Task's outcome)."""
    final_state: str = "running"
    notified: bool = True
    setup: Callable[[Plane, str, str], None] | None = None
    """Called after launch with (plane, name, instance id); may add faults that need the name."""
    on_disk: bool = False
    """The setup is the fault itself (entries it writes on the instance's disk), injected once it ran."""


def someone_else(action: str) -> Callable[[Plane, str, str], None]:
    """Right before the Stop instance step, another actor stops / terminates the instance."""

    def setup(p: Plane, name: str, iid: str) -> None:
        def act() -> None:
            p.cp.aws.client("ec2").__getattribute__(f"{action}_instances")(InstanceIds=[iid])

        p.faults.add("lambda", "Invoke", "call", when=stop_function, origins=("sfn",), before=act)

    return setup


def protect(p: Plane, name: str, iid: str) -> None:
    p.cp.aws.client("ec2").modify_instance_attribute(InstanceId=iid, DisableApiTermination={"Value": True})
    p.faults._record({"where": "stop", "fault": "DisableApiTermination", "instance_id": iid})


FOREVER: dict[str, Any] = {"times": None}
CASES = [
    # --- AWS calls made by the Lambdas (botocore's standard retries, then the Task's Retry) ---------------
    Case(
        "throttle DescribeInstances once",
        "lambda ec2:DescribeInstances",
        "Stopped",
        [{"service": "ec2", "operation": "DescribeInstances", "kind": "throttle", "origins": ("lambda",)}],
        final_state="stopped",
    ),
    Case(
        "throttle DescribeInstances always",
        "lambda ec2:DescribeInstances",
        "Inconclusive",
        [dict(service="ec2", operation="DescribeInstances", kind="throttle", origins=("lambda",), **FOREVER)],
        reason_has="RequestLimitExceeded",
    ),
    Case(
        "5xx S3 HeadObject once",
        "lambda s3:HeadObject",
        "Stopped",
        [{"service": "s3", "operation": "HeadObject", "kind": "5xx", "origins": ("lambda",)}],
        final_state="stopped",
    ),
    Case(
        "timeout DescribeInstanceInformation once",
        "lambda ssm:DescribeInstanceInformation",
        "Stopped",
        [{"service": "ssm", "operation": "DescribeInstanceInformation", "kind": "timeout", "origins": ("lambda",)}],
        final_state="stopped",
    ),
    Case(
        "throttle run-record UpdateItem twice",
        "lambda dynamodb:UpdateItem",
        "Stopped",
        [{"service": "dynamodb", "operation": "UpdateItem", "kind": "throttle", "origins": ("lambda",), "times": 2}],
        final_state="stopped",
    ),
    Case(
        "access denied on the manifest HeadObject",
        "lambda s3:HeadObject (manifest)",
        "UploadUnverified",
        [dict(service="s3", operation="HeadObject", kind="access_denied", origins=("lambda",), when=manifest_key, **FOREVER)],
        reason_has="AccessDenied",
    ),
    Case(
        "5xx S3 HeadObject of the manifest always",
        "lambda s3:HeadObject (manifest)",
        "UploadUnverified",
        [dict(service="s3", operation="HeadObject", kind="5xx", origins=("lambda",), when=manifest_key, **FOREVER)],
        reason_has="Verify checkpoint failed",
    ),
    Case(
        "5xx StopInstances once",
        "lambda ec2:StopInstances",
        "Stopped",
        [{"service": "ec2", "operation": "StopInstances", "kind": "5xx", "origins": ("lambda",)}],
        final_state="stopped",
    ),
    Case(
        "StopInstances accepted, its answer lost (read timeout on every attempt)",
        "lambda ec2:StopInstances",
        "Stopped",
        [dict(service="ec2", operation="StopInstances", kind="timeout", after=True, origins=("lambda",), **FOREVER)],
        final_state="stopped",
        reason_has="this execution's own stop call",
    ),
    Case(
        "StopInstances accepted, its answer lost (5xx on every attempt)",
        "lambda ec2:StopInstances",
        "Stopped",
        [dict(service="ec2", operation="StopInstances", kind="5xx", after=True, origins=("lambda",), **FOREVER)],
        final_state="stopped",
        reason_has="this execution's own stop call",
    ),
    Case(
        "access denied StopInstances",
        "lambda ec2:StopInstances",
        "StopFailed",
        [dict(service="ec2", operation="StopInstances", kind="access_denied", origins=("lambda",), **FOREVER)],
        reason_has="UnauthorizedOperation",
    ),
    Case(
        "timeout StopInstances always",
        "lambda ec2:StopInstances",
        "StopFailed",
        [dict(service="ec2", operation="StopInstances", kind="timeout", origins=("lambda",), **FOREVER)],
    ),
    # --- the command path: Send command (one attempt, never repeated after an ambiguous failure) and the -------
    # --- status event's GetCommandInvocation (on_status_event); lost and repeated events: test_status_events.py
    Case(
        "throttle SendCommand once",
        "lambda ssm:SendCommand",
        "Stopped",
        [{"service": "ssm", "operation": "SendCommand", "kind": "throttle", "origins": ("lambda",)}],
        final_state="stopped",
    ),
    Case(
        "5xx SendCommand before delivery",
        "lambda ssm:SendCommand",
        "CheckpointFailed",
        [{"service": "ssm", "operation": "SendCommand", "kind": "5xx", "origins": ("lambda",)}],
        reason_has="SendCommand failed",
    ),
    Case(
        "throttle GetCommandInvocation twice",
        "lambda ssm:GetCommandInvocation",
        "Stopped",
        [{"service": "ssm", "operation": "GetCommandInvocation", "kind": "throttle", "origins": ("lambda",), "times": 2}],
        final_state="stopped",
    ),
    Case(
        "SNS Publish 5xx always",
        "lambda+sfn sns:Publish",
        "Stopped",
        [dict(service="sns", operation="Publish", kind="5xx", origins=("lambda", "sfn"), **FOREVER)],
        final_state="stopped",
        notified=False,
    ),
    Case(
        "SNS Publish 5xx in Record outcome (the fallback Notify publishes)",
        "lambda sns:Publish",
        "Stopped",
        [dict(service="sns", operation="Publish", kind="5xx", origins=("lambda",), **FOREVER)],
        final_state="stopped",
    ),
    # --- on the instance --------------------------------------------------------------------------------
    Case("agent offline", "instance", "Inconclusive", launch={"agent": "offline"}, reason_has="not online"),
    Case("command never delivered", "instance", "CheckpointFailed", instance=["never_deliver"], reason_has="DeliveryTimedOut"),
    Case(
        "delivery timed out although the script ran",
        "instance",
        "CheckpointFailed",
        instance=["ran_but_delivery_timed_out"],
        reason_has="DeliveryTimedOut",
    ),
    Case("script killed midway (SIGKILL during upload)", "instance", "CheckpointFailed", instance=["kill_midway"], reason_has="Failed"),
    Case("upload interrupted", "instance", "CheckpointFailed", instance=["interrupt_upload"], reason_has="UploadFailed"),
    Case(
        "disk full while writing the manifest", "instance", "CheckpointFailed", instance=["disk_full_manifest"], reason_has="ManifestFailed"
    ),
    # --- S3 after the upload ----------------------------------------------------------------------------
    Case("object's version deleted after the upload", "s3", "UploadUnverified", instance=["lose_object"], reason_has="missing"),
    Case(
        "checkpoint-dir tag names a system location (/var/log)",
        "tags",
        "CheckpointFailed",
        tags={"autostop:checkpoint-dir": "/var/log"},
        reason_has="system location",
        setup=lambda p, name, iid: None,
        on_disk=True,
    ),
    # A second writer puts other bytes at the same keys right after the upload: new versions, never read. Verify
    # reads the versions the instance's result line names, so the instance is stopped on its own checkpoint.
    *(
        Case(f"second writer: {what}", "s3", "Stopped", instance=[fault], reason_has="verified against S3", final_state="stopped")
        for what, fault in (
            ("object replaced with one byte more", "wrong_size"),
            ("object replaced with other bytes and their own checksum", "checksum_mismatch"),
            ("manifest replaced with one of an earlier decision", "old_checkpoint"),
            ("manifest replaced with invalid JSON", "manifest_not_json"),
        )
    ),
    # --- at the stop --------------------------------------------------------------------------------------
    Case(
        "instance stopped by someone else before the stop",
        "stop",
        "Skipped",
        setup=someone_else("stop"),
        final_state="stopped",
        reason_has="someone else",
    ),
    Case(
        "instance terminated by someone else before the stop",
        "stop",
        "Skipped",
        setup=someone_else("terminate"),
        final_state="terminated",
        reason_has="someone else",
    ),
    Case(
        "termination protection",
        "stop",
        "StopFailed",
        tags={"autostop:action": "terminate"},
        setup=protect,
        reason_has="OperationNotPermitted",
    ),
    Case(
        "stop not allowed (UnsupportedOperation)",
        "stop",
        "StopFailed",
        [dict(service="ec2", operation="StopInstances", kind="error", code="UnsupportedOperation", origins=("lambda",), **FOREVER)],
        reason_has="UnsupportedOperation",
    ),
    Case(
        "stop not allowed (one-time Spot)",
        "stop",
        "StopFailed",
        launch={"spot": "one-time"},
        reason_has="one-time",
        states=["Action not possible"],
    ),
]


# --- the checkpoint on the instance's disk (the real frameworks' layouts: tests/frameworks) -------------------
def on_disk(make: Callable[[Path], object]) -> Callable[[Plane, str, str], None]:
    """After the finished run's complete step-000005/ was written: MAKE(checkpoint dir) adds newer entries."""

    def setup(p: Plane, name: str, iid: str) -> None:
        make(p.cp.by_name[name].root / "ckpt")

    return setup


def _truncated_torch_save(ck: Path) -> None:
    whole = layouts.torch_zip({"step": 9}, payload=b"w" * 65536)
    layouts.write(ck / "step-000009.pt", whole[: len(whole) // 2])


def _lightning_last(ck: Path) -> None:
    layouts.write(ck / "epoch=0-step=7-train_loss=0.0120.ckpt", layouts.lightning_ckpt(7))
    layouts.write(ck / "last.ckpt", layouts.lightning_ckpt(12, epoch=1))


def _evaluation_into_the_older(ck: Path) -> None:
    layouts.write(ck / "step-000009" / "model.bin", bytes(range(256)) * 8)
    layouts.write(ck / "step-000009" / "meta.json", b'{"step": 9}')
    layouts.write(ck / "step-000005" / "eval_results.json", b'{"loss": 0.1}')  # written after step 9 was saved


def _shards_and_logs(ck: Path) -> None:
    for i in (1, 2):
        layouts.write(ck / f"model-0000{i}-of-00002.safetensors", layouts.safetensors())
    layouts.write(ck / "train_2026.log", b"loss 0.1\n")


def _symlink_inside(ck: Path) -> None:
    layouts.write(ck / "step-000009" / "config.json", b"{}")
    (ck / "step-000009" / "model.bin").symlink_to(ck / "step-000005" / "model.bin")


def _held_open_for_writing(ck: Path) -> None:
    target = ck / "step-000009.pt"
    code = "import sys, time; f = open(sys.argv[1], 'wb'); f.write(b'PK'); f.flush(); time.sleep(60)"
    subprocess.Popen([sys.executable, "-c", code, str(target)], start_new_session=True)  # a save in progress
    deadline = time.monotonic() + 10
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _missing_shard(ck: Path) -> None:
    layouts.write(ck / "step-000009" / "model-00001-of-00002.safetensors", layouts.safetensors())


def _nested_dcp(ck: Path) -> None:
    layouts.write(ck / "step-000009" / "optim" / "__0_0.distcp", b"x" * 64)


def _orbax_uncommitted(ck: Path) -> None:
    layouts.write(ck / "step-000007" / "_CHECKPOINT_METADATA", b"{}")
    layouts.write(ck / "step-000007" / "commit_success.txt", b"committed")
    layouts.write(ck / "step-000007" / "default" / "state.msgpack", b"s" * 64)
    layouts.write(ck / "step-000009" / "_CHECKPOINT_METADATA", b"{}")
    layouts.write(ck / "step-000009" / "default" / "state.msgpack", b"s" * 64)


def _per_epoch_steps(ck: Path) -> None:
    layouts.write(ck / "epoch1_step900.pt", layouts.torch_zip({"x": 1}))
    layouts.write(ck / "epoch2_step100.pt", layouts.torch_zip({"x": 2}))


def _not_utf8(ck: Path) -> None:
    os.mkdir(os.path.join(os.fsencode(ck), b"step-000009\xff"))
    layouts.write(Path(os.fsdecode(os.path.join(os.fsencode(ck), b"step-000009\xff"))) / "model.bin", b"w" * 64)


SELECTION_CASES = [
    Case(f"newest checkpoint on disk: {what}", "disk", expected, setup=on_disk(make), on_disk=True, reason_has=has, final_state=final)
    for what, make, expected, has, final in (
        ("a torch.save cut short (no zip central directory)", _truncated_torch_save, "Stopped", "rejected step-000009.pt", "stopped"),
        ("a Hugging Face Trainer directory without trainer_state.json", lambda ck: layouts.hf_checkpoint(ck, 9, 0, finished=False),
         "Stopped", "rejected checkpoint-9 (no trainer_state.json", "stopped"),
        ("a DCP directory without .metadata", lambda ck: layouts.dcp_checkpoint(ck, 9, 0, finished=False), "Stopped",
         "rejected step-9 (no .metadata", "stopped"),
        ("an Accelerate directory without its random states", lambda ck: layouts.accelerate_checkpoint(ck, 9, 0, finished=False),
         "Stopped", "rejected checkpoint_9 (no random_states", "stopped"),
        ("a step directory of empty files", lambda ck: layouts.write(ck / "step-000009" / "model.bin", b""), "Stopped",
         "rejected step-000009", "stopped"),
        ("Lightning's last.ckpt holds the newest step", _lightning_last, "Stopped", "chose last.ckpt (step 12", "stopped"),
        ("an evaluation job writes into the older directory", _evaluation_into_the_older, "Stopped", "chose step-000009", "stopped"),
        ("top-level shards and a log with a year in its name", _shards_and_logs, "Stopped", "chose step-000005", "stopped"),
        ("a directory holding a symbolic link", _symlink_inside, "Stopped", "rejected step-000009 (it contains a symbolic link", "stopped"),
        ("a file still open for writing (a save in progress)", _held_open_for_writing, "Stopped",
         "rejected step-000009.pt (step-000009.pt is open for writing", "stopped"),
        ("a dated name, no step anywhere", lambda ck: layouts.write(ck / "ckpt-2026-12-05_13-45-30.pt", layouts.torch_zip({"x": 1})),
         "Stopped", "chose step-000005", "stopped"),
        ("a safetensors file cut short", lambda ck: layouts.write(ck / "step-000009" / "model.safetensors", layouts.safetensors()[:-5]),
         "Stopped", "rejected step-000009 (model.safetensors: its safetensors tensors end", "stopped"),
        ("a sharded save missing a shard", _missing_shard, "Stopped", "rejected step-000009 (shard 2 of 2", "stopped"),
        ("a nested DCP save without .metadata", _nested_dcp, "Stopped", "rejected step-000009 (optim/ holds", "stopped"),
        ("a Hugging Face just-in-time save still in progress (its sentinel file)",
         lambda ck: layouts.write(layouts.hf_checkpoint(ck, 9, 0) / "checkpoint-is-incomplete.txt", b""), "Stopped",
         "rejected checkpoint-9 (it contains checkpoint-9/checkpoint-is-incomplete.txt", "stopped"),
        ("an orbax directory without commit_success.txt", _orbax_uncommitted, "Stopped",
         "rejected step-000009 (no commit_success.txt", "stopped"),
        ("steps counted within each epoch", _per_epoch_steps, "Stopped", "chose epoch2_step100.pt", "stopped"),
        ("a name that is not UTF-8", _not_utf8, "Stopped", "chose step-000005", "stopped"),
        ("nothing complete and no save in progress (the trainer is not signalled)",
         lambda ck: shutil.rmtree(ck / "step-000005"), "CheckpointFailed", "NoCheckpoint", "running"),
    )
]  # fmt: skip
CASES += SELECTION_CASES


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(fp: Plane, reliability: Collector, case: Case) -> None:
    cp = fp.cp
    n = CASES.index(case)
    name, run_id = f"fault-{n}", f"run-fault-{n}"
    iid = launch_done(cp, name, run_id, tags=case.tags, faults=case.instance or None, **case.launch)
    added = [fp.faults.add(**spec) for spec in case.aws]
    before = len(fp.faults.log)
    try:
        if case.setup:
            case.setup(fp, name, iid)
            added = list(fp.faults.faults)
        run = start_and_wait(cp, iid, run_id)
    finally:
        for fault in added:
            fp.faults.remove(fault)
    seen = observe(fp, name, iid, run)
    injected = len(fp.faults.log) - before + int(case.on_disk)
    ok = (
        seen["observed"] == case.expected
        and case.reason_has in run.reason
        and seen["final_state"] == case.final_state
        and seen["notified"] == case.notified
        and all(s in run.states for s in case.states)
        and (injected > 0 or not (case.aws or case.instance or case.setup))
    )
    reliability.add(Row(case.id, case.where, case.expected, injected=injected, passed=ok, **seen))
    assert seen["observed"] == case.expected, f"{run.states}: {run.reason}"
    assert case.reason_has in run.reason, run.reason
    assert seen["final_state"] == case.final_state
    assert seen["notified"] == case.notified
    assert all(s in run.states for s in case.states), run.states
    if case.aws or case.instance or case.setup:
        assert injected > 0, "the fault was never injected"
    if seen["destroyed"]:  # only ever after a verified checkpoint
        assert seen["verified_checkpoint"] and case.expected in ("Stopped", "Terminated", "Hibernated")
    else:
        assert case.expected in SAFE_OUTCOMES


def test_auto_scaling_group_member_is_not_stopped(fp: Plane, reliability: Collector) -> None:
    """An instance of an Auto Scaling group (tag aws:autoscaling:groupName): stopping it makes the group mark it
    unhealthy, terminate it and launch another. The right ending is a refusal before the trainer is signalled."""
    cp = fp.cp
    name, run_id = "fault-asg", "run-fault-asg"
    iid = launch_done(cp, name, run_id)
    cp.aws.client("ec2").create_tags(Resources=[iid], Tags=[{"Key": "aws:autoscaling:groupName", "Value": "trainers"}])
    run = start_and_wait(cp, iid, run_id)
    seen = observe(fp, name, iid, run)
    ok = seen["observed"] == "StopFailed" and not seen["destroyed"] and not checkpoint_commands(cp, iid)
    reliability.add(
        Row("instance in an Auto Scaling group", "stop", "StopFailed (refused before the checkpoint)", injected=1, passed=ok, **seen)
    )
    assert ok, f"{seen['observed']}: {seen['reason']}"


# --- re-sending a checkpoint command never signals a trainer twice ------------------------------------------

AMBIGUOUS = [
    # SSM accepted the command and it ran: Find command follows it by its comment (never a second SendCommand).
    ("SendCommand 5xx after delivery", {"kind": "5xx", "after": True}, "Stopped"),
    ("SendCommand timeout after delivery", {"kind": "timeout", "after": True}, "Stopped"),
    ("SendCommand throttled (rejected) once", {"kind": "throttle"}, "Stopped"),
]


@pytest.mark.parametrize(("label", "fault", "expected"), AMBIGUOUS, ids=[a[0] for a in AMBIGUOUS])
def test_trainer_is_signalled_at_most_once_per_run(
    fp: Plane, reliability: Collector, label: str, fault: dict[str, Any], expected: str
) -> None:
    cp = fp.cp
    n = AMBIGUOUS.index((label, fault, expected))
    name, run_id = f"signal-{n}", f"run-signal-{n}"
    tags = marker_tags(cp, run_id, pid_file="{root}/train.pid")
    trainer = ["--checkpoint-dir", "{root}/ckpt", "--pid-file", "{root}/train.pid", "--steps", "100000", "--step-seconds", "0.01"]
    trainer += ["--checkpoint-every", "50", "--on-signal", "save-and-exit"]
    iid = cp.launch_instance(name, tags=tags, trainer=trainer)
    root = cp.by_name[name].root
    _wait_for(lambda: (root / "train.pid").exists() and any((root / "ckpt").glob("step-*")))
    cp.put_object(cp.run_uri(run_id, f"runs/{run_id}/DONE"), "done")
    before = len(fp.faults.log)
    with fp.faults.aws("ssm", "SendCommand", origins=("lambda",), **fault):
        run = start_and_wait(cp, iid, run_id)
    injected = len(fp.faults.log) - before
    # Every later trigger for the run: a second attempt's execution and a sweep.
    again = start_as_trigger(cp, iid, run_id, source="test-retry")
    if again.execution_arn:
        wait_closed(cp, again.execution_arn)
    cp.schedule_tick()
    cp.wait_executions()
    signals = lf.trainer_signals(root)
    commands = checkpoint_commands(cp, iid)
    seen = observe(fp, name, iid, run)
    ok = seen["observed"] == expected and len(signals) <= 1 and len(commands) == 1
    reliability.add(
        Row(
            f"{label} (signals: {len(signals)}, commands: {len(commands)})",
            "lambda ssm:SendCommand",
            expected,
            injected=injected,
            passed=ok,
            **seen,
        )
    )
    assert injected >= 1
    assert seen["observed"] == expected, run.reason
    assert len(commands) == 1, commands
    assert len(signals) == 1, signals  # the one command signalled the trainer once
    if expected == "CheckpointFailed":
        assert seen["final_state"] == "running" and not seen["destroyed"]


def _wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.1)


def test_partial_upload_leaves_no_manifest(fp: Plane) -> None:
    """kill_midway: the first object is in S3, the manifest is not (what the verifier sees after a SIGKILL)."""
    cp = fp.cp
    name, run_id = "fault-partial", "run-fault-partial"
    iid = launch_done(cp, name, run_id, faults=["kill_midway"])
    run = start_and_wait(cp, iid, run_id)
    assert run.outcome == "CheckpointFailed"
    assert len(keys(cp, f"runs/{run_id}/checkpoints/{run.name}/")) == 1
    assert keys(cp, f"runs/{run_id}/manifests/") == []


def test_started_right_after_the_stop_ends_stopped_and_resumes(fp: Plane, reliability: Collector) -> None:
    """F9: someone starts the instance right after autostop's stop, before the wait saw it stopped. The stop
    mark made the session resumable before the call, so the start resumes; the execution sees a new LaunchTime
    and ends Stopped, not StopFailed after polling a running instance."""
    from shared.records import RunKey, RunRecords

    cp = fp.cp
    name, run_id = "restart-after-stop", "run-restart-after-stop"
    iid = launch_done(cp, name, run_id)
    session = session_of(cp, iid)
    restarted: list[dict[str, Any]] = []

    def start_again() -> None:
        if not restarted:
            restarted.append(cp.start_instance(name))

    def after_our_stop(params: dict[str, Any]) -> bool:  # Stop instance re-reads the instance after its call
        return iid in (params.get("InstanceIds") or []) and fp.faults.destroyed(iid)

    def stopped_event(source: str, detail_type: str, detail: dict[str, Any]) -> int:
        # The stopped event would confirm the stop before the start: lose it, so that the re-read sees the new session.
        return 0 if detail.get("instance-id") == iid and detail.get("state") == "stopped" else 1

    added = fp.faults.add("ec2", "DescribeInstances", "call", origins=("lambda",), when=after_our_stop, before=start_again)
    cp.aws.event_copies = stopped_event
    try:
        run = start_and_wait(cp, iid, run_id, timeout=90)
    finally:
        fp.faults.remove(added)
        cp.aws.event_copies = None
    cp.wait_executions()
    resumes = [e for e in cp.executions() if e["name"].startswith(f"{iid}-") and "-resume-" in e["name"]]
    resumed = wait_closed(cp, resumes[0]["executionArn"]) if resumes else None
    record = RunRecords(cp.aws.client("dynamodb"), cp.deployment.table).get(RunKey(iid, run_id, str(session)))
    seen = observe(fp, name, iid, run)
    ok = run.outcome == "Stopped" and resumed is not None and resumed.outcome == "Resumed"
    reliability.add(Row("started right after autostop's stop", "stop", "Stopped, then Resumed", injected=1, passed=ok, **seen))
    assert restarted, "the instance was never started again"
    assert run.outcome == "Stopped", f"{run.states}: {run.reason}"
    assert "Started again after the stop" in run.states and "started again" in run.reason
    assert resumed is not None and resumed.outcome == "Resumed", resumed and resumed.reason
    assert record is not None and record["resumable"] is True and record["stop_requested"]["execution"] == run.name
    assert seen["destroyed"] and seen["verified_checkpoint"]
    cp.stop_instance(name)


def test_an_aborted_execution_is_recorded_notified_and_releases_the_trainer(fp: Plane, reliability: Collector) -> None:
    """F10: an execution that is aborted (StopExecution) publishes nothing of its own; the execution-ended rule
    records the ending in the run record (releasing its claim on the trainer) and notifies."""
    import time

    from shared.records import RunKey, RunRecords

    cp = fp.cp
    name, run_id = "aborted", "run-aborted"
    iid = launch_done(cp, name, run_id, faults=["stuck_in_progress"])
    session = session_of(cp, iid)
    sfn = cp.aws.client("stepfunctions")
    started = start_as_trigger(cp, iid, run_id)
    table = RunRecords(cp.aws.client("dynamodb"), cp.deployment.table)
    key = RunKey(iid, run_id, str(session))
    _wait_for(lambda: (table.get(key) or {}).get("active") == started.name and bool(checkpoint_commands(cp, iid)))
    time.sleep(1)
    sfn.stop_execution(executionArn=started.execution_arn, error="Operator", cause="stopped by hand")
    run = wait_closed(cp, started.execution_arn)
    cp.wait_executions()
    _wait_for(lambda: (table.get(key) or {}).get("outcome") == "ExecutionAborted", timeout=20)
    record = table.get(key) or {}
    notes = [n for n in cp.notifications() if n.get("execution") == run.name]
    ok = run.status == "ABORTED" and [n["outcome"] for n in notes] == ["ExecutionAborted"] and "active" not in record
    seen = observe(fp, name, iid, run)
    seen["notified"] = bool(notes)
    reliability.add(Row("execution aborted (StopExecution)", "sfn", "ExecutionAborted", injected=1, passed=ok, **seen))
    assert run.status == "ABORTED"
    assert [n["outcome"] for n in notes] == ["ExecutionAborted"], notes
    assert notes[0]["instance_id"] == iid and "was aborted" in notes[0]["reason"]
    assert record["outcome"] == "ExecutionAborted" and "active" not in record
    assert not seen["destroyed"] and seen["final_state"] == "running"
    cp.stop_instance(name)
