"""What every trigger does after finding its candidate instances: evaluate, then start executions."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from shared import constants as c
from shared.evaluation import Evaluator, MarkerRecheck
from shared.executions import StartResult, execution_arn, start_lifecycle_execution
from shared.models import Evaluation, InstanceSnapshot
from shared.notifications import Outlets
from shared.observability import count_evaluations, logger
from shared.records import RunKey, RunRecords
from shared.visibility import report_not_evaluated

MAX_EVENT_BYTES = 256 * 1024
"""EventBridge's event size limit: a larger event was not delivered by a rule."""
E = TypeVar("E", bound=BaseModel)


def parse_trigger_event(raw: Any, model: type[E], *, source: str, detail_types: Iterable[str]) -> E | str:
    """The event as ``model``, or a sentence saying why it is not one this trigger acts on (never raises).

    Refused: anything but a JSON object, an event larger than EventBridge delivers, missing or mistyped
    fields, and another ``source`` or ``detail-type`` than the trigger's rule matches.
    """
    if not isinstance(raw, dict):
        return f"malformed event: a JSON object is required, not {type(raw).__name__}"
    try:
        event = model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "event"
        return f"malformed event: {where}: {err['msg']}"
    kinds = tuple(detail_types)
    got = (getattr(event, "source", None), getattr(event, "detail_type", None))
    if got[0] != source or got[1] not in kinds:
        return f"not a {' or '.join(repr(k) for k in kinds)} event from {source}: source {got[0]!r}, detail-type {got[1]!r}"
    return oversized(raw) or event


def oversized(raw: dict[str, Any]) -> str | None:
    """Why ``raw`` cannot be an event EventBridge delivered (larger than its limit), or None."""
    try:
        size = len(json.dumps(raw, default=str).encode())
    except (TypeError, ValueError, RecursionError) as exc:
        return f"malformed event: not JSON ({type(exc).__name__})"
    return f"oversized event: {size} bytes, more than EventBridge's {MAX_EVENT_BYTES}" if size > MAX_EVENT_BYTES else None


LOG_LIST_MAX = 50
"""Instances named per list in a trigger's summary log line (the rest are counted): CloudWatch Logs takes 256 KB per event."""


class TriggerSummary(BaseModel):
    """What one trigger invocation saw and did (the function's return value, also logged)."""

    instances: int
    decisions: dict[str, int]
    executions: list[StartResult]
    skipped: dict[str, str]
    """Instance id to the reason it was skipped (invalid tags, not running...)."""
    waiting: dict[str, str]
    """Instance id to why a valid, opted-in run got no execution (``not_complete`` / ``inconclusive``: reason)."""
    marked: dict[str, str] = {}
    """Instance id to the last-error tag written because its reason for not being acted on changed."""
    continued: bool = False
    """The sweep handed the pages it did not reach to a continuation (``on_schedule_tick.logic``)."""

    @classmethod
    def merge(cls, parts: Iterable[TriggerSummary]) -> TriggerSummary:
        """One summary of several (a sweep's pages)."""
        parts = list(parts)
        decisions: Counter[str] = Counter()
        for part in parts:
            decisions.update(part.decisions)
        return cls(
            instances=sum(p.instances for p in parts),
            decisions=dict(decisions),
            executions=[e for p in parts for e in p.executions],
            skipped={k: v for p in parts for k, v in p.skipped.items()},
            waiting={k: v for p in parts for k, v in p.waiting.items()},
            marked={k: v for p in parts for k, v in p.marked.items()},
        )

    def log_line(self) -> dict[str, Any]:
        """The summary for the log: counts, and at most :data:`LOG_LIST_MAX` instances of each list (bounded size
        whatever the fleet; the full lists are the function's return value)."""
        line: dict[str, Any] = {"instances": self.instances, "decisions": self.decisions, "executions": len(self.executions)}
        line["continued"] = self.continued
        for name in ("skipped", "waiting", "marked"):
            items = sorted(getattr(self, name).items())
            line[name] = dict(items[:LOG_LIST_MAX])
            if len(items) > LOG_LIST_MAX:
                line[f"{name}_not_listed"] = len(items) - LOG_LIST_MAX
        return line


def evaluate_and_start(
    snapshots: Iterable[InstanceSnapshot],
    *,
    evaluator: Evaluator,
    sfn: Any,
    trigger: dict[str, Any],
    ec2: Any = None,
    outlets: Outlets | None = None,
    marker_recheck: MarkerRecheck | None = None,
    records: RunRecords | None = None,
) -> TriggerSummary:
    """Evaluate ``snapshots``; start one lifecycle execution per instance judged complete.

    Only instances whose every configured completion signal says complete get an execution;
    StartExecution's deterministic name makes a repeated trigger a no-op. The execution's ``trigger`` input carries
    the probe this evaluation ran (``probe``: :class:`shared.models.ProbeEvidence`), which Evaluate completion reuses
    instead of probing again while it is recent. With ``records``, a run whose record shows the complete lock taken
    gets no StartExecution (status ``claimed``: :func:`claimed_runs`). With ``ec2``, instances that could
    not be acted on are made visible (:func:`shared.visibility.report_not_evaluated`: the last-error tag, and
    one notice through ``outlets`` for those whose reason changed).
    """
    snaps = list(snapshots)
    sessions = {s.instance_id: s.session for s in snaps}
    evaluations = evaluator.evaluate(snaps, marker_recheck=marker_recheck)
    state_machine_arn = evaluator.settings.require_state_machine_arn()
    claimed = claimed_runs(records, evaluations, sessions) if records is not None else {}
    started: list[StartResult] = []
    for ev in evaluations:
        extra = {"instance_id": ev.instance_id, "run_id": ev.run_id, "decision": ev.decision, "reason": ev.reason}
        if ev.decision == "skipped":
            logger.warning("instance skipped", extra=extra)
        else:
            logger.info("instance evaluated", extra=extra)
        if ev.decision != "complete" or ev.config is None:
            continue
        if ev.instance_id in claimed:
            holder = claimed[ev.instance_id]
            detail = f"the run record shows execution {holder} took this run's complete lock"
            arn = execution_arn(state_machine_arn, holder)
            started.append(StartResult(name=holder, status="claimed", execution_arn=arn, detail=detail))
            continue
        result = start_lifecycle_execution(
            sfn,
            state_machine_arn,
            instance_id=ev.instance_id,
            run_id=ev.config.run_id,
            reason=c.REASON_COMPLETE,
            trigger={**trigger, "probe": ev.probe.model_dump(mode="json")} if ev.probe else trigger,
            session=sessions.get(ev.instance_id),
        )
        logger.info("lifecycle execution", extra={**extra, "execution": result.name, "status": result.status, "detail": result.detail})
        started.append(result)
    marked = {}
    if ec2 is not None:
        prefix = evaluator.settings.tag_prefix
        marked = report_not_evaluated(evaluations, snaps, ec2=ec2, outlets=outlets, prefix=prefix, trigger=str(trigger.get("source")))
    count_evaluations(Counter(ev.decision for ev in evaluations), trigger=str(trigger.get("source")))
    return TriggerSummary(
        marked=marked,
        instances=len(evaluations),
        decisions=dict(Counter(ev.decision for ev in evaluations)),
        executions=started,
        skipped={ev.instance_id: ev.reason for ev in evaluations if ev.decision == "skipped"},
        waiting={ev.instance_id: f"{ev.decision}: {ev.reason}" for ev in evaluations if ev.decision in ("not_complete", "inconclusive")},
    )


def claimed_runs(records: RunRecords, evaluations: list[Evaluation], sessions: dict[str, str | None]) -> dict[str, str]:
    """Instance id to the execution holding the complete lock of its run and session, for the runs judged complete.

    These runs were handled (or are being handled): StartExecution would only find that execution, or start one that
    ends without acting. Read with BatchGetItem per 100 instances judged complete; when the records cannot be read,
    none is taken as claimed (every run goes through StartExecution, as without records).
    """
    keys = {}
    for ev in evaluations:
        session = sessions.get(ev.instance_id)
        if ev.decision == "complete" and ev.config is not None and session:
            keys[RunKey(ev.instance_id, ev.config.run_id, session)] = ev.instance_id
    if not keys:
        return {}
    try:
        holders = records.lock_holders(list(keys), c.REASON_COMPLETE)
    except Exception:  # reading records only saves calls: never let it stop a sweep
        logger.exception("run records not read; starting executions without them")
        return {}
    return {keys[key]: holder for key, holder in holders.items()}
