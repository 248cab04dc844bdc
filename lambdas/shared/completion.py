"""The completion decision: a pure function of an instance's configuration and the facts read about it.

No AWS calls and no clock reads happen here; :mod:`shared.evaluation` gathers the facts.

Signals: the completion marker and the log pattern; the PID file only when it is the only one tagged
(otherwise it is the trainer handle for the checkpoint command, see ``InstanceConfig.pid_is_completion_signal``).

Rules (fail safe: unknown never reads as complete):
* every signal must say ``complete`` for the run to be complete;
* any signal that says ``not_complete`` makes the run not complete;
* otherwise any signal that cannot be read makes the decision ``inconclusive``.
"""

from __future__ import annotations

from shared.models import CompletionDecision, CompletionFacts, InstanceConfig, SignalVerdict


def marker_verdict(config: InstanceConfig, facts: CompletionFacts) -> SignalVerdict | None:
    """The completion marker's verdict, or None when no marker is configured."""
    if config.completion_marker is None:
        return None
    m = facts.marker
    where = str(config.completion_marker)
    if m is None:
        return SignalVerdict(signal="marker", verdict="inconclusive", reason=f"marker {where} was not checked")
    if m.state == "absent":
        return SignalVerdict(signal="marker", verdict="not_complete", reason=f"no completion marker at {where}")
    if m.state == "error" or m.last_modified is None:
        return SignalVerdict(signal="marker", verdict="inconclusive", reason=f"cannot read marker {where}: {m.detail}")
    if facts.launch_time is not None and m.last_modified < facts.launch_time.replace(microsecond=0):
        return SignalVerdict(
            signal="marker",
            verdict="not_complete",
            reason=f"marker {where} ({m.last_modified.isoformat()}) is older than the instance's launch "
            f"({facts.launch_time.isoformat()}); it belongs to an earlier run",
        )
    return SignalVerdict(signal="marker", verdict="complete", reason=f"completion marker {where} exists")


def probe_verdicts(config: InstanceConfig, facts: CompletionFacts) -> list[SignalVerdict]:
    """Verdicts of the on-instance signals (PID file, log pattern) from the probe result."""
    out: list[SignalVerdict] = []
    if not config.probe_needed:
        return out
    probe = facts.probe
    if probe is None or not probe.ok:
        why = "was not run" if probe is None else probe.error
        for signal, used in (("pid", config.pid_is_completion_signal), ("log", config.log_file is not None)):
            if used:
                out.append(SignalVerdict(signal=signal, verdict="inconclusive", reason=f"on-instance probe {why}"))
        return out
    if config.pid_is_completion_signal:
        pid = probe.pid
        state = pid.state if pid else "unreadable"
        if state == "exited":
            out.append(SignalVerdict(signal="pid", verdict="complete", reason=f"trainer in {config.pid_file} has exited"))
        elif state == "running":
            out.append(
                SignalVerdict(
                    signal="pid",
                    verdict="not_complete",
                    reason=f"trainer (pid {pid.pid if pid else '?'}) from {config.pid_file} is still running",
                )
            )
        else:
            why = {
                "unverified": "names a live process that cannot be shown to be the trainer",
                "stale": "was written before this boot (the instance was restarted); it says nothing about this session's trainer",
            }.get(state, f"is {state}")
            out.append(SignalVerdict(signal="pid", verdict="inconclusive", reason=f"PID file {config.pid_file} {why}"))
    if config.log_file is not None:
        log = probe.log
        state = log.state if log else "unreadable"
        if state == "matched":
            out.append(SignalVerdict(signal="log", verdict="complete", reason=f"{config.log_file} matches the log pattern"))
        elif state == "not_matched":
            out.append(SignalVerdict(signal="log", verdict="not_complete", reason=f"{config.log_file} does not match the log pattern yet"))
        else:
            out.append(SignalVerdict(signal="log", verdict="inconclusive", reason=f"log file {config.log_file} is {state}"))
    return out


def decide_completion(config: InstanceConfig, facts: CompletionFacts) -> CompletionDecision:
    """Combine every configured signal into one decision with a reason (see the module rules).

    Args:
        config: the instance's validated tags.
        facts: marker HeadObject, probe result and launch time, as gathered for this instance.

    Returns:
        ``complete`` only when every configured signal says so.
    """
    verdicts = [v for v in [marker_verdict(config, facts), *probe_verdicts(config, facts)] if v is not None]
    if not verdicts:
        return CompletionDecision(verdict="inconclusive", reason="no completion signal is configured")
    for wanted in ("not_complete", "inconclusive"):
        hits = [v for v in verdicts if v.verdict == wanted]
        if hits:
            return CompletionDecision(verdict=wanted, reason="; ".join(v.reason for v in hits), signals=tuple(verdicts))
    return CompletionDecision(verdict="complete", reason="; ".join(v.reason for v in verdicts), signals=tuple(verdicts))


def marker_is_negative(config: InstanceConfig, facts: CompletionFacts) -> bool:
    """True when the marker alone already rules completion out (so the probe can be skipped)."""
    v = marker_verdict(config, facts)
    return v is not None and v.verdict == "not_complete"
