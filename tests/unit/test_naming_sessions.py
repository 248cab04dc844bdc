"""Execution names with the instance's power-on session (LaunchTime) in them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import constants as c
from shared.naming import execution_name, session_stamp

IID = "i-0123456789abcdef0"
SESSION = "2026-11-30T03:18:03Z"
VALID_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
RUN_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", fullmatch=True)
SESSIONS = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ"))


def test_session_stamp_is_two_digit_year_to_seconds() -> None:
    assert session_stamp(SESSION) == "261130031803"
    assert session_stamp("2027-01-02T00:00:09Z") == "270102000009"


@pytest.mark.parametrize("bad", ["", "2026-11-30", "2026-11-30T03:18Z", "2026-11-30T03:18:03.123Z", "2026-11-30T03:18:03+00:00", "now"])
def test_session_stamp_refuses_what_is_not_a_session(bad: str) -> None:
    with pytest.raises(ValueError, match="is not YYYY-MM-DDTHH:MM:SSZ"):
        session_stamp(bad)


def test_execution_name_with_session_reads_instance_run_reason_session_attempt() -> None:
    assert execution_name(IID, "run-7", "interruption", session=SESSION) == f"{IID}-run-7-interruption-261130031803"
    assert execution_name(IID, "run-7", "resume", 3, SESSION) == f"{IID}-run-7-resume-261130031803-3"
    assert execution_name(IID, "run-7", "complete") == f"{IID}-run-7-complete"  # no session: the name of before


def test_execution_name_refuses_a_malformed_session() -> None:
    with pytest.raises(ValueError):
        execution_name(IID, "run-7", "complete", session="yesterday")


def test_long_run_id_with_session_is_shortened_but_keeps_reason_session_and_attempt() -> None:
    run = "r" * 63
    name = execution_name(IID, run, "interruption", 20, SESSION)
    assert len(name) <= c.EXECUTION_NAME_MAX
    assert VALID_NAME.fullmatch(name)
    assert name.startswith(f"{IID}-r")
    assert name.endswith("-interruption-261130031803-20")


@settings(max_examples=150, deadline=None)
@given(
    run=RUN_IDS,
    reason=st.sampled_from(c.REASONS),
    attempt=st.integers(1, 20),
    session=SESSIONS,
    instance=st.from_regex(r"i-[0-9a-f]{17}", fullmatch=True),
)
def test_names_with_sessions_are_valid_bounded_and_deterministic(run: str, reason: str, attempt: int, session: str, instance: str) -> None:
    name = execution_name(instance, run, reason, attempt, session)
    assert len(name) <= c.EXECUTION_NAME_MAX
    assert VALID_NAME.fullmatch(name)
    assert name == execution_name(instance, run, reason, attempt, session)
    assert session_stamp(session) in name


@settings(max_examples=100, deadline=None)
@given(run=RUN_IDS, reason=st.sampled_from(c.REASONS), a=SESSIONS, b=SESSIONS)
def test_names_differ_across_sessions(run: str, reason: str, a: str, b: str) -> None:
    if session_stamp(a) != session_stamp(b):  # the stamp keeps two year digits: same second a century apart is one stamp
        assert execution_name(IID, run, reason, session=a) != execution_name(IID, run, reason, session=b)


def test_consecutive_sessions_one_second_apart_get_different_names_for_every_long_run_id() -> None:
    start = datetime(2026, 11, 30, 3, 18, 3, tzinfo=UTC)
    for run in ("run-1", "x" * 63, "a.b_c-d" * 9):
        names = {
            execution_name(IID, run, reason, attempt, (start + timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%SZ"))
            for s in range(3)
            for reason in c.REASONS
            for attempt in (1, 2)
        }
        assert len(names) == 3 * len(c.REASONS) * 2
        assert all(len(n) <= c.EXECUTION_NAME_MAX for n in names)


@settings(max_examples=100, deadline=None)
@given(a=RUN_IDS, b=RUN_IDS, session=SESSIONS)
def test_different_runs_in_one_session_never_share_a_name(a: str, b: str, session: str) -> None:
    if a != b:
        assert execution_name(IID, a, "resume", session=session) != execution_name(IID, b, "resume", session=session)
