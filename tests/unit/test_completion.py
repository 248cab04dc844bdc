"""The pure completion decision: every configured signal must agree; unknown is never complete."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.completion import decide_completion
from shared.models import CompletionFacts, LogState, MarkerFact, PidState, ProbeResult
from shared.tags import TagPolicy, parse_instance_config

POLICY = TagPolicy(prefix="autostop", checkpoint_bucket="ckpt-bucket")
LAUNCH = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def config(**extra: str):
    t = {"autostop:enabled": "true", "autostop:run-id": "r1", "autostop:checkpoint-dir": "/ckpt"}
    t.update({f"autostop:{k.replace('_', '-')}": v for k, v in extra.items()})
    return parse_instance_config("i-0123456789abcdef0", t, POLICY)


def marker(state: str, minutes_after_launch: int = 5) -> MarkerFact:
    if state == "present":
        return MarkerFact(state="present", last_modified=LAUNCH + timedelta(minutes=minutes_after_launch))
    return MarkerFact(state=state, detail="AccessDenied" if state == "error" else "")  # type: ignore[arg-type]


def probe(pid: str = "not_configured", log: str = "not_configured") -> ProbeResult:
    return ProbeResult(ok=True, pid=PidState(state=pid, pid=42), log=LogState(state=log))  # type: ignore[arg-type]


def test_marker_present_after_launch_is_complete() -> None:
    d = decide_completion(config(), CompletionFacts(marker=marker("present"), launch_time=LAUNCH))
    assert d.verdict == "complete"
    assert "/runs/r1/_SUCCESS exists" in d.reason and "s3://ckpt-bucket/instances/arn:aws:ec2:" in d.reason


@pytest.mark.parametrize("state,verdict", [("absent", "not_complete"), ("error", "inconclusive")])
def test_marker_absent_or_unreadable(state: str, verdict: str) -> None:
    assert decide_completion(config(), CompletionFacts(marker=marker(state), launch_time=LAUNCH)).verdict == verdict


def test_marker_older_than_launch_belongs_to_an_earlier_run() -> None:
    d = decide_completion(config(), CompletionFacts(marker=marker("present", -30), launch_time=LAUNCH))
    assert d.verdict == "not_complete"
    assert "earlier run" in d.reason


def test_unchecked_marker_is_inconclusive() -> None:
    assert decide_completion(config(), CompletionFacts(launch_time=LAUNCH)).verdict == "inconclusive"


@pytest.mark.parametrize(
    "pid,verdict",
    [
        ("exited", "complete"),
        ("running", "not_complete"),
        ("missing", "inconclusive"),
        ("unreadable", "inconclusive"),
        ("unverified", "inconclusive"),  # a live process that may be the trainer is never read as exited
    ],
)
def test_pid_file_signal(pid: str, verdict: str) -> None:
    d = decide_completion(config(pid_file="/run/t.pid"), CompletionFacts(probe=probe(pid=pid)))
    assert d.verdict == verdict


def test_marker_and_log_must_both_agree() -> None:
    cfg = config(log_file="/logs/r1/train.log", log_pattern="done", completion_marker="s3://ckpt-bucket/m/r1/_SUCCESS")
    both = CompletionFacts(marker=marker("present"), probe=probe(log="matched"), launch_time=LAUNCH)
    assert decide_completion(cfg, both).verdict == "complete"
    no_log = both.model_copy(update={"probe": probe(log="not_matched")})
    assert decide_completion(cfg, no_log).verdict == "not_complete"
    no_marker = both.model_copy(update={"marker": marker("absent")})
    assert decide_completion(cfg, no_marker).verdict == "not_complete"


def test_pid_file_beside_other_signals_is_the_trainer_handle_not_evidence() -> None:
    # A trainer that logged completion but hangs on teardown must not block the stop forever: the
    # checkpoint command signals it and waits (CheckpointFailed if it will not exit).
    cfg = config(pid_file="/run/t.pid", log_file="/logs/r1/train.log", log_pattern="done")
    assert not cfg.pid_is_completion_signal
    assert cfg.probe_parameters()["PidFile"] == [""]
    hung = CompletionFacts(probe=probe(pid="not_configured", log="matched"))
    assert decide_completion(cfg, hung).verdict == "complete"


def test_not_complete_wins_over_inconclusive() -> None:
    cfg = config(log_file="/logs/r1/train.log", log_pattern="done", completion_marker="s3://ckpt-bucket/m/r1/_SUCCESS")
    d = decide_completion(cfg, CompletionFacts(marker=marker("absent"), probe=ProbeResult(ok=False, error="agent offline")))
    assert d.verdict == "not_complete"


def test_failed_probe_is_inconclusive_with_its_reason() -> None:
    d = decide_completion(config(pid_file="/run/t.pid"), CompletionFacts(probe=ProbeResult(ok=False, error="SSM agent is not online")))
    assert d.verdict == "inconclusive"
    assert "SSM agent is not online" in d.reason
