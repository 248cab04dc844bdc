"""The EC2-event trigger (Spot interruption warning, rebalance recommendation, state change) as a Lambda
handler under moto: which events start which lifecycle execution, with what input, and which start nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest

from shared.records import checkpoint_entry
from tests.conftest import function_env
from tests.events import ec2_event
from tests.integration.conftest import BUCKET, CTX, RUNS_TABLE, World, ended_session

WARNING = "EC2 Spot Instance Interruption Warning"
REBALANCE = "EC2 Instance Rebalance Recommendation"
STATE = "EC2 Instance State-change Notification"


def run_tags(run: str = "run-a", **extra: str) -> dict[str, str]:
    return {"autostop:enabled": "true", "autostop:run-id": run, "autostop:checkpoint-dir": "{root}/ckpt", **extra}


def handle(event: Any) -> dict[str, Any]:
    from on_instance_event.handler import lambda_handler

    return lambda_handler(event, CTX)


def executions(world: World) -> list[dict[str, Any]]:
    return world.client("stepfunctions").list_executions(stateMachineArn=world.state_machine_arn)["executions"]


def execution_input(world: World, name: str) -> dict[str, Any]:
    arn = world.state_machine_arn.replace(":stateMachine:", ":execution:") + ":" + name
    return json.loads(world.client("stepfunctions").describe_execution(executionArn=arn)["input"])


def session_of(world: World, instance_id: str) -> str:
    raw = world.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return raw["LaunchTime"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp(session: str) -> str:
    return "".join(ch for ch in session if ch.isdigit())[2:]


# --- Spot interruption warning ---------------------------------------------------------------------------


def test_interruption_warning_starts_an_interruption_execution_with_the_deadline_from_the_event(world: World) -> None:
    inst = world.instance("a", run_tags())
    notice = datetime(2026, 11, 30, 10, 0, 0, tzinfo=UTC)

    out = handle(ec2_event(WARNING, {"instance-id": inst.instance_id, "instance-action": "terminate"}, when=notice))

    session = session_of(world, inst.instance_id)
    assert (out["instance_id"], out["reason"], out["ignored"]) == (inst.instance_id, "interruption", None)
    started = out["execution"]
    assert started["status"] == "started"
    assert started["name"] == f"{inst.instance_id}-run-a-interruption-{stamp(session)}"
    payload = execution_input(world, started["name"])
    assert datetime.fromisoformat(payload["deadline"]) == notice + timedelta(seconds=120)
    assert (payload["instance_id"], payload["run_id"], payload["reason"], payload["session"], payload["attempt"]) == (
        inst.instance_id,
        "run-a",
        "interruption",
        session,
        1,
    )
    assert payload["trigger"]["source"] == WARNING
    assert payload["trigger"]["action"] == "terminate"
    assert [e["name"] for e in executions(world)] == [started["name"]]


def test_late_interruption_warning_shrinks_the_deadline(world: World) -> None:
    inst = world.instance("a", run_tags())
    notice = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=100)  # delivered 100 s late

    out = handle(ec2_event(WARNING, {"instance-id": inst.instance_id, "instance-action": "stop"}, when=notice))

    deadline = datetime.fromisoformat(execution_input(world, out["execution"]["name"])["deadline"])
    assert deadline == notice + timedelta(seconds=120)
    left = (deadline - datetime.now(UTC)).total_seconds()
    assert 0 < left <= 21  # not the full two minutes from when the function ran


def test_duplicate_interruption_warning_starts_one_execution(world: World) -> None:
    inst = world.instance("a", run_tags())
    event = ec2_event(WARNING, {"instance-id": inst.instance_id, "instance-action": "terminate"})

    first = handle(event)
    second = handle(event)

    assert first["execution"]["status"] == "started"
    assert second["execution"]["name"] == first["execution"]["name"]
    # StartExecution answers an identical request for a running execution with that execution ("started")
    assert second["execution"]["status"] in ("started", "already_running", "already_finished")
    assert second["execution"]["execution_arn"] == first["execution"]["execution_arn"]
    assert len(executions(world)) == 1


# --- rebalance recommendation ------------------------------------------------------------------------------


def test_rebalance_without_the_checkpoint_tag_starts_nothing(world: World) -> None:
    untagged = world.instance("a", run_tags())
    ignore = world.instance("b", run_tags(**{"autostop:on-rebalance": "ignore"}))

    for inst in (untagged, ignore):
        out = handle(ec2_event(REBALANCE, {"instance-id": inst.instance_id}))

        assert out["reason"] == "rebalance"
        assert out["execution"] is None
        assert "autostop:on-rebalance is not 'checkpoint'" in out["ignored"]
    assert executions(world) == []


def test_rebalance_with_the_checkpoint_tag_starts_a_rebalance_execution(world: World) -> None:
    inst = world.instance("a", run_tags(**{"autostop:on-rebalance": "Checkpoint"}))

    out = handle(ec2_event(REBALANCE, {"instance-id": inst.instance_id}))

    assert out["ignored"] is None
    name = out["execution"]["name"]
    assert name == f"{inst.instance_id}-run-a-rebalance-{stamp(session_of(world, inst.instance_id))}"
    payload = execution_input(world, name)
    assert payload["reason"] == "rebalance"
    assert "deadline" not in payload  # only an interruption has one
    assert len(executions(world)) == 1


# --- state changes -------------------------------------------------------------------------------------------


def test_state_changes_other_than_running_start_nothing(world: World) -> None:
    inst = world.instance("a", run_tags())
    earlier_session(world, inst.instance_id, "Stopped")  # even with a session that could be resumed

    for state in ("pending", "stopping", "stopped", "shutting-down", "terminated"):
        out = handle(ec2_event(STATE, {"instance-id": inst.instance_id, "state": state}))

        assert out["ignored"] == f"state change to {state} starts nothing"
        assert out["execution"] is None
    assert executions(world) == []


def test_our_own_stop_produces_no_execution(world: World) -> None:
    inst = world.instance("a", run_tags())
    world.client("ec2").stop_instances(InstanceIds=[inst.instance_id])
    for state in ("stopping", "stopped"):
        assert handle(ec2_event(STATE, {"instance-id": inst.instance_id, "state": state}))["execution"] is None
    assert executions(world) == []


def earlier_session(
    world: World, instance_id: str, outcome: str, *, checkpoint: bool = True, run: str = "run-a", action: str | None = None
) -> str:
    """A record of an earlier session of ``run`` that ended with ``outcome`` (and a verified checkpoint), as the
    real Verify checkpoint and Record outcome steps leave it."""
    session = "2026-01-01T00:00:00Z"
    entry = checkpoint_entry(
        manifest_uri=f"s3://{BUCKET}/runs/{run}/manifests/old.json",
        execution="old",
        files=[{"key": f"runs/{run}/checkpoints/old/step_1/w.bin", "size": 4, "sha256": "0" * 64}],
        total_bytes=4,
        step=1,
        fresh=True,
        verified_at=session,
    )
    ended_session(world, instance_id, session, outcome, run=run, checkpoint=entry if checkpoint else None, action=action)
    return session


def test_running_without_a_resumable_earlier_session_starts_nothing(world: World) -> None:
    earlier = "2026-01-01T00:00:00Z"
    fresh = world.instance("fresh", run_tags())
    other_run = world.instance("other", run_tags())
    earlier_session(world, other_run.instance_id, "Stopped", run="run-b")  # a session of another run only
    none = "the run has no earlier session on this instance"
    expected = {other_run.instance_id: none}
    out = handle(ec2_event(STATE, {"instance-id": fresh.instance_id, "state": "running"}))
    assert (out["reason"], out["execution"]) == ("resume", None)
    assert out["ignored"] == "no run record: autostop never acted on this instance"
    for outcome in ("CheckpointFailed", "NotComplete"):
        inst = world.instance(outcome, run_tags())
        earlier_session(world, inst.instance_id, outcome)
        expected[inst.instance_id] = (
            f"no earlier session ended stopped with a verified checkpoint (the last, {earlier}, ended {outcome} with a verified checkpoint)"
        )
    hibernated = f"session {earlier} was hibernated: the trainer comes back from memory, nothing to restore"
    for name, outcome, action in (("hib", "Hibernated", None), ("spot-hib", "SpotCheckpointSaved", "hibernate")):
        inst = world.instance(name, run_tags())
        earlier_session(world, inst.instance_id, outcome, action=action)
        expected[inst.instance_id] = hibernated
    # Stopped, but with no verified checkpoint on record: nothing to restore.
    bare = world.instance("bare", run_tags())
    earlier_session(world, bare.instance_id, "Stopped", checkpoint=False)
    expected[bare.instance_id] = (
        f"no earlier session ended stopped with a verified checkpoint (the last, {earlier}, ended Stopped with no verified checkpoint)"
    )

    for iid, why in expected.items():
        out = handle(ec2_event(STATE, {"instance-id": iid, "state": "running"}))

        assert out["reason"] == "resume"
        assert out["execution"] is None
        assert out["ignored"] == f"nothing to resume for run run-a: {why}"
    assert executions(world) == []


@pytest.mark.parametrize(("outcome", "action"), [("Stopped", None), ("SpotCheckpointSaved", "stop"), ("SpotCheckpointSaved", "terminate")])
def test_running_after_a_resumable_session_with_a_checkpoint_starts_a_resume_execution(
    world: World, outcome: str, action: str | None
) -> None:
    inst = world.instance("a", run_tags())
    earlier_session(world, inst.instance_id, outcome, action=action)

    out = handle(ec2_event(STATE, {"instance-id": inst.instance_id, "state": "running"}))

    session = session_of(world, inst.instance_id)
    assert out["ignored"] is None
    assert out["execution"]["status"] == "started"
    assert out["execution"]["name"] == f"{inst.instance_id}-run-a-resume-{stamp(session)}"
    payload = execution_input(world, out["execution"]["name"])
    assert (payload["reason"], payload["session"], payload["trigger"]["source"]) == ("resume", session, STATE)


# --- instances that are not ours -------------------------------------------------------------------------


def test_instances_that_are_not_ours_start_nothing(world: World) -> None:
    untagged = world.instance("a", {"autostop:run-id": "run-a", "autostop:on-rebalance": "checkpoint"})
    disabled = world.instance("b", run_tags(**{"autostop:enabled": "false", "autostop:on-rebalance": "checkpoint"}))
    invalid = world.instance("c", run_tags(**{"autostop:resume-command": "python train.py", "autostop:on-rebalance": "checkpoint"}))
    expected = {
        untagged.instance_id: "not opted in",
        disabled.instance_id: "not opted in",
        "i-0123456789abcdef0": "instance does not exist",
    }

    for detail_type in (WARNING, REBALANCE, STATE):
        for iid, why in {**expected, invalid.instance_id: "invalid tags:"}.items():
            out = handle(ec2_event(detail_type, {"instance-id": iid, "instance-action": "terminate", "state": "running"}))

            assert out["execution"] is None
            # A start of an instance without run records ends before any EC2 call; the warnings read the tags.
            expected_why = "no run record: autostop never acted on this instance" if detail_type == STATE else why
            assert expected_why in out["ignored"], (detail_type, out["ignored"])
        out = handle(ec2_event(detail_type, {"instance-id": invalid.instance_id, "instance-action": "terminate", "state": "running"}))
        assert out["execution"] is None
        if detail_type != STATE:
            assert out["ignored"].startswith("invalid tags:") and "resume-command" in out["ignored"]
    assert executions(world) == []


def test_a_start_of_an_instance_autostop_never_acted_on_costs_no_ec2_call(world: World) -> None:
    untagged = world.instance("a", {"Name": "someone else's"})
    ours = world.instance("b", run_tags())
    earlier_session(world, ours.instance_id, "Stopped")
    world.count_calls()
    out = handle(ec2_event(STATE, {"instance-id": untagged.instance_id, "state": "running"}))
    assert out["ignored"] == "no run record: autostop never acted on this instance"
    assert world.calls["DescribeInstances"] == 0
    out = handle(ec2_event(STATE, {"instance-id": ours.instance_id, "state": "running"}))
    assert out["execution"]["status"] == "started" and world.calls["DescribeInstances"] == 1


# --- malformed events ---------------------------------------------------------------------------------------


def _good(**changes: Any) -> dict[str, Any]:
    event = ec2_event(WARNING, {"instance-id": "i-0123456789abcdef0", "instance-action": "terminate"})
    for k, v in changes.items():
        if v is None:
            event.pop(k, None)
        else:
            event[k] = v
    return event


MALFORMED: list[tuple[str, Any, str]] = [
    ("missing detail", _good(detail=None), "detail"),
    ("missing detail-type", _good(**{"detail-type": None}), "detail-type"),
    ("wrong source", _good(source="aws.s3"), "source"),
    ("custom source", _good(source="my.app"), "source"),
    ("other detail-type", _good(**{"detail-type": "EC2 Instance Launch Successful"}), "detail-type"),
    ("bad instance id", _good(detail={"instance-id": "i-XYZ; rm -rf /"}), "instance-id"),
    ("missing instance id", _good(detail={"instance-action": "terminate"}), "instance-id"),
    ("detail not an object", _good(detail="i-0123456789abcdef0"), "detail"),
    ("bad time", _good(time="yesterday"), "time"),
    ("missing time", _good(time=None), "time"),
    ("huge instance id", _good(detail={"instance-id": "i-" + "a" * 1_000_000}), "instance-id"),
    ("huge action", _good(detail={"instance-id": "i-0123456789abcdef0", "instance-action": "x" * 100_000}), "instance-action"),
    ("a list", [1, 2, 3], "event"),
    ("a string", "EC2 Spot Instance Interruption Warning", "event"),
    ("null", None, "event"),
    ("empty", {}, ""),
]


@pytest.fixture()
def no_aws() -> Iterator[None]:
    """The function's environment and an empty moto: a malformed event must be refused before any AWS call."""
    from moto import mock_aws

    from shared.clients import client
    from shared.settings import settings

    env = function_env(
        AUTOSTOP_RUNS_TABLE=RUNS_TABLE, AUTOSTOP_STATE_MACHINE_ARN="arn:aws:states:us-east-1:123456789012:stateMachine:absent"
    )
    with mock_aws(), mock.patch.dict(os.environ, env):
        client.cache_clear()
        settings.cache_clear()
        yield
        client.cache_clear()
        settings.cache_clear()


def test_malformed_events_are_ignored_with_a_reason(no_aws: None) -> None:
    for case, event, where in MALFORMED:
        out = handle(event)

        assert out["execution"] is None, case
        assert out["ignored"].startswith("malformed EC2 event: "), (case, out["ignored"])
        assert where in out["ignored"], (case, out["ignored"])
        assert len(out["ignored"]) < 300, case  # the reason never echoes a huge input back
