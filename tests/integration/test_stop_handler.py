"""The Stop instance Task state's Lambda handler under moto.

The handler gets ``{"evaluation": <EvaluateOutput>, "verification": <VerifyOutput>}`` from the state
machine. The evaluation here is the real Evaluate handler's output for the instance; the verification is
a VerifyOutput as the Verify step returns it. The handler must re-read the instance and act only when
nothing the decision relied on has changed; every refusal leaves the instance running.
"""

from __future__ import annotations

from typing import Any

from local.agent import SimulatedInstance
from tests.integration.conftest import BUCKET, CTX, World


def tags(run: str, **extra: str) -> dict[str, str]:
    base = {"autostop:enabled": "true", "autostop:run-id": run, "autostop:checkpoint-dir": "{root}/ckpt"}
    base.update({f"autostop:{k.replace('_', '-')}": v for k, v in extra.items()})
    return base


def hibernating_instance(world: World, name: str, tags_: dict[str, str]) -> SimulatedInstance:
    """Like ``world.instance`` but launched with hibernation configured."""
    root = world.tmp / name
    root.mkdir(parents=True, exist_ok=True)
    iid = world.client("ec2").run_instances(
        ImageId="ami-12345678",
        MinCount=1,
        MaxCount=1,
        HibernationOptions={"Configured": True},
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v.replace("{root}", str(root))} for k, v in tags_.items()]}
        ],
    )["Instances"][0]["InstanceId"]
    inst = SimulatedInstance(instance_id=iid, name=name, root=root)
    world.fleet.add(inst)
    return inst


def decide(world: World, inst: SimulatedInstance, run: str) -> dict[str, Any]:
    """The Evaluate step's real output for a run whose completion marker exists."""
    from evaluate_completion.handler import lambda_handler
    from shared.naming import execution_name

    world.client("s3").put_object(Bucket=BUCKET, Key=world.run_key(run, f"runs/{run}/_SUCCESS"), Body=b"done")
    name = execution_name(inst.instance_id, run, "complete")
    lifecycle = {"instance_id": inst.instance_id, "run_id": run, "reason": "complete"}
    evaluation = lambda_handler({"input": lifecycle, "execution_name": name}, CTX)
    assert evaluation["decision"] == "complete", evaluation["reason"]
    return evaluation


def verified(evaluation: dict[str, Any]) -> dict[str, Any]:
    return {
        "verified": True,
        "outcome": "Verified",
        "reason": "2 objects, 8198 bytes verified against S3 SHA-256 checksums",
        "manifest_uri": evaluation["checkpoint"]["manifest_uri"],
        "files": 2,
        "bytes": 8198,
        "step": 5,
    }


def stop(evaluation: dict[str, Any], verification: dict[str, Any]) -> dict[str, Any]:
    from stop_instance.handler import lambda_handler

    return lambda_handler({"evaluation": evaluation, "verification": verification}, CTX)


def state(world: World, instance_id: str) -> str:
    return world.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]


def set_tags(world: World, instance_id: str, **values: str) -> None:
    new = [{"Key": f"autostop:{k.replace('_', '-')}", "Value": v} for k, v in values.items()]
    world.client("ec2").create_tags(Resources=[instance_id], Tags=new)


def record_stop_calls() -> list[dict[str, Any]]:
    """The parameters of every StopInstances call the handler's EC2 client makes from now on."""
    from shared.clients import client

    calls: list[dict[str, Any]] = []
    client("ec2").meta.events.register("before-parameter-build.ec2.StopInstances", lambda params, **_: calls.append(dict(params)))
    return calls


def assert_untouched(world: World, inst: SimulatedInstance, result: dict[str, Any], outcome: str, *needles: str) -> None:
    assert (result["outcome"], result["called"], result["expected_state"]) == (outcome, False, "none"), result
    for needle in needles:
        assert needle in result["reason"], (needle, result["reason"])
    assert state(world, inst.instance_id) == "running"
    assert inst.running and inst.agent_online


# --- acting -----------------------------------------------------------------------------------------------


def test_verified_checkpoint_stops_the_instance(world: World) -> None:
    # Given a run decided complete (default action stop) and its checkpoint verified
    inst = world.instance("s", tags("run-s"))
    evaluation = decide(world, inst, "run-s")
    assert evaluation["action"] == "stop"
    calls = record_stop_calls()

    # When the Stop step runs
    result = stop(evaluation, verified(evaluation))

    # Then StopInstances was called and the instance stops
    assert (result["outcome"], result["called"], result["expected_state"]) == ("Stopped", True, "stopped"), result
    assert "after 2 objects, 8198 bytes verified" in result["reason"]
    assert state(world, inst.instance_id) in ("stopping", "stopped")
    assert not inst.running  # the machine went down with it
    assert calls == [{"InstanceIds": [inst.instance_id], "Hibernate": False}]


def test_terminate_action_terminates_the_instance(world: World) -> None:
    inst = world.instance("t", tags("run-t", action="terminate"))
    evaluation = decide(world, inst, "run-t")
    assert evaluation["action"] == "terminate"

    result = stop(evaluation, verified(evaluation))

    assert (result["outcome"], result["called"], result["expected_state"]) == ("Terminated", True, "terminated"), result
    assert state(world, inst.instance_id) in ("shutting-down", "terminated")


def test_hibernate_on_a_hibernation_enabled_instance_hibernates(world: World) -> None:
    inst = hibernating_instance(world, "h", tags("run-h", action="hibernate"))
    evaluation = decide(world, inst, "run-h")
    assert evaluation["action"] == "hibernate"
    calls = record_stop_calls()

    result = stop(evaluation, verified(evaluation))

    assert (result["outcome"], result["called"], result["expected_state"]) == ("Hibernated", True, "stopped"), result
    assert calls == [{"InstanceIds": [inst.instance_id], "Hibernate": True}]
    assert state(world, inst.instance_id) in ("stopping", "stopped")


# --- refusing ----------------------------------------------------------------------------------------------


def test_dry_run_never_stops(world: World) -> None:
    # Given a dry-run instance whose checkpoint was verified
    inst = world.instance("d", tags("run-d", dry_run="true"))
    evaluation = decide(world, inst, "run-d")
    assert evaluation["dry_run"] is True

    # Then nothing is called, and the reason says what would have happened
    result = stop(evaluation, verified(evaluation))
    assert_untouched(world, inst, result, "DryRun", "would stop the instance", evaluation["checkpoint"]["manifest_uri"])

    # Dry run switched off after a dry-run decision: the decision was a dry run, so this execution stays one
    set_tags(world, inst.instance_id, dry_run="false")
    assert_untouched(world, inst, stop(evaluation, verified(evaluation)), "DryRun")

    # Dry run switched on after a normal decision: the tag read right before the call wins
    other = world.instance("d2", tags("run-d2"))
    evaluation = decide(world, other, "run-d2")
    assert evaluation["dry_run"] is False
    set_tags(world, other.instance_id, dry_run="TRUE")
    assert_untouched(world, other, stop(evaluation, verified(evaluation)), "DryRun", "would stop")


def test_unverified_checkpoint_or_missing_action_is_stop_failed(world: World) -> None:
    inst = world.instance("u", tags("run-u"))
    evaluation = decide(world, inst, "run-u")
    unverified = {
        "verified": False,
        "outcome": "UploadUnverified",
        "reason": "1 of 2 objects failed verification: runs/run-u/x: missing",
        "manifest_uri": evaluation["checkpoint"]["manifest_uri"],
    }

    # An unverified checkpoint: never act, and say why
    result = stop(evaluation, unverified)
    assert_untouched(world, inst, result, "StopFailed", "without a verified checkpoint", "runs/run-u/x: missing")

    # A verified checkpoint but an evaluation that planned no action
    no_action = {**evaluation, "action": None}
    assert_untouched(world, inst, stop(no_action, verified(no_action)), "StopFailed", "planned no action")


def test_instance_stopped_meanwhile_or_gone_is_skipped(world: World) -> None:
    inst = world.instance("a", tags("run-a"))
    evaluation = decide(world, inst, "run-a")

    # An instance that no longer exists
    gone = {**evaluation, "instance_id": "i-0123456789abcdef0"}
    result = stop(gone, verified(gone))
    assert (result["outcome"], result["called"], result["reason"]) == ("Skipped", False, "instance no longer exists"), result
    assert state(world, inst.instance_id) == "running"

    # An instance someone else stopped after the decision
    world.client("ec2").stop_instances(InstanceIds=[inst.instance_id])
    before = state(world, inst.instance_id)
    result = stop(evaluation, verified(evaluation))
    assert (result["outcome"], result["called"]) == ("Skipped", False), result
    assert f"instance is {before}, not running" in result["reason"]
    assert state(world, inst.instance_id) == before


def test_opted_out_since_the_decision_is_skipped(world: World) -> None:
    inst = world.instance("o", tags("run-o"))
    evaluation = decide(world, inst, "run-o")
    set_tags(world, inst.instance_id, enabled="false")

    result = stop(evaluation, verified(evaluation))

    assert_untouched(world, inst, result, "Skipped", "tags changed since the decision", "autostop:enabled is not 'true'")


def test_run_id_changed_since_the_decision_is_skipped(world: World) -> None:
    inst = world.instance("r", tags("run-r"))
    evaluation = decide(world, inst, "run-r")
    set_tags(world, inst.instance_id, run_id="run-r2")  # a new run started on the same instance

    result = stop(evaluation, verified(evaluation))

    assert_untouched(world, inst, result, "Skipped", "run id changed from 'run-r' to 'run-r2' since the decision")


def test_action_changed_since_the_decision_is_skipped(world: World) -> None:
    inst = world.instance("c", tags("run-c", action="stop"))
    evaluation = decide(world, inst, "run-c")
    set_tags(world, inst.instance_id, action="terminate")

    result = stop(evaluation, verified(evaluation))

    assert_untouched(world, inst, result, "Skipped", "action tag changed from stop to terminate since the decision")


def test_hibernate_without_hibernation_configured_is_stop_failed(world: World) -> None:
    # Evaluate already refuses this before the checkpoint (see test_evaluate_handler); the stop guard checks
    # again in case the evaluation it is given says hibernate for an instance that cannot.
    inst = world.instance("nh", tags("run-nh"))
    evaluation = decide(world, inst, "run-nh")
    world.client("ec2").create_tags(Resources=[inst.instance_id], Tags=[{"Key": "autostop:action", "Value": "hibernate"}])
    evaluation = {**evaluation, "action": "hibernate"}

    result = stop(evaluation, verified(evaluation))

    assert_untouched(world, inst, result, "StopFailed", "not launched with hibernation enabled")
