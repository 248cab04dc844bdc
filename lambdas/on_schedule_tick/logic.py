"""The schedule sweep: evaluate every opted-in running instance and start executions for finished runs."""

from __future__ import annotations

from typing import Any

from shared.evaluation import Evaluator
from shared.instances import opted_in_pages
from shared.notifications import Outlets
from shared.records import RunRecords
from shared.settings import Settings
from shared.times import parse_time
from shared.triggers import TriggerSummary, evaluate_and_start


def sweep(
    *, ec2: Any, sfn: Any, evaluator: Evaluator, scheduled_at: str, outlets: Outlets | None = None, records: RunRecords | None = None
) -> TriggerSummary:
    """One tick of the schedule, one DescribeInstances page (up to 1,000 instances) at a time: each page's executions
    start as soon as the page is decided, so a sweep cut short has still started those of the pages it finished.

    AWS calls grow with pages and batches: DescribeInstances pages, one HeadObject per configured
    marker (for a ``_SUCCESS`` marker alone, which its S3 event reports, only on the recheck sweep:
    :func:`marker_recheck_due`), the batched probe (one SendCommand per 50 instances sharing probe parameters, also
    when their paths differ only by the run id), one BatchGetItem per 100 instances judged complete (``records``:
    runs already handled get no StartExecution), and one StartExecution per other instance judged complete;
    CreateTags/DeleteTags and one SNS Publish and PutEvents per page only for instances whose reason for not being
    acted on changed (:mod:`shared.visibility`).
    """
    trigger = {"source": "schedule", "time": scheduled_at}
    trust = not marker_recheck_due(scheduled_at, evaluator.settings)
    pages = opted_in_pages(ec2, evaluator.settings.tag_prefix)
    return TriggerSummary.merge(
        evaluate_and_start(
            page, evaluator=evaluator, sfn=sfn, trigger=trigger, ec2=ec2, outlets=outlets, trust_marker_events=trust, records=records
        )
        for page in pages
    )


def marker_recheck_due(scheduled_at: str, settings: Settings) -> bool:
    """True on the sweep that reads every marker itself: each ``marker_recheck_minutes`` period's first
    ``schedule_minutes`` (once per period, the rate schedule firing once in that window); always when 0."""
    period = settings.marker_recheck_minutes
    if period <= 0:
        return True
    when = parse_time(scheduled_at)
    if when is None:
        return True
    minutes = int(when.timestamp() // 60)
    return minutes % period < settings.schedule_minutes
