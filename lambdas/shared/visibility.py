"""Instances a trigger could not act on, made visible: the ``<prefix>:last-error`` tag and one notice per invocation.

An opted-in instance that is skipped for its tags (an invalid value, a case-variant key, a bad opt-in value) or whose
run cannot be judged (the SSM agent offline, a probe that failed) keeps running and billing; a log line alone is
not enough. The tag is written only when its text changes, and only the instances whose text changed are notified,
so a steady fleet costs no tag or notification per sweep. The tag's text starts with :data:`MARK`; once the
instance is evaluated again the trigger deletes such a tag, and it never touches one an execution wrote.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from shared import constants as c
from shared.errors import error_code
from shared.models import Evaluation, InstanceSnapshot
from shared.notifications import NOT_EVALUATED, Outlets, not_evaluated_notice, publish, put_event, tag_value
from shared.observability import logger

MARK = "not evaluated: "
"""Prefix of a last-error tag a trigger wrote (an execution's failures are ``<outcome>: <reason>``)."""
QUIET_SKIPS = ("instance is ",)
"""Skip reasons that are nobody's mistake: an instance not running, or not opted in (``instance is not opted in``)."""


def problem(ev: Evaluation) -> str | None:
    """Why ``ev`` is a non-action someone must see, or None (evaluated, not running, deliberately not opted in)."""
    if ev.decision == "skipped" and not ev.reason.startswith(QUIET_SKIPS):
        return ev.reason
    if ev.decision == "inconclusive":
        return ev.reason
    return None


def what_to_do(reason: str) -> str:
    """One sentence for the person who reads the tag or the notice."""
    if "SSM agent is not online" in reason:
        return (
            "Start the SSM agent and attach an instance profile with AmazonSSMManagedInstanceCore; "
            "`autostop preflight INSTANCE` checks every prerequisite."
        )
    if "is spelled" in reason:
        return "Rename the tag key as the reason says (EC2 tag keys are case-sensitive); the next sweep picks the instance up."
    if reason.startswith(("invalid tags", "cannot read tags", "not opted in: ")):
        return "Fix the tags named in the reason (`autostop tag INSTANCE ... --dry-run` validates them); the next sweep looks again."
    return "autostop looks again at the next sweep; `autostop explain INSTANCE` shows every signal."


def report_not_evaluated(
    evaluations: Iterable[Evaluation], snaps: Iterable[InstanceSnapshot], *, ec2: Any, outlets: Outlets | None, prefix: str, trigger: str
) -> dict[str, str]:
    """Tag and notify the instances of ``evaluations`` that could not be acted on; clear tags of those that now can.

    Returns instance id to the tag text written (only those whose text changed). A last-error tag an execution
    wrote (not starting with :data:`MARK`) is never overwritten or deleted here: it stays until the run's next
    outcome. The notice goes first and the tags only once SNS took it, so a lost notice is retried by the next
    sweep. AWS calls: one SNS Publish and one PutEvents when anything changed, then CreateTags per changed instance,
    DeleteTags per cleared one. Never raises for an AWS error (it is logged): visibility must not take down the trigger.
    """
    key = f"{prefix}:{c.TAG_LAST_ERROR}"
    by_id = {s.instance_id: s for s in snaps}
    changed: dict[str, dict[str, str]] = {}
    for ev in evaluations:
        snap = by_id.get(ev.instance_id)
        if snap is None:
            continue
        current, why = snap.tags.get(key), problem(ev)
        ours = current is None or current.startswith(MARK)
        if why is None:
            if current is not None and ours:
                _call(ec2.delete_tags, Resources=[ev.instance_id], Tags=[{"Key": key}])
            continue
        if ours and tag_value(MARK + why) != current:
            changed[ev.instance_id] = {"name": snap.tags.get("Name", ""), "reason": why, "what_to_do": what_to_do(why)}
    if not changed or (outlets is not None and outlets.topic_arn and not _notify(changed, outlets, trigger)):
        return {}
    texts = {iid: tag_value(MARK + p["reason"]) for iid, p in changed.items()}
    return {iid: text for iid, text in texts.items() if _call(ec2.create_tags, Resources=[iid], Tags=[{"Key": key, "Value": text}])}


def _notify(changed: dict[str, dict[str, str]], outlets: Outlets, trigger: str) -> bool:
    """Publish the notice (True when SNS took it), then put the event (its loss is only logged)."""
    notice = not_evaluated_notice(changed, trigger=trigger)
    try:
        publish(outlets.sns, outlets.topic_arn, notice, outcome=NOT_EVALUATED)
    except (ClientError, BotoCoreError) as exc:
        logger.warning(
            "not-evaluated notice not sent; tags left for the next sweep", extra={"error": error_code(exc), "instances": sorted(changed)}
        )
        return False
    try:
        put_event(outlets.events, notice, resources=[])
    except (ClientError, BotoCoreError) as exc:
        logger.warning("not-evaluated event not put", extra={"error": error_code(exc)})
    return True


def _call(fn: Any, **kwargs: Any) -> bool:
    try:
        fn(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        logger.warning("last-error tag not written", extra={"error": error_code(exc), "instances": kwargs.get("Resources")})
        return False
    return True
