"""Evaluate completion Task state: re-read the instance, decide, and plan the checkpoint command."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from shared import constants as c
from shared.evaluation import Evaluator
from shared.instances import action_refusal, describe_instance
from shared.models import Evaluation, InstanceConfig, InstanceSnapshot, ProbeEvidence, S3Uri
from shared.naming import manifest_uri, upload_prefix
from shared.observability import logger
from shared.probe import agents_online
from shared.records import RunKey, RunRecords, resume_source
from shared.settings import Settings
from shared.workflow import CheckpointCommand, CheckpointLocation, EvaluateOutput, LifecycleInput, RestorePlan

OUTCOMES = {
    "not_complete": c.OUTCOME_NOT_COMPLETE,
    "inconclusive": c.OUTCOME_INCONCLUSIVE,
    "skipped": c.OUTCOME_SKIPPED,
    "refused": c.OUTCOME_STOP_FAILED,
}
"""Outcome of each decision of the complete path that ends the execution at once."""
DELIVERY_TIMEOUT_SECONDS = 120
SPOT_DELIVERY_TIMEOUT_SECONDS = 30
"""SendCommand's minimum TimeoutSeconds: after a Spot warning there is no time to wait for a slow agent."""
MIN_SPOT_SECONDS_LEFT = 10
"""Less time than this before the interruption: nothing can be uploaded, the path ends at once."""
AGENT_POLL_LIMIT = 60
"""Resume: polls (5 s apart) for the SSM agent to come online after the start, about 5 minutes."""
EXECUTION_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
"""Names the checkpoint document accepts (its ExecutionName allowedPattern); Step Functions allows more."""


def checkpoint_command(
    config: InstanceConfig,
    execution: str,
    decided_at: datetime,
    settings: Settings,
    *,
    mode: str = "stop",
    grace_seconds: int | None = None,
    signal_trainer: bool = True,
    execution_timeout: int | None = None,
    delivery_timeout: int = 0,
) -> tuple[CheckpointLocation, CheckpointCommand]:
    """Where this execution's checkpoint goes and the checkpoint document parameters that put it there.

    ``mode`` is the document's Mode (stop: the trainer must exit; interruption: upload the newest checkpoint
    even if it does not). ``signal_trainer`` False leaves PidFile empty: nothing is signalled.
    ``execution_timeout`` (seconds) defaults to the grace plus the deployment's checkpoint timeout.
    """
    grace = config.grace_seconds if grace_seconds is None else grace_seconds
    manifest = manifest_uri(config, execution)
    upload = upload_prefix(config, execution)
    location = CheckpointLocation(
        bucket=config.checkpoint_prefix.bucket, upload_prefix=upload.key, manifest_key=manifest.key, manifest_uri=str(manifest)
    )
    params = {
        "RunId": config.run_id,
        "InstanceId": config.instance_id,
        "ExecutionName": execution,
        "CheckpointDir": config.checkpoint_dir,
        "Bucket": location.bucket,
        "UploadPrefix": location.upload_prefix,
        "ManifestKey": location.manifest_key,
        "PidFile": (config.pid_file or "") if signal_trainer else "",
        "Signal": config.signal,
        "GraceSeconds": str(grace),
        "Mode": mode,
        "SaveOnSignal": "true" if config.save_on_signal else "false",
        "PartSizeBytes": str(settings.part_size_bytes),
        "DecisionTime": decided_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "executionTimeout": str(execution_timeout or grace + settings.checkpoint_timeout_seconds),
    }
    command = CheckpointCommand(
        document=settings.checkpoint_document,
        parameters={k: [v] for k, v in params.items()},
        delivery_timeout_seconds=delivery_timeout or DELIVERY_TIMEOUT_SECONDS,
    )
    return location, command


def evaluate(
    event: dict[str, Any],
    *,
    ec2: Any,
    evaluator: Evaluator,
    records: RunRecords | None = None,
    now: datetime | None = None,
) -> EvaluateOutput:
    """Decide what this execution does, and plan its command.

    Args:
        event: ``{"input": <execution input>, "execution_name": str}`` (see LifecycleInput).
        ec2: boto3 EC2 client (DescribeInstances, DescribeSpotInstanceRequests).
        evaluator: completion evaluator with S3 and SSM clients.
        records: run records (DynamoDB); required for every decision that acts (its lock).
        now: decision time; defaults to the current UTC time.

    Returns:
        By the input's ``reason``: complete → ``complete`` with the checkpoint ``command``; interruption /
        rebalance → ``spot_checkpoint`` with an interruption-mode checkpoint command; resume → ``resume`` with
        the restore command. Otherwise another decision with the ``outcome`` the execution ends with and a
        ``reason``. Malformed input is ``skipped``, never an error.
    """
    decided_at = now or datetime.now(UTC)
    raw = event.get("input") if isinstance(event, dict) else None
    execution = str(event.get("execution_name", "")) if isinstance(event, dict) else ""
    try:
        lifecycle = LifecycleInput.model_validate(raw)
    except ValidationError as exc:
        # Echoed into the output: cut, or a huge hand-written input would make an output over Step Functions' 256 KB
        instance_id = str(raw.get("instance_id", "unknown"))[:80] if isinstance(raw, dict) else "unknown"
        run_id = str(raw.get("run_id", "unknown"))[:80] if isinstance(raw, dict) else "unknown"
        return _ended(
            Evaluation(instance_id=instance_id, decision="skipped", reason=f"malformed execution input: {_first_error(exc)}"),
            run_id,
            decided_at,
        )
    logger.append_keys(instance_id=lifecycle.instance_id, run_id=lifecycle.run_id, lifecycle_reason=lifecycle.reason)

    def skipped(reason: str) -> EvaluateOutput:
        return _ended(
            Evaluation(instance_id=lifecycle.instance_id, decision="skipped", reason=reason), lifecycle.run_id, decided_at, lifecycle
        )

    if not EXECUTION_NAME_RE.fullmatch(execution):
        return skipped(
            f"execution name {execution!r} cannot name the checkpoint's S3 keys and SSM parameters: "
            "start executions with 1-80 letters, digits, '_' or '-'"
        )
    snap = describe_instance(ec2, lifecycle.instance_id)
    if snap is None:
        return skipped("instance does not exist")
    if lifecycle.session is not None and snap.session != lifecycle.session:
        return skipped(
            f"the instance was restarted since the trigger (LaunchTime {snap.session}, the trigger saw {lifecycle.session}); "
            "the new session is evaluated on its own"
        )
    config = evaluator.configure(snap)
    if isinstance(config, Evaluation):
        return _ended(config, lifecycle.run_id, decided_at, lifecycle)
    if config.run_id != lifecycle.run_id:
        return skipped(f"run id changed from {lifecycle.run_id!r} to {config.run_id!r} since the trigger")
    if snap.session is None:
        return skipped("EC2 gave no LaunchTime for the instance, so its run record cannot be named")
    if records is None:
        return skipped("no run records table is configured (AUTOSTOP_RUNS_TABLE), so no action can be locked")
    key = RunKey(lifecycle.instance_id, lifecycle.run_id, snap.session)
    plan = Plan(lifecycle=lifecycle, execution=execution, snap=snap, config=config, key=key, decided_at=decided_at)
    if lifecycle.reason == c.REASON_COMPLETE:
        return _complete(plan, ec2=ec2, evaluator=evaluator, records=records)
    if lifecycle.reason in (c.REASON_INTERRUPTION, c.REASON_REBALANCE):
        return _spot(plan, evaluator=evaluator, records=records)
    return _resume(plan, evaluator=evaluator, records=records)


@dataclass(frozen=True)
class Plan:
    """What every path of :func:`evaluate` starts from."""

    lifecycle: LifecycleInput
    execution: str
    snap: InstanceSnapshot
    config: InstanceConfig
    key: RunKey
    decided_at: datetime

    def output(self, decision: str, reason: str, **fields: Any) -> EvaluateOutput:
        return EvaluateOutput(
            decision=decision,  # type: ignore[arg-type]
            outcome=fields.pop("outcome", None),
            reason=reason,
            instance_id=self.config.instance_id,
            run_id=self.config.run_id,
            decided_at=self.decided_at,
            lifecycle_reason=self.lifecycle.reason,
            session=self.key.session,
            action=self.config.action,
            dry_run=self.config.dry_run,
            **fields,
        )


def lease_seconds(settings: Settings) -> int:
    """How long this execution's claim on the trainer holds if it never records an outcome (aborted, timed out):
    longer than any execution can run (the state machine's timeout, plus ten minutes)."""
    return settings.execution_timeout_seconds + 600


def _complete(plan: Plan, *, ec2: Any, evaluator: Evaluator, records: RunRecords) -> EvaluateOutput:
    """The run is checked against its completion signals; complete → checkpoint, verify, stop.

    The tags are read again (DescribeInstances) and the marker too; the on-instance probe is not run again when the
    starting trigger's probe (input ``trigger.probe``) is recent and was run with the same parameters.
    """
    evidence = trigger_probe(plan.lifecycle.trigger)
    result = evaluator.evaluate([plan.snap], evidence={plan.snap.instance_id: evidence} if evidence else None)[0]
    if result.decision != "complete" or result.config is None:
        return _ended(result, plan.config.run_id, plan.decided_at, plan.lifecycle)
    refusal = action_refusal(ec2, plan.snap, plan.config)
    if refusal:
        # Found now, before the trainer is signalled: the run cannot end as tagged, so nothing is done.
        return plan.output("refused", refusal, outcome=c.OUTCOME_STOP_FAILED)
    claim = records.claim(
        plan.key, c.REASON_COMPLETE, plan.execution, lease_seconds=lease_seconds(evaluator.settings), detail=result.reason
    )
    if not claim.owned:
        return plan.output("skipped", f"not acting: {claim.why}", outcome=c.OUTCOME_SKIPPED)
    location, command = checkpoint_command(plan.config, plan.execution, plan.decided_at, evaluator.settings)
    return plan.output("complete", result.reason, checkpoint=location, command=command)


def trigger_probe(trigger: dict[str, Any]) -> ProbeEvidence | None:
    """The probe the starting trigger ran (``trigger.probe`` of the execution input), or None when there is none or
    it is malformed (then Evaluate probes, as for an execution started by hand)."""
    try:
        return ProbeEvidence.model_validate(trigger["probe"]) if "probe" in trigger else None
    except ValidationError:
        logger.warning("the trigger's probe in the execution input is malformed; probing again")
        return None


def _spot(plan: Plan, *, evaluator: Evaluator, records: RunRecords) -> EvaluateOutput:
    """Interruption warning or rebalance recommendation: save and upload a checkpoint now, never stop."""
    config, lifecycle = plan.config, plan.lifecycle
    if lifecycle.reason == c.REASON_REBALANCE and not config.checkpoint_on_rebalance:
        return plan.output(
            "skipped", "rebalance recommendation ignored (tag autostop:on-rebalance is not 'checkpoint')", outcome=c.OUTCOME_SKIPPED
        )
    failed = c.OUTCOME_SPOT_CHECKPOINT_FAILED
    settings = evaluator.settings
    if lifecycle.reason == c.REASON_INTERRUPTION:
        if lifecycle.deadline is None:
            return plan.output("skipped", "malformed execution input: an interruption needs its deadline", outcome=c.OUTCOME_SKIPPED)
        left = int((lifecycle.deadline - plan.decided_at).total_seconds())
        if left < MIN_SPOT_SECONDS_LEFT:
            return plan.output(
                "refused",
                f"the interruption is {max(left, 0)} s away (deadline {lifecycle.deadline.isoformat()}): too late to upload anything",
                outcome=failed,
            )
        grace = max(0, min(config.spot_grace_seconds, left - c.SPOT_UPLOAD_RESERVE_SECONDS))
        budget = left
        why = f"Spot interruption at {lifecycle.deadline.isoformat()} ({left} s left); trainer grace {grace} s"
    else:
        # No interruption is due: the trainer is not signalled (a cooperative trainer would save and exit,
        # ending the run); the newest checkpoint already on disk is uploaded while it trains on.
        grace = 0
        budget = settings.checkpoint_timeout_seconds
        why = (
            "rebalance recommendation: early upload of the newest checkpoint on disk; the trainer is not signalled "
            "and the instance is not stopped"
        )
    ping = agents_online(evaluator.clients.ssm, [config.instance_id]).get(config.instance_id, "unknown")
    if ping != "Online":
        return plan.output(
            "refused", f"{why}; but the SSM agent is not online (PingStatus={ping}), so no checkpoint can be taken", outcome=failed
        )
    signal_trainer = lifecycle.reason == c.REASON_INTERRUPTION
    claim = records.claim(
        plan.key, lifecycle.reason, plan.execution, acting=signal_trainer, lease_seconds=lease_seconds(settings), detail=why
    )
    if not claim.owned and not signal_trainer:
        return plan.output("skipped", f"not acting: {claim.why}", outcome=c.OUTCOME_SKIPPED)
    if not claim.owned:
        holder = (records.get(plan.key) or {}).get("locks", {}).get(lifecycle.reason)
        if holder not in (None, plan.execution):
            return plan.output("skipped", f"not acting: {claim.why}", outcome=c.OUTCOME_SKIPPED)
        # Another execution is acting on the trainer (it was signalled already): upload what is on disk,
        # without a second signal.
        claim = records.claim(plan.key, lifecycle.reason, plan.execution, acting=False, detail=why)
        if not claim.owned:
            return plan.output("skipped", f"not acting: {claim.why}", outcome=c.OUTCOME_SKIPPED)
        signal_trainer = False
        grace = 0
        active = (records.get(plan.key) or {}).get("active")
        who = f"execution {active}" if active else "another execution"
        why += f"; {who} already signalled the trainer, so it is not signalled again"
    location, command = checkpoint_command(
        config,
        plan.execution,
        plan.decided_at,
        settings,
        mode="interruption",
        grace_seconds=grace,
        signal_trainer=signal_trainer,
        execution_timeout=budget,
        delivery_timeout=SPOT_DELIVERY_TIMEOUT_SECONDS,
    )
    return plan.output(
        "spot_checkpoint",
        why,
        checkpoint=location,
        command=command,
        poll_limit=math.ceil(budget / c.SPOT_POLL_SECONDS) + 2,
        deadline=lifecycle.deadline,
    )


def _resume(plan: Plan, *, evaluator: Evaluator, records: RunRecords) -> EvaluateOutput:
    """The instance started again: restore the last verified checkpoint of the run's previous session."""
    config = plan.config
    settings = evaluator.settings
    previous = [r for r in records.sessions(config.instance_id, config.run_id) if str(r.get("session", "")) < plan.key.session]
    last, why_not = resume_source(previous)
    if last is None:
        return plan.output("skipped", f"nothing to resume for run {config.run_id}: {why_not}", outcome=c.OUTCOME_SKIPPED)
    checkpoint = last["last_checkpoint"]
    if not settings.restore_document:
        return plan.output("refused", "no restore document is configured (AUTOSTOP_RESTORE_DOCUMENT)", outcome=c.OUTCOME_RESUME_FAILED)
    pinned = {
        "ManifestVersionId": checkpoint.get("manifest_version_id"),
        "ManifestSha256": checkpoint.get("manifest_sha256"),
        "UploadPrefix": checkpoint.get("upload_prefix"),
    }
    missing = [name for name, value in pinned.items() if not isinstance(value, str) or not value]
    if missing:
        # A record written before version pinning: restoring the manifest's current version could restore what
        # another writer put there since, so nothing is restored.
        return plan.output(
            "refused",
            f"the run record of session {last.get('session')} names checkpoint {checkpoint.get('manifest_uri')} without the "
            f"verified manifest's {', '.join(missing)} (written by an older autostop): only an exactly pinned checkpoint is "
            "restored. Restore it by hand, or let the run save and verify a new checkpoint",
            outcome=c.OUTCOME_RESUME_FAILED,
        )
    claim = records.claim(
        plan.key, c.REASON_RESUME, plan.execution, lease_seconds=lease_seconds(settings), detail=f"restore {checkpoint['manifest_uri']}"
    )
    if not claim.owned:
        return plan.output("skipped", f"not acting: {claim.why}", outcome=c.OUTCOME_SKIPPED)
    manifest = S3Uri.parse(checkpoint["manifest_uri"])
    params = {
        "RunId": config.run_id,
        "InstanceId": config.instance_id,
        "ExecutionName": plan.execution,
        "CheckpointDir": config.checkpoint_dir,
        "Bucket": manifest.bucket,
        "ManifestKey": manifest.key,
        **pinned,
        "PidFile": config.pid_file or "",
        "LogFile": config.log_file or "",
        "ResumeCommand": config.resume_command or "",
        "executionTimeout": str(settings.checkpoint_timeout_seconds),
    }
    command = CheckpointCommand(
        document=settings.restore_document,
        parameters={k: [v] for k, v in params.items()},
        delivery_timeout_seconds=DELIVERY_TIMEOUT_SECONDS,
    )
    restore = RestorePlan(
        manifest_uri=checkpoint["manifest_uri"],
        from_session=str(last.get("session")),
        files=int(checkpoint.get("files", 0)),
        bytes=int(checkpoint.get("bytes", 0)),
        step=checkpoint.get("step"),
    )
    return plan.output(
        "resume",
        f"restore {restore.manifest_uri} (step {restore.step}) from session {restore.from_session}"
        + (f", then start {config.resume_command.split(' ', 1)[0]}" if config.resume_command else ""),
        command=command,
        restore=restore,
        poll_limit=AGENT_POLL_LIMIT,
    )


def _ended(result: Evaluation, run_id: str, now: datetime, lifecycle: LifecycleInput | None = None) -> EvaluateOutput:
    return EvaluateOutput(
        decision=result.decision,
        outcome=OUTCOMES[result.decision],
        reason=result.reason,
        instance_id=result.instance_id,
        run_id=run_id,
        decided_at=now,
        lifecycle_reason=lifecycle.reason if lifecycle else "complete",
        session=lifecycle.session if lifecycle else None,
    )


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "input"
    return f"{where}: {err['msg']}"
