"""Names shared by the Lambda code, the CDK app and the local runtime.

Everything here is plain Python (no AWS SDK, no pydantic) so that ``infra/`` can import it and a rename
breaks a test instead of a deployment.
"""

from __future__ import annotations

from typing import Final

# --- Tags (the part after "<prefix>:") -------------------------------------------------------------
TAG_ENABLED: Final = "enabled"
TAG_ACTION: Final = "action"
TAG_RUN_ID: Final = "run-id"
TAG_CHECKPOINT_DIR: Final = "checkpoint-dir"
TAG_CHECKPOINT_S3_URI: Final = "checkpoint-s3-uri"
TAG_COMPLETION_MARKER: Final = "completion-marker"
TAG_PID_FILE: Final = "pid-file"
TAG_LOG_FILE: Final = "log-file"
TAG_LOG_PATTERN: Final = "log-pattern"
TAG_SIGNAL: Final = "signal"
TAG_GRACE_SECONDS: Final = "grace-seconds"
TAG_DRY_RUN: Final = "dry-run"

KNOWN_TAGS: Final = (
    TAG_ENABLED,
    TAG_ACTION,
    TAG_RUN_ID,
    TAG_CHECKPOINT_DIR,
    TAG_CHECKPOINT_S3_URI,
    TAG_COMPLETION_MARKER,
    TAG_PID_FILE,
    TAG_LOG_FILE,
    TAG_LOG_PATTERN,
    TAG_SIGNAL,
    TAG_GRACE_SECONDS,
    TAG_DRY_RUN,
)

DEFAULT_TAG_PREFIX: Final = "autostop"
DEFAULT_MARKER_NAME: Final = "_SUCCESS"
"""Object name of the default completion marker, ``<checkpoint-s3-uri>/_SUCCESS``."""

# --- Execution outcomes (the ``outcome`` field of every execution's output) -----------------------
OUTCOME_STOPPED: Final = "Stopped"
OUTCOME_TERMINATED: Final = "Terminated"
OUTCOME_HIBERNATED: Final = "Hibernated"
OUTCOME_DRY_RUN: Final = "DryRun"
OUTCOME_NOT_COMPLETE: Final = "NotComplete"
OUTCOME_INCONCLUSIVE: Final = "Inconclusive"
OUTCOME_SKIPPED: Final = "Skipped"
OUTCOME_CHECKPOINT_FAILED: Final = "CheckpointFailed"
OUTCOME_UPLOAD_UNVERIFIED: Final = "UploadUnverified"
OUTCOME_STOP_FAILED: Final = "StopFailed"

DESTRUCTIVE_OUTCOMES: Final = frozenset({OUTCOME_STOPPED, OUTCOME_TERMINATED, OUTCOME_HIBERNATED})
"""The only outcomes that change the instance; each follows a verified checkpoint."""
FAILED_OUTCOMES: Final = frozenset({OUTCOME_CHECKPOINT_FAILED, OUTCOME_UPLOAD_UNVERIFIED, OUTCOME_STOP_FAILED})
"""Outcomes that end the execution in the Fail state (red in the console)."""
RETRYABLE_OUTCOMES: Final = frozenset({OUTCOME_NOT_COMPLETE, OUTCOME_INCONCLUSIVE, OUTCOME_SKIPPED})
"""Outcomes reached before anything was done on the instance; a later trigger may start a new attempt."""
ALL_OUTCOMES: Final = DESTRUCTIVE_OUTCOMES | FAILED_OUTCOMES | RETRYABLE_OUTCOMES | {OUTCOME_DRY_RUN}

# --- Lifecycle reasons (part of the execution name) -------------------------------------------------
REASON_COMPLETE: Final = "complete"

# --- Environment variables (set by infra/constructs/functions.py, read by shared/settings.py) ------
ENV_TAG_PREFIX: Final = "AUTOSTOP_TAG_PREFIX"
ENV_CHECKPOINT_BUCKET: Final = "AUTOSTOP_CHECKPOINT_BUCKET"
ENV_DEFAULT_ACTION: Final = "AUTOSTOP_DEFAULT_ACTION"
ENV_DEFAULT_GRACE_SECONDS: Final = "AUTOSTOP_DEFAULT_GRACE_SECONDS"
ENV_MAX_GRACE_SECONDS: Final = "AUTOSTOP_MAX_GRACE_SECONDS"
ENV_STATE_MACHINE_ARN: Final = "AUTOSTOP_STATE_MACHINE_ARN"
ENV_PROBE_DOCUMENT: Final = "AUTOSTOP_PROBE_DOCUMENT"
ENV_CHECKPOINT_DOCUMENT: Final = "AUTOSTOP_CHECKPOINT_DOCUMENT"
ENV_CHECKPOINT_TIMEOUT_SECONDS: Final = "AUTOSTOP_CHECKPOINT_TIMEOUT_SECONDS"
ENV_PART_SIZE_BYTES: Final = "AUTOSTOP_PART_SIZE_BYTES"
ENV_PROBE_TIMEOUT_SECONDS: Final = "AUTOSTOP_PROBE_TIMEOUT_SECONDS"
ENV_POLL_SECONDS: Final = "AUTOSTOP_POLL_SECONDS"

# --- Bounds -------------------------------------------------------------------------------------------
MIN_GRACE_SECONDS: Final = 0
HARD_MAX_GRACE_SECONDS: Final = 3600
"""No tag or setting may ask for a longer trainer grace period than this."""
SSM_BATCH_SIZE: Final = 50
"""Instances per SendCommand / DescribeInstanceInformation call (the InstanceIds limit of SendCommand)."""
EXECUTION_NAME_MAX: Final = 80
"""Step Functions execution name limit (characters)."""
MIN_PART_SIZE_BYTES: Final = 5 * 1024 * 1024
"""S3 multipart minimum part size (all parts but the last)."""
MAX_SINGLE_PUT_BYTES: Final = 5 * 1024**3
"""S3 PutObject limit; larger files are uploaded as multipart."""
MAX_MANIFEST_BYTES: Final = 32 * 1024 * 1024
"""A manifest larger than this is refused as malformed rather than read into memory."""
