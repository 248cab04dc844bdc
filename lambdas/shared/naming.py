"""Deterministic names: Step Functions execution names and the S3 keys of one checkpoint upload."""

from __future__ import annotations

import hashlib
import re

from shared import constants as c
from shared.models import InstanceConfig, S3Uri

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def execution_name(instance_id: str, run_id: str, reason: str, attempt: int = 1, session: str | None = None) -> str:
    """``<instance>-<run>-<reason>[-<session>][-<attempt>]``, at most 80 characters of ``[A-Za-z0-9_-]``.

    ``session`` is the instance's LaunchTime (``YYYY-MM-DDTHH:MM:SSZ``), written ``YYMMDDHHMMSS``: a run that
    is resumed after a stop gets new executions in its new session. The same instance, run, reason, session
    and attempt always give the same name, so StartExecution is the idempotency check: a duplicate event or
    an overlapping sweep gets ExecutionAlreadyExists. A run id too long for the limit is shortened and given
    an 8-character hash so names stay unique.
    """
    if attempt < 1:
        raise ValueError("attempt starts at 1")
    safe_run = _UNSAFE.sub("_", run_id)
    tail = f"-{reason}" + (f"-{session_stamp(session)}" if session else "") + (f"-{attempt}" if attempt > 1 else "")
    name = f"{instance_id}-{safe_run}{tail}"
    if len(name) > c.EXECUTION_NAME_MAX or safe_run != run_id:
        digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
        room = c.EXECUTION_NAME_MAX - len(instance_id) - len(tail) - len(digest) - 3
        name = f"{instance_id}-{safe_run[: max(room, 1)]}-{digest}{tail}"
    return name


def upload_prefix(config: InstanceConfig, execution: str) -> S3Uri:
    """Prefix that one execution's checkpoint files are uploaded under."""
    return config.checkpoint_prefix.child(f"checkpoints/{execution}/")


def manifest_uri(config: InstanceConfig, execution: str) -> S3Uri:
    """Where one execution's manifest is written (last, after every checkpoint file)."""
    return config.checkpoint_prefix.child(f"manifests/{execution}.json")


def session_stamp(session: str) -> str:
    """``2026-11-30T03:18:03Z`` → ``261130031803`` (the session part of execution names)."""
    digits = re.sub(r"[^0-9]", "", session)
    if len(digits) != 14:
        raise ValueError(f"session {session!r} is not YYYY-MM-DDTHH:MM:SSZ")
    return digits[2:]
