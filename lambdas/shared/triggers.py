"""What every trigger does after finding its candidate instances: evaluate, then start executions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from shared import constants as c
from shared.evaluation import Evaluator
from shared.executions import StartResult, start_lifecycle_execution
from shared.models import InstanceSnapshot
from shared.observability import logger


class TriggerSummary(BaseModel):
    """What one trigger invocation saw and did (the function's return value, also logged)."""

    instances: int
    decisions: dict[str, int]
    executions: list[StartResult]
    skipped: dict[str, str]
    """Instance id to the reason it was skipped (invalid tags, not running...)."""
    waiting: dict[str, str]
    """Instance id to why a valid, opted-in run got no execution (``not_complete`` / ``inconclusive``: reason)."""


def evaluate_and_start(snapshots: Iterable[InstanceSnapshot], *, evaluator: Evaluator, sfn: Any, trigger: dict[str, Any]) -> TriggerSummary:
    """Evaluate ``snapshots``; start one lifecycle execution per instance judged complete.

    Only instances whose every configured completion signal says complete get an execution;
    StartExecution's deterministic name makes a repeated trigger a no-op.
    """
    snaps = list(snapshots)
    sessions = {s.instance_id: s.session for s in snaps}
    evaluations = evaluator.evaluate(snaps)
    state_machine_arn = evaluator.settings.require_state_machine_arn()
    started: list[StartResult] = []
    for ev in evaluations:
        extra = {"instance_id": ev.instance_id, "run_id": ev.run_id, "decision": ev.decision, "reason": ev.reason}
        if ev.decision == "skipped":
            logger.warning("instance skipped", extra=extra)
        else:
            logger.info("instance evaluated", extra=extra)
        if ev.decision != "complete" or ev.config is None:
            continue
        result = start_lifecycle_execution(
            sfn,
            state_machine_arn,
            instance_id=ev.instance_id,
            run_id=ev.config.run_id,
            reason=c.REASON_COMPLETE,
            trigger=trigger,
            session=sessions.get(ev.instance_id),
        )
        logger.info("lifecycle execution", extra={**extra, "execution": result.name, "status": result.status, "detail": result.detail})
        started.append(result)
    return TriggerSummary(
        instances=len(evaluations),
        decisions=dict(Counter(ev.decision for ev in evaluations)),
        executions=started,
        skipped={ev.instance_id: ev.reason for ev in evaluations if ev.decision == "skipped"},
        waiting={ev.instance_id: f"{ev.decision}: {ev.reason}" for ev in evaluations if ev.decision in ("not_complete", "inconclusive")},
    )
