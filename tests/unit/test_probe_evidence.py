"""When Evaluate completion may reuse the starting trigger's probe instead of probing again (Evaluator.trusted)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.evaluation import CLOCK_SKEW_SECONDS, Clients, Evaluator
from shared.models import LogState, ProbeEvidence, ProbeResult
from shared.settings import Settings
from tests.conftest import function_env

NOW = datetime(2026, 12, 1, 11, 5, tzinfo=UTC)
PARAMS = {"PidFile": [""], "LogFile": ["/data/r1/train.log"], "LogPattern": ["done"], "CheckpointDir": ["/data/ckpt"]}


def evaluator(trust: int = 120) -> Evaluator:
    settings = Settings.from_env(function_env(AUTOSTOP_PROBE_TRUST_SECONDS=trust))
    return Evaluator(clients=Clients(s3=None, ssm=None), settings=settings, clock=lambda: NOW)


def evidence(age: float, ok: bool = True, **params: list[str]) -> ProbeEvidence:
    result = ProbeResult(ok=True, log=LogState(state="matched")) if ok else ProbeResult(ok=False, error="probe command Failed")
    return ProbeEvidence(at=NOW - timedelta(seconds=age), parameters={**PARAMS, **params}, result=result)


@pytest.mark.parametrize(
    ("ev", "trust", "trusted"),
    [
        (evidence(0), 120, True),
        (evidence(120), 120, True),
        (evidence(120.5), 120, False),  # older than the setting
        (evidence(-CLOCK_SKEW_SECONDS), 120, True),  # a clock a little ahead
        (evidence(-CLOCK_SKEW_SECONDS - 1), 120, False),  # from the future
        (evidence(1, LogFile=["/data/r2/train.log"]), 120, False),  # the tags give other parameters now
        (evidence(1, ok=False), 120, False),  # no result
        (evidence(0), 0, False),  # 0: never
        (evidence(-1), 0, False),
    ],
)
def test_the_trigger_probe_stands_in_only_while_recent_and_for_the_same_parameters(ev: ProbeEvidence, trust: int, trusted: bool) -> None:
    assert evaluator(trust).trusted(ev, PARAMS) is trusted


def test_a_probe_time_without_a_time_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        ProbeEvidence(at=datetime(2026, 12, 1, 11, 5), parameters=PARAMS, result=ProbeResult(ok=True))  # noqa: DTZ001
