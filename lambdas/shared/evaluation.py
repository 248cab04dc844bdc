"""Gathering completion facts for many instances at once and deciding for each.

Used by the schedule sweep (all opted-in running instances), by the marker trigger (the instances a
marker belongs to) and by the Evaluate Task state (one instance). AWS calls: one HeadObject per
configured marker, the batched probe of :mod:`shared.probe` for instances whose marker does not
already rule completion out, and one DescribeInstanceInformation per 50 instances judged complete
without a probe (the checkpoint needs an online SSM agent). A probe a trigger ran moments ago (its
:class:`ProbeEvidence`, passed in the execution input) stands in for a new one while it is younger than
``probe_trust_seconds`` and was run with the parameters the instance's tags give now.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from shared import constants as c
from shared.completion import decide_completion, marker_is_negative
from shared.errors import error_code
from shared.models import CompletionFacts, Evaluation, InstanceConfig, InstanceSnapshot, MarkerFact, ProbeEvidence, ProbeResult, S3Uri
from shared.observability import logger
from shared.probe import agents_online, probe_instances
from shared.settings import Settings
from shared.tags import InvalidTags, TagPolicy, is_opted_in, opt_in_problem, parse_instance_config, tag_policy

CLOCK_SKEW_SECONDS = 5
"""How far ahead of this function's clock a probe time may be and still count (both clocks are Lambda's)."""


def watched_by_event(config: InstanceConfig) -> bool:
    """True when the run's only completion signal is a marker the marker trigger's S3 event reports (a key ending
    in ``_SUCCESS``, as the rule matches; other keys start nothing by event)."""
    marker = config.completion_marker
    return marker is not None and not config.probe_needed and marker.key.endswith(c.DEFAULT_MARKER_NAME)


MARKER_READS_PER_PAGE = 15
"""The most HeadObject a sweep spends on average per DescribeInstances page (1,000 instances) for markers S3 events
already report (:class:`MarkerRecheck` lengthens the period until a page's watched markers fit)."""


@dataclass(frozen=True)
class MarkerRecheck:
    """Which markers watched by S3 events (:func:`watched_by_event`) one sweep reads itself: the safety net for a
    lost Object Created event, spread evenly over the sweeps instead of all on one.

    ``tick``: the sweep's number, its scheduled minute since the epoch // ``schedule_minutes``. ``period_ticks``: the
    configured period in sweeps, ``ceil(marker_recheck_minutes / schedule_minutes)`` (1: every sweep, as with an
    existing bucket, whose markers send no events; never stretched). Each instance has a slot, SHA-256 of its id
    modulo the period, and is read on the sweeps whose tick falls in it. A page of ``m`` watched instances doubles
    the period until ``m / period <= MARKER_READS_PER_PAGE``: at the deployed 60 minutes and 5-minute sweeps, each
    marker is read every 60 minutes up to 180 such instances in a page, 120 up to 360, 240 up to 720 and 480 up to
    1,440 (10,000 instances: about 105 HeadObject per sweep). Only doubling keeps the promise while ``m`` changes
    between sweeps: every period divides the longest, so the sweep whose tick is the slot modulo the longest
    period reads the marker whatever period that sweep has (with a period that followed ``m`` exactly, a marker
    could go unread for several periods).
    """

    tick: int
    period_ticks: int
    schedule_minutes: int = 5

    @classmethod
    def at(cls, scheduled_minute: int, settings: Settings) -> MarkerRecheck:
        """The recheck of the sweep scheduled ``scheduled_minute`` minutes after the epoch (UTC)."""
        every = settings.schedule_minutes
        period = max(1, -(-settings.marker_recheck_minutes // every))
        return cls(tick=scheduled_minute // every, period_ticks=period, schedule_minutes=every)

    def period(self, watched: int) -> int:
        """The period in sweeps for a page of ``watched`` instances watched by S3 events (1, every sweep and never
        stretched, when so configured: an existing bucket's markers send no events)."""
        period = self.period_ticks
        while period > 1 and period * MARKER_READS_PER_PAGE < watched:
            period *= 2
        return period

    def due(self, instance_ids: Iterable[str]) -> set[str]:
        """The ids among ``instance_ids`` (one page's watched instances) this sweep reads."""
        ids = list(instance_ids)
        period = self.period(len(ids))
        return {i for i in ids if period == 1 or slot(i, period) == self.tick % period}


def slot(instance_id: str, period: int) -> int:
    """The instance's recheck slot in ``0 .. period - 1`` (stable across sweeps and functions)."""
    return int.from_bytes(hashlib.sha256(instance_id.encode()).digest()[:8], "big") % period


@dataclass
class Clients:
    """The boto3 clients evaluation needs."""

    s3: Any
    ssm: Any


@dataclass
class Evaluator:
    """Evaluates instances against their completion signals (see module docstring)."""

    clients: Clients
    settings: Settings
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    max_workers: int = 16
    policy: TagPolicy = field(init=False)

    def __post_init__(self) -> None:
        self.policy = tag_policy(self.settings)

    def configure(self, snap: InstanceSnapshot) -> InstanceConfig | Evaluation:
        """The instance's config, or a ``skipped`` evaluation saying why it cannot be considered."""
        run_id = snap.tags.get(self.policy.key("run-id"))
        if snap.state != "running":
            return Evaluation(instance_id=snap.instance_id, decision="skipped", reason=f"instance is {snap.state}", run_id=run_id)
        if not is_opted_in(snap.tags, self.policy.prefix):
            why = opt_in_problem(snap.tags, self.policy.prefix) or f"instance is not opted in ({self.policy.key('enabled')} is not 'true')"
            return Evaluation(instance_id=snap.instance_id, decision="skipped", reason=why, run_id=run_id)
        try:
            return parse_instance_config(snap.instance_id, snap.tags, self.policy)
        except InvalidTags as exc:
            return Evaluation(
                instance_id=snap.instance_id, decision="skipped", reason="invalid tags: " + "; ".join(exc.problems), run_id=run_id
            )
        except Exception as exc:  # one instance's tags must never take down a sweep over all of them
            logger.exception("cannot read tags", extra={"instance_id": snap.instance_id})
            return Evaluation(
                instance_id=snap.instance_id, decision="skipped", reason=f"cannot read tags: {type(exc).__name__}: {exc}", run_id=run_id
            )

    def evaluate(
        self,
        snapshots: Iterable[InstanceSnapshot],
        *,
        marker_recheck: MarkerRecheck | None = None,
        evidence: Mapping[str, ProbeEvidence] | None = None,
    ) -> list[Evaluation]:
        """Decide for each instance; the order of the result follows ``snapshots``.

        ``marker_recheck`` (the sweep's): an instance whose only signal is a ``_SUCCESS`` marker (which S3's Object
        Created event reports to the marker trigger within seconds) is HeadObject-ed only when the recheck says it is
        due; otherwise ``not_complete``, saying so. None (triggers by event, Evaluate) reads every marker.
        ``evidence``: instance id to an earlier probe, used instead of probing when :meth:`trusted` (each
        evaluation that ran a probe carries it as ``probe``, for the execution it may start).
        """
        snaps = list(snapshots)
        configs: dict[str, InstanceConfig] = {}
        out: dict[str, Evaluation] = {}
        for snap in snaps:
            conf = self.configure(snap)
            if isinstance(conf, Evaluation):
                out[snap.instance_id] = conf
            else:
                configs[snap.instance_id] = conf
        if marker_recheck is not None:
            watched = [iid for iid, conf in configs.items() if watched_by_event(conf)]
            minutes = marker_recheck.period(len(watched)) * marker_recheck.schedule_minutes
            for iid in set(watched) - marker_recheck.due(watched):
                out[iid] = self._left_to_event(configs.pop(iid), minutes)
        launch = {s.instance_id: s.launch_time for s in snaps}

        markers = self._markers({iid: cfg.completion_marker for iid, cfg in configs.items() if cfg.completion_marker})
        facts = {iid: CompletionFacts(marker=markers.get(iid), launch_time=launch[iid]) for iid in configs}
        to_probe = {
            iid: cfg.probe_parameters() for iid, cfg in configs.items() if cfg.probe_needed and not marker_is_negative(cfg, facts[iid])
        }
        reused = {iid: ev.result for iid, ev in (evidence or {}).items() if iid in to_probe and self.trusted(ev, to_probe[iid])}
        fresh = {iid: params for iid, params in to_probe.items() if iid not in reused}
        probed_at = self.clock()
        probes: dict[str, ProbeResult] = probe_instances(
            self.clients.ssm,
            self.settings.probe_document,
            fresh,
            run_ids={iid: configs[iid].run_id for iid in fresh},
            timeout_seconds=self.settings.probe_timeout_seconds,
            poll_seconds=self.settings.poll_seconds,
            sleep=self.sleep,
        )
        ran = {iid: ProbeEvidence(at=probed_at, parameters=fresh[iid], result=result) for iid, result in probes.items() if result.ok}
        probes |= reused
        decisions = {iid: decide_completion(cfg, facts[iid].model_copy(update={"probe": probes.get(iid)})) for iid, cfg in configs.items()}
        # The checkpoint command needs the SSM agent: a run judged complete on an instance whose agent is
        # not online cannot be checkpointed, so it is inconclusive (a probe that ran proved the agent online).
        unprobed = [iid for iid, d in decisions.items() if d.verdict == "complete" and iid not in probes]
        ping = agents_online(self.clients.ssm, unprobed) if unprobed else {}
        for iid, cfg in configs.items():
            verdict, reason = decisions[iid].verdict, decisions[iid].reason
            if ping.get(iid, "Online") != "Online":
                verdict = "inconclusive"
                reason = f"{reason}; but the SSM agent is not online (PingStatus={ping[iid]}), so no checkpoint can be taken"
            out[iid] = Evaluation(instance_id=iid, decision=verdict, reason=reason, config=cfg, run_id=cfg.run_id, probe=ran.get(iid))
        return [out[s.instance_id] for s in snaps]

    @staticmethod
    def _left_to_event(conf: InstanceConfig, minutes: int) -> Evaluation:
        reason = (
            f"completion marker {conf.completion_marker} is watched by its S3 event; this sweep did not read it (the "
            f"sweep reads it once every {minutes} minutes)"
        )
        return Evaluation(instance_id=conf.instance_id, decision="not_complete", reason=reason, config=conf, run_id=conf.run_id)

    def trusted(self, evidence: ProbeEvidence, parameters: Mapping[str, list[str]]) -> bool:
        """True when ``evidence`` may stand in for probing with ``parameters`` now: a result, the same parameters, and
        at most ``probe_trust_seconds`` old (a time more than CLOCK_SKEW_SECONDS ahead of this clock is not trusted)."""
        if self.settings.probe_trust_seconds <= 0:
            return False
        age = (self.clock() - evidence.at).total_seconds()
        fresh = -CLOCK_SKEW_SECONDS <= age <= self.settings.probe_trust_seconds
        return evidence.result.ok and fresh and dict(evidence.parameters) == dict(parameters)

    def _markers(self, wanted: dict[str, S3Uri]) -> dict[str, MarkerFact]:
        if not wanted:
            return {}
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(wanted))) as pool:
            return dict(zip(wanted, pool.map(self.head_marker, wanted.values()), strict=True))

    def head_marker(self, uri: S3Uri) -> MarkerFact:
        """The marker's fact from one HeadObject: present (with LastModified), absent, or an error (never raises)."""
        try:
            head = self.clients.s3.head_object(Bucket=uri.bucket, Key=uri.key)
        except ClientError as exc:
            code = error_code(exc)
            if code in ("404", "NoSuchKey", "NotFound"):
                return MarkerFact(state="absent")
            return MarkerFact(state="error", detail=f"HeadObject failed: {code}")
        return MarkerFact(state="present", last_modified=head["LastModified"])
