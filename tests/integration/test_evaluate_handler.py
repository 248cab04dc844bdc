"""The Evaluate completion Task state's Lambda handler under moto, with simulated SSM agents.

The handler re-reads the instance, decides whether its run is complete and, when it is, plans the
checkpoint command. These tests call ``evaluate_completion.handler.lambda_handler`` with the payload the
state machine gives it (``{"input": <execution input>, "execution_name": <name>}``) and check the
decision, the outcome the execution would end with, and the planned command against the stack's real
checkpoint document.
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from infra.constructs.documents import CHECKPOINT_PARAMETERS, command_content
from tests.integration.conftest import BUCKET, CTX, World, dead_pid

# Every parameter the deployed checkpoint document declares, with its allowedPattern (executionTimeout is
# added by command_content because the document's timeout is a parameter).
DECLARED = command_content("t", "checkpoint.sh", CHECKPOINT_PARAMETERS, step="checkpoint", timeout="{{ executionTimeout }}")["parameters"]


def marker_tags(run: str, **extra: str) -> dict[str, str]:
    return {"autostop:enabled": "true", "autostop:run-id": run, "autostop:checkpoint-dir": "{root}/ckpt", **extra}


def pid_tags(run: str) -> dict[str, str]:
    return marker_tags(run, **{"autostop:pid-file": "{root}/train.pid"})


def execution_for(instance_id: str, run: str) -> str:
    from shared.naming import execution_name

    return execution_name(instance_id, run, "complete")


def evaluate(
    instance_id: str, run: str = "run-a", *, execution: str | None = None, trigger: dict[str, Any] | None = None
) -> dict[str, Any]:
    from evaluate_completion.handler import lambda_handler

    payload: dict[str, Any] = {"instance_id": instance_id, "run_id": run, "reason": "complete", "attempt": 1}
    payload["trigger"] = trigger if trigger is not None else {"source": "test"}
    name = execution if execution is not None else execution_for(instance_id, run)
    return lambda_handler({"input": payload, "execution_name": name}, CTX)


def put_marker(world: World, run: str) -> None:
    world.client("s3").put_object(Bucket=BUCKET, Key=world.run_key(run, f"runs/{run}/_SUCCESS"), Body=b"done")


def ec2_state(world: World, instance_id: str) -> str:
    return world.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]


# --- complete ----------------------------------------------------------------------------------------


def test_marker_after_launch_is_complete_and_plans_a_valid_checkpoint_command(world: World) -> None:
    # Given a running, opted-in instance whose run wrote its completion marker after the launch
    inst = world.instance("a", marker_tags("run-a"))
    put_marker(world, "run-a")
    execution = execution_for(inst.instance_id, "run-a")
    before = datetime.now(UTC)

    # When the Evaluate step runs
    out = evaluate(inst.instance_id, "run-a", execution=execution)

    # Then the run is complete and nothing ends the execution yet
    assert out["decision"] == "complete"
    assert out["outcome"] is None
    assert f"completion marker s3://ckpt-bucket/{world.own(inst.instance_id)}runs/run-a/_SUCCESS exists" in out["reason"]
    assert (out["instance_id"], out["run_id"], out["action"], out["dry_run"]) == (inst.instance_id, "run-a", "stop", False)
    decided_at = datetime.fromisoformat(out["decided_at"])
    assert before - timedelta(seconds=1) <= decided_at <= datetime.now(UTC)

    # and the checkpoint goes to this execution's own prefix and manifest key in the stack's bucket
    loc = out["checkpoint"]
    assert loc["bucket"] == BUCKET
    own = world.own(inst.instance_id)  # instances/<instance ARN>/: the only keys the instance may write
    assert loc["upload_prefix"] == f"{own}runs/run-a/checkpoints/{execution}/"
    assert loc["manifest_key"] == f"{own}runs/run-a/manifests/{execution}.json"
    assert loc["manifest_uri"] == f"s3://{BUCKET}/{own}runs/run-a/manifests/{execution}.json"

    # and the command fills every parameter of the checkpoint document with one string matching its allowedPattern
    command = out["command"]
    assert command["document"] == "Autostop-Checkpoint"
    assert command["delivery_timeout_seconds"] > 0
    params = command["parameters"]
    assert set(params) == set(DECLARED)
    for name, values in params.items():
        assert isinstance(values, list) and len(values) == 1 and isinstance(values[0], str), (name, values)
        pattern = DECLARED[name]["allowedPattern"]
        assert re.fullmatch(pattern, values[0]), f"{name}={values[0]!r} fails {pattern}"
    flat = {k: v[0] for k, v in params.items()}
    assert flat["RunId"] == "run-a" and flat["InstanceId"] == inst.instance_id and flat["ExecutionName"] == execution
    assert flat["CheckpointDir"] == str(inst.root / "ckpt")
    assert (flat["Bucket"], flat["UploadPrefix"], flat["ManifestKey"]) == (BUCKET, loc["upload_prefix"], loc["manifest_key"])
    assert (flat["PidFile"], flat["Signal"], flat["GraceSeconds"]) == ("", "TERM", "300")
    assert flat["PartSizeBytes"] == str(64 * 1024 * 1024)
    assert flat["DecisionTime"] == decided_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert flat["executionTimeout"] == str(300 + 3600)

    # and the Evaluate step itself sent nothing to the instance (the state machine sends the checkpoint)
    assert world.fleet.sent == []


def test_checkpoint_prefix_tag_moves_upload_and_manifest(world: World) -> None:
    extra = {"autostop:checkpoint-s3-uri": f"s3://{BUCKET}/teams/vision/run-p", "autostop:action": "terminate"}
    inst = world.instance("p", marker_tags("run-p", **extra))
    world.client("s3").put_object(Bucket=BUCKET, Key=world.own(inst.instance_id) + "teams/vision/run-p/_SUCCESS", Body=b"done")
    execution = execution_for(inst.instance_id, "run-p")

    out = evaluate(inst.instance_id, "run-p", execution=execution)

    assert out["decision"] == "complete", out["reason"]
    assert out["action"] == "terminate"
    own = world.own(inst.instance_id)  # the tagged prefix is below the instance's own
    assert out["checkpoint"]["upload_prefix"] == f"{own}teams/vision/run-p/checkpoints/{execution}/"
    assert out["checkpoint"]["manifest_key"] == f"{own}teams/vision/run-p/manifests/{execution}.json"


# --- not complete --------------------------------------------------------------------------------------


def test_marker_absent_is_not_complete(world: World) -> None:
    inst = world.instance("a", marker_tags("run-a"))
    world.client("s3").put_object(Bucket=BUCKET, Key="runs/other-run/_SUCCESS", Body=b"done")  # someone else's marker

    out = evaluate(inst.instance_id, "run-a")

    assert (out["decision"], out["outcome"]) == ("not_complete", "NotComplete")
    assert f"no completion marker at s3://ckpt-bucket/{world.own(inst.instance_id)}runs/run-a/_SUCCESS" in out["reason"]
    assert out["checkpoint"] is None and out["command"] is None
    assert world.fleet.sent == []


def test_pid_file_of_a_live_trainer_is_not_complete(world: World) -> None:
    inst = world.instance("t", pid_tags("run-t"))
    trainer = subprocess.Popen(["sleep", "60"])
    try:
        (inst.root / "train.pid").write_text(f"{trainer.pid}\n")

        out = evaluate(inst.instance_id, "run-t")

        assert trainer.poll() is None  # the probe only looks; it never signals
    finally:
        trainer.kill()
        trainer.wait()
    assert (out["decision"], out["outcome"]) == ("not_complete", "NotComplete")
    assert f"trainer (pid {trainer.pid}) from {inst.root / 'train.pid'} is still running" in out["reason"]
    assert out["command"] is None
    # the verdict came from the real probe document run on the instance
    assert [(s["document"], s["instance_ids"], s["parameters"]["PidFile"]) for s in world.fleet.sent] == [
        ("Autostop-Probe", [inst.instance_id], str(inst.root / "train.pid"))
    ]


def test_pid_file_of_an_exited_trainer_is_complete(world: World) -> None:
    inst = world.instance("t", pid_tags("run-t"))
    (inst.root / "train.pid").write_text(f"{dead_pid()}\n")

    out = evaluate(inst.instance_id, "run-t")

    assert (out["decision"], out["outcome"]) == ("complete", None)
    assert f"trainer in {inst.root / 'train.pid'} has exited" in out["reason"]
    # the checkpoint command will find (and, were it alive, signal) the trainer through the same PID file
    assert out["command"]["parameters"]["PidFile"] == [str(inst.root / "train.pid")]
    assert [s["document"] for s in world.fleet.sent] == ["Autostop-Probe"]


# --- inconclusive ----------------------------------------------------------------------------------------


def test_offline_agent_with_marker_is_inconclusive(world: World) -> None:
    inst = world.instance("off", marker_tags("run-o"), agent="offline")
    put_marker(world, "run-o")

    out = evaluate(inst.instance_id, "run-o")

    assert (out["decision"], out["outcome"]) == ("inconclusive", "Inconclusive")
    assert "PingStatus=ConnectionLost" in out["reason"]
    assert "no checkpoint can be taken" in out["reason"]
    assert out["command"] is None
    assert world.fleet.sent == []


# --- skipped: malformed input ------------------------------------------------------------------------------


MALFORMED = {
    # case: (input built from a valid one, the field the reason must name)
    "missing instance_id": (lambda good: {k: v for k, v in good.items() if k != "instance_id"}, "instance_id"),
    "bad instance id": (lambda good: {**good, "instance_id": good["instance_id"].upper()}, "instance_id"),
    "reason not complete": (lambda good: {**good, "reason": "timeout"}, "reason"),
    "missing run_id": (lambda good: {k: v for k, v in good.items() if k != "run_id"}, "run_id"),
    "attempt zero": (lambda good: {**good, "attempt": 0}, "attempt"),
}


def test_malformed_input_is_skipped_without_touching_the_instance(world: World) -> None:
    from evaluate_completion.handler import lambda_handler

    # Given an instance that would be probed (and judged complete) if the input were accepted
    inst = world.instance("t", pid_tags("run-t"))
    (inst.root / "train.pid").write_text(f"{dead_pid()}\n")
    good = {"instance_id": inst.instance_id, "run_id": "run-t", "reason": "complete"}
    assert evaluate(inst.instance_id, "run-t")["decision"] == "complete"  # the control: valid input is evaluated
    world.fleet.sent.clear()
    world.count_calls()

    for case, (build, field) in MALFORMED.items():
        # When the Evaluate step gets a malformed execution input
        out = lambda_handler({"input": build(good), "execution_name": "x"}, CTX)

        # Then it is skipped with a message naming the field, before any AWS call
        assert (out["decision"], out["outcome"]) == ("skipped", "Skipped"), case
        assert out["reason"].startswith("malformed execution input: "), (case, out["reason"])
        assert re.search(rf"\b{field}\b", out["reason"]), (case, out["reason"])
        assert out["command"] is None and out["checkpoint"] is None, case
    assert world.fleet.sent == []
    assert sum(world.calls.values()) == 0, dict(world.calls)  # not even DescribeInstances


def test_non_dict_input_is_skipped(world: World) -> None:
    from evaluate_completion.handler import lambda_handler

    world.instance("t", pid_tags("run-t"))

    for raw in ("i-0123456789abcdef0", None, ["i-0123456789abcdef0"], 42):
        out = lambda_handler({"input": raw, "execution_name": "x"}, CTX)

        assert (out["decision"], out["outcome"]) == ("skipped", "Skipped"), raw
        assert (out["instance_id"], out["run_id"]) == ("unknown", "unknown"), raw
        assert out["reason"].startswith("malformed execution input: input: "), out["reason"]
        assert "dictionary" in out["reason"], out["reason"]
    assert world.fleet.sent == []


# --- skipped: the instance changed ---------------------------------------------------------------------------


def test_run_id_changed_since_the_trigger_is_skipped(world: World) -> None:
    # Given an instance that has moved on to run-b, whose marker exists, while the execution is for run-a
    inst = world.instance("a", marker_tags("run-b"))
    put_marker(world, "run-b")
    world.client("s3").put_object(Bucket=BUCKET, Key=world.own(inst.instance_id) + "runs/run-a/_SUCCESS", Body=b"done")

    out = evaluate(inst.instance_id, "run-a")

    assert (out["decision"], out["outcome"]) == ("skipped", "Skipped")
    assert out["reason"] == "run id changed from 'run-a' to 'run-b' since the trigger"
    assert out["run_id"] == "run-a"
    assert out["command"] is None


def test_stopped_or_opted_out_instance_is_skipped(world: World) -> None:
    # Given two runs whose markers exist: one on an instance that was stopped meanwhile, one on an opted-out instance
    stopped = world.instance("s", marker_tags("run-s"), state="stopped")
    opted_out = world.instance("o", marker_tags("run-o", **{"autostop:enabled": "false"}))
    put_marker(world, "run-s")
    put_marker(world, "run-o")
    state = ec2_state(world, stopped.instance_id)
    assert state in ("stopping", "stopped")

    out = evaluate(stopped.instance_id, "run-s")

    assert (out["decision"], out["outcome"]) == ("skipped", "Skipped")
    assert out["reason"] == f"instance is {state}"
    assert out["command"] is None

    out = evaluate(opted_out.instance_id, "run-o")

    assert (out["decision"], out["outcome"]) == ("skipped", "Skipped")
    assert out["reason"] == "instance is not opted in (autostop:enabled is not 'true')"
    assert out["command"] is None
    assert world.fleet.sent == []


def test_unknown_instance_is_skipped(world: World) -> None:
    world.instance("a", marker_tags("run-a"))
    put_marker(world, "run-a")

    out = evaluate("i-0123456789abcdef0", "run-a")

    assert (out["decision"], out["outcome"]) == ("skipped", "Skipped")
    assert out["reason"] == "instance does not exist"
    assert out["instance_id"] == "i-0123456789abcdef0"
    assert world.fleet.sent == []


# --- bugs ------------------------------------------------------------------------------------------------------


def test_execution_name_outside_the_document_pattern_is_never_planned(world: World) -> None:
    # Given a complete run, and an execution started by hand under a name Step Functions accepts
    inst = world.instance("a", marker_tags("run-a"))
    put_marker(world, "run-a")

    out = evaluate(inst.instance_id, "run-a", execution="retry.2")

    # Then it is skipped, saying why, and nothing is sent to the instance
    assert (out["decision"], out["outcome"]) == ("skipped", "Skipped")
    assert "'retry.2'" in out["reason"] and "letters, digits" in out["reason"]
    assert world.fleet.sent == []


def test_hibernate_on_an_instance_without_hibernation_is_refused_before_the_checkpoint(world: World) -> None:
    # Given a complete run tagged hibernate on an instance launched without hibernation
    inst = world.instance("h", marker_tags("run-h", **{"autostop:action": "hibernate"}))
    put_marker(world, "run-h")

    out = evaluate(inst.instance_id, "run-h")

    # Then the run ends StopFailed now, before the trainer is signalled: no command is planned or sent
    assert (out["decision"], out["outcome"]) == ("refused", "StopFailed")
    assert "not launched with hibernation enabled" in out["reason"]
    assert out["command"] is None and world.fleet.sent == []


# --- the trigger's probe, reused ----------------------------------------------------------------------


def swept_trigger(world: World, instance_id: str) -> dict[str, Any]:
    """Run the schedule sweep; the ``trigger`` of the execution it started for ``instance_id``."""
    from on_schedule_tick.handler import lambda_handler
    from tests import events

    summary = lambda_handler(events.scheduled_event(), CTX)
    (started,) = [e for e in summary["executions"] if e["name"].startswith(instance_id)]
    sfn = world.client("stepfunctions")
    return json.loads(sfn.describe_execution(executionArn=started["execution_arn"])["input"])["trigger"]


def test_evaluate_reuses_the_sweeps_recent_probe_instead_of_probing_again(world: World) -> None:
    # Given a sweep that probed an exited trainer and started the execution
    inst = world.instance("reuse", pid_tags("run-r"))
    (inst.root / "train.pid").write_text(f"{dead_pid()}\n")
    trigger = swept_trigger(world, inst.instance_id)
    assert trigger["source"] == "schedule" and trigger["probe"]["result"]["pid"]["state"] == "exited"
    assert trigger["probe"]["parameters"]["PidFile"] == [str(inst.root / "train.pid")]
    assert len(world.fleet.sent) == 1

    # When Evaluate runs with that input, it decides complete from the sweep's probe: no second command
    out = evaluate(inst.instance_id, "run-r", trigger=trigger)
    assert out["decision"] == "complete", out["reason"]
    assert len(world.fleet.sent) == 1


def _aged(trigger: dict[str, Any], seconds: float) -> dict[str, Any]:
    at = datetime.fromisoformat(trigger["probe"]["at"]) - timedelta(seconds=seconds)
    return {**trigger, "probe": {**trigger["probe"], "at": at.isoformat()}}


def _other_parameters(trigger: dict[str, Any]) -> dict[str, Any]:
    return {**trigger, "probe": {**trigger["probe"], "parameters": {**trigger["probe"]["parameters"], "PidFile": ["/srv/other.pid"]}}}


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda t: _aged(t, 121), id="older than probe_trust_seconds"),
        pytest.param(lambda t: _aged(t, -60), id="from the future"),
        pytest.param(_other_parameters, id="other parameters than the tags give now"),
        pytest.param(lambda t: {**t, "probe": {**t["probe"], "result": {"ok": False, "error": "x"}}}, id="no result"),
        pytest.param(lambda t: {**t, "probe": {"at": "yesterday"}}, id="malformed"),
        pytest.param(lambda t: {"source": "hand"}, id="started by hand"),
    ],
)
def test_evaluate_probes_again_unless_the_trigger_probe_is_recent_and_the_same(world: World, change: Any) -> None:
    # Given the sweep's probe said exited, but the trainer is alive now
    inst = world.instance("again", pid_tags("run-g"))
    (inst.root / "train.pid").write_text(f"{dead_pid()}\n")
    trigger = change(swept_trigger(world, inst.instance_id))
    alive = subprocess.Popen(["sleep", "60"])
    try:
        (inst.root / "train.pid").write_text(f"{alive.pid}\n")
        out = evaluate(inst.instance_id, "run-g", trigger=trigger)
    finally:
        alive.kill()
        alive.wait()

    # Then Evaluate probed again and saw it
    assert len(world.fleet.sent) == 2
    assert out["decision"] == "not_complete", out["reason"]
