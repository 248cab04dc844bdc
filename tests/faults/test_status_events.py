"""The events that end a wait: SSM's command status change and EC2's stopped state change, lost or repeated.

The state machine does not poll: its Run command and Stop instance states wait for a task token that
on_status_event completes when the event comes. EventBridge delivers at least once and SSM and EC2 send these
events on a best-effort basis, so each is lost and repeated here on purpose. A lost event is caught up by the next
schedule sweep (shared/waiters.py settle_stale); a repeated one completes nothing twice; with every event lost and
no sweep, the Task state's own timeout looks the command up once. Own control plane: Task timeouts capped at a few
seconds (the production wait is the command's whole budget)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shared import constants as c
from tests.faults.conftest import Collector, Plane, Row, launch_done, observe, plane
from tests.workflow.conftest import Run, checkpoint_commands, start_and_wait, start_as_trigger, wait_closed

TASK_TIMEOUT_CAP = 8
COMMAND_ENDED = "EC2 Command Invocation Status-change Notification"


@pytest.fixture(scope="module")
def ep() -> Iterator[Plane]:
    for p in plane():
        p.cp.aws.task_timeout_cap = TASK_TIMEOUT_CAP
        yield p


def only(iid: str, detail_type: str, copies: int, state: str | None = None) -> Callable[[str, str, dict[str, Any]], int]:
    """An ``event_copies`` hook: ``copies`` of the events of ``detail_type`` about ``iid`` (of ``state``), one of the rest."""

    def hook(source: str, kind: str, detail: dict[str, Any]) -> int:
        mine = kind == detail_type and detail.get("instance-id") == iid and (state is None or detail.get("state") == state)
        return copies if mine else 1

    return hook


def start(p: Plane, iid: str, run_id: str) -> str:
    """Start the run's execution without waiting; returns its ARN."""
    started = start_as_trigger(p.cp, iid, run_id)
    assert started.execution_arn
    return started.execution_arn


def sweep_until_closed(p: Plane, arn: str, timeout: float = 90) -> Run:
    """Tick the schedule (its sweep settles stale waiters) until the execution closes."""
    sfn = p.cp.aws.client("stepfunctions")
    deadline = time.monotonic() + timeout
    while sfn.describe_execution(executionArn=arn)["status"] == "RUNNING":
        assert time.monotonic() < deadline, "the execution still waits"
        time.sleep(0.5)
        p.cp.schedule_tick()
    return wait_closed(p.cp, arn)


def lost(p: Plane, detail_type: str) -> int:
    return sum(1 for e in p.cp.aws.lost_events if e["detail-type"] == detail_type)


@pytest.mark.parametrize(
    ("label", "detail_type", "state"),
    [("command status event lost", COMMAND_ENDED, None), ("stopped event lost", c.STATE_CHANGE, "stopped")],
)
def test_a_lost_event_is_settled_by_the_next_sweep(
    ep: Plane, reliability: Collector, label: str, detail_type: str, state: str | None
) -> None:
    cp = ep.cp
    name, run_id = f"lost-{label.split()[0]}", f"run-lost-{label.split()[0]}"
    iid = launch_done(cp, name, run_id)
    before = lost(ep, detail_type)
    cp.aws.event_copies = only(iid, detail_type, 0, state)
    try:
        arn = start(ep, iid, run_id)
        run = sweep_until_closed(ep, arn)
    finally:
        cp.aws.event_copies = None
    seen = observe(ep, name, iid, run)
    injected = lost(ep, detail_type) - before
    ok = run.outcome == "Stopped" and injected >= 1 and seen["final_state"] == "stopped"
    reliability.add(Row(f"{label} (the sweep settles the wait)", "events", "Stopped", injected=injected, passed=ok, **seen))
    assert injected >= 1
    assert run.outcome == "Stopped", run.reason
    assert seen["final_state"] == "stopped" and seen["verified_checkpoint"]
    assert len(checkpoint_commands(cp, iid)) == 1


def test_repeated_events_complete_each_wait_once(ep: Plane, reliability: Collector) -> None:
    cp = ep.cp
    name, run_id = "twice", "run-twice"
    iid = launch_done(cp, name, run_id)
    calls_before = cp.aws.lambdas.calls["on_status_event"]

    def twice(source: str, kind: str, detail: dict[str, Any]) -> int:
        return 2 if detail.get("instance-id") == iid and kind in (COMMAND_ENDED, c.STATE_CHANGE) else 1

    cp.aws.event_copies = twice
    try:
        run = start_and_wait(cp, iid, run_id)
        cp.wait_executions()
    finally:
        cp.aws.event_copies = None
    seen = observe(ep, name, iid, run)
    deliveries = cp.aws.lambdas.calls["on_status_event"] - calls_before
    ok = run.outcome == "Stopped" and run.states.count("Verify checkpoint") == 1 and deliveries >= 4
    reliability.add(Row("command and stopped events each delivered twice", "events", "Stopped", injected=2, passed=ok, **seen))
    assert run.outcome == "Stopped", run.reason
    assert deliveries >= 4  # two command events, two stopped events (stopping is not delivered to it)
    assert run.states.count("Verify checkpoint") == 1 and run.states.count("Stop instance") == 1
    assert len(checkpoint_commands(cp, iid)) == 1


def test_every_event_lost_and_no_sweep_the_timeout_reads_the_command_once(ep: Plane, reliability: Collector) -> None:
    cp = ep.cp
    name, run_id = "all-lost", "run-all-lost"
    iid = launch_done(cp, name, run_id)
    cp.aws.event_copies = only(iid, COMMAND_ENDED, 0)
    try:
        run = start_and_wait(cp, iid, run_id, timeout=120)
    finally:
        cp.aws.event_copies = None
    seen = observe(ep, name, iid, run)
    path = ["Run checkpoint command", "Find checkpoint command", "Follow checkpoint command", "Verify checkpoint"]
    ok = run.outcome == "Stopped" and all(s in run.states for s in path)
    reliability.add(Row("command status event lost, no sweep (Task timeout)", "events", "Stopped", injected=1, passed=ok, **seen))
    assert run.outcome == "Stopped", run.reason
    assert [s for s in run.states if s in path] == path
    assert len(checkpoint_commands(cp, iid)) == 1


def test_get_command_invocation_failing_always_ends_checkpoint_failed(ep: Plane, reliability: Collector) -> None:
    cp = ep.cp
    name, run_id = "gci-5xx", "run-gci-5xx"
    iid = launch_done(cp, name, run_id)
    with ep.faults.aws("ssm", "GetCommandInvocation", "5xx", origins=("lambda", "sfn"), times=None):
        run = start_and_wait(cp, iid, run_id, timeout=180)
    seen = observe(ep, name, iid, run)
    ok = run.outcome == "CheckpointFailed" and not seen["destroyed"] and "GetCommandInvocation" in run.reason
    reliability.add(
        Row("5xx GetCommandInvocation always", "lambda ssm:GetCommandInvocation", "CheckpointFailed", injected=1, passed=ok, **seen)
    )
    assert run.outcome == "CheckpointFailed", run.reason
    assert "GetCommandInvocation" in run.reason
    assert seen["final_state"] == "running" and not seen["destroyed"]
