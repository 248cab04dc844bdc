"""A checkpoint command stuck InProgress: the state machine stops waiting when the command's budget is over (the Task
state's timeout), looks the command up once more and ends in CheckpointFailed without a stop. Own control plane:
Task timeouts capped at a few seconds (so the test takes seconds, not the production budget of about an hour and a
half)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.conftest import Collector, Plane, Row, launch_done, observe, plane
from tests.workflow.conftest import checkpoint_commands, start_and_wait

SHORT_BUDGET = {"checkpoint_timeout_seconds": 60, "max_grace_seconds": 60, "default_grace_seconds": 30}


@pytest.fixture(scope="module")
def short() -> Iterator[Plane]:
    for p in plane(SHORT_BUDGET):
        p.cp.aws.task_timeout_cap = 5
        yield p


def test_command_stuck_in_progress(short: Plane, reliability: Collector) -> None:
    cp = short.cp
    iid = launch_done(cp, "stuck", "run-stuck", faults=["stuck_in_progress"])
    run = start_and_wait(cp, iid, "run-stuck")
    seen = observe(short, "stuck", iid, run)
    ok = seen["observed"] == "CheckpointFailed" and "still InProgress" in run.reason and not seen["destroyed"]
    reliability.add(Row("command stuck InProgress", "instance", "CheckpointFailed", injected=1, passed=ok, **seen))
    assert seen["observed"] == "CheckpointFailed", run.reason
    assert "still InProgress" in run.reason
    assert seen["final_state"] == "running" and not seen["destroyed"] and seen["notified"]
    assert len(checkpoint_commands(cp, iid)) == 1  # not re-sent
