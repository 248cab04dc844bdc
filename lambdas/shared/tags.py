"""Opt-in and tag parsing: from an instance's EC2 tags to a validated :class:`InstanceConfig`.

Completion evidence must belong to the run: a tagged log file or completion marker must contain the
run id, so that an earlier run's completion line or marker can never end a new run.

Every tag value is checked against a narrow pattern here, before it can reach an SSM document
parameter (whose ``allowedPattern`` checks it again) or an S3 key. A bad value raises
:class:`InvalidTags`; the instance is then skipped with that message and never stopped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared import constants as c
from shared.models import Action, InstanceConfig, S3Uri

if TYPE_CHECKING:
    from shared.settings import Settings

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
ABS_PATH_RE = re.compile(r"^/[A-Za-z0-9._/-]{0,254}$")
LOG_PATTERN_RE = re.compile(r"^[\x20-\x7e]{1,200}$")
RESUME_COMMAND_RE = re.compile(r"^/[A-Za-z0-9._/-]{1,254}( [A-Za-z0-9._/=:,+@%-]{1,255}){0,31}$")
"""The restore document's ResumeCommand allowedPattern: an absolute program path, then plain arguments
separated by single spaces; no quotes, no shell metacharacters (it is never run through a shell)."""
REBALANCE_VALUES = ("checkpoint", "ignore")
SIGNALS = ("TERM", "INT", "HUP", "USR1", "USR2")
TRUE_VALUES = ("true",)
BOOL_VALUES = {"true": True, "false": False}


class InvalidTags(ValueError):
    """The instance's autostop tags cannot be used; ``problems`` lists each one in words a user can act on."""

    def __init__(self, instance_id: str, problems: list[str]) -> None:
        self.instance_id = instance_id
        self.problems = problems
        super().__init__(f"{instance_id}: " + "; ".join(problems))


@dataclass(frozen=True)
class TagPolicy:
    """Deployment-wide rules for reading tags (from :class:`shared.settings.Settings`)."""

    prefix: str
    checkpoint_bucket: str
    instance_arn_prefix: str = "arn:aws:ec2:us-east-1:123456789012:instance/"
    """``arn:<partition>:ec2:<region>:<account>:instance/`` of the deployment (settings); the default is the
    local runtime's (moto's account and region)."""
    default_action: Action = Action.STOP
    default_grace_seconds: int = 300
    max_grace_seconds: int = 1800

    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def instance_prefix(self, instance_id: str) -> str:
        """``instances/<instance ARN>/``: the only keys that instance may write or read (the instance policy)."""
        return f"{c.INSTANCES_PREFIX}{self.instance_arn_prefix}{instance_id}/"


def is_opted_in(tags: Mapping[str, str], prefix: str) -> bool:
    """True when ``<prefix>:enabled`` equals ``true`` ignoring case (not whitespace).

    This is the same test as the IAM condition ``StringEqualsIgnoreCase`` on
    ``aws:ResourceTag/<prefix>:enabled`` that guards StopInstances, TerminateInstances and SendCommand.
    """
    return tags.get(f"{prefix}:{c.TAG_ENABLED}", "").lower() in TRUE_VALUES


def opt_in_problem(tags: Mapping[str, str], prefix: str) -> str | None:
    """Why an instance that is not opted in looks as if someone meant it to be, or None.

    Two mistakes a sweep can see: an opt-in value other than ``true``/``false`` (``yes``, ``1``), and the key
    spelled with another case or surrounding spaces (``Autostop:Enabled``): EC2 tag keys are case-sensitive,
    autostop reads the exact key, and IAM's condition keys ignore case, so such an instance must be told.
    """
    key = f"{prefix}:{c.TAG_ENABLED}"
    value = tags.get(key)
    if value is not None and value.lower() not in BOOL_VALUES:
        return f"not opted in: {key} is {value!r}; only 'true' opts in ('false' opts out)"
    variants = sorted(k for k in tags if k != key and k.strip().lower() == key.lower())
    if value is None and variants:
        return (
            f"not opted in: the opt-in tag key is spelled {variants[0]!r}; autostop reads {key!r} exactly (EC2 tag keys are case-sensitive)"
        )
    return None


def opt_in_key_filters(prefix: str) -> list[str]:
    """DescribeInstances ``tag-key`` filter values: the opt-in key and its usual case variants.

    EC2 filters are case-sensitive and have no character classes, so the variants are the words in lower case,
    Capitalized or UPPER case (a wildcard first letter); rarer spellings (``AutoStop:enabled``) and keys with
    spaces around them are not found by the sweep (IAM's ``aws:ResourceTag`` key ignores case, not spaces, so
    such an instance could not be tagged anyway).
    """
    word = c.TAG_ENABLED

    def forms(text: str) -> set[str]:
        return {text.lower()[1:], text.upper()[1:]}

    variants = sorted(f"?{p}:?{e}" for p in forms(prefix) for e in forms(word))
    return [f"{prefix}:{word}", *variants]


def names_run(location: str, run_id: str) -> bool:
    """True when ``run_id`` appears in ``location`` as a whole token: not run on by a letter or digit on either side.

    A plain substring test would let run ``exp1`` take ``runs/exp10/_SUCCESS`` (another run's marker) as its own.
    """
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(run_id)}(?![A-Za-z0-9])", location) is not None


def _abs_path(value: str, key: str, problems: list[str]) -> str | None:
    if not ABS_PATH_RE.fullmatch(value):
        problems.append(f"{key}={value!r} must be an absolute path of letters, digits and . _ / - (at most 255)")
        return None
    segments = value.split("/")[1:]
    if any(seg in ("..", ".") for seg in segments) or "//" in value:
        problems.append(f"{key}={value!r} may not contain '.', '..' or empty path segments")
        return None
    if value != "/" and value.endswith("/"):
        value = value.rstrip("/")
    return value


def parse_instance_config(instance_id: str, tags: Mapping[str, str], policy: TagPolicy) -> InstanceConfig:
    """Validate the ``<prefix>:*`` tags of an opted-in instance.

    Args:
        instance_id: EC2 instance id (``i-...``).
        tags: all tags of the instance, key to value, as DescribeInstances returns them.
        policy: deployment settings (tag prefix, checkpoint bucket, defaults and bounds).

    Returns:
        The instance's configuration, defaults applied.

    Raises:
        InvalidTags: any tag is missing, unknown or malformed; nothing about the instance is trusted then.
    """
    p = policy.prefix
    problems: list[str] = []
    ours = {k[len(p) + 1 :]: v for k, v in tags.items() if k.startswith(f"{p}:")}

    for key in tags:
        folded = "".join(key.split()).lower()
        if folded.startswith(f"{p.lower()}:") and not key.startswith(f"{p}:"):
            problems.append(f"tag key {key!r} looks like an autostop tag but is not spelled exactly {p}:<name> (keys are case-sensitive)")
    for name in ours:
        if name in c.INFO_TAGS:
            continue  # written by autostop itself, never configuration
        if name not in c.KNOWN_TAGS:
            import difflib  # only for a misspelt tag: no part of the cold start of every function that reads tags

            hint = difflib.get_close_matches(name, c.KNOWN_TAGS, n=1)
            problems.append(f"unknown tag {p}:{name}" + (f" (did you mean {p}:{hint[0]}?)" if hint else ""))

    if not is_opted_in(tags, p):
        problems.append(f"{p}:{c.TAG_ENABLED} is not 'true'")

    def get(name: str) -> str | None:
        return ours.get(name)

    run_id = get(c.TAG_RUN_ID)
    if run_id is None:
        problems.append(f"{p}:{c.TAG_RUN_ID} is required (letters, digits, . _ -, at most 63)")
    elif not RUN_ID_RE.fullmatch(run_id):
        problems.append(f"{p}:{c.TAG_RUN_ID}={run_id!r} must be 1-63 letters, digits, . _ - starting with a letter or digit")

    raw_action = get(c.TAG_ACTION)
    action = policy.default_action
    if raw_action is not None:
        try:
            action = Action(raw_action.lower())
        except ValueError:
            problems.append(f"{p}:{c.TAG_ACTION}={raw_action!r} must be one of stop, terminate, hibernate")
    elif action is Action.TERMINATE:  # terminate only when explicitly tagged
        action = Action.STOP

    checkpoint_dir = None
    raw_dir = get(c.TAG_CHECKPOINT_DIR)
    if raw_dir is None:
        problems.append(f"{p}:{c.TAG_CHECKPOINT_DIR} is required (absolute path of the checkpoints on the instance)")
    else:
        checkpoint_dir = _abs_path(raw_dir, f"{p}:{c.TAG_CHECKPOINT_DIR}", problems)
        if checkpoint_dir == "/":
            problems.append(f"{p}:{c.TAG_CHECKPOINT_DIR} may not be '/'")
            checkpoint_dir = None

    own = policy.instance_prefix(instance_id)
    prefix_uri: S3Uri | None = None
    raw_uri = get(c.TAG_CHECKPOINT_S3_URI)
    if raw_uri is None:
        if run_id is not None and RUN_ID_RE.fullmatch(run_id):
            prefix_uri = S3Uri(bucket=policy.checkpoint_bucket, key=f"{own}runs/{run_id}/")
    else:
        prefix_uri = _bucket_uri(raw_uri, f"{p}:{c.TAG_CHECKPOINT_S3_URI}", policy, problems)
        if prefix_uri is not None:
            prefix_uri = prefix_uri.as_prefix()
            if not prefix_uri.key:
                problems.append(f"{p}:{c.TAG_CHECKPOINT_S3_URI} needs a key prefix, not the bucket root")
                prefix_uri = None
            elif prefix_uri.key.startswith((c.INSTANCES_PREFIX, c.PIPELINE_MARKERS_PREFIX)):
                problems.append(
                    f"{p}:{c.TAG_CHECKPOINT_S3_URI}={raw_uri!r}: give the prefix below the instance's own "
                    f"(s3://{policy.checkpoint_bucket}/{own}), e.g. s3://{policy.checkpoint_bucket}/team/{run_id}/"
                )
                prefix_uri = None
            elif run_id is not None and not names_run(prefix_uri.key, run_id):
                problems.append(
                    f"{p}:{c.TAG_CHECKPOINT_S3_URI}={raw_uri!r} must contain the run id {run_id!r} (e.g. "
                    f"s3://{policy.checkpoint_bucket}/team/{run_id}/): two runs sharing one upload prefix would share "
                    "its default completion marker, and one run's completion would end the other"
                )
                prefix_uri = None
            else:
                prefix_uri = S3Uri(bucket=prefix_uri.bucket, key=own + prefix_uri.key)

    pid_file = None
    if (raw := get(c.TAG_PID_FILE)) is not None:
        pid_file = _abs_path(raw, f"{p}:{c.TAG_PID_FILE}", problems)
    log_file = None
    if (raw := get(c.TAG_LOG_FILE)) is not None:
        log_file = _abs_path(raw, f"{p}:{c.TAG_LOG_FILE}", problems)
        if log_file is not None and run_id is not None and not names_run(log_file, run_id):
            problems.append(
                f"{p}:{c.TAG_LOG_FILE}={log_file!r} must contain the run id {run_id!r} (e.g. /var/log/{run_id}/train.log): "
                "a log shared by several runs still holds the completion line of an earlier run"
            )
    log_pattern = get(c.TAG_LOG_PATTERN)
    if log_pattern is not None:
        if not LOG_PATTERN_RE.fullmatch(log_pattern):
            problems.append(f"{p}:{c.TAG_LOG_PATTERN} must be 1-200 printable ASCII characters")
            log_pattern = None
        else:
            try:
                re.compile(log_pattern)
            except (re.error, OverflowError, RecursionError, ValueError) as exc:
                problems.append(f"{p}:{c.TAG_LOG_PATTERN}={log_pattern!r} is not a valid regular expression: {exc}")
    if (get(c.TAG_LOG_FILE) is None) != (get(c.TAG_LOG_PATTERN) is None):
        problems.append(f"{p}:{c.TAG_LOG_FILE} and {p}:{c.TAG_LOG_PATTERN} must be set together")

    marker: S3Uri | None = None
    raw_marker = get(c.TAG_COMPLETION_MARKER)
    if raw_marker is not None:
        marker = _bucket_uri(raw_marker, f"{p}:{c.TAG_COMPLETION_MARKER}", policy, problems)
        if marker is not None and (not marker.key or marker.key.endswith("/")):
            problems.append(f"{p}:{c.TAG_COMPLETION_MARKER} must name an object, not a prefix")
            marker = None
        elif marker is not None and marker.key.startswith(c.INSTANCES_PREFIX):
            problems.append(
                f"{p}:{c.TAG_COMPLETION_MARKER}={raw_marker!r}: give the key below the instance's own prefix "
                f"(s3://{policy.checkpoint_bucket}/runs/{run_id}/_SUCCESS), or under {c.PIPELINE_MARKERS_PREFIX} for a pipeline"
            )
            marker = None
        elif marker is not None and run_id is not None and not names_run(marker.key, run_id):
            problems.append(
                f"{p}:{c.TAG_COMPLETION_MARKER}={raw_marker!r} must contain the run id {run_id!r} in its key "
                f"(e.g. s3://{policy.checkpoint_bucket}/runs/{run_id}/_SUCCESS): a marker shared by several runs "
                "would mark a new run complete"
            )
            marker = None
        if marker is not None and not marker.key.startswith(c.PIPELINE_MARKERS_PREFIX):
            marker = S3Uri(bucket=marker.bucket, key=own + marker.key)  # the instance's (or its trainer's) own marker
    elif get(c.TAG_PID_FILE) is None and get(c.TAG_LOG_FILE) is None and prefix_uri is not None:
        marker = prefix_uri.child(c.DEFAULT_MARKER_NAME)

    signal = "TERM"
    if (raw := get(c.TAG_SIGNAL)) is not None:
        name = raw.upper().removeprefix("SIG")
        if name not in SIGNALS or not raw.isascii():  # str.upper() turns some non-ASCII letters into ASCII ones
            problems.append(f"{p}:{c.TAG_SIGNAL}={raw!r} must be one of " + ", ".join("SIG" + s for s in SIGNALS))
        else:
            signal = name

    grace = policy.default_grace_seconds
    if (raw := get(c.TAG_GRACE_SECONDS)) is not None:
        if not re.fullmatch(r"[0-9]{1,5}", raw):
            problems.append(f"{p}:{c.TAG_GRACE_SECONDS}={raw!r} must be a whole number of seconds")
        elif not c.MIN_GRACE_SECONDS <= int(raw) <= policy.max_grace_seconds:
            problems.append(f"{p}:{c.TAG_GRACE_SECONDS}={raw} is outside {c.MIN_GRACE_SECONDS}..{policy.max_grace_seconds} seconds")
        else:
            grace = int(raw)

    dry_run = False
    if (raw := get(c.TAG_DRY_RUN)) is not None:
        if raw.lower() not in BOOL_VALUES:
            problems.append(f"{p}:{c.TAG_DRY_RUN}={raw!r} must be true or false")
            dry_run = True  # unreadable dry-run tag: never act (the instance is skipped anyway)
        else:
            dry_run = BOOL_VALUES[raw.lower()]

    save_on_signal = False
    if (raw := get(c.TAG_SAVE_ON_SIGNAL)) is not None:
        if raw.lower() not in BOOL_VALUES or not raw.isascii():
            problems.append(f"{p}:{c.TAG_SAVE_ON_SIGNAL}={raw!r} must be true or false")
        else:
            save_on_signal = BOOL_VALUES[raw.lower()]

    spot_grace = min(c.DEFAULT_SPOT_GRACE_SECONDS, policy.max_grace_seconds)
    if (raw := get(c.TAG_SPOT_GRACE_SECONDS)) is not None:
        if not re.fullmatch(r"[0-9]{1,3}", raw):
            problems.append(f"{p}:{c.TAG_SPOT_GRACE_SECONDS}={raw!r} must be a whole number of seconds")
        elif int(raw) > c.MAX_SPOT_GRACE_SECONDS:
            problems.append(
                f"{p}:{c.TAG_SPOT_GRACE_SECONDS}={raw} is outside 0..{c.MAX_SPOT_GRACE_SECONDS} seconds "
                f"(a Spot interruption leaves {c.SPOT_NOTICE_SECONDS} s in all, upload included)"
            )
        else:
            spot_grace = int(raw)

    on_rebalance = False
    if (raw := get(c.TAG_ON_REBALANCE)) is not None:
        if raw.lower() not in REBALANCE_VALUES or not raw.isascii():  # the Kelvin sign lower-cases into k
            problems.append(f"{p}:{c.TAG_ON_REBALANCE}={raw!r} must be checkpoint or ignore")
        else:
            on_rebalance = raw.lower() == "checkpoint"

    resume_command = get(c.TAG_RESUME_COMMAND)
    if resume_command is not None:
        program = resume_command.split(" ", 1)[0]
        if not RESUME_COMMAND_RE.fullmatch(resume_command):
            problems.append(
                f"{p}:{c.TAG_RESUME_COMMAND}={resume_command!r} must be an absolute program path followed by arguments "
                "separated by single spaces, using only letters, digits and . _ / = : , + @ % - (it is never run through "
                "a shell: no quotes, $, ;, |, &, <, >, * or backslashes)"
            )
            resume_command = None
        elif any(seg in ("", "..", ".") for seg in program.split("/")[1:]):  # also a trailing "/": not a program
            problems.append(f"{p}:{c.TAG_RESUME_COMMAND}: the program path {program!r} may not contain '.', '..' or empty segments")
            resume_command = None

    if resume_command is not None and pid_file is None and get(c.TAG_PID_FILE) is None:
        problems.append(
            f"{p}:{c.TAG_RESUME_COMMAND} needs {p}:{c.TAG_PID_FILE}: the restore writes the resumed trainer's PID there, "
            "and refuses to start a second trainer while one of this boot runs"
        )
    if problems or run_id is None or checkpoint_dir is None or prefix_uri is None:
        raise InvalidTags(instance_id, problems or ["incomplete autostop tags"])
    return InstanceConfig(
        instance_id=instance_id,
        run_id=run_id,
        action=action,
        checkpoint_dir=checkpoint_dir,
        checkpoint_prefix=prefix_uri,
        completion_marker=marker,
        pid_file=pid_file,
        log_file=log_file,
        log_pattern=log_pattern,
        signal=signal,
        grace_seconds=grace,
        dry_run=dry_run,
        spot_grace_seconds=spot_grace,
        checkpoint_on_rebalance=on_rebalance,
        resume_command=resume_command,
        save_on_signal=save_on_signal,
    )


def _bucket_uri(raw: str, key: str, policy: TagPolicy, problems: list[str]) -> S3Uri | None:
    try:
        uri = S3Uri.parse(raw)
    except ValueError as exc:
        problems.append(f"{key}: {exc}")
        return None
    if uri.bucket != policy.checkpoint_bucket:
        problems.append(f"{key}={raw!r} must be in the stack's checkpoint bucket s3://{policy.checkpoint_bucket}/")
        return None
    return uri


def tag_policy(settings: Settings) -> TagPolicy:
    """The :class:`TagPolicy` of a deployment's function settings (prefix, bucket, instance ARN prefix, defaults)."""
    return TagPolicy(
        prefix=settings.tag_prefix,
        checkpoint_bucket=settings.checkpoint_bucket,
        instance_arn_prefix=settings.instance_arn_prefix,
        default_action=settings.default_action,
        default_grace_seconds=settings.default_grace_seconds,
        max_grace_seconds=settings.max_grace_seconds,
    )
