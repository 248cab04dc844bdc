"""The sweep's spread recheck of markers S3 events already report (shared.evaluation.MarkerRecheck)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from shared.evaluation import MARKER_READS_PER_PAGE, MarkerRecheck, slot
from shared.settings import Settings
from tests.conftest import function_env


def ids(n: int) -> list[str]:
    return [f"i-{k:017x}" for k in range(n)]


def reads_over_a_period(recheck: MarkerRecheck, page: list[str]) -> tuple[Counter[str], list[int]]:
    period = recheck.period(len(page))
    seen: Counter[str] = Counter()
    per_tick = []
    for tick in range(recheck.tick, recheck.tick + period):
        due = MarkerRecheck(tick=tick, period_ticks=recheck.period_ticks).due(page)
        seen.update(due)
        per_tick.append(len(due))
    return seen, per_tick


@pytest.mark.parametrize(("n", "period"), [(4, 12), (180, 12), (181, 24), (720, 48), (721, 96), (1000, 96)])
def test_each_marker_is_read_exactly_once_per_period(n: int, period: int) -> None:
    recheck = MarkerRecheck(tick=29_000_000, period_ticks=12)
    page = ids(n)
    seen, per_tick = reads_over_a_period(recheck, page)
    assert recheck.period(n) == period
    assert set(seen) == set(page) and set(seen.values()) == {1}
    assert sum(per_tick) == n


def test_a_full_page_reads_at_most_fifteen_markers_a_sweep_on_average() -> None:
    seen, per_tick = reads_over_a_period(MarkerRecheck(tick=0, period_ticks=12), ids(1000))
    assert sum(per_tick) / len(per_tick) <= MARKER_READS_PER_PAGE
    assert max(per_tick) < 2 * MARKER_READS_PER_PAGE  # spread, not bunched on one sweep


def test_ten_full_pages_stay_within_two_hundred_reads_on_every_sweep() -> None:
    pages = [ids(10_000)[k : k + 1000] for k in range(0, 10_000, 1000)]
    for tick in range(96):
        recheck = MarkerRecheck(tick=tick, period_ticks=12)
        assert sum(len(recheck.due(p)) for p in pages) <= 200, tick


def test_settings_give_the_period_and_zero_reads_every_marker_on_every_sweep() -> None:
    def settings(recheck: int, schedule: int) -> Settings:
        return Settings.from_env(function_env(AUTOSTOP_MARKER_RECHECK_MINUTES=recheck, AUTOSTOP_SCHEDULE_MINUTES=schedule))

    deployed = settings(60, 5)
    assert MarkerRecheck.at(60 * 24, deployed) == MarkerRecheck(tick=288, period_ticks=12, schedule_minutes=5)
    assert MarkerRecheck.at(0, settings(60, 7)).period_ticks == 9
    every = MarkerRecheck.at(7, settings(0, 5))
    assert every.due(ids(5000)) == set(ids(5000))


def test_the_slot_is_stable_and_in_range() -> None:
    assert slot("i-0123456789abcdef0", 12) == slot("i-0123456789abcdef0", 12)
    assert {slot(i, 7) for i in ids(500)} == set(range(7))


@pytest.mark.parametrize("watched_about", [900, 720])  # 720: around a point where a doubling period would double
def test_a_marker_is_read_within_the_longest_period_while_the_page_changes(watched_about: int) -> None:
    churn = random.Random(1)
    page, last, worst, longest = ids(1000), {}, 0, 0
    always = set(page[: watched_about - 10])  # in the page on every sweep; the others come and go
    for tick in range(2000):
        watched = page[: watched_about + churn.randint(-10, 10)]  # the watched count moves by a few each sweep
        recheck = MarkerRecheck(tick=tick, period_ticks=12)
        longest = max(longest, recheck.period(len(watched)))
        for iid in recheck.due(watched) & always:
            worst = max(worst, tick - last.get(iid, tick))
            last[iid] = tick
    assert set(last) == always
    assert worst <= longest, f"a marker went {worst} sweeps unread; the longest period was {longest} sweeps"
