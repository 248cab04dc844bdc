"""The schedule sweep and the marker trigger, run as Lambda handlers under moto with simulated agents."""

from __future__ import annotations

import json
import math
import subprocess
from datetime import UTC, datetime
from typing import Any

import pytest

from tests import events
from tests.integration.conftest import BUCKET, CTX, World, dead_pid


def object_created(key: str) -> dict[str, Any]:
    return events.object_created(BUCKET, key, size=2)


def pid_tags(run: str, pid_file: str = "{root}/train.pid") -> dict[str, str]:
    # One checkpoint-dir path for the whole fleet, as on a real one (the probe's parameters include it).
    return {"autostop:enabled": "true", "autostop:run-id": run, "autostop:checkpoint-dir": "/srv/ckpt", "autostop:pid-file": pid_file}


def sweep() -> dict[str, Any]:
    from on_schedule_tick.handler import lambda_handler

    return lambda_handler(events.scheduled_event(), CTX)


def executions(world: World) -> list[dict[str, Any]]:
    return world.client("stepfunctions").list_executions(stateMachineArn=world.state_machine_arn)["executions"]


def test_sweep_calls_grow_with_batches_not_instances(world: World) -> None:
    # Given 120 opted-in instances: 100 whose trainers still run and 20 whose trainers have exited.
    # (Simulated instances share the host's filesystem, so instances with the same pid-file tag share the
    # file: as on a real fleet, where every node of a job has the same path, their probes form one group.)
    alive = subprocess.Popen(["sleep", "120"])
    running_pid, exited_pid = world.tmp / "running.pid", world.tmp / "exited.pid"
    running_pid.write_text(f"{alive.pid}\n")
    exited_pid.write_text(f"{dead_pid()}\n")
    finished = set()
    for n in range(120):
        inst = world.instance(f"node-{n:03d}", pid_tags(f"run-{n}", str(exited_pid if n >= 100 else running_pid)))
        if n >= 100:
            finished.add(inst.instance_id)
    world.count_calls()

    # When one sweep runs
    try:
        summary = sweep()
    finally:
        alive.kill()
        alive.wait()

    # Then only the finished runs get an execution, and the calls are per page and per batch of 50
    started = {e["execution_arn"].rsplit(":", 1)[-1].split("-run-")[0] for e in summary["executions"]}
    assert started == finished
    assert len(executions(world)) == len(finished)
    assert world.calls["DescribeInstances"] == 1
    assert world.calls["DescribeInstanceInformation"] == math.ceil(120 / 50)
    assert world.calls["SendCommand"] == math.ceil(100 / 50) + math.ceil(20 / 50)
    assert world.calls["StartExecution"] == len(finished)
    assert world.calls["GetCommandInvocation"] == 0 and world.calls["HeadObject"] == 0
    assert world.calls["ListCommandInvocations"] <= 3 * 40  # batches x polls, independent of instance count
    assert sorted(len(c["instance_ids"]) for c in world.fleet.sent) == [20, 50, 50]


def test_sweep_groups_batches_by_probe_parameters(world: World) -> None:
    for n in range(3):
        world.instance(f"a-{n}", pid_tags(f"a{n}", "/srv/a.pid"))
        world.instance(f"b-{n}", pid_tags(f"b{n}", "/srv/b.pid"))
    sweep()
    assert sorted((c["parameters"]["PidFile"], len(c["instance_ids"])) for c in world.fleet.sent) == [("/srv/a.pid", 3), ("/srv/b.pid", 3)]
    # paths without the run id keep the plain parameters: no RunIds
    assert all(c["parameters"].get("RunIds", "") == "" for c in world.fleet.sent)


def test_a_log_fleet_with_per_run_paths_is_probed_in_batches_of_50(world: World) -> None:
    # Given 60 instances, each logging to its own /.../logs/<run id>/train.log (the run id is required in the log path),
    # of which 5 logged their completion line.
    ckpt = world.tmp / "ckpt"
    ckpt.mkdir()
    finished = set()
    for n in range(60):
        run = f"run-{n:02d}"
        log = world.tmp / "logs" / run / "train.log"
        log.parent.mkdir(parents=True)
        log.write_text("training complete\n" if n % 12 == 0 else "step 1\n")
        tags = {"autostop:enabled": "true", "autostop:run-id": run, "autostop:checkpoint-dir": str(ckpt)}
        inst = world.instance(f"log-{n:02d}", {**tags, "autostop:log-file": str(log), "autostop:log-pattern": "training complete"})
        if n % 12 == 0:
            finished.add(inst.instance_id)
    world.count_calls()

    summary = sweep()

    # Then two commands probe all 60, each instance reading its own log, and exactly the finished runs start
    assert world.calls["SendCommand"] == 2
    assert sorted(len(c["instance_ids"]) for c in world.fleet.sent) == [10, 50]
    for command in world.fleet.sent:
        assert command["parameters"]["LogFile"] == f"{world.tmp}/logs/{{run-id}}/train.log"
        assert len(command["parameters"]["RunIds"].split(" ")) == len(command["instance_ids"])
    assert summary["decisions"] == {"complete": 5, "not_complete": 55}
    assert {e["name"].split("-run-")[0] for e in summary["executions"]} == finished


def test_runs_whose_record_holds_the_complete_lock_cost_no_start_execution(world: World) -> None:
    from shared.instances import describe_instance
    from shared.records import RunKey, RunRecords
    from tests.integration.conftest import RUNS_TABLE

    # Given three finished runs: one an execution already handled (its record holds the complete lock), one whose
    # record has only another reason's lock, one without a record
    exited = world.tmp / "exited.pid"
    exited.write_text(f"{dead_pid()}\n")
    insts = [world.instance(f"rec-{n}", pid_tags(f"run-{n}", str(exited))) for n in range(3)]
    records = RunRecords(world.client("dynamodb"), RUNS_TABLE)
    keys = [RunKey(i.instance_id, f"run-{n}", describe_instance(world.client("ec2"), i.instance_id).session) for n, i in enumerate(insts)]
    records.claim(keys[0], "complete", "handled-before")
    records.claim(keys[1], "rebalance", "a-rebalance", acting=False)
    world.count_calls()
    from shared.clients import client

    client("dynamodb").meta.events.register("before-call", lambda model, **_: world.calls.update([model.name]))

    summary = sweep()

    # Then the handled run is reported from its record, and only the two others are started
    by_instance = {e["name"].split("-run-")[0]: e for e in summary["executions"] if e["status"] == "started"}
    assert set(by_instance) == {insts[1].instance_id, insts[2].instance_id}
    (claimed,) = [e for e in summary["executions"] if e["status"] == "claimed"]
    assert claimed["name"] == "handled-before" and claimed["execution_arn"].endswith(":handled-before")
    assert world.calls["StartExecution"] == 2 and world.calls["DescribeExecution"] == 0
    assert world.calls["BatchGetItem"] == 1


def test_sweep_skips_invalid_tags_and_never_starts_them(world: World) -> None:
    bad = world.instance("bad", {"autostop:enabled": "true", "autostop:run-id": "r", "autostop:checkpoint-dir": "../etc"})
    out = world.instance("out", {"autostop:enabled": "false", "autostop:run-id": "r2", "autostop:checkpoint-dir": "/c"})
    summary = sweep()
    assert "absolute path" in summary["skipped"][bad.instance_id]
    assert out.instance_id in summary["skipped"]
    assert summary["executions"] == [] and executions(world) == []


def test_offline_agent_makes_the_run_inconclusive_without_sending(world: World) -> None:
    inst = world.instance("offline", pid_tags("r"), agent="offline")
    (inst.root / "train.pid").write_text(f"{dead_pid()}\n")
    summary = sweep()
    assert summary["decisions"] == {"inconclusive": 1}
    assert world.fleet.sent == []


def test_duplicate_marker_events_start_one_execution(world: World) -> None:
    from on_object_created.handler import lambda_handler

    inst = world.instance("m", {"autostop:enabled": "true", "autostop:run-id": "run-m", "autostop:checkpoint-dir": "/ckpt"})
    marker = world.own(inst.instance_id) + "runs/run-m/_SUCCESS"
    world.client("s3").put_object(Bucket=BUCKET, Key=marker, Body=b"ok")
    first = lambda_handler(object_created(marker), CTX)
    second = lambda_handler(object_created(marker), CTX)
    also_sweep = sweep()
    assert [e["status"] for e in first["executions"]] == ["started"]
    # An identical StartExecution while the first runs is answered with that same execution ("started"),
    # a different input with ExecutionAlreadyExists; either way there is one execution.
    assert second["executions"][0]["execution_arn"] == first["executions"][0]["execution_arn"]
    assert also_sweep["executions"][0]["status"] in ("already_running", "already_finished")
    names = [e["name"] for e in executions(world)]
    launch = world.client("ec2").describe_instances(InstanceIds=[inst.instance_id])["Reservations"][0]["Instances"][0]["LaunchTime"]
    assert names == [f"{inst.instance_id}-run-m-complete-{launch.astimezone(UTC):%y%m%d%H%M%S}"]


@pytest.mark.parametrize("where", ["own prefix", "pipeline markers/"])
def test_a_marker_event_looks_up_its_instance_with_one_describe_not_a_fleet_scan(world: World, where: str) -> None:
    from on_object_created.handler import lambda_handler

    fleet = [
        world.instance(f"f{n}", {"autostop:enabled": "true", "autostop:run-id": f"run-f{n}", "autostop:checkpoint-dir": "/c"})
        for n in range(6)
    ]
    tags = {"autostop:enabled": "true", "autostop:run-id": "run-m", "autostop:checkpoint-dir": "/ckpt"}
    if where == "pipeline markers/":
        marker = "markers/run-m/_SUCCESS"
        tags["autostop:completion-marker"] = f"s3://{BUCKET}/{marker}"
        inst = world.instance("m", tags)
    else:
        inst = world.instance("m", tags)
        marker = world.own(inst.instance_id) + "runs/run-m/_SUCCESS"
    world.client("s3").put_object(Bucket=BUCKET, Key=marker, Body=b"ok")
    world.count_calls()
    from shared.clients import client

    asked: list[dict[str, Any]] = []
    client("ec2").meta.events.register("provide-client-params.ec2.DescribeInstances", lambda params, **_: asked.append(dict(params)))
    result = lambda_handler(object_created(marker), CTX)
    assert [e["name"].split("-run-m-")[0] for e in result["executions"]] == [inst.instance_id] and result["instances"] == 1
    # one DescribeInstances naming the owner (its id, or the marker tag's value), whatever the fleet's size
    assert world.calls["DescribeInstances"] == 1, world.calls
    (params,) = asked
    if where == "own prefix":
        assert params == {"InstanceIds": [inst.instance_id]}
    else:
        assert {"Name": "tag:autostop:completion-marker", "Values": [f"s3://{BUCKET}/{marker}"]} in params["Filters"]
    # another instance's prefix, or an instance that is not running, owns nothing
    world.client("ec2").stop_instances(InstanceIds=[fleet[0].instance_id])
    other = world.own(fleet[0].instance_id) + "runs/run-f0/_SUCCESS"
    assert lambda_handler(object_created(other), CTX)["instances"] == 0


def test_marker_of_nobody_starts_nothing(world: World) -> None:
    from on_object_created.handler import lambda_handler

    world.instance("m", {"autostop:enabled": "true", "autostop:run-id": "run-m", "autostop:checkpoint-dir": "/ckpt"})
    result = lambda_handler(object_created("runs/other/_SUCCESS"), CTX)
    assert result["instances"] == 0 and executions(world) == []


def test_malformed_event_is_rejected_before_any_aws_call(world: World) -> None:
    from on_object_created.handler import lambda_handler

    world.instance("m", {"autostop:enabled": "true", "autostop:run-id": "run-m", "autostop:checkpoint-dir": "/ckpt"})
    world.count_calls()
    # Ignored with a reason, not raised (an error would only be retried by EventBridge); tests/badinput has the rest
    result = lambda_handler({"detail-type": "Object Created", "detail": {"bucket": "not-a-dict"}}, CTX)
    assert result["ignored"].startswith("malformed event: ")
    assert executions(world) == [] and world.calls["DescribeInstances"] == 0


def test_retryable_outcome_lets_a_later_trigger_start_attempt_two(world: World) -> None:
    from shared.executions import start_lifecycle_execution

    sfn = world.client("stepfunctions")
    arn = sfn.create_state_machine(
        name="ends-not-complete",
        definition=json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "Result": {"outcome": "NotComplete"}, "End": True}}}),
        roleArn="arn:aws:iam::123456789012:role/sfn",
    )["stateMachineArn"]
    kwargs = {"instance_id": "i-0123456789abcdef0", "run_id": "r", "reason": "complete", "trigger": {"at": datetime.now(UTC).isoformat()}}
    first = start_lifecycle_execution(sfn, arn, **kwargs)
    _wait_closed(sfn, first.execution_arn)
    second = start_lifecycle_execution(sfn, arn, **kwargs)
    assert (first.name, second.name, second.status) == ("i-0123456789abcdef0-r-complete", "i-0123456789abcdef0-r-complete-2", "started")


def _wait_closed(sfn: Any, arn: str) -> None:
    import time

    for _ in range(100):
        if sfn.describe_execution(executionArn=arn)["status"] != "RUNNING":
            return
        time.sleep(0.05)
    raise AssertionError("execution did not finish")


# --- non-actions made visible: the last-error tag and one notice per sweep ----------------------------------------


def last_error(world: World, iid: str) -> str | None:
    raw = world.client("ec2").describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    return {t["Key"]: t["Value"] for t in raw.get("Tags", [])}.get("autostop:last-error")


def test_a_skipped_instance_is_told_once_until_its_reason_changes_and_untold_once_fixed(world: World) -> None:
    bad = {"autostop:enabled": "true", "autostop:run-id": "run v", "autostop:checkpoint-dir": "/ckpt", "Name": "gpu-7"}
    inst = world.instance("v", bad)
    sweep()
    text = last_error(world, inst.instance_id)
    assert text is not None and text.startswith("not evaluated: invalid tags: autostop:run-id")
    (notice,) = world.notifications()
    assert notice["outcome"] == "NotEvaluated" and notice["instances"][inst.instance_id]["name"] == "gpu-7"
    sweep()  # same reason: no tag write, no notice
    assert world.notifications() == [] and last_error(world, inst.instance_id) == text
    world.client("ec2").create_tags(Resources=[inst.instance_id], Tags=[{"Key": "autostop:run-id", "Value": "run-v"}])
    sweep()  # fixed: evaluated again (not complete), the tag is gone, nobody is notified
    assert last_error(world, inst.instance_id) is None and world.notifications() == []


def test_an_executions_failure_tag_is_never_overwritten_or_cleared_by_a_trigger(world: World) -> None:
    tags = {"autostop:enabled": "true", "autostop:run-id": "run-f", "autostop:checkpoint-dir": "/ckpt"}
    inst = world.instance("f", {**tags, "autostop:last-error": "CheckpointFailed: changed during the checkpoint"}, agent="offline")
    world.client("s3").put_object(Bucket=BUCKET, Key=world.own(inst.instance_id) + "runs/run-f/_SUCCESS", Body=b"ok")
    summary = sweep()  # complete but the agent is offline: inconclusive, which would be told, but the tag is an execution's
    assert summary["decisions"] == {"inconclusive": 1} and summary["marked"] == {} and world.notifications() == []
    assert last_error(world, inst.instance_id) == "CheckpointFailed: changed during the checkpoint"


def test_a_notice_sns_refuses_leaves_the_tag_unwritten_for_the_next_sweep(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.settings import settings

    inst = world.instance("n", {"autostop:enabled": "yes", "autostop:run-id": "run-n", "autostop:checkpoint-dir": "/ckpt"})
    monkeypatch.setenv("AUTOSTOP_OUTCOME_TOPIC_ARN", "arn:aws:sns:us-east-1:123456789012:no-such-topic")
    settings.cache_clear()
    assert sweep()["marked"] == {} and last_error(world, inst.instance_id) is None
    monkeypatch.undo()
    settings.cache_clear()
    assert list(sweep()["marked"]) == [inst.instance_id]
    (notice,) = world.notifications()
    assert "only 'true' opts in" in notice["instances"][inst.instance_id]["reason"]


def tick_at(when: str) -> dict[str, Any]:
    from on_schedule_tick.handler import lambda_handler

    return lambda_handler({**events.scheduled_event(), "time": when}, CTX)


def test_success_markers_are_read_by_the_sweep_once_an_hour_spread_over_its_sweeps(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.settings import settings

    monkeypatch.setenv("AUTOSTOP_MARKER_RECHECK_MINUTES", "60")  # the deployed default (schedule every 5 minutes)
    monkeypatch.setenv("AUTOSTOP_SCHEDULE_MINUTES", "5")
    settings.cache_clear()
    base = {"autostop:enabled": "true", "autostop:checkpoint-dir": "/ckpt"}
    watched = [world.instance(f"w{n}", {**base, "autostop:run-id": f"run-w{n}"}) for n in range(4)]
    for n, inst in enumerate(watched):  # every marker present: its S3 event was lost, say
        world.client("s3").put_object(Bucket=BUCKET, Key=world.own(inst.instance_id) + f"runs/run-w{n}/_SUCCESS", Body=b"ok")
    other_key = {**base, "autostop:run-id": "run-o"}  # a marker whose key starts nothing by event: every sweep reads it
    other = world.instance("o", {**other_key, "autostop:completion-marker": "s3://" + BUCKET + "/markers/run-o/done.txt"})
    world.count_calls()

    started: dict[str, int] = {}
    for minute in range(0, 60, 5):  # one hour of sweeps: each watched marker is read on exactly one of them
        heads = world.calls["HeadObject"]
        tick = tick_at(f"2026-12-05T10:{minute:02d}:00Z")
        for e in tick["executions"]:
            started[e["name"].split("-run-")[0]] = minute
        assert world.calls["HeadObject"] - heads == 1 + sum(started.get(i.instance_id) == minute for i in watched), tick
        assert other.instance_id in tick["waiting"] and tick["marked"] == {}  # waiting is no problem: nothing tagged
        waiting = [tick["waiting"][i.instance_id] for i in watched if i.instance_id not in started]
        assert all("is watched by its S3 event" in why and "once every 60 minutes" in why for why in waiting)
    assert sorted(started) == sorted(i.instance_id for i in watched)
    assert world.calls["HeadObject"] == 12 + 4  # the other marker on every sweep, each watched one once
