"""The README shows every notification exactly as the functions compose it (local/notices.py)."""

from __future__ import annotations

from local.notices import REASONS, REPO, blocks, markdown
from shared import constants as c


def test_the_readme_shows_every_outcome_and_the_not_evaluated_notice_as_composed() -> None:
    readme = (REPO / "README.md").read_text()
    assert markdown() in readme, "README's notification examples are stale: run python -m local.notices"
    ended = {"ExecutionTimedOut", "ExecutionAborted", "ExecutionFailed", "AttemptsExhausted"}  # on_execution_ended's
    assert set(REASONS) == set(c.ALL_OUTCOMES) | ended
    assert len(blocks()) == len(c.ALL_OUTCOMES) + len(ended) + 1
