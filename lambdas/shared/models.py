"""Shared data models: instance configuration, completion facts and decisions, checkpoint manifests.

All models are pydantic v2 and frozen. Times are timezone-aware UTC ``datetime`` values; sizes are
bytes; durations are seconds.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.constants import Action as Action  # defined without pydantic, for shared.settings

S3_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
S3_KEY_RE = re.compile(r"^[A-Za-z0-9._/=+:-]{0,900}$")
"""Also ':' for the instance ARN in ``instances/arn:aws:ec2:<region>:<account>:instance/<id>/...``."""


class Frozen(BaseModel):
    """Base of the frozen models. ``defer_build``: a model's validator is built on its first use, not at import,
    so a function pays only for the models it uses (pydantic's ``defer_build``). A model first used inside worker
    threads builds at import instead (``defer_build=False``): pydantic releases before the rebuild lock
    (pydantic/pydantic#13438, whatever version the Powertools layer bundles) could validate with the parent's
    validator while another thread rebuilds."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class S3Uri(Frozen):
    """An ``s3://bucket/key`` location. ``key`` may be a prefix (ending in ``/``) or an object key."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        """Parse ``s3://bucket/key``; raises ``ValueError`` with a user-facing message."""
        if not uri.startswith("s3://"):
            raise ValueError(f"{uri!r} is not an s3:// URI")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not S3_BUCKET_RE.fullmatch(bucket) or ".." in bucket:
            raise ValueError(f"{uri!r} has an invalid bucket name {bucket!r}")
        if not S3_KEY_RE.fullmatch(key):
            raise ValueError(f"{uri!r}: keys may only use letters, digits and . _ / = + : -")
        if "//" in key or any(part in (".", "..") for part in key.split("/")):
            raise ValueError(f"{uri!r}: keys may not contain empty, '.' or '..' segments")
        return cls(bucket=bucket, key=key)

    def as_prefix(self) -> S3Uri:
        """The same location as a prefix (key ending in ``/``; the empty key stays empty)."""
        return self if not self.key or self.key.endswith("/") else S3Uri(bucket=self.bucket, key=self.key + "/")

    def child(self, name: str) -> S3Uri:
        """``name`` below this location taken as a prefix."""
        return S3Uri(bucket=self.bucket, key=self.as_prefix().key + name)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class InstanceSnapshot(Frozen):
    """What DescribeInstances says about one instance at one moment."""

    instance_id: str
    state: str
    """EC2 state name: pending, running, stopping, stopped, shutting-down, terminated."""
    tags: dict[str, str]
    launch_time: datetime | None = None
    lifecycle: Literal["on-demand", "spot", "scheduled", "capacity-block"] = "on-demand"
    hibernation_configured: bool = False
    spot_request_id: str | None = None
    """``SpotInstanceRequestId`` of a Spot Instance (DescribeSpotInstanceRequests tells one-time from persistent)."""

    @property
    def session(self) -> str | None:
        """This power-on of the instance: its LaunchTime as ``YYYY-MM-DDTHH:MM:SSZ`` (EC2 updates LaunchTime
        on every start), or None when EC2 gave none."""
        if self.launch_time is None:
            return None
        return self.launch_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class InstanceConfig(Frozen):
    """An opted-in instance's validated autostop tags (see :func:`shared.tags.parse_instance_config`)."""

    instance_id: str
    run_id: str
    action: Action
    checkpoint_dir: str
    checkpoint_prefix: S3Uri
    """Where this run's checkpoints and manifests go (a prefix in the stack's checkpoint bucket)."""
    completion_marker: S3Uri | None
    pid_file: str | None
    log_file: str | None
    log_pattern: str | None
    signal: str
    """Signal name without ``SIG`` (TERM, INT, HUP, USR1, USR2)."""
    grace_seconds: int
    dry_run: bool
    spot_grace_seconds: int = 30
    """Trainer grace after a Spot interruption warning (tag spot-grace-seconds), before the deadline cut."""
    checkpoint_on_rebalance: bool = False
    """Tag on-rebalance=checkpoint: a rebalance recommendation starts an early checkpoint (no stop)."""
    resume_command: str | None = None
    """Tag resume-command: absolute program path and plain arguments, started detached after a restore."""
    save_on_signal: bool = False
    """Tag save-on-signal=true: the trainer saves a checkpoint when signalled, so a stop may signal it even when no
    complete checkpoint is on disk yet (otherwise the checkpoint command ends NoCheckpoint before signalling)."""

    @property
    def pid_is_completion_signal(self) -> bool:
        """The trainer's exit counts as completion only when the PID file is the only signal tagged.

        With a completion marker or log pattern, those are the evidence and the PID file is the handle
        the checkpoint command uses to signal the trainer and wait for it to exit (a trainer that logged
        completion but hangs on teardown is then asked to exit instead of blocking the stop forever).
        """
        return self.pid_file is not None and self.completion_marker is None and self.log_file is None

    @property
    def probe_needed(self) -> bool:
        """True when a completion signal lives on the instance (log pattern, or the PID file alone)."""
        return self.log_file is not None or self.pid_is_completion_signal

    def probe_parameters(self) -> dict[str, list[str]]:
        """SendCommand ``Parameters`` for the probe document (empty string = not checked)."""
        return {
            "PidFile": [self.pid_file if self.pid_is_completion_signal and self.pid_file else ""],
            "LogFile": [self.log_file or ""],
            "LogPattern": [self.log_pattern or ""],
            "CheckpointDir": [self.checkpoint_dir],
        }


# --- Completion ------------------------------------------------------------------------------------

Verdict = Literal["complete", "not_complete", "inconclusive"]


class SignalVerdict(Frozen):
    """One completion signal's reading: the verdict and why."""

    signal: Literal["marker", "pid", "log"]
    verdict: Verdict
    reason: str


class MarkerFact(Frozen):
    """HeadObject of the completion marker (built in the Evaluator's HeadObject threads: not deferred)."""

    model_config = ConfigDict(defer_build=False)

    state: Literal["present", "absent", "error"]
    last_modified: datetime | None = None
    detail: str = ""


class PidState(Frozen):
    state: Literal["running", "exited", "missing", "unreadable", "unverified", "stale", "not_configured"]
    """``unverified``: a live process that cannot be shown to be the trainer (reused pid or stepped clock).
    ``stale``: the PID file was written before the machine booted (a run stopped and started again), so it
    says nothing about this session's trainer."""
    pid: int | None = None


class LogState(Frozen):
    state: Literal["matched", "not_matched", "missing", "unreadable", "not_configured"]


class ProbeResult(Frozen):
    """One instance's probe: the JSON line the probe document prints, or why there is none."""

    ok: bool
    pid: PidState | None = None
    log: LogState | None = None
    error: str = ""
    """Why the probe has no result (agent offline, command failed, output unreadable...)."""


class ProbeEvidence(Frozen):
    """A trigger's probe of one instance, handed to the execution it starts (input ``trigger.probe``), so Evaluate
    completion need not probe again while it is younger than ``probe_trust_seconds`` (:mod:`shared.evaluation`)."""

    at: datetime
    """When the probe command was sent (UTC; the result describes a moment after it)."""
    parameters: dict[str, list[str]]
    """The probe document parameters it ran with (``InstanceConfig.probe_parameters``): trusted only for the same."""
    result: ProbeResult

    @field_validator("at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("a probe time needs its time zone")
        return value


class CompletionFacts(Frozen):
    """Everything :func:`shared.completion.decide_completion` needs; gathered by :mod:`shared.evaluation`."""

    marker: MarkerFact | None = None
    probe: ProbeResult | None = None
    launch_time: datetime | None = None


class CompletionDecision(Frozen):
    """The pure completion decision with a human-readable reason."""

    verdict: Verdict
    reason: str
    signals: tuple[SignalVerdict, ...] = ()


class Evaluation(Frozen):
    """One instance's evaluation by a trigger or by the Evaluate Task state."""

    instance_id: str
    decision: Literal["complete", "not_complete", "inconclusive", "skipped", "refused"]
    """``refused``: complete, but the tagged action cannot be carried out (found before anything is done)."""
    reason: str
    config: InstanceConfig | None = None
    run_id: str | None = None
    probe: ProbeEvidence | None = None
    """The on-instance probe this evaluation ran (None when it ran none, or reused one)."""


# --- Manifest ----------------------------------------------------------------------------------------


class ManifestFile(Frozen):
    """One uploaded file of a checkpoint."""

    key: str = Field(min_length=1, max_length=1024)
    """S3 key of the object."""
    path: str = Field(min_length=1, max_length=4096)
    """Path relative to the checkpoint (the file name for a single-file checkpoint)."""
    size: int = Field(ge=0)
    """Bytes."""
    checksum_crc32: str | None = Field(None, pattern=r"^[A-Za-z0-9+/]{6}==(-[0-9]{1,5})?$")
    """The value S3 stores as ``ChecksumCRC32``, computed on the instance: base64 of the big-endian CRC32 for a
    single PUT, or the composite (base64 of the CRC32 of the concatenated part CRC32s) followed by ``-<parts>``
    for a multipart upload. What the checkpoint writes; manifests written before it carry ``checksum_sha256``."""
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    """Older manifests: hex SHA-256 of the whole file; None for a multipart object uploaded in parallel (its parts'
    SHA-256 digests, ``checksum_sha256`` with ``part_size``, stand for it)."""
    checksum_sha256: str | None = Field(None, pattern=r"^[A-Za-z0-9+/]{43}=(-[0-9]{1,5})?$")
    """Older manifests: the value S3 stores as ``ChecksumSHA256``, single or composite like ``checksum_crc32``."""
    parts: int = Field(ge=0, le=10000)
    """0 for a single PutObject, else the number of multipart parts."""
    part_size: int | None = Field(None, ge=5 * 1024 * 1024, le=5 * 1024**3)
    """Bytes per part (all but the last) of a multipart object: with it the restore checks the composite checksum."""
    version_id: str | None = Field(None, min_length=1, max_length=1024)
    """The S3 VersionId PutObject/CompleteMultipartUpload returned to the instance; Verify reads exactly it."""

    @model_validator(mode="after")
    def _some_digest(self) -> ManifestFile:
        if (self.checksum_crc32 is None) == (self.checksum_sha256 is None):
            raise ValueError(f"{self.key}: needs exactly one of checksum_crc32 and checksum_sha256")
        if self.checksum_crc32 is not None and self.sha256 is not None:
            raise ValueError(f"{self.key}: a sha256 beside checksum_crc32")
        crc, multipart = self.checksum_crc32, bool(self.part_size)
        if crc is not None and (
            ("-" in crc) != multipart or bool(self.parts) != multipart or multipart and not crc.endswith(f"-{self.parts}")
        ):
            raise ValueError(
                f"{self.key}: checksum_crc32 {crc} does not fit parts {self.parts} and part_size {self.part_size} "
                "(a multipart object: '-<parts>' and a part_size; a single PUT: neither)"
            )
        if self.version_id == "null":
            raise ValueError(f"{self.key}: version_id 'null' (an unversioned object, which the next PutObject replaces)")
        if self.checksum_sha256 is not None and self.sha256 is None and not (self.parts and self.part_size):
            raise ValueError(f"{self.key}: no sha256, and not a multipart object with a part_size")
        return self

    @property
    def checksum(self) -> tuple[str, str]:
        """(S3's algorithm name, ``CRC32`` or ``SHA256``; the value S3 returns as ``Checksum<algorithm>``)."""
        if self.checksum_crc32 is not None:
            return "CRC32", self.checksum_crc32
        return "SHA256", self.checksum_sha256 or ""

    @field_validator("key")
    @classmethod
    def _plain_key(cls, key: str) -> str:
        if any(seg in ("", ".", "..") for seg in key.split("/")):
            raise ValueError(f"key {key!r} has an empty, '.' or '..' segment")
        return key


class ManifestCheckpoint(Frozen):
    name: str
    path: str
    mtime: datetime


class ManifestSelection(BaseModel):
    """How the checkpoint document chose the checkpoint: the rule that made it complete, where its step came
    from, the newest entries it rejected ({name, step, reason}) and a one-line summary."""

    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)

    rule: str = Field(default="", max_length=1000)
    step_source: str | None = Field(default=None, max_length=100)
    rejected: list[dict[str, Any]] = Field(default_factory=list, max_length=20)
    summary: str = Field(default="", max_length=1000)


class Manifest(BaseModel):
    """The checkpoint manifest the checkpoint document writes last, at ``<prefix>manifests/<execution>.json``."""

    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)

    schema_version: Literal[1]
    run_id: str
    instance_id: str
    execution_name: str
    decision_time: datetime
    """The decision this checkpoint answers (the DecisionTime document parameter), to the second."""
    created_at: datetime
    checkpoint: ManifestCheckpoint
    step: int | None = None
    bucket: str
    files: list[ManifestFile] = Field(min_length=1)
    total_bytes: int = Field(ge=0)
    selection: ManifestSelection | None = None
    """Why the instance chose this checkpoint (absent from manifests written before selection was recorded)."""

    @field_validator("files")
    @classmethod
    def _unique_keys(cls, files: list[ManifestFile]) -> list[ManifestFile]:
        keys = [f.key for f in files]
        if len(keys) != len(set(keys)):
            raise ValueError("manifest lists the same key twice")
        return files
