"""Evaluate completion Task state: re-read the instance, decide, and plan the checkpoint command."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from shared import constants as c
from shared.evaluation import Evaluator
from shared.instances import describe_instance
from shared.models import Action, Evaluation, InstanceConfig
from shared.naming import manifest_uri, upload_prefix
from shared.observability import logger
from shared.settings import Settings
from shared.workflow import CheckpointCommand, CheckpointLocation, EvaluateOutput, LifecycleInput

OUTCOMES = {
    "not_complete": c.OUTCOME_NOT_COMPLETE,
    "inconclusive": c.OUTCOME_INCONCLUSIVE,
    "skipped": c.OUTCOME_SKIPPED,
    "refused": c.OUTCOME_STOP_FAILED,
}
DELIVERY_TIMEOUT_SECONDS = 120
EXECUTION_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
"""Names the checkpoint document accepts (its ExecutionName allowedPattern); Step Functions allows more."""


def checkpoint_command(
    config: InstanceConfig, execution: str, decided_at: datetime, settings: Settings
) -> tuple[CheckpointLocation, CheckpointCommand]:
    """Where this execution's checkpoint goes and the checkpoint document parameters that put it there."""
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
        "PidFile": config.pid_file or "",
        "Signal": config.signal,
        "GraceSeconds": str(config.grace_seconds),
        "PartSizeBytes": str(settings.part_size_bytes),
        "DecisionTime": decided_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "executionTimeout": str(config.grace_seconds + settings.checkpoint_timeout_seconds),
    }
    command = CheckpointCommand(
        document=settings.checkpoint_document,
        parameters={k: [v] for k, v in params.items()},
        delivery_timeout_seconds=DELIVERY_TIMEOUT_SECONDS,
    )
    return location, command


def evaluate(event: dict[str, Any], *, ec2: Any, evaluator: Evaluator, now: datetime | None = None) -> EvaluateOutput:
    """Decide whether the run named in the execution input is complete, and plan its checkpoint.

    Args:
        event: ``{"input": <execution input>, "execution_name": str}`` (see LifecycleInput).
        ec2: boto3 EC2 client (DescribeInstances).
        evaluator: completion evaluator with S3 and SSM clients.
        now: decision time; defaults to the current UTC time.

    Returns:
        ``decision`` complete with ``checkpoint`` and ``command`` set, or another decision with the
        ``outcome`` the execution ends with and a ``reason``. Malformed input is ``skipped``, never an error.
    """
    raw = event.get("input") if isinstance(event, dict) else None
    execution = str(event.get("execution_name", "")) if isinstance(event, dict) else ""
    try:
        lifecycle = LifecycleInput.model_validate(raw)
    except ValidationError as exc:
        instance_id = str(raw.get("instance_id", "unknown")) if isinstance(raw, dict) else "unknown"
        run_id = str(raw.get("run_id", "unknown")) if isinstance(raw, dict) else "unknown"
        return _ended(
            Evaluation(instance_id=instance_id, decision="skipped", reason=f"malformed execution input: {_first_error(exc)}"),
            run_id,
            now,
        )
    logger.append_keys(instance_id=lifecycle.instance_id, run_id=lifecycle.run_id)
    if not EXECUTION_NAME_RE.fullmatch(execution):
        return _ended(
            Evaluation(
                instance_id=lifecycle.instance_id,
                decision="skipped",
                reason=f"execution name {execution!r} cannot name the checkpoint's S3 keys and SSM parameters: "
                "start executions with 1-80 letters, digits, '_' or '-'",
            ),
            lifecycle.run_id,
            now,
        )

    snap = describe_instance(ec2, lifecycle.instance_id)
    if snap is None:
        result = Evaluation(instance_id=lifecycle.instance_id, decision="skipped", reason="instance does not exist")
    else:
        result = evaluator.evaluate([snap])[0]
        if result.config is not None and result.config.run_id != lifecycle.run_id:
            result = Evaluation(
                instance_id=lifecycle.instance_id,
                decision="skipped",
                reason=f"run id changed from {lifecycle.run_id!r} to {result.config.run_id!r} since the trigger",
            )
    decided_at = now or datetime.now(UTC)
    if result.decision != "complete" or result.config is None:
        return _ended(result, lifecycle.run_id, decided_at)
    if snap is not None and result.config.action is Action.HIBERNATE and not snap.hibernation_configured:
        # Found now, before the trainer is signalled: the run cannot end as tagged, so nothing is done.
        refused = Evaluation(
            instance_id=lifecycle.instance_id,
            decision="refused",
            reason="hibernate requested but the instance was not launched with hibernation enabled; "
            "tag autostop:action=stop, or launch with hibernation, then start a new attempt",
        )
        return _ended(refused, lifecycle.run_id, decided_at)
    location, command = checkpoint_command(result.config, execution, decided_at, evaluator.settings)
    return EvaluateOutput(
        decision="complete",
        outcome=None,
        reason=result.reason,
        instance_id=lifecycle.instance_id,
        run_id=lifecycle.run_id,
        decided_at=decided_at,
        action=result.config.action,
        dry_run=result.config.dry_run,
        checkpoint=location,
        command=command,
    )


def _ended(result: Evaluation, run_id: str, now: datetime | None) -> EvaluateOutput:
    return EvaluateOutput(
        decision=result.decision,
        outcome=OUTCOMES[result.decision],
        reason=result.reason,
        instance_id=result.instance_id,
        run_id=run_id,
        decided_at=now or datetime.now(UTC),
    )


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "input"
    return f"{where}: {err['msg']}"
