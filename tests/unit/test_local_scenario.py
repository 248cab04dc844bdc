"""Scenario files: the spot, rebalance and stop/start steps, and clear errors for bad input."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from local.report import poll_loops, state_lines
from local.scenario import InstanceSpec, RebalanceRecommendation, Scenario, SpotInterruption, StartInstance, StopInstance, describe_step


def scenario(*steps: dict[str, Any], **instance: Any) -> Scenario:
    return Scenario.model_validate({"instances": [{"name": "gpu-1", **instance}], "steps": list(steps)})


def test_new_steps_parse_with_defaults() -> None:
    s = scenario(
        {"step": "spot_interruption", "instance": "gpu-1"},
        {"step": "spot_interruption", "instance": "gpu-1", "seconds_left": 0, "action": "stop"},
        {"step": "rebalance_recommendation", "instance": "gpu-1"},
        {"step": "stop_instance", "instance": "gpu-1"},
        {"step": "start_instance", "instance": "gpu-1"},
    )
    first, late, rebalance, stop, start = s.steps
    assert isinstance(first, SpotInterruption) and (first.seconds_left, first.action) == (120, "terminate")
    assert isinstance(late, SpotInterruption) and (late.seconds_left, late.action) == (0, "stop")
    assert isinstance(rebalance, RebalanceRecommendation)
    assert isinstance(stop, StopInstance) and isinstance(start, StartInstance)
    assert s.agent_boot_seconds == 2.0


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"step": "spot_interruption", "instance": "gpu-1", "seconds_left": 121}, "less than or equal to 120"),
        ({"step": "spot_interruption", "instance": "gpu-1", "seconds_left": -1}, "greater than or equal to 0"),
        ({"step": "spot_interruption", "instance": "gpu-1", "seconds_left": 30.5}, "valid integer"),
        ({"step": "spot_interruption", "instance": "gpu-1", "seconds_left": "30"}, "valid integer"),
        ({"step": "spot_interruption", "instance": "gpu-1", "action": "reboot"}, "'terminate', 'stop' or 'hibernate'"),
        ({"step": "spot_interruption"}, "instance\n  Field required"),
        ({"step": "stop_instance", "instance": "gpu-2"}, "step 1 (stop_instance) names instance 'gpu-2', which is not one of ['gpu-1']"),
        ({"step": "start_instance", "instance": "gpu-1", "force": True}, "Extra inputs are not permitted"),
        ({"step": "rebalance"}, "'rebalance'"),
    ],
)
def test_bad_steps_are_clear_errors(step: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        scenario(step)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("given", "market", "spot"),
    [
        ({}, "on-demand", None),
        ({"market": "spot"}, "spot", "persistent"),
        ({"spot": "one-time"}, "spot", "one-time"),
        ({"market": "spot", "spot": "one-time"}, "spot", "one-time"),
        ({"spot": None}, "on-demand", None),
    ],
)
def test_spot_implies_the_spot_market(given: dict[str, Any], market: str, spot: str | None) -> None:
    spec = InstanceSpec.model_validate({"name": "gpu-1", **given})
    assert (spec.market, spec.spot) == (market, spot)


def test_bad_spot_type_and_duplicate_names_are_errors() -> None:
    with pytest.raises(ValidationError, match="'one-time' or 'persistent'"):
        InstanceSpec.model_validate({"name": "gpu-1", "spot": "fleet"})
    with pytest.raises(ValidationError, match=r"instance names must be unique: \['a'\]"):
        Scenario.model_validate({"instances": [{"name": "a"}, {"name": "a"}]})


def test_agent_boot_seconds_is_bounded() -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        Scenario.model_validate({"instances": [{"name": "a"}], "agent_boot_seconds": -1})


# --- what the demo prints: steps as sentences, poll loops as one line each --------------------------------


@pytest.mark.parametrize(
    ("record", "sentence"),
    [
        ({"step": "wait_for_trainer_exit", "instance": "gpu-1", "seconds": 1.44}, "the trainer on gpu-1 finished and exited (1.4 s)"),
        ({"step": "wait_for_trainer_exit", "instance": "all", "seconds": 2}, "every trainer finished and exited (2.0 s)"),
        ({"step": "wait_executions", "seconds": 2.86}, "every execution ended (2.9 s)"),
        ({"step": "sleep", "seconds": 1.0}, "slept (1.0 s)"),
        (
            {"step": "put_object", "uri": "s3://b/runs/r/_SUCCESS", "seconds": 0.1},
            "put s3://b/runs/r/_SUCCESS; its Object Created event goes to the deployed rules (0.1 s)",
        ),
        (
            {
                "step": "schedule_tick",
                "seconds": 0.5,
                "sweep": {
                    "instances": 2,
                    "decisions": {"complete": 1, "skipped": 1},
                    "skipped": {"i-2": "invalid tags: autostop:checkpoint-dir must be an absolute path"},
                    "waiting": {},
                    "executions": [{"name": "i-1-r-complete-1", "status": "started"}],
                },
            },
            "a schedule tick swept 2 instances (1 complete, 1 skipped); executions: i-1-r-complete-1 (started); "
            "skipped idle-c: invalid tags: autostop:checkpoint-dir must be an absolute path (0.5 s)",
        ),
        (
            {"step": "stop_instance", "instance": "gpu-1", "id": "i-1", "previous_state": "running", "state": "stopping", "seconds": 0.2},
            "stopped gpu-1 as a person in the console would: running → stopping (0.2 s)",
        ),
        (
            {"step": "start_instance", "instance": "gpu-1", "id": "i-1", "error": "IncorrectInstanceState: busy", "seconds": 0},
            "start instance gpu-1 was refused: IncorrectInstanceState: busy (0.0 s)",
        ),
    ],
)
def test_each_step_is_a_sentence(record: dict[str, Any], sentence: str) -> None:
    assert describe_step(record, {"i-2": "idle-c"}) == sentence


def test_poll_loop_rounds_collapse_into_one_line() -> None:
    definition = {
        "StartAt": "Send",
        "States": {
            "Send": {"Type": "Task", "Resource": "arn:aws:states:::aws-sdk:ssm:sendCommand", "Next": "Start polls"},
            "Start polls": {"Type": "Pass", "Next": "Wait for command"},
            "Wait for command": {"Type": "Wait", "Seconds": 5, "Next": "Get invocation"},
            "Get invocation": {"Type": "Task", "Resource": "arn:aws:states:::aws-sdk:ssm:getCommandInvocation", "Next": "Count polls"},
            "Count polls": {"Type": "Pass", "Next": "Finished?"},
            "Finished?": {
                "Type": "Choice",
                "Choices": [{"Variable": "$.s", "StringEquals": "InProgress", "Next": "Wait for command"}],
                "Default": "Done",
            },
            "Done": {"Type": "Succeed"},
        },
    }
    assert set(poll_loops(definition)) == {"Wait for command", "Get invocation", "Count polls", "Finished?"}
    loop = [("Wait for command", "Wait"), ("Get invocation", "Task"), ("Count polls", "Pass"), ("Finished?", "Choice")]
    entered = [("Send", "Task"), ("Start polls", "Pass"), *loop * 3, ("Done", "Succeed")]
    lines = state_lines([{"name": n, "type": t} for n, t in entered], definition)
    assert lines == [
        "      1  Send                             Task",
        "      2  Start polls                      Pass",
        "   3-14  Wait for command → Get invocation  ×3 (polling the command invocation)",
        "     15  Done                             Succeed",
    ]
    # Without the definition (or on no cycle) every state keeps its own line.
    assert len(state_lines([{"name": n, "type": t} for n, t in entered])) == len(entered)
