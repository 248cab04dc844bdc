"""Function settings, read once per container from the environment set by the CDK stack.

Plain Python (a frozen dataclass checked by hand, no pydantic): a function whose own events and results need no
pydantic model (on_status_event, on_execution_ended) keeps pydantic, about 0.45x of ``import boto3``, out of its
cold start (benchmarks/imports.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from functools import cache
from typing import Any

from shared import constants as c
from shared.constants import Action


class SettingsError(RuntimeError):
    """The function's environment is incomplete or malformed (a deployment error, not a user error)."""


def _env(
    name: str,
    default: Any = MISSING,
    *,
    kind: type = str,
    pattern: str | None = None,
    length: tuple[int, int] | None = None,
    bounds: tuple[float, float] | None = None,
) -> Any:
    """A field read from the environment variable ``name``: parsed as ``kind`` (str, int, float, Action), then
    checked against ``pattern`` (full match), ``length`` (min, max characters) or ``bounds`` (min, max, inclusive)."""
    check = {"env": name, "kind": kind, "pattern": pattern, "length": length, "bounds": bounds}
    return field(default=default, metadata=check)


def _parse(raw: str, check: Mapping[str, Any]) -> Any:
    """``raw`` as the field's kind; raises ValueError naming what is wrong."""
    kind = check["kind"]
    if kind in (int, float) and not raw.isascii():  # int() and float() also read other scripts' digits ("٥": 5)
        raise ValueError("is not a number in ASCII digits")
    value = kind(raw.strip()) if kind in (int, float) else kind(raw)
    if check["pattern"] and not re.fullmatch(check["pattern"], value):
        raise ValueError(f"does not match {check['pattern']}")
    if check["length"] and not check["length"][0] <= len(value) <= check["length"][1]:
        raise ValueError(f"must have {check['length'][0]} to {check['length'][1]} characters")
    if check["bounds"] and not check["bounds"][0] <= value <= check["bounds"][1]:
        raise ValueError(f"must be between {check['bounds'][0]} and {check['bounds'][1]}")
    return value


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Environment of every autostop function.

    Fields map to the ``AUTOSTOP_*`` variables in :mod:`shared.constants`. Durations are seconds,
    sizes bytes. Trigger functions also need ``state_machine_arn``; the task functions of the
    state machine cannot have it (it would be a circular reference in CloudFormation).
    """

    tag_prefix: str = _env(c.ENV_TAG_PREFIX, c.DEFAULT_TAG_PREFIX, pattern=r"[A-Za-z][A-Za-z0-9_.-]{0,31}")
    checkpoint_bucket: str = _env(c.ENV_CHECKPOINT_BUCKET, length=(3, 63))
    instance_arn_prefix: str = _env(c.ENV_INSTANCE_ARN_PREFIX, pattern=r"arn:[a-z-]+:ec2:[a-z0-9-]+:[0-9]{12}:instance/")
    """``arn:<partition>:ec2:<region>:<account>:instance/``: with an instance id, the ARN IAM puts in
    ``${ec2:SourceInstanceARN}``, so the instance's own key prefix."""
    default_action: Action = _env(c.ENV_DEFAULT_ACTION, Action.STOP, kind=Action)
    default_grace_seconds: int = _env(c.ENV_DEFAULT_GRACE_SECONDS, 300, kind=int, bounds=(0, c.HARD_MAX_GRACE_SECONDS))
    max_grace_seconds: int = _env(c.ENV_MAX_GRACE_SECONDS, 1800, kind=int, bounds=(0, c.HARD_MAX_GRACE_SECONDS))
    state_machine_arn: str | None = _env(c.ENV_STATE_MACHINE_ARN, None)
    probe_document: str = _env(c.ENV_PROBE_DOCUMENT)
    checkpoint_document: str = _env(c.ENV_CHECKPOINT_DOCUMENT)
    checkpoint_timeout_seconds: int = _env(c.ENV_CHECKPOINT_TIMEOUT_SECONDS, 3600, kind=int, bounds=(60, 172800))
    part_size_bytes: int = _env(c.ENV_PART_SIZE_BYTES, 64 * 1024 * 1024, kind=int, bounds=(c.MIN_PART_SIZE_BYTES, c.MAX_SINGLE_PUT_BYTES))
    probe_timeout_seconds: int = _env(c.ENV_PROBE_TIMEOUT_SECONDS, 60, kind=int, bounds=(5, 600))
    settle_after_seconds: int = _env(c.ENV_SETTLE_AFTER_SECONDS, 120, kind=int, bounds=(0, 3600))
    """The sweep completes a waiting task token itself (its status event was lost) once it is this old."""
    poll_seconds: float = _env(c.ENV_POLL_SECONDS, 2.0, kind=float, bounds=(0, 60))
    probe_trust_seconds: int = _env(c.ENV_PROBE_TRUST_SECONDS, 120, kind=int, bounds=(0, 600))
    """Evaluate completion reuses the starting trigger's probe (same parameters) while it is younger than this; 0 never."""
    runs_table: str | None = _env(c.ENV_RUNS_TABLE, None)
    """DynamoDB table of run records (every function of the stack has it; tests of other parts may omit it)."""
    restore_document: str | None = _env(c.ENV_RESTORE_DOCUMENT, None)
    marker_recheck_minutes: int = _env(c.ENV_MARKER_RECHECK_MINUTES, 0, kind=int, bounds=(0, 1440))
    """The sweep's own HeadObject of a ``_SUCCESS`` marker (which an S3 event already reports) runs once per such
    period for each instance, spread over the period's sweeps (:class:`shared.evaluation.MarkerRecheck`, which
    stretches it in big fleets); 0 checks on every sweep."""
    schedule_minutes: int = _env(c.ENV_SCHEDULE_MINUTES, 5, kind=int, bounds=(1, 1440))
    outcome_topic_arn: str | None = _env(c.ENV_OUTCOME_TOPIC_ARN, None)
    """The SNS topic outcomes and not-evaluated notices go to (every function of the stack has it)."""
    execution_timeout_seconds: int = _env(c.ENV_EXECUTION_TIMEOUT_SECONDS, 6 * 3600, kind=int, bounds=(60, 366 * 86400))
    """The lifecycle state machine's timeout: an execution's claim on a trainer is held at least this long."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); variables not set take their defaults. Raises
        :class:`SettingsError` naming every variable that is missing or malformed."""
        source = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in fields(cls):
            name = f.metadata["env"]
            if name not in source:
                if f.default is MISSING:
                    problems.append(f"{name} is required")
                continue
            try:
                values[f.name] = _parse(source[name], f.metadata)
            except ValueError as exc:
                problems.append(f"{name}={source[name]!r}: {exc}")
        if problems:
            raise SettingsError("autostop function environment is invalid: " + "; ".join(problems))
        return cls(**values)

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
