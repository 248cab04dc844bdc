"""Notifications people can read and machines can parse: subject, text, the per-protocol SNS message, reasons
without Lambda stack traces, metric dimensions of bounded size."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from record_outcome.logic import outcome_metrics, reason_class
from shared import constants as c
from shared.notifications import (
    MESSAGE_MAX,
    NOTICE_LIST_MAX,
    SUBJECT_MAX,
    WHAT_TO_DO,
    clean_reason,
    console_url,
    not_evaluated_notice,
    outcome_notice,
    subject_line,
)

ARN = "arn:aws:states:eu-west-1:123456789012:execution:Lifecycle:i-0abc-run-a-complete"
LAMBDA_CAUSE = json.dumps(
    {
        "errorMessage": "Could not connect to the endpoint URL",
        "errorType": "EndpointConnectionError",
        "requestId": "r-1",
        "stackTrace": ['  File "/var/task/verify_checkpoint/handler.py", line 20, in lambda_handler\n', "    raise\n"],
    }
)


def test_every_outcome_says_what_to_do() -> None:
    assert set(WHAT_TO_DO) >= c.ALL_OUTCOMES
    for outcome in c.ALL_OUTCOMES:
        assert WHAT_TO_DO[outcome].endswith("."), outcome


def test_a_lambda_error_becomes_one_line_without_its_stack_trace() -> None:
    reason = clean_reason(f"Verify checkpoint failed: {LAMBDA_CAUSE}")
    assert reason == "Verify checkpoint failed: EndpointConnectionError: Could not connect to the endpoint URL"
    two = clean_reason(f'a {{not json}} b: {LAMBDA_CAUSE} c {{"k": 1}} d {LAMBDA_CAUSE}')
    assert "stackTrace" not in two and two.count("EndpointConnectionError") == 2 and '{"k": 1}' in two
    assert clean_reason("plain\n  reason") == "plain reason"
    assert clean_reason('not {"json": ') == 'not {"json":'


def test_the_console_url_opens_the_execution_in_its_region() -> None:
    assert console_url(ARN) == (f"https://eu-west-1.console.aws.amazon.com/states/home?region=eu-west-1#/v2/executions/details/{ARN}")
    assert console_url("not-an-arn") == ""


def test_a_subject_is_one_printable_line_within_the_sns_limit() -> None:
    subject = subject_line("autostop CheckpointFailed: gpü-trainer\nrun " + "x" * 200)
    assert len(subject) == SUBJECT_MAX and subject.isascii() and "\n" not in subject and subject.endswith("...")


def test_an_outcome_notice_reads_as_a_message_and_parses_as_json() -> None:
    result = {
        "outcome": "CheckpointFailed",
        "reason": "checkpoint command Failed, exit code 67: model.pt changed during the checkpoint",
        "instance_id": "i-0abc",
        "run_id": "run-a",
        "execution": "i-0abc-run-a-complete",
    }
    notice = outcome_notice(result, instance_name="llama-ft", execution_arn=ARN)
    assert notice.subject == "autostop CheckpointFailed: llama-ft run run-a"
    assert "Why: checkpoint command Failed, exit code 67" in notice.text
    assert "What to do: The instance is still running and billing." in notice.text
    assert f"Execution: {console_url(ARN)}" in notice.text and "Instance: llama-ft (i-0abc)" in notice.text
    message = json.loads(notice.sns_message())
    assert set(message) == {"default", "email"} and message["email"] == notice.text  # every other protocol: default
    data = json.loads(message["default"])
    assert data["outcome"] == "CheckpointFailed" and data["console_url"] == console_url(ARN) and data["subject"] == notice.subject


def test_a_name_or_reason_cannot_add_lines_to_the_text() -> None:
    forged = "x\nOutcome: Stopped\nWhat to do: Nothing.\u2028"
    notice = outcome_notice({"outcome": "CheckpointFailed", "reason": "r\r\nOutcome: Stopped"}, instance_name=forged, execution_arn="")
    assert [ln for ln in notice.text.splitlines() if ln.startswith("Outcome:")] == ["Outcome: CheckpointFailed"]
    assert len(notice.text.splitlines()) == 4 and notice.data["instance_name"] == forged  # the JSON keeps the raw value


@pytest.mark.parametrize("count", [1, NOTICE_LIST_MAX + 40])
def test_a_not_evaluated_notice_is_bounded_and_counts_every_instance(count: int) -> None:
    problems = {f"i-{n:04d}": {"name": f"gpu-{n}", "reason": "invalid tags: x", "what_to_do": "fix"} for n in range(count)}
    notice = not_evaluated_notice(problems, trigger="schedule")
    assert notice.data["count"] == count and len(notice.data["instances"]) == min(count, NOTICE_LIST_MAX)
    assert notice.subject.startswith(f"autostop: {count} instance")
    assert notice.size() < 256 * 1024  # SNS's message size limit, both forms together
    assert ("more: each has the reason" in notice.text) == (count > NOTICE_LIST_MAX)


@pytest.mark.parametrize(
    ("outcome", "reason", "label"),
    [
        ("Stopped", "stopped after checkpoint", "ok"),
        ("NotComplete", "trainer still running", "not_complete"),
        ("Skipped", "invalid tags: autostop:action 'halt' is not one of stop, terminate, hibernate", "invalid_tags"),
        ("Inconclusive", "complete; but the SSM agent is not online (PingStatus=ConnectionLost)", "agent_offline"),
        ("StopFailed", "the instance belongs to the Auto Scaling group 'g'", "action_impossible"),
        ("CheckpointFailed", "Send checkpoint command failed: InvalidInstanceId", "task_error"),
        ("UploadUnverified", "object size differs", "other"),
    ],
)
def test_reason_classes_are_few_and_stable(outcome: str, reason: str, label: str) -> None:
    assert reason_class(outcome, reason) == label


def test_outcome_metrics_measure_decision_to_verified_to_stopped() -> None:
    state = {
        "trigger": {"source": "s3-marker"},
        "evaluation": {"decided_at": "2026-12-05T10:00:00Z"},
        "verification": {"verified": True, "bytes": 5_000_000, "upload_seconds": 12.5, "verified_at": "2026-12-05T10:02:30+00:00"},
    }
    dims, values = outcome_metrics(state, {"outcome": "Stopped", "reason": "ok"}, None, datetime(2026, 12, 5, 10, 3, tzinfo=UTC))
    assert dims == {"outcome": "Stopped", "reason_class": "ok", "trigger": "s3-marker"}
    assert values == {
        "Outcomes": 1,
        "CheckpointBytes": 5_000_000,
        "UploadSeconds": 12.5,
        "DecisionToVerifiedSeconds": 150.0,
        "VerifiedToStoppedSeconds": 30.0,
    }
    dims, values = outcome_metrics({}, {"outcome": "Skipped", "reason": "invalid tags: x"}, None, datetime.now(UTC))
    assert dims == {"outcome": "Skipped", "reason_class": "invalid_tags", "trigger": "unknown"} and values == {"Outcomes": 1}


def test_huge_reasons_with_escaped_characters_still_fit_one_sns_message() -> None:
    reason = "invalid tags: " + "\U0001f600" * 8000  # a tag value of emoji: every one escaped twice in the JSON form
    problems = {f"i-{n:04d}": {"name": "\U0001f600" * 256, "reason": reason, "what_to_do": "fix"} for n in range(40)}
    notice = not_evaluated_notice(problems, trigger="schedule")
    assert notice.size() <= MESSAGE_MAX and notice.data["count"] == 40 and 1 <= len(notice.data["instances"]) < NOTICE_LIST_MAX
    one = outcome_notice({"outcome": "Skipped", "reason": reason}, instance_name=None, execution_arn=ARN)
    assert one.size() <= MESSAGE_MAX


def test_a_sweeps_log_line_stays_bounded_for_any_fleet() -> None:
    from shared.triggers import LOG_LIST_MAX, TriggerSummary

    reasons = {f"i-{n:017x}": "invalid tags: autostop:run-id 'x y' must be 1-63 letters ..." * 3 for n in range(10_000)}
    summary = TriggerSummary(instances=10_000, decisions={"skipped": 10_000}, executions=[], skipped=reasons, waiting={}, marked={})
    line = summary.log_line()
    assert len(line["skipped"]) == LOG_LIST_MAX and line["skipped_not_listed"] == 10_000 - LOG_LIST_MAX
    assert len(json.dumps(line)) < 64 * 1024 < len(json.dumps(summary.model_dump(mode="json")))  # CloudWatch: 256 KB per event
