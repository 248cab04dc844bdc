"""Malformed, oversized and foreign EventBridge events, and markers of no running run, through the trigger handlers.

One world: a control instance whose run is complete (its marker is in S3), an instance whose run id is a
prefix of another run's (``exp1`` beside the marker of ``exp10``, whose instance is stopped). Each event goes
to its trigger's real Lambda handler; a bad one must come back ``ignored`` (or evaluate nobody) with the reason
logged, and make no StartExecution call, no checkpoint command, no stop. The controls (valid events) show the
same handlers do start executions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.badinput.cases import CONTROL_ID, CONTROL_MARKER, EVENT_CASES, Case, base_tags, key
from tests.badinput.conftest import LogLines, Report, checkpoint_commands, instance_state, shared_world
from tests.integration.conftest import BUCKET, CTX, World

HANDLERS = {
    "event:schedule": "on_schedule_tick",
    "event:s3": "on_object_created",
    "marker": "on_object_created",
    "event:ec2": "on_instance_event",
}


@dataclass
class Events:
    world: World
    control: str
    exp1: str


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Events]:
    with shared_world(tmp_path_factory.mktemp("bad-events")) as world:
        s3 = world.client("s3")
        control = world.instance("control", {**base_tags(), key("run-id"): "ctl-run"})
        s3.put_object(Bucket=BUCKET, Key=CONTROL_MARKER.replace(CONTROL_ID, control.instance_id), Body=b"done")
        world.instance("exp10", {**base_tags(), key("run-id"): "exp10"}, state="stopped")
        exp1 = world.instance(
            "exp1", {**base_tags(), key("run-id"): "exp1", key("completion-marker"): f"s3://{BUCKET}/runs/exp10/_SUCCESS"}
        )
        for marker in ("runs/ghost-run/_SUCCESS", "runs/exp10/_SUCCESS", "runs/ctl-run/../ctl-run/_SUCCESS"):
            s3.put_object(Bucket=BUCKET, Key=marker, Body=b"done")
        yield Events(world=world, control=control.instance_id, exp1=exp1.instance_id)


def _fill(value: Any, control: str) -> Any:
    return json.loads(json.dumps(value).replace(CONTROL_ID, control)) if value is not None else None


@pytest.mark.parametrize("case", EVENT_CASES, ids=[c.id for c in EVENT_CASES])
def test_bad_event_is_ignored_with_its_reason(events: Events, case: Case, logs: LogLines, report: Report) -> None:
    import importlib

    world = events.world
    handler = importlib.import_module(f"{HANDLERS[case.kind]}.handler").lambda_handler
    event = _fill(case.value, events.control) if not isinstance(case.value, str | int) else case.value
    before = (world.calls["StartExecution"], world.calls["DescribeInstances"])
    mark = logs.mark()

    out = handler(event, CTX)

    started = world.calls["StartExecution"] - before[0]
    logged = logs.text(mark)
    if case.kind == "event:ec2":
        reason = out["ignored"] or ""
        outcome = "ignored" if out["ignored"] else f"execution {out['execution']['status']}"
    elif "ignored" in out:
        reason, outcome = out["ignored"], "ignored"
    else:
        reason = "; ".join(f"{i}: {r}" for i, r in {**out["skipped"], **out["waiting"]}.items())
        reason = reason or next((line["message"] for line in logs.since(mark) if "nobody" in line["message"]), "")
        outcome = f"{out['instances']} instance(s) evaluated, {len(out['executions'])} execution(s)"

    if case.accepted:  # the control: the same handler acts on a good event
        assert started == 1, out
    else:
        assert case.expect in reason, (case.id, reason, out)
        assert case.expect in logged, logged
        assert started == 0, out
        if case.kind in ("event:schedule", "event:s3") or (case.kind == "event:ec2" and "malformed" in case.expect):
            assert world.calls["DescribeInstances"] == before[1], "a refused event still read EC2"
        assert len(reason) < 400  # the reason never echoes a huge input back
    assert checkpoint_commands(world) == []
    assert world.calls["StopInstances"] == world.calls["TerminateInstances"] == 0
    assert instance_state(world, events.control) == instance_state(world, events.exp1) == "running"
    report.add(case.id, case.kind, case.value, outcome, reason or "valid event", acted=started > 0, control=case.accepted)


def test_naive_interruption_deadline_in_execution_input_is_malformed(events: Events, report: Report) -> None:
    # A Spot warning's time without a zone used to make a naive deadline that the Evaluate step could not compare
    # with its own (aware) clock: TypeError instead of a reason. Execution input started by hand, the same way.
    from evaluate_completion.handler import lambda_handler

    lifecycle = {"instance_id": events.control, "run_id": "ctl-run", "reason": "interruption", "deadline": "2026-11-30T10:02:00"}
    out = lambda_handler({"input": lifecycle, "execution_name": f"{events.control}-ctl-run-interruption"}, CTX)
    assert out["decision"] == "skipped" and "malformed execution input: deadline" in out["reason"], out
    assert out["command"] is None and checkpoint_commands(events.world) == []
    report.add("execution input: deadline without zone", "execution-input", lifecycle, out["decision"], out["reason"], acted=False)


@pytest.mark.parametrize("field", ["run_id", "instance_id"])
def test_huge_execution_input_gives_a_small_output(events: Events, field: str, report: Report) -> None:
    # An execution started by hand with a 200 KB run id (Step Functions takes inputs up to 256 KB): the Evaluate
    # output echoed it whole, so two such fields made an output over the 256 KB payload limit.
    from evaluate_completion.handler import lambda_handler

    lifecycle = {"instance_id": events.control, "run_id": "ctl-run", "reason": "complete", field: "r" * 200_000}
    out = lambda_handler({"input": lifecycle, "execution_name": "hand-started"}, CTX)
    assert out["decision"] == "skipped" and f"malformed execution input: {field}" in out["reason"], out["reason"][:300]
    assert len(json.dumps(out)) < 2048
    assert out["command"] is None and checkpoint_commands(events.world) == []
    report.add(f"execution input: {field} of 200,000 characters", "execution-input", lifecycle, "skipped", out["reason"], acted=False)
