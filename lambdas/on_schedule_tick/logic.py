"""The schedule sweep: evaluate every opted-in running instance and start executions for finished runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.errors import error_code
from shared.evaluation import Evaluator, MarkerRecheck
from shared.instances import opted_in_pages
from shared.notifications import Outlets
from shared.observability import logger
from shared.records import RunRecords
from shared.settings import Settings
from shared.times import parse_time
from shared.triggers import TriggerSummary, evaluate_and_start

CONTINUE_MARGIN_SECONDS = 90
"""Hand the pages left to a continuation when less than this remains of the function's time after a page: more than
one page of 1,000 instances takes (benchmarks/sweep.py models a log fleet's page at about 10 s at 256 MB)."""
MAX_HOPS = 20
"""Continuations after one scheduled sweep at most (each one finishes at least one page: 20,000+ instances)."""


class Continuation(BaseModel):
    """What a sweep hands to the next invocation of its own function (``{"continuation": {...}}``, an Event Invoke)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scheduled_at: AwareDatetime
    """The scheduled sweep's time, kept by every hop (the marker recheck and the execution input's trigger time)."""
    next_token: str = Field(min_length=1, max_length=8192)
    """DescribeInstances ``NextToken`` of the first page not swept."""
    hop: int = Field(ge=1, le=MAX_HOPS)


HandOver = Callable[[str], bool]
"""Starts a continuation from a DescribeInstances ``NextToken``; False when it could not be started."""


def sweep(
    *,
    ec2: Any,
    sfn: Any,
    evaluator: Evaluator,
    scheduled_at: str,
    outlets: Outlets | None = None,
    records: RunRecords | None = None,
    next_token: str | None = None,
    seconds_left: Callable[[], float] | None = None,
    hand_over: HandOver | None = None,
) -> TriggerSummary:
    """One tick of the schedule, one DescribeInstances page (up to 1,000 instances) at a time: each page's executions
    start as soon as the page is decided.

    After a page, with fewer than CONTINUE_MARGIN_SECONDS of ``seconds_left()``, the pages left go to ``hand_over``
    (a continuation: :func:`invoke_continuation`) instead of running into the function's timeout; the summary's
    ``continued`` says so. ``next_token`` starts from a page a sweep handed over.

    AWS calls grow with pages and batches: DescribeInstances pages, one HeadObject per configured
    marker (for a ``_SUCCESS`` marker alone, which its S3 event reports, only when its recheck slot comes:
    :class:`shared.evaluation.MarkerRecheck`, about 15 per 1,000 such instances), the batched probe (one SendCommand
    per 50 instances sharing probe parameters, also
    when their paths differ only by the run id), one BatchGetItem per 100 instances judged complete (``records``:
    runs already handled get no StartExecution), and one StartExecution per other instance judged complete;
    CreateTags/DeleteTags and one SNS Publish and PutEvents per page only for instances whose reason for not being
    acted on changed (:mod:`shared.visibility`); one Lambda Invoke per continuation.
    """
    trigger = {"source": "schedule", "time": scheduled_at}
    recheck = marker_recheck(scheduled_at, evaluator.settings)
    parts: list[TriggerSummary] = []
    continued = False
    for page, token in opted_in_pages(ec2, evaluator.settings.tag_prefix, next_token=next_token):
        parts.append(
            evaluate_and_start(
                page, evaluator=evaluator, sfn=sfn, trigger=trigger, ec2=ec2, outlets=outlets, marker_recheck=recheck, records=records
            )
        )
        if token and hand_over and seconds_left and seconds_left() < CONTINUE_MARGIN_SECONDS and hand_over(token):
            continued = True
            break
    return TriggerSummary.merge(parts).model_copy(update={"continued": continued})


def invoke_continuation(lambda_client: Callable[[], Any], function_name: str, scheduled_at: str, hop: int) -> HandOver | None:
    """A :data:`HandOver` that Event-invokes ``function_name`` (this sweep's own function) with a
    :class:`Continuation`, or None after MAX_HOPS (``lambda_client`` makes the client, only when it is needed). A
    refused Invoke is logged and returns False: the sweep then goes on
    with the next page itself. AWS call: Lambda Invoke (``InvocationType`` Event)."""
    if hop >= MAX_HOPS:
        return None

    def hand_over(token: str) -> bool:
        payload = {"continuation": {"scheduled_at": scheduled_at, "next_token": token, "hop": hop + 1}}
        try:
            lambda_client().invoke(FunctionName=function_name, InvocationType="Event", Payload=json.dumps(payload).encode())
        except ClientError as exc:
            logger.warning("continuation not started; sweeping on", extra={"error": error_code(exc), "hop": hop + 1})
            return False
        logger.info("continuation started", extra={"hop": hop + 1})
        return True

    return hand_over


def marker_recheck(scheduled_at: str, settings: Settings) -> MarkerRecheck:
    """The :class:`MarkerRecheck` of the sweep scheduled at ``scheduled_at`` (every marker when its time is unreadable)."""
    when = parse_time(scheduled_at)
    if when is None:
        return MarkerRecheck(tick=0, period_ticks=1, schedule_minutes=settings.schedule_minutes)
    return MarkerRecheck.at(int(when.timestamp() // 60), settings)
