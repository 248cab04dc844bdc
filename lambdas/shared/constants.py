"""Names shared by the Lambda code, the CDK app and the local runtime.

Everything here is plain Python (no AWS SDK, no pydantic) so that ``infra/`` can import it and a rename
breaks a test instead of a deployment.
"""

from __future__ import annotations

from enum import StrEnum
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
TAG_SPOT_GRACE_SECONDS: Final = "spot-grace-seconds"
TAG_ON_REBALANCE: Final = "on-rebalance"
TAG_RESUME_COMMAND: Final = "resume-command"
TAG_SAVE_ON_SIGNAL: Final = "save-on-signal"

# Informational tags autostop writes after each action; never read as configuration.
TAG_STATE: Final = "state"
TAG_LAST_CHECKPOINT: Final = "last-checkpoint"
TAG_LAST_ERROR: Final = "last-error"
INFO_TAGS: Final = (TAG_STATE, TAG_LAST_CHECKPOINT, TAG_LAST_ERROR)
TAG_VALUE_MAX: Final = 256
"""EC2 tag value limit (characters)."""

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
    TAG_SPOT_GRACE_SECONDS,
    TAG_ON_REBALANCE,
    TAG_RESUME_COMMAND,
    TAG_SAVE_ON_SIGNAL,
    *INFO_TAGS,
)

PINNED_DOCUMENT_VERSION: Final = "1"
"""SendCommand's DocumentVersion: each document content is version 1 of a document named by its content hash
(infra/constructs/documents.py), so a command never runs whatever $DEFAULT version someone made."""

INSTANCE_ID_PATTERN: Final = r"i-[0-9a-f]{8,17}"
"""An EC2 instance id (without anchors)."""
DEFAULT_TAG_PREFIX: Final = "autostop"
INSTANCES_PREFIX: Final = "instances/"
"""Every key an instance writes or reads is under ``instances/<instance ARN>/`` (IAM: ``${ec2:SourceInstanceARN}``)."""
PIPELINE_MARKERS_PREFIX: Final = "markers/"
"""Completion markers that pipelines outside the instance put (the stack's PipelineMarkerPolicy)."""
DEFAULT_MARKER_NAME: Final = "_SUCCESS"
"""Object name of the default completion marker, ``<checkpoint-s3-uri>/_SUCCESS``."""

# --- Actions -------------------------------------------------------------------------------------------------


class Action(StrEnum):
    """What to do with the instance after a verified checkpoint (tag ``<prefix>:action``)."""

    STOP = "stop"
    TERMINATE = "terminate"
    HIBERNATE = "hibernate"


MAX_ATTEMPTS: Final = 20
"""Upper bound on attempts per (instance, run, reason); each attempt is one execution (shared.executions)."""

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
OUTCOME_SPOT_CHECKPOINT_SAVED: Final = "SpotCheckpointSaved"
OUTCOME_SPOT_CHECKPOINT_FAILED: Final = "SpotCheckpointFailed"
OUTCOME_RESUMED: Final = "Resumed"
OUTCOME_RESUME_FAILED: Final = "ResumeFailed"

DESTRUCTIVE_OUTCOMES: Final = frozenset({OUTCOME_STOPPED, OUTCOME_TERMINATED, OUTCOME_HIBERNATED})
"""The only outcomes that change the instance; each follows a verified checkpoint."""
FAILED_OUTCOMES: Final = frozenset(
    {OUTCOME_CHECKPOINT_FAILED, OUTCOME_UPLOAD_UNVERIFIED, OUTCOME_STOP_FAILED, OUTCOME_SPOT_CHECKPOINT_FAILED, OUTCOME_RESUME_FAILED}
)
"""Outcomes that end the execution in the Fail state (red in the console)."""
RETRYABLE_OUTCOMES: Final = frozenset({OUTCOME_NOT_COMPLETE, OUTCOME_INCONCLUSIVE, OUTCOME_SKIPPED})
"""Outcomes reached before anything was done on the instance; a later trigger may start a new attempt."""
ALL_OUTCOMES: Final = (
    DESTRUCTIVE_OUTCOMES | FAILED_OUTCOMES | RETRYABLE_OUTCOMES | {OUTCOME_DRY_RUN, OUTCOME_SPOT_CHECKPOINT_SAVED, OUTCOME_RESUMED}
)
RESUMABLE_OUTCOMES: Final = frozenset({OUTCOME_STOPPED, OUTCOME_SPOT_CHECKPOINT_SAVED})
"""A session that ended with one of these and a verified checkpoint is resumed when the instance starts again
(Hibernated is not: the trainer comes back from memory)."""

# --- Lifecycle reasons (part of the execution name) -------------------------------------------------
REASON_COMPLETE: Final = "complete"
REASON_INTERRUPTION: Final = "interruption"
REASON_REBALANCE: Final = "rebalance"
REASON_RESUME: Final = "resume"
REASONS: Final = (REASON_COMPLETE, REASON_INTERRUPTION, REASON_REBALANCE, REASON_RESUME)

# --- Run records (DynamoDB) --------------------------------------------------------------------------
RECORDS_PARTITION_KEY: Final = "instance_id"
RECORDS_SORT_KEY: Final = "run"
WAITER_PARTITION: Final = "waiter"
"""The run records table's partition of task-token waiters (shared/waiters.py); never an instance id."""
"""``<run_id>#<session>``; see shared/records.py."""

# --- EC2 events (EventBridge detail-type, source aws.ec2) -------------------------------------------
SPOT_WARNING: Final = "EC2 Spot Instance Interruption Warning"
REBALANCE_RECOMMENDATION: Final = "EC2 Instance Rebalance Recommendation"
STATE_CHANGE: Final = "EC2 Instance State-change Notification"

# --- Spot ---------------------------------------------------------------------------------------------
SPOT_NOTICE_SECONDS: Final = 120
"""EC2 gives a Spot Instance two minutes between the interruption warning and the interruption."""
DEFAULT_SPOT_GRACE_SECONDS: Final = 30
MAX_SPOT_GRACE_SECONDS: Final = 110
SPOT_POLL_SECONDS: Final = 5
"""Seconds between command-status polls on the Spot and resume paths."""
SPOT_UPLOAD_RESERVE_SECONDS: Final = 45
"""Of the time left before the interruption, this much is kept for the upload: the trainer's grace is
min(spot-grace-seconds, time left - this)."""

# --- Environment variables (set by infra/constructs/functions.py, read by shared/settings.py) ------
ENV_TAG_PREFIX: Final = "AUTOSTOP_TAG_PREFIX"
ENV_CHECKPOINT_BUCKET: Final = "AUTOSTOP_CHECKPOINT_BUCKET"
ENV_INSTANCE_ARN_PREFIX: Final = "AUTOSTOP_INSTANCE_ARN_PREFIX"
ENV_DEFAULT_ACTION: Final = "AUTOSTOP_DEFAULT_ACTION"
ENV_DEFAULT_GRACE_SECONDS: Final = "AUTOSTOP_DEFAULT_GRACE_SECONDS"
ENV_MAX_GRACE_SECONDS: Final = "AUTOSTOP_MAX_GRACE_SECONDS"
ENV_STATE_MACHINE_ARN: Final = "AUTOSTOP_STATE_MACHINE_ARN"
ENV_PROBE_DOCUMENT: Final = "AUTOSTOP_PROBE_DOCUMENT"
ENV_CHECKPOINT_DOCUMENT: Final = "AUTOSTOP_CHECKPOINT_DOCUMENT"
ENV_CHECKPOINT_TIMEOUT_SECONDS: Final = "AUTOSTOP_CHECKPOINT_TIMEOUT_SECONDS"
ENV_PART_SIZE_BYTES: Final = "AUTOSTOP_PART_SIZE_BYTES"
ENV_PROBE_TIMEOUT_SECONDS: Final = "AUTOSTOP_PROBE_TIMEOUT_SECONDS"
ENV_SETTLE_AFTER_SECONDS: Final = "AUTOSTOP_SETTLE_AFTER_SECONDS"
ENV_POLL_SECONDS: Final = "AUTOSTOP_POLL_SECONDS"
ENV_PROBE_TRUST_SECONDS: Final = "AUTOSTOP_PROBE_TRUST_SECONDS"
ENV_RUNS_TABLE: Final = "AUTOSTOP_RUNS_TABLE"
ENV_RESTORE_DOCUMENT: Final = "AUTOSTOP_RESTORE_DOCUMENT"
ENV_EXECUTION_TIMEOUT_SECONDS: Final = "AUTOSTOP_EXECUTION_TIMEOUT_SECONDS"
ENV_MARKER_RECHECK_MINUTES: Final = "AUTOSTOP_MARKER_RECHECK_MINUTES"
"""How often the sweep itself HeadObjects the markers S3 events already watch (0: every sweep)."""
ENV_SCHEDULE_MINUTES: Final = "AUTOSTOP_SCHEDULE_MINUTES"
ENV_OUTCOME_TOPIC_ARN: Final = "AUTOSTOP_OUTCOME_TOPIC_ARN"
"""The outcome topic (Record outcome, the sweep's not-evaluated notice, on_execution_ended)."""

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
