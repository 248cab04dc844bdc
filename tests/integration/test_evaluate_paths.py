"""The Evaluate Task state's Spot (interruption, rebalance), resume and spot-stop paths, as a Lambda
handler under moto with simulated SSM agents and the run records table."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest

from infra.constructs.documents import CHECKPOINT_PARAMETERS, RESTORE_PARAMETERS, command_content
from local.agent import SimulatedInstance
from shared.naming import execution_name
from shared.records import RunKey, RunRecords, checkpoint_entry
from tests.integration.conftest import BUCKET, CTX, RUNS_TABLE, World, ended_session

CHECKPOINT_DECLARED = command_content("t", "checkpoint.sh", CHECKPOINT_PARAMETERS, step="checkpoint", timeout="{{ executionTimeout }}")[
    "parameters"
]
RESTORE_DECLARED = command_content("t", "restore.sh", RESTORE_PARAMETERS, step="restore", timeout="{{ executionTimeout }}")["parameters"]
RESUME_COMMAND = "/usr/bin/python3 /opt/train.py --resume --lr=3e-4"


def run_tags(run: str = "run-a", **extra: str) -> dict[str, str]:
    return {"autostop:enabled": "true", "autostop:run-id": run, "autostop:checkpoint-dir": "{root}/ckpt", **extra}


def session_of(world: World, instance_id: str) -> str:
    raw = world.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return raw["LaunchTime"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def records(world: World) -> RunRecords:
    return RunRecords(world.client("dynamodb"), RUNS_TABLE)


def evaluate(
    world: World,
    instance_id: str,
    reason: str,
    *,
    run: str = "run-a",
    deadline: datetime | None = None,
    session: str | None = None,
    attempt: int = 1,
) -> dict[str, Any]:
    from evaluate_completion.handler import lambda_handler

    session = session or session_of(world, instance_id)
    payload: dict[str, Any] = {
        "instance_id": instance_id,
        "run_id": run,
        "reason": reason,
        "attempt": attempt,
        "session": session,
        "trigger": {"source": "test"},
    }
    if deadline is not None:
        payload["deadline"] = deadline.isoformat()
    return lambda_handler({"input": payload, "execution_name": execution_name(instance_id, run, reason, attempt, session)}, CTX)


def flat(out: dict[str, Any], declared: dict[str, Any]) -> dict[str, str]:
    """The command's parameters, after checking each is one string that its document's allowedPattern accepts."""
    params = out["command"]["parameters"]
    assert set(params) <= set(declared)
    for name, values in params.items():
        assert isinstance(values, list) and len(values) == 1, (name, values)
        assert re.fullmatch(declared[name]["allowedPattern"], values[0]), (name, values[0])
    return {k: v[0] for k, v in params.items()}


def seconds_left(out: dict[str, Any], deadline: datetime) -> int:
    return int((deadline - datetime.fromisoformat(out["decided_at"])).total_seconds())


# --- interruption ----------------------------------------------------------------------------------------


def test_interruption_plans_an_interruption_mode_checkpoint_bounded_by_the_deadline(world: World) -> None:
    # (spot-grace-seconds tag, how old the notice is): default grace, long grace cut by the deadline, late notice, no grace
    for n, (spot_grace, notice_age) in enumerate([(None, 0), ("110", 0), ("110", 60), ("0", 0)]):
        extra = {"autostop:pid-file": "{root}/train.pid"}
        if spot_grace is not None:
            extra["autostop:spot-grace-seconds"] = spot_grace
        inst = world.instance(f"i{n}", run_tags(**extra))
        deadline = datetime.now(UTC) + timedelta(seconds=120 - notice_age)

        out = evaluate(world, inst.instance_id, "interruption", deadline=deadline)

        case = (spot_grace, notice_age, out["reason"])
        assert (out["decision"], out["outcome"], out["lifecycle_reason"]) == ("spot_checkpoint", None, "interruption"), case
        left = seconds_left(out, deadline)
        grace = max(0, min(int(spot_grace or 30), left - 45))
        params = flat(out, CHECKPOINT_DECLARED)
        assert params["Mode"] == "interruption"
        assert params["GraceSeconds"] == str(grace), case
        assert params["executionTimeout"] == str(left), case  # the command may not outlive the instance
        assert params["PidFile"] == str(inst.root / "train.pid")  # this execution signals the trainer
        assert out["poll_limit"] == math.ceil(left / 5) + 2
        assert out["command"]["delivery_timeout_seconds"] == 30
        assert datetime.fromisoformat(out["deadline"]) == deadline
        assert f"({left} s left); trainer grace {grace} s" in out["reason"]
        execution = params["ExecutionName"]
        assert out["checkpoint"]["manifest_key"] == f"{world.own(inst.instance_id)}runs/run-a/manifests/{execution}.json"
        # the run record now names this execution for the reason, and as the one acting on the trainer
        record = records(world).get(RunKey(inst.instance_id, "run-a", out["session"]))
        assert record is not None and record["locks"] == {"interruption": execution} and record["active"] == execution
    assert world.fleet.sent == []  # Evaluate only plans; the state machine sends


def test_interruption_that_cannot_be_saved_fails_at_once_without_a_lock(world: World) -> None:
    now = datetime.now(UTC)
    close = world.instance("close", run_tags())
    late = world.instance("late", run_tags())
    offline = world.instance("offline", run_tags(), agent="offline")

    too_close = evaluate(world, close.instance_id, "interruption", deadline=now + timedelta(seconds=5))
    past = evaluate(world, late.instance_id, "interruption", deadline=now - timedelta(seconds=30))
    no_agent = evaluate(world, offline.instance_id, "interruption", deadline=now + timedelta(seconds=110))

    for out in (too_close, past, no_agent):
        assert (out["decision"], out["outcome"]) == ("refused", "SpotCheckpointFailed"), out["reason"]
        assert out["command"] is None
    assert "too late to upload anything" in too_close["reason"]
    assert "the interruption is 0 s away" in past["reason"]
    assert "SSM agent is not online" in no_agent["reason"] and "PingStatus=ConnectionLost" in no_agent["reason"]
    for inst in (close, late, offline):
        assert records(world).get(RunKey(inst.instance_id, "run-a", session_of(world, inst.instance_id))) is None
    assert world.fleet.sent == []


def test_interruption_without_a_deadline_is_skipped(world: World) -> None:
    inst = world.instance("a", run_tags())
    out = evaluate(world, inst.instance_id, "interruption")
    assert (out["decision"], out["outcome"]) == ("skipped", "Skipped")
    assert "needs its deadline" in out["reason"]


def test_second_execution_for_the_same_run_and_reason_is_skipped_naming_the_first(world: World) -> None:
    inst = world.instance("a", run_tags())
    deadline = datetime.now(UTC) + timedelta(seconds=110)
    first = evaluate(world, inst.instance_id, "interruption", deadline=deadline)
    first_name = first["command"]["parameters"]["ExecutionName"][0]

    second = evaluate(world, inst.instance_id, "interruption", deadline=deadline, attempt=2)

    assert (second["decision"], second["outcome"]) == ("skipped", "Skipped")
    assert f"already handled by execution {first_name}" in second["reason"]
    assert second["command"] is None
    record = records(world).get(RunKey(inst.instance_id, "run-a", first["session"]))
    assert record["locks"] == {"interruption": first_name}  # type: ignore[index]


def test_interruption_while_a_complete_execution_acts_uploads_without_a_second_signal(world: World) -> None:
    inst = world.instance("a", run_tags(**{"autostop:pid-file": "{root}/train.pid", "autostop:spot-grace-seconds": "60"}))
    session = session_of(world, inst.instance_id)
    key = RunKey(inst.instance_id, "run-a", session)
    complete = execution_name(inst.instance_id, "run-a", "complete", session=session)
    assert records(world).claim(key, "complete", complete, acting=True).owned  # it signalled the trainer already

    out = evaluate(world, inst.instance_id, "interruption", deadline=datetime.now(UTC) + timedelta(seconds=115))

    assert (out["decision"], out["outcome"]) == ("spot_checkpoint", None)
    params = flat(out, CHECKPOINT_DECLARED)
    assert params["PidFile"] == ""  # nothing is signalled
    assert params["GraceSeconds"] == "0"
    assert params["Mode"] == "interruption"
    assert f"execution {complete} already signalled the trainer" in out["reason"]
    record = records(world).get(key)
    assert record["locks"] == {"complete": complete, "interruption": params["ExecutionName"]}  # type: ignore[index]
    assert record["active"] == complete  # type: ignore[index]


# --- rebalance ---------------------------------------------------------------------------------------------


def test_rebalance_plans_an_early_upload_without_signalling_the_trainer_only_with_the_tag(world: World) -> None:
    tagged = world.instance(
        "a",
        run_tags(**{"autostop:on-rebalance": "checkpoint", "autostop:spot-grace-seconds": "40", "autostop:pid-file": "{root}/train.pid"}),
    )
    untagged = world.instance("b", run_tags())

    out = evaluate(world, tagged.instance_id, "rebalance")
    ignored = evaluate(world, untagged.instance_id, "rebalance")

    assert (out["decision"], out["outcome"], out["lifecycle_reason"]) == ("spot_checkpoint", None, "rebalance")
    params = flat(out, CHECKPOINT_DECLARED)
    # the newest checkpoint on disk is uploaded: no signal (even with a pid-file tag), no grace, the checkpoint budget
    assert (params["Mode"], params["PidFile"], params["GraceSeconds"], params["executionTimeout"]) == ("interruption", "", "0", "3600")
    assert out["poll_limit"] == math.ceil(3600 / 5) + 2
    assert out["reason"].startswith(
        "rebalance recommendation: early upload of the newest checkpoint on disk; the trainer is not signalled "
        "and the instance is not stopped"
    )
    assert out["deadline"] is None
    # the reason's lock, but not the trainer: a complete or interruption execution may still act on it
    record = records(world).get(RunKey(tagged.instance_id, "run-a", out["session"]))
    assert record is not None and record["locks"] == {"rebalance": params["ExecutionName"]}
    assert "active" not in record and "active_until" not in record
    assert (ignored["decision"], ignored["outcome"]) == ("skipped", "Skipped")
    assert "on-rebalance is not 'checkpoint'" in ignored["reason"]
    assert records(world).get(RunKey(untagged.instance_id, "run-a", ignored["session"])) is None


def test_rebalance_while_a_complete_execution_acts_still_uploads_and_a_second_rebalance_is_skipped(world: World) -> None:
    inst = world.instance("a", run_tags(**{"autostop:on-rebalance": "checkpoint", "autostop:pid-file": "{root}/train.pid"}))
    session = session_of(world, inst.instance_id)
    key = RunKey(inst.instance_id, "run-a", session)
    complete = execution_name(inst.instance_id, "run-a", "complete", session=session)
    assert records(world).claim(key, "complete", complete, acting=True).owned

    first = evaluate(world, inst.instance_id, "rebalance")
    second = evaluate(world, inst.instance_id, "rebalance", attempt=2)

    assert first["decision"] == "spot_checkpoint", first["reason"]
    assert flat(first, CHECKPOINT_DECLARED)["PidFile"] == ""
    assert "already signalled" not in first["reason"]
    assert (second["decision"], second["outcome"], second["command"]) == ("skipped", "Skipped", None)
    first_name = first["command"]["parameters"]["ExecutionName"][0]
    assert second["reason"].startswith("not acting:") and first_name in second["reason"]
    record = records(world).get(key)
    assert record["locks"] == {"complete": complete, "rebalance": first_name}  # type: ignore[index]
    assert record["active"] == complete  # type: ignore[index]


# --- resume --------------------------------------------------------------------------------------------------


@pytest.fixture()
def restore_document(world: World) -> Iterator[str]:
    from shared.settings import settings

    with mock.patch.dict(os.environ, {"AUTOSTOP_RESTORE_DOCUMENT": "Autostop-Restore"}):
        settings.cache_clear()
        yield "Autostop-Restore"
    settings.cache_clear()


EARLIER = "2026-01-01T00:00:00Z"


def earlier_session(
    world: World,
    instance_id: str,
    outcome: str,
    *,
    checkpoint: bool = True,
    session: str = EARLIER,
    action: str | None = None,
    pinned: bool = True,
) -> dict[str, Any]:
    """An earlier session that ended ``outcome``, recorded by the real Record outcome step (after Verify
    checkpoint wrote its checkpoint entry, if ``checkpoint``)."""
    own = world.own(instance_id)
    entry = checkpoint_entry(
        manifest_uri=f"s3://{BUCKET}/{own}runs/run-a/manifests/old-exec.json",
        manifest_version_id="manifest-version-1" if pinned else None,
        manifest_sha256="cd" * 32 if pinned else None,
        upload_prefix=f"{own}runs/run-a/checkpoints/old-exec/" if pinned else None,
        execution="old-exec",
        files=[{"key": f"{own}runs/run-a/checkpoints/old-exec/step_700/w.bin", "size": 1234, "sha256": "ab" * 32}] * 3,
        total_bytes=3702,
        step=700,
        fresh=True,
        verified_at=session,
    )
    ended_session(world, instance_id, session, outcome, checkpoint=entry if checkpoint else None, action=action)
    return entry


def test_resume_after_an_auto_stop_plans_the_restore_of_the_last_checkpoint(world: World, restore_document: str) -> None:
    inst = world.instance(
        "a",
        run_tags(
            **{"autostop:resume-command": RESUME_COMMAND, "autostop:pid-file": "{root}/train.pid", "autostop:log-file": "{root}/run-a.log"},
            **{"autostop:log-pattern": "done"},
        ),
    )
    earlier_session(world, inst.instance_id, "Stopped")

    out = evaluate(world, inst.instance_id, "resume")

    assert (out["decision"], out["outcome"], out["lifecycle_reason"]) == ("resume", None, "resume")
    assert out["command"]["document"] == restore_document
    params = flat(out, RESTORE_DECLARED)
    execution = execution_name(inst.instance_id, "run-a", "resume", session=out["session"])
    assert params == {
        "RunId": "run-a",
        "InstanceId": inst.instance_id,
        "ExecutionName": execution,
        "CheckpointDir": str(inst.root / "ckpt"),
        "Bucket": BUCKET,
        "ManifestKey": f"{world.own(inst.instance_id)}runs/run-a/manifests/old-exec.json",
        "ManifestVersionId": "manifest-version-1",
        "ManifestSha256": "cd" * 32,
        "UploadPrefix": f"{world.own(inst.instance_id)}runs/run-a/checkpoints/old-exec/",
        "PidFile": str(inst.root / "train.pid"),
        "LogFile": str(inst.root / "run-a.log"),
        "ResumeCommand": RESUME_COMMAND,
        "executionTimeout": "3600",
    }
    assert out["restore"] == {
        "manifest_uri": f"s3://{BUCKET}/{world.own(inst.instance_id)}runs/run-a/manifests/old-exec.json",
        "from_session": EARLIER,
        "files": 3,
        "bytes": 3702,
        "step": 700,
    }
    assert out["poll_limit"] == 60
    assert "then start /usr/bin/python3" in out["reason"]
    record = records(world).get(RunKey(inst.instance_id, "run-a", out["session"]))
    assert record["locks"] == {"resume": execution}  # type: ignore[index]
    assert world.fleet.sent == []


def test_resume_after_a_saved_spot_checkpoint_without_a_resume_command(world: World, restore_document: str) -> None:
    inst = world.instance("a", run_tags())
    earlier_session(world, inst.instance_id, "SpotCheckpointSaved")

    out = evaluate(world, inst.instance_id, "resume")

    assert out["decision"] == "resume"
    params = flat(out, RESTORE_DECLARED)
    assert (params["ResumeCommand"], params["PidFile"], params["LogFile"]) == ("", "", "")
    assert "then start" not in out["reason"]


def test_resume_is_skipped_without_a_restorable_earlier_session(world: World, restore_document: str) -> None:
    resumable = run_tags(**{"autostop:resume-command": RESUME_COMMAND, "autostop:pid-file": "{root}/train.pid"})
    fresh = world.instance("fresh", resumable)
    hibernated = world.instance("hib", resumable)
    earlier_session(world, hibernated.instance_id, "Hibernated")
    spot_hibernated = world.instance("spot-hib", resumable)
    earlier_session(world, spot_hibernated.instance_id, "SpotCheckpointSaved", action="hibernate")
    unverified = world.instance("unv", resumable)
    earlier_session(world, unverified.instance_id, "Stopped", checkpoint=False)
    failed = world.instance("failed", resumable)
    earlier_session(world, failed.instance_id, "CheckpointFailed")

    nothing = "nothing to resume for run run-a: "
    hib = f"{nothing}session {EARLIER} was hibernated: the trainer comes back from memory, nothing to restore"
    none_stopped = f"{nothing}no earlier session ended stopped with a verified checkpoint"
    expected = {
        fresh.instance_id: f"{nothing}the run has no earlier session on this instance",
        hibernated.instance_id: hib,
        spot_hibernated.instance_id: hib,
        unverified.instance_id: f"{none_stopped} (the last, {EARLIER}, ended Stopped with no verified checkpoint)",
        failed.instance_id: f"{none_stopped} (the last, {EARLIER}, ended CheckpointFailed with a verified checkpoint)",
    }
    for iid, why in expected.items():
        out = evaluate(world, iid, "resume")

        assert (out["decision"], out["outcome"]) == ("skipped", "Skipped"), out["reason"]
        assert out["reason"] == why
        assert out["command"] is None
        assert records(world).get(RunKey(iid, "run-a", out["session"])) is None  # no lock taken


def test_resume_restores_the_newest_resumable_session_past_later_failed_ones(world: World, restore_document: str) -> None:
    inst = world.instance("a", run_tags())
    earlier_session(world, inst.instance_id, "Stopped", session="2026-01-01T00:00:00Z")
    later = earlier_session(world, inst.instance_id, "SpotCheckpointSaved", session="2026-01-02T00:00:00Z")
    earlier_session(world, inst.instance_id, "CheckpointFailed", session="2026-01-03T00:00:00Z")  # its checkpoint never counts
    earlier_session(world, inst.instance_id, "ResumeFailed", session="2026-01-04T00:00:00Z", checkpoint=False)

    out = evaluate(world, inst.instance_id, "resume")

    assert out["decision"] == "resume", out["reason"]
    assert out["restore"]["from_session"] == "2026-01-02T00:00:00Z"
    assert out["restore"]["manifest_uri"] == later["manifest_uri"]


def test_resume_after_a_saved_spot_checkpoint_later_overwritten_by_a_failure(world: World, restore_document: str) -> None:
    inst = world.instance("a", run_tags())
    earlier_session(world, inst.instance_id, "SpotCheckpointSaved")
    # a second execution of the same session (a complete one, say) ended badly after it: the flag stays
    ended_session(world, inst.instance_id, EARLIER, "StopFailed", execution="later-exec")
    assert records(world).get(RunKey(inst.instance_id, "run-a", EARLIER))["outcome"] == "StopFailed"  # type: ignore[index]

    out = evaluate(world, inst.instance_id, "resume")

    assert out["decision"] == "resume", out["reason"]
    assert out["restore"]["from_session"] == EARLIER


def test_a_hibernated_session_stops_the_search_for_an_older_checkpoint(world: World, restore_document: str) -> None:
    inst = world.instance("a", run_tags())
    earlier_session(world, inst.instance_id, "Stopped", session="2026-01-01T00:00:00Z")
    earlier_session(world, inst.instance_id, "Hibernated", session="2026-01-02T00:00:00Z")

    out = evaluate(world, inst.instance_id, "resume")

    assert (out["decision"], out["outcome"], out["command"]) == ("skipped", "Skipped", None)
    assert "session 2026-01-02T00:00:00Z was hibernated" in out["reason"]


def test_a_spot_hibernation_stops_the_search_even_when_its_checkpoint_failed(world: World, restore_document: str) -> None:
    # EC2 hibernates the instance whatever the upload did: the trainer comes back from memory, and the older
    # session's checkpoint must not be restored under it
    inst = world.instance("a", run_tags())
    earlier_session(world, inst.instance_id, "Stopped", session="2026-01-01T00:00:00Z")
    earlier_session(world, inst.instance_id, "SpotCheckpointFailed", session="2026-01-02T00:00:00Z", checkpoint=False, action="hibernate")

    out = evaluate(world, inst.instance_id, "resume")

    assert (out["decision"], out["outcome"], out["command"]) == ("skipped", "Skipped", None)
    assert "session 2026-01-02T00:00:00Z was hibernated" in out["reason"]


def test_resume_without_a_restore_document_fails(world: World) -> None:
    inst = world.instance("a", run_tags())
    earlier_session(world, inst.instance_id, "Stopped")

    out = evaluate(world, inst.instance_id, "resume")

    assert (out["decision"], out["outcome"]) == ("refused", "ResumeFailed")
    assert "AUTOSTOP_RESTORE_DOCUMENT" in out["reason"]


def test_a_second_resume_execution_for_the_session_is_skipped(world: World, restore_document: str) -> None:
    inst = world.instance("a", run_tags())
    earlier_session(world, inst.instance_id, "Stopped")
    first = evaluate(world, inst.instance_id, "resume")

    second = evaluate(world, inst.instance_id, "resume", attempt=2)

    assert first["decision"] == "resume"
    assert (second["decision"], second["outcome"]) == ("skipped", "Skipped")
    assert first["command"]["parameters"]["ExecutionName"][0] in second["reason"]


def test_session_mismatch_is_skipped(world: World, restore_document: str) -> None:
    inst = world.instance("a", run_tags())
    earlier_session(world, inst.instance_id, "Stopped")
    put_marker(world)

    for reason in ("resume", "interruption", "complete"):
        out = evaluate(world, inst.instance_id, reason, session="2026-02-02T02:02:02Z", deadline=datetime.now(UTC) + timedelta(seconds=100))

        assert (out["decision"], out["outcome"]) == ("skipped", "Skipped"), (reason, out["reason"])
        assert "the instance was restarted since the trigger" in out["reason"]
        assert "the trigger saw 2026-02-02T02:02:02Z" in out["reason"]
    assert records(world).get(RunKey(inst.instance_id, "run-a", session_of(world, inst.instance_id))) is None


# --- Spot Instances that cannot be stopped ---------------------------------------------------------------


def spot_instance(world: World, name: str, spot_type: str, tags: dict[str, str]) -> SimulatedInstance:
    """Like World.instance, but launched from a Spot request of ``spot_type`` (local/aws.py records the request)."""
    root = world.tmp / name
    root.mkdir(parents=True, exist_ok=True)
    expanded = {k: v.replace("{root}", str(root)) for k, v in tags.items()}
    iid = world.client("ec2").run_instances(
        ImageId="ami-12345678",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in expanded.items()]}],
        InstanceMarketOptions={
            "MarketType": "spot",
            "SpotOptions": {
                "SpotInstanceType": spot_type,
                "InstanceInterruptionBehavior": "terminate" if spot_type == "one-time" else "stop",
            },
        },
    )["Instances"][0]["InstanceId"]
    inst = SimulatedInstance(instance_id=iid, name=name, root=root, agent_online=True)
    world.fleet.add(inst)
    return inst


def put_marker(world: World, run: str = "run-a") -> None:
    """The run's default marker on every instance tagged with it (each below its own prefix)."""
    found = world.client("ec2").describe_instances(Filters=[{"Name": "tag:autostop:run-id", "Values": [run]}])["Reservations"]
    for iid in {i["InstanceId"] for r in found for i in r["Instances"]}:
        world.client("s3").put_object(Bucket=BUCKET, Key=f"{world.own(iid)}runs/{run}/_SUCCESS", Body=b"done")


def test_one_time_spot_with_action_stop_is_refused_before_anything_is_done(world: World) -> None:
    inst = spot_instance(world, "s", "one-time", run_tags(**{"autostop:action": "stop"}))
    raw = world.client("ec2").describe_instances(InstanceIds=[inst.instance_id])["Reservations"][0]["Instances"][0]
    assert raw["InstanceLifecycle"] == "spot" and raw["SpotInstanceRequestId"]  # the fixture is what it claims
    put_marker(world)

    out = evaluate(world, inst.instance_id, "complete")

    assert (out["decision"], out["outcome"]) == ("refused", "StopFailed")
    assert "its Spot request is one-time" in out["reason"]
    assert "tag autostop:action=terminate" in out["reason"]
    assert out["command"] is None
    assert world.fleet.sent == []  # no SendCommand: the trainer was never signalled
    assert records(world).get(RunKey(inst.instance_id, "run-a", out["session"])) is None  # and no lock taken


def test_spot_instances_that_can_end_as_tagged_are_complete(world: World) -> None:
    one_time = spot_instance(world, "t", "one-time", run_tags(**{"autostop:action": "terminate"}))
    persistent = spot_instance(world, "p", "persistent", run_tags(**{"autostop:action": "stop"}))
    put_marker(world)

    for inst, action in ((one_time, "terminate"), (persistent, "stop")):
        out = evaluate(world, inst.instance_id, "complete")

        assert (out["decision"], out["outcome"], out["action"]) == ("complete", None, action), out["reason"]
        assert flat(out, CHECKPOINT_DECLARED)["Mode"] == "stop"
