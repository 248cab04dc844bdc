"""The schedule sweep: evaluate every opted-in running instance and start executions for finished runs."""

from __future__ import annotations

from typing import Any

from shared.evaluation import Evaluator
from shared.instances import opted_in_candidates
from shared.notifications import Outlets
from shared.triggers import TriggerSummary, evaluate_and_start


def sweep(*, ec2: Any, sfn: Any, evaluator: Evaluator, scheduled_at: str, outlets: Outlets | None = None) -> TriggerSummary:
    """One tick of the schedule.

    AWS calls grow with pages and batches: DescribeInstances pages, one HeadObject per configured
    marker, the batched probe (one SendCommand per 50 instances sharing probe parameters), and one
    StartExecution only per instance judged complete; CreateTags/DeleteTags and one SNS Publish and PutEvents only
    for instances whose reason for not being acted on changed (:mod:`shared.visibility`).
    """
    candidates = opted_in_candidates(ec2, evaluator.settings.tag_prefix)
    trigger = {"source": "schedule", "time": scheduled_at}
    return evaluate_and_start(candidates, evaluator=evaluator, sfn=sfn, trigger=trigger, ec2=ec2, outlets=outlets)
