"""Deployment settings from ``cdk.json`` context, validated once, in one frozen object.

Context keys (all optional; defaults in brackets):
``tag_prefix`` [autostop], ``schedule_minutes`` [5], ``default_action`` [stop; stop or hibernate, never
terminate: terminate is only ever taken from an instance's own tag], ``default_grace_seconds`` [300],
``max_grace_seconds`` [1800], ``checkpoint_bucket`` ["create": a new bucket; else an existing bucket's
name], ``checkpoint_timeout_seconds`` [3600: upload budget of one checkpoint command],
``part_size_bytes`` [67108864], ``log_retention_days`` [30], ``notification_emails`` [[]],
``stack_name`` [Autostop], ``poll_interval_seconds`` [10; unused since the state machine waits for events],
``marker_recheck_minutes`` [60], ``tracing`` [true: X-Ray for the functions and the state machine],
``trace_aws_calls`` [false: with tracing, also an X-Ray subsegment per AWS call, the X-Ray SDK in every cold start].
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

from constructs import Node

from lambdas.shared import constants as c

POWERTOOLS_VERSION = "3.37.0"
"""Powertools layer version; keep equal to lambdas/requirements.txt."""
LAMBDA_PYTHON = "python3.13"
LAMBDA_ARCH = "arm64"


RETENTION = {
    1: "ONE_DAY",
    3: "THREE_DAYS",
    5: "FIVE_DAYS",
    7: "ONE_WEEK",
    14: "TWO_WEEKS",
    30: "ONE_MONTH",
    60: "TWO_MONTHS",
    90: "THREE_MONTHS",
    180: "SIX_MONTHS",
    365: "ONE_YEAR",
}
"""Allowed ``log_retention_days`` values (CloudWatch Logs retention periods) and their RetentionDays names."""


class ConfigError(ValueError):
    """A cdk.json context value is invalid; synth stops with this message."""


@dataclass(frozen=True)
class AutostopConfig:
    stack_name: str = "Autostop"
    tag_prefix: str = c.DEFAULT_TAG_PREFIX
    schedule_minutes: int = 5
    default_action: str = "stop"
    default_grace_seconds: int = 300
    max_grace_seconds: int = 1800
    checkpoint_bucket: str = "create"
    checkpoint_timeout_seconds: int = 3600
    part_size_bytes: int = 64 * 1024 * 1024
    log_retention_days: int = 30
    notification_emails: tuple[str, ...] = field(default_factory=tuple)
    poll_interval_seconds: int = 10
    """Unused since the state machine waits for events instead of polling; accepted so that existing cdk.json files
    stay valid."""
    marker_recheck_minutes: int = 60
    """How often the sweep reads a ``_SUCCESS`` marker itself (S3 events report it within seconds; 0: every sweep)."""
    tracing: bool = True
    """X-Ray tracing of the state machine and the functions (Lambda's active tracing: each invocation, its
    initialization and errors, linked to the execution's trace)."""
    trace_aws_calls: bool = False
    """With ``tracing``, also one X-Ray subsegment per AWS call a function makes (Powertools' Tracer, the X-Ray SDK
    patching botocore): the SDK joins every cold start, about 0.1-0.2x of ``import boto3`` (benchmarks/imports.py)."""

    def __post_init__(self) -> None:
        problems = []
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,31}", self.tag_prefix):
            problems.append(f"tag_prefix {self.tag_prefix!r}: 1-32 letters, digits, _ . - starting with a letter")
        if not 1 <= self.schedule_minutes <= 1440:
            problems.append("schedule_minutes must be 1..1440")
        if self.default_action not in ("stop", "hibernate"):
            problems.append("default_action must be stop or hibernate (terminate only when an instance is tagged so)")
        if not 0 <= self.default_grace_seconds <= self.max_grace_seconds <= c.HARD_MAX_GRACE_SECONDS:
            problems.append(f"need 0 <= default_grace_seconds <= max_grace_seconds <= {c.HARD_MAX_GRACE_SECONDS}")
        if self.checkpoint_bucket != "create" and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", self.checkpoint_bucket):
            problems.append("checkpoint_bucket must be 'create' or a bucket name")
        if not 60 <= self.checkpoint_timeout_seconds <= 172800 - c.HARD_MAX_GRACE_SECONDS:
            problems.append("checkpoint_timeout_seconds must be 60..168000")
        if not c.MIN_PART_SIZE_BYTES <= self.part_size_bytes <= c.MAX_SINGLE_PUT_BYTES:
            problems.append("part_size_bytes must be between 5 MiB and 5 GiB")
        if not 0 <= self.marker_recheck_minutes <= 1440:
            problems.append("marker_recheck_minutes must be 0..1440 (0: every sweep)")
        if not 1 <= self.poll_interval_seconds <= 300:
            problems.append("poll_interval_seconds must be 1..300")
        if self.trace_aws_calls and not self.tracing:
            problems.append("trace_aws_calls needs tracing true (the subsegments belong to the functions' traces)")
        if self.log_retention_days not in RETENTION:
            problems.append(f"log_retention_days must be one of {sorted(RETENTION)}")
        if problems:
            raise ConfigError("invalid autostop context: " + "; ".join(problems))

    @property
    def sweep_marker_recheck_minutes(self) -> int:
        """``marker_recheck_minutes``, or 0 (every sweep) for an existing bucket, whose markers send no events
        unless its owner enabled them."""
        return self.marker_recheck_minutes if self.checkpoint_bucket == "create" else 0

    @property
    def log_retention(self) -> str:
        """The ``aws_logs.RetentionDays`` member name for ``log_retention_days``."""
        return RETENTION[self.log_retention_days]

    @property
    def command_budget_seconds(self) -> int:
        """The longest a checkpoint or restore command can take: SSM's delivery wait (120 s), the grace, the upload
        budget, and two minutes of slack (its Run command Task state waits this long for the end event)."""
        return 120 + self.max_grace_seconds + self.checkpoint_timeout_seconds + 120

    @property
    def execution_timeout_seconds(self) -> int:
        """The state machine's timeout: a command waited for twice (its own wait, then following it after an
        ambiguous SendCommand failure), the stop's wait for the final state (21 minutes), plus an hour for
        everything else (evaluation, the resume path's agent wait, Verify, Record)."""
        return 2 * self.command_budget_seconds + 1260 + 3600

    @classmethod
    def from_context(cls, node: Node) -> AutostopConfig:
        """Read every known key from the CDK context of ``node``.

        A key that looks like a misspelling of a known one (``default_acton``) is an error rather than
        silently ignored; CDK's own keys (``@aws-cdk/...``, ``aws:...``) and other tools' keys are left alone.
        """
        known = list(cls.__dataclass_fields__)
        for key in node.get_all_context():
            if key in known or key.startswith("@") or ":" in key:
                continue
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
            if close:
                raise ConfigError(f"unknown context key {key!r}: did you mean {close[0]!r}?")
        values: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            raw = node.try_get_context(name)
            if raw is None:
                continue
            default = cls.__dataclass_fields__[name].default
            if name == "notification_emails":
                values[name] = tuple(raw if isinstance(raw, list) else [raw])
            elif isinstance(default, bool):
                if str(raw).lower() not in ("true", "false"):
                    raise ConfigError(f"context {name}={raw!r} must be true or false")
                values[name] = str(raw).lower() == "true"
            elif isinstance(default, int):
                try:
                    values[name] = int(raw)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"context {name}={raw!r} must be a whole number") from exc
            else:
                values[name] = str(raw)
        return cls(**values)
