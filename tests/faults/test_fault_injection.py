"""Table-driven fault injection over the local control plane: AWS calls, the instance, S3, the stop.

For each fault the right ending is either "retried and succeeded" (the verified checkpoint, then the stop)
or a named outcome with no destructive action, a reason and a notification. Every case adds a row to the
session's reliability table (build/reliability/faults.json).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from local import faults as lf
from shared.executions import start_lifecycle_execution
from tests.faults.conftest import Collector, Plane, Row, launch_done, marker_tags, observe
from tests.workflow.conftest import checkpoint_commands, keys, session_of, start_and_wait, wait_closed

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
    # --- the state machine's own SDK Tasks (ASL Retry / Catch) -------------------------------------------
    Case(
        "throttle SendCommand once",
        "sfn ssm:SendCommand",
        "Stopped",
        [{"service": "ssm", "operation": "SendCommand", "kind": "throttle", "origins": ("sfn",)}],
        final_state="stopped",
    ),
    Case(
        "5xx SendCommand before delivery",
        "sfn ssm:SendCommand",
        "CheckpointFailed",
        [{"service": "ssm", "operation": "SendCommand", "kind": "5xx", "origins": ("sfn",)}],
        reason_has="SendCommand failed",
    ),
    Case(
        "throttle GetCommandInvocation twice",
        "sfn ssm:GetCommandInvocation",
        "Stopped",
        [{"service": "ssm", "operation": "GetCommandInvocation", "kind": "throttle", "origins": ("sfn",), "times": 2}],
        final_state="stopped",
    ),
    Case(
        "5xx GetCommandInvocation always",
        "sfn ssm:GetCommandInvocation",
        "CheckpointFailed",
        [dict(service="ssm", operation="GetCommandInvocation", kind="5xx", origins=("sfn",), **FOREVER)],
        reason_has="GetCommandInvocation failed",
    ),
    Case(
        "throttle DescribeInstances poll twice",
        "sfn ec2:DescribeInstances",
        "Stopped",
        [{"service": "ec2", "operation": "DescribeInstances", "kind": "throttle", "origins": ("sfn",), "times": 2}],
        final_state="stopped",
    ),
    Case(
        "SNS Publish 5xx always",
        "sfn sns:Publish",
        "Stopped",
        [dict(service="sns", operation="Publish", kind="5xx", origins=("sfn",), **FOREVER)],
        final_state="stopped",
        notified=False,
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
    Case("object missing", "s3", "UploadUnverified", instance=["lose_object"], reason_has="missing"),
    Case("object wrong size", "s3", "UploadUnverified", instance=["wrong_size"], reason_has="size"),
    Case("checksum mismatch", "s3", "UploadUnverified", instance=["checksum_mismatch"], reason_has="checksum"),
    Case(
        "old checkpoint only (manifest of an earlier decision)",
        "s3",
        "UploadUnverified",
        instance=["old_checkpoint"],
        reason_has="decision",
    ),
    Case("manifest not valid JSON", "s3", "UploadUnverified", instance=["manifest_not_json"], reason_has="not a valid manifest"),
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
    injected = len(fp.faults.log) - before
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
    ("SendCommand 5xx after delivery", {"kind": "5xx", "after": True}, "CheckpointFailed"),
    ("SendCommand timeout after delivery", {"kind": "timeout", "after": True}, "CheckpointFailed"),
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
    cp.put_object(f"s3://{cp.deployment.bucket}/runs/{run_id}/DONE", "done")
    before = len(fp.faults.log)
    with fp.faults.aws("ssm", "SendCommand", origins=("sfn",), **fault):
        run = start_and_wait(cp, iid, run_id)
    injected = len(fp.faults.log) - before
    # Every later trigger for the run: a second attempt's execution and a sweep.
    sfn = cp.aws.client("stepfunctions")
    again = start_lifecycle_execution(
        sfn,
        cp.deployment.state_machine_arn,
        instance_id=iid,
        run_id=run_id,
        reason="complete",
        trigger={"source": "test-retry"},
        session=session_of(cp, iid),
    )
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
            "sfn ssm:SendCommand",
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
