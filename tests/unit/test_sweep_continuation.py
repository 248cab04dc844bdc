"""The sweep page by page, and its hand-over to a continuation when the function's time runs short."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from on_schedule_tick.handler import Tick, parse_tick
from on_schedule_tick.logic import CONTINUE_MARGIN_SECONDS, MAX_HOPS, Continuation, invoke_continuation, sweep
from shared.evaluation import Clients, Evaluator
from shared.settings import Settings
from tests import events
from tests.conftest import function_env

MACHINE = "arn:aws:states:us-east-1:123456789012:stateMachine:autostop"
PAGE = 3  # instances per page of the fake (EC2 gives up to 1,000)


class PagedEc2:
    """DescribeInstances over ``pages`` pages of instances that are opted out (skipped without any other call)."""

    def __init__(self, pages: int) -> None:
        self.pages = [[self._instance(p * PAGE + n) for n in range(PAGE)] for p in range(pages)]
        self.calls: list[dict[str, Any]] = []

    @staticmethod
    def _instance(n: int) -> dict[str, Any]:
        return {"InstanceId": f"i-{n:017x}", "State": {"Name": "running"}, "Tags": [{"Key": "autostop:enabled", "Value": "false"}]}

    def describe_instances(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        page = int(kwargs.get("NextToken") or 0)
        out: dict[str, Any] = {"Reservations": [{"Instances": self.pages[page]}]}
        if page + 1 < len(self.pages):
            out["NextToken"] = str(page + 1)
        return out


def run(ec2: PagedEc2, *, left: float, accept: bool = True, next_token: str | None = None) -> tuple[Any, list[str]]:
    handed: list[str] = []

    def hand_over(token: str) -> bool:
        handed.append(token)
        return accept

    evaluator = Evaluator(clients=Clients(s3=None, ssm=None), settings=Settings.from_env(function_env(AUTOSTOP_STATE_MACHINE_ARN=MACHINE)))
    summary = sweep(
        ec2=ec2,
        sfn=None,
        evaluator=evaluator,
        scheduled_at="2026-12-01T11:05:00+00:00",
        next_token=next_token,
        seconds_left=lambda: left,
        hand_over=hand_over,
    )
    return summary, handed


def test_with_time_left_every_page_is_swept_by_this_invocation() -> None:
    ec2 = PagedEc2(3)
    summary, handed = run(ec2, left=CONTINUE_MARGIN_SECONDS + 1)
    assert (summary.instances, summary.continued, handed) == (3 * PAGE, False, [])
    assert [c.get("NextToken") for c in ec2.calls] == [None, "1", "2"]
    assert all(c["MaxResults"] == 1000 and c["Filters"] == ec2.calls[0]["Filters"] for c in ec2.calls)


def test_short_of_time_the_pages_left_go_to_a_continuation_after_one_page() -> None:
    ec2 = PagedEc2(3)
    summary, handed = run(ec2, left=CONTINUE_MARGIN_SECONDS - 1)
    assert (summary.instances, summary.continued, handed) == (PAGE, True, ["1"])
    assert len(ec2.calls) == 1
    assert summary.log_line()["continued"] is True


def test_a_refused_continuation_leaves_the_sweep_to_go_on_itself() -> None:
    summary, handed = run(PagedEc2(3), left=0, accept=False)
    assert (summary.instances, summary.continued, handed) == (3 * PAGE, False, ["1", "2"])


def test_a_continuation_starts_at_its_page_and_the_last_page_hands_nothing_over() -> None:
    ec2 = PagedEc2(3)
    summary, handed = run(ec2, left=0, next_token="2")
    assert (summary.instances, summary.continued, handed) == (PAGE, False, [])
    assert [c.get("NextToken") for c in ec2.calls] == ["2"]


class FakeLambda:
    def __init__(self, error: str | None = None) -> None:
        self.error, self.calls = error, []

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        if self.error:
            raise ClientError({"Error": {"Code": self.error, "Message": "no"}}, "Invoke")
        return {"StatusCode": 202}


def test_the_continuation_is_an_event_invocation_of_the_same_function_one_hop_further() -> None:
    fake = FakeLambda()
    hand_over = invoke_continuation(lambda: fake, "autostop-sweep", "2026-12-01T11:05:00+00:00", 3)
    assert hand_over is not None and hand_over("token-1")
    (call,) = fake.calls
    assert (call["FunctionName"], call["InvocationType"]) == ("autostop-sweep", "Event")
    tick = parse_tick(json.loads(call["Payload"]))
    assert tick == Tick(datetime(2026, 12, 1, 11, 5, tzinfo=UTC), "token-1", 4)


def test_a_refused_invoke_is_false_and_the_last_hop_hands_over_nothing() -> None:
    hand_over = invoke_continuation(lambda: FakeLambda("AccessDeniedException"), "f", "2026-12-01T11:05:00+00:00", 0)
    assert hand_over is not None and hand_over("t") is False
    assert invoke_continuation(lambda: FakeLambda(), "f", "2026-12-01T11:05:00+00:00", MAX_HOPS) is None


def test_a_scheduled_event_is_hop_0_from_the_first_page() -> None:
    tick = parse_tick(events.scheduled_event())
    assert isinstance(tick, Tick) and (tick.next_token, tick.hop) == (None, 0)


@pytest.mark.parametrize(
    "continuation",
    [
        {"scheduled_at": "2026-12-01T11:05:00", "next_token": "t", "hop": 1},  # no time zone
        {"scheduled_at": "2026-12-01T11:05:00Z", "next_token": "", "hop": 1},
        {"scheduled_at": "2026-12-01T11:05:00Z", "next_token": "t", "hop": MAX_HOPS + 1},
        {"scheduled_at": "2026-12-01T11:05:00Z", "next_token": "t", "hop": 1, "extra": 1},
        "not an object",
    ],
)
def test_a_malformed_continuation_is_ignored(continuation: Any) -> None:
    assert isinstance(parse_tick({"continuation": continuation}), str)
    assert Continuation.model_validate({"scheduled_at": "2026-12-01T11:05:00Z", "next_token": "t", "hop": 1}).hop == 1
