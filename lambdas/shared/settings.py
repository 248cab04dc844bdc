"""Function settings, read once per container from the environment set by the CDK stack."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import constants as c
from shared.models import Action


class SettingsError(RuntimeError):
    """The function's environment is incomplete or malformed (a deployment error, not a user error)."""


class Settings(BaseModel):
    """Environment of every autostop function.

    Fields map to the ``AUTOSTOP_*`` variables in :mod:`shared.constants`. Durations are seconds,
    sizes bytes. Trigger functions also need ``state_machine_arn``; the task functions of the
    state machine cannot have it (it would be a circular reference in CloudFormation).
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    tag_prefix: str = Field(c.DEFAULT_TAG_PREFIX, alias=c.ENV_TAG_PREFIX, pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,31}$")
    checkpoint_bucket: str = Field(alias=c.ENV_CHECKPOINT_BUCKET, min_length=3, max_length=63)
    instance_arn_prefix: str = Field(alias=c.ENV_INSTANCE_ARN_PREFIX, pattern=r"^arn:[a-z-]+:ec2:[a-z0-9-]+:[0-9]{12}:instance/$")
    """``arn:<partition>:ec2:<region>:<account>:instance/``: with an instance id, the ARN IAM puts in
    ``${ec2:SourceInstanceARN}``, so the instance's own key prefix."""
    default_action: Action = Field(Action.STOP, alias=c.ENV_DEFAULT_ACTION)
    default_grace_seconds: int = Field(300, alias=c.ENV_DEFAULT_GRACE_SECONDS, ge=0, le=c.HARD_MAX_GRACE_SECONDS)
    max_grace_seconds: int = Field(1800, alias=c.ENV_MAX_GRACE_SECONDS, ge=0, le=c.HARD_MAX_GRACE_SECONDS)
    state_machine_arn: str | None = Field(None, alias=c.ENV_STATE_MACHINE_ARN)
    probe_document: str = Field(alias=c.ENV_PROBE_DOCUMENT)
    checkpoint_document: str = Field(alias=c.ENV_CHECKPOINT_DOCUMENT)
    checkpoint_timeout_seconds: int = Field(3600, alias=c.ENV_CHECKPOINT_TIMEOUT_SECONDS, ge=60, le=172800)
    part_size_bytes: int = Field(64 * 1024 * 1024, alias=c.ENV_PART_SIZE_BYTES, ge=c.MIN_PART_SIZE_BYTES, le=c.MAX_SINGLE_PUT_BYTES)
    probe_timeout_seconds: int = Field(60, alias=c.ENV_PROBE_TIMEOUT_SECONDS, ge=5, le=600)
    settle_after_seconds: int = Field(120, alias=c.ENV_SETTLE_AFTER_SECONDS, ge=0, le=3600)
    """The sweep completes a waiting task token itself (its status event was lost) once it is this old."""
    poll_seconds: float = Field(2.0, alias=c.ENV_POLL_SECONDS, ge=0, le=60)
    probe_trust_seconds: int = Field(120, alias=c.ENV_PROBE_TRUST_SECONDS, ge=0, le=600)
    """Evaluate completion reuses the starting trigger's probe (same parameters) while it is younger than this; 0 never."""
    runs_table: str | None = Field(None, alias=c.ENV_RUNS_TABLE)
    """DynamoDB table of run records (every function of the stack has it; tests of other parts may omit it)."""
    restore_document: str | None = Field(None, alias=c.ENV_RESTORE_DOCUMENT)
    marker_recheck_minutes: int = Field(0, alias=c.ENV_MARKER_RECHECK_MINUTES, ge=0, le=1440)
    """The sweep's own HeadObject of a ``_SUCCESS`` marker (which an S3 event already reports) runs once per such
    period for each instance, spread over the period's sweeps (:class:`shared.evaluation.MarkerRecheck`, which
    stretches it in big fleets); 0 checks on every sweep."""
    schedule_minutes: int = Field(5, alias=c.ENV_SCHEDULE_MINUTES, ge=1, le=1440)
    outcome_topic_arn: str | None = Field(None, alias=c.ENV_OUTCOME_TOPIC_ARN)
    """The SNS topic outcomes and not-evaluated notices go to (every function of the stack has it)."""
    execution_timeout_seconds: int = Field(6 * 3600, alias=c.ENV_EXECUTION_TIMEOUT_SECONDS, ge=60, le=366 * 86400)
    """The lifecycle state machine's timeout: an execution's claim on a trainer is held at least this long."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); raises :class:`SettingsError`."""
        source = os.environ if environ is None else environ
        try:
            return cls.model_validate({k: v for k, v in source.items() if k.startswith("AUTOSTOP_")})
        except ValidationError as exc:
            raise SettingsError(f"autostop function environment is invalid: {exc}") from exc

    def require_runs_table(self) -> str:
        """The run records table; raises :class:`SettingsError` when not configured."""
        if not self.runs_table:
            raise SettingsError(f"{c.ENV_RUNS_TABLE} is not set for this function")
        return self.runs_table

    def require_state_machine_arn(self) -> str:
        """The lifecycle state machine's ARN; raises :class:`SettingsError` when not configured."""
        if not self.state_machine_arn:
            raise SettingsError(f"{c.ENV_STATE_MACHINE_ARN} is not set for this function")
        return self.state_machine_arn


@cache
def settings() -> Settings:
    """Settings of this container, parsed on first use."""
    return Settings.from_env()
