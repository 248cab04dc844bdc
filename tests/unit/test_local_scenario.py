"""Scenario files: the spot, rebalance and stop/start steps, and clear errors for bad input."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from local.scenario import InstanceSpec, RebalanceRecommendation, Scenario, SpotInterruption, StartInstance, StopInstance


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
