"""The bad-input table: every case, its kind, the input, and the reason the control plane must give.

``expect`` is a substring of the logged reason. Every case must end with no action (no checkpoint command, no
stop or termination, no execution), except the rows marked ``accepted``: valid spellings that parse (each is
a control showing the same path does read good input) and still do nothing here because their run is not
complete.

Kinds: ``opt-in``, ``metachar`` (shell metacharacters in the run id and path tags), ``path`` (traversal and
relative paths), ``s3-uri``, ``huge``, ``non-ascii``, ``action``, ``grace``, ``resume-command``,
``event:schedule``, ``event:s3``, ``event:ec2``, ``execution-input``, ``marker``, ``manifest``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests import events

P = "autostop"
RUN = "run-1"
BUCKET = "ckpt-bucket"
METACHARS = [";", "$(", ")", "`", "|", "&", "<", ">", "*", "?", "'", '"', "\\", "\n", "$", " "]
"""Shell metacharacters (``$(`` and ``$`` both: command substitution and expansion), newline and space."""


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    value: Any
    """Tag cases: tag overrides ``{key: value}`` (None deletes); events: the event; manifests: the body."""
    expect: str
    """Substring of the clear reason."""
    accepted: bool = False
    """A valid spelling: parsed (not skipped); still no action here (the run is not complete)."""


def key(name: str) -> str:
    return f"{P}:{name}"


def base_tags() -> dict[str, str]:
    return {key("enabled"): "true", key("run-id"): RUN, key("checkpoint-dir"): "/data/ckpt"}


def _tag(kind: str, case_id: str, name: str, value: str, expect: str, *, accepted: bool = False, **more: str) -> Case:
    return Case(case_id, kind, {key(name): value, **{key(k.replace("_", "-")): v for k, v in more.items()}}, expect, accepted)


NOT_OPTED_IN = "not opted in"
ABS = "must be an absolute path"
NOT_IN_BUCKET = "stack's checkpoint bucket"
NOT_S3 = "is not an s3:// URI"
RUN_ID_MSG = "must be 1-63 letters, digits"
SHELL = "it is never run through a shell"

TAG_CASES: list[Case] = []

# --- opt-in: exact key, value 'true' ignoring case, nothing trimmed (IAM agreement: tests/infra/test_least_privilege.py)
for cid, value, expect, ok in [
    ("true", "true", "no completion marker", True),
    ("TRUE", "TRUE", "no completion marker", True),
    ("tRuE", "tRuE", "no completion marker", True),
    ("leading space", " true", NOT_OPTED_IN, False),
    ("trailing space", "true ", NOT_OPTED_IN, False),
    ("trailing newline", "true\n", NOT_OPTED_IN, False),
    ("tab", "\ttrue", NOT_OPTED_IN, False),
    ("yes", "yes", NOT_OPTED_IN, False),
    ("1", "1", NOT_OPTED_IN, False),
    ("on", "on", NOT_OPTED_IN, False),
    ("false", "false", NOT_OPTED_IN, False),
    ("empty", "", NOT_OPTED_IN, False),
    ("quoted", '"true"', NOT_OPTED_IN, False),
]:
    TAG_CASES.append(_tag("opt-in", f"enabled={cid}", "enabled", value, expect, accepted=ok))
for cid, tags, expect in [
    # Only a case variant of the key: the sweep finds it (its tag-key filter adds the usual case variants) and says
    # not opted in, naming the misspelled key in the last-error tag; so does the Evaluate step. Beside the exact
    # key: an error (a silently ignored variant could change the outcome).
    ("key Autostop:enabled only", {key("enabled"): None, "Autostop:enabled": "true"}, NOT_OPTED_IN),
    ("key AUTOSTOP:ENABLED only", {key("enabled"): None, "AUTOSTOP:ENABLED": "true"}, NOT_OPTED_IN),
    ("key autostop:Enabled only", {key("enabled"): None, "autostop:Enabled": "true"}, NOT_OPTED_IN),
    ("key with trailing space only", {key("enabled"): None, "autostop:enabled ": "true"}, NOT_OPTED_IN),
    ("exact key and Autostop:enabled=false", {"Autostop:enabled": "false"}, "not spelled exactly autostop:<name>"),
    ("exact key and ' autostop:dry-run'", {" autostop:dry-run": "true"}, "not spelled exactly autostop:<name>"),
]:
    TAG_CASES.append(Case(cid, "opt-in", tags, expect))

# --- shell metacharacters in the run id and every path tag, the S3 URIs and the resume command ------------------
for n, m in enumerate(METACHARS):
    mid = {"\n": "newline", " ": "space"}.get(m, m)
    TAG_CASES += [
        _tag("metachar", f"run-id {mid}", "run-id", f"run{m}1", RUN_ID_MSG),
        _tag("metachar", f"checkpoint-dir {mid}", "checkpoint-dir", f"/data/ckpt{m}x", ABS),
        _tag("metachar", f"pid-file {mid}", "pid-file", f"/run/t{m}.pid", ABS),
        _tag("metachar", f"log-file {mid}", "log-file", f"/var/log/{RUN}/t{m}.log", ABS, log_pattern="done"),
        _tag("metachar", f"checkpoint-s3-uri {mid}", "checkpoint-s3-uri", f"s3://{BUCKET}/runs/{RUN}{m}x/", "keys may only use"),
        _tag("metachar", f"completion-marker {mid}", "completion-marker", f"s3://{BUCKET}/runs/{RUN}/_SUCCESS{m}", "keys may only use"),
    ]
    if m != " ":
        TAG_CASES.append(_tag("resume-command", f"resume-command {mid}", "resume-command", f"/opt/train --resume {m}x{n}", SHELL))
TAG_CASES += [
    _tag("resume-command", "resume-command $(reboot)", "resume-command", "/opt/train $(reboot)", SHELL),
    _tag("resume-command", "resume-command ; rm -rf /", "resume-command", "/opt/train; rm -rf /", SHELL),
    _tag("resume-command", "resume-command relative program", "resume-command", "train.py --resume", SHELL),
    _tag("resume-command", "resume-command traversal", "resume-command", "/opt/../bin/sh -c id", "may not contain '.', '..'"),
    _tag("resume-command", "resume-command double space", "resume-command", "/opt/train  --x", SHELL),
    _tag("resume-command", "resume-command tab", "resume-command", "/opt/train\t--x", SHELL),
    _tag("resume-command", "resume-command env assignment", "resume-command", "LD_PRELOAD=/x.so /opt/train", SHELL),
    _tag("resume-command", "resume-command without pid-file", "resume-command", "/opt/train --resume latest", "needs autostop:pid-file"),
    _tag(
        "resume-command",
        "resume-command plain",
        "resume-command",
        "/opt/train --resume latest",
        "no completion marker",
        accepted=True,
        pid_file="/run/train.pid",
        completion_marker=f"s3://{BUCKET}/runs/{RUN}/_SUCCESS",
    ),
    # The one tag that may hold metacharacters is the log pattern (printable ASCII, an extended regex): passed as an
    # environment variable and only ever used quoted; test_bad_tags proves it on real probe runs.
]

# --- traversal and relative paths ----------------------------------------------------------------------------------
for name, values in {
    "checkpoint-dir": [
        ("relative", "ckpt", ABS),
        ("dot relative", "./ckpt", ABS),
        ("dotdot relative", "../ckpt", ABS),
        ("home", "~/ckpt", ABS),
        ("traversal", "/data/../etc", "'..'"),
        ("trailing dotdot", "/data/ckpt/..", "'..'"),
        ("dot segment", "/data/./ckpt", "'..'"),
        ("double slash", "/data//ckpt", "empty path segments"),
        ("root", "/", "may not be '/'"),
        ("empty", "", ABS),
        ("url", "file:///data/ckpt", ABS),
    ],
    "pid-file": [
        ("relative", "train.pid", ABS),
        ("dotdot relative", "../train.pid", ABS),
        ("traversal", "/run/../etc/passwd", "'..'"),
        ("dot segment", "/run/./t.pid", "'..'"),
        ("empty", "", ABS),
    ],
    "log-file": [
        ("relative", f"logs/{RUN}.log", ABS),
        ("traversal", f"/var/log/{RUN}/../../etc/shadow", "'..'"),
        ("dot segment", f"/var/log/{RUN}/./t.log", "'..'"),
        ("double slash", f"/var/log//{RUN}.log", "empty path segments"),
    ],
}.items():
    for cid, value, expect in values:
        more = {"log_pattern": "done"} if name == "log-file" else {}
        TAG_CASES.append(_tag("path", f"{name} {cid}", name, value, expect, **more))

# --- non-S3, cross-bucket and cross-account URIs --------------------------------------------------------------------
for cid, value, expect in [
    ("https", f"https://{BUCKET}.s3.amazonaws.com/runs/{RUN}/", NOT_S3),
    ("other bucket", f"s3://other-bucket/runs/{RUN}/", NOT_IN_BUCKET),
    ("other account's bucket", f"s3://{BUCKET}-111122223333/runs/{RUN}/", NOT_IN_BUCKET),
    ("virtual-hosted name", f"s3://{BUCKET}.s3.amazonaws.com/runs/{RUN}/", NOT_IN_BUCKET),
    ("bucket ARN", f"arn:aws:s3:::{BUCKET}/runs/{RUN}/", NOT_S3),
    ("access point ARN", f"arn:aws:s3:us-east-1:111122223333:accesspoint/ap/object/runs/{RUN}/", NOT_S3),
    ("access point ARN as s3 URI", f"s3://arn:aws:s3:us-east-1:111122223333:accesspoint/ap/runs/{RUN}/", "invalid bucket name"),
    ("access point alias", f"s3://ap-111122223333-s3alias/runs/{RUN}/", NOT_IN_BUCKET),
    ("upper-case scheme", f"S3://{BUCKET}/runs/{RUN}/", NOT_S3),
    ("s3a scheme", f"s3a://{BUCKET}/runs/{RUN}/", NOT_S3),
    ("user info", f"s3://user@{BUCKET}/runs/{RUN}/", "invalid bucket name"),
    ("bucket without key", f"s3://{BUCKET}", "needs a key prefix"),
    ("bucket root", f"s3://{BUCKET}/", "needs a key prefix"),
    ("key with ..", f"s3://{BUCKET}/runs/../other/", "'..' segments"),
    ("key with //", f"s3://{BUCKET}/runs//{RUN}/", "empty, '.' or '..' segments"),
    ("percent-encoded ..", f"s3://{BUCKET}/runs/%2e%2e/", "keys may only use"),
    ("query string", f"s3://{BUCKET}/runs/{RUN}/?versionId=1", "keys may only use"),
]:
    TAG_CASES.append(_tag("s3-uri", f"checkpoint-s3-uri {cid}", "checkpoint-s3-uri", value, expect))
for cid, value, expect in [
    ("https", f"https://{BUCKET}.s3.amazonaws.com/runs/{RUN}/_SUCCESS", NOT_S3),
    ("other bucket", f"s3://other-bucket/runs/{RUN}/_SUCCESS", NOT_IN_BUCKET),
    ("other account's bucket", f"s3://{BUCKET}-111122223333/runs/{RUN}/_SUCCESS", NOT_IN_BUCKET),
    ("bucket ARN", f"arn:aws:s3:::{BUCKET}/runs/{RUN}/_SUCCESS", NOT_S3),
    ("access point ARN", f"arn:aws:s3:us-east-1:111122223333:accesspoint/ap/object/runs/{RUN}/_SUCCESS", NOT_S3),
    ("bucket without key", f"s3://{BUCKET}", "must name an object"),
    ("prefix, not an object", f"s3://{BUCKET}/runs/{RUN}/", "must name an object"),
    ("key with ..", f"s3://{BUCKET}/runs/{RUN}/../_SUCCESS", "'..' segments"),
    ("another run's marker", f"s3://{BUCKET}/runs/other-run/_SUCCESS", "must contain the run id"),
    # run-1 is a substring of run-10: a plain substring test let this run take run-10's marker as its own
    ("a longer run id's marker", f"s3://{BUCKET}/runs/{RUN}0/_SUCCESS", "must contain the run id"),
    ("a longer run id's marker (prefix)", f"s3://{BUCKET}/runs/x{RUN}/_SUCCESS", "must contain the run id"),
]:
    TAG_CASES.append(_tag("s3-uri", f"completion-marker {cid}", "completion-marker", value, expect))
TAG_CASES.append(
    _tag("s3-uri", "log-file of a longer run id", "log-file", f"/var/log/{RUN}0/t.log", "must contain the run id", log_pattern="x")
)

# --- huge values (EC2 allows 256 characters; moto stores more) ------------------------------------------------------
HUGE = 300
for name, value, expect, more in [
    ("run-id", "r" * HUGE, RUN_ID_MSG, {}),
    ("checkpoint-dir", "/" + "a" * HUGE, ABS, {}),
    ("pid-file", "/" + "p" * HUGE, ABS, {}),
    ("log-file", f"/var/log/{RUN}/" + "l" * HUGE, ABS, {"log_pattern": "done"}),
    ("log-pattern", "d" * HUGE, "1-200 printable ASCII", {"log_file": f"/l/{RUN}.log"}),
    ("checkpoint-s3-uri", f"s3://{BUCKET}/" + "k" * 1000 + "/", "keys may only use", {}),
    ("completion-marker", f"s3://{BUCKET}/runs/{RUN}/" + "m" * 1000, "keys may only use", {}),
    ("action", "stop" * 80, "must be one of stop, terminate, hibernate", {}),
    ("signal", "TERM" * 80, "must be one of SIGTERM", {}),
    ("grace-seconds", "9" * HUGE, "whole number", {}),
    ("spot-grace-seconds", "9" * HUGE, "whole number", {}),
    ("dry-run", "true" * 80, "true or false", {}),
    ("save-on-signal", "true" * 80, "true or false", {}),
    ("on-rebalance", "checkpoint" * 30, "checkpoint or ignore", {}),
    ("resume-command", "/opt/train " + " ".join(["a"] * 40), SHELL, {}),
    ("enabled", "true" * 80, NOT_OPTED_IN, {}),
]:
    TAG_CASES.append(_tag("huge", f"{name} {len(value)} characters", name, value, expect, **more))
TAG_CASES.append(Case("tag key 300 characters", "huge", {key("x" * HUGE): "1"}, "unknown tag"))

# --- non-ASCII: full-width letters, zero-width space, right-to-left override, emoji, lookalikes ------------------
FW = str.maketrans({chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)})
ZWSP, RLO = "\u200b", "\u202e"
for name, value, expect, more in [
    ("enabled", "true".translate(FW), NOT_OPTED_IN, {}),
    ("enabled", "true" + ZWSP, NOT_OPTED_IN, {}),
    ("enabled", RLO + "eurt", NOT_OPTED_IN, {}),
    ("run-id", RUN.translate(FW), RUN_ID_MSG, {}),
    ("run-id", "run" + ZWSP + "1", RUN_ID_MSG, {}),
    ("run-id", RUN + RLO, RUN_ID_MSG, {}),
    ("run-id", "run-\U0001f680", RUN_ID_MSG, {}),
    ("checkpoint-dir", "/data/ckpt".translate(FW), ABS, {}),
    ("checkpoint-dir", "/data" + ZWSP + "/ckpt", ABS, {}),
    ("checkpoint-dir", "/data/\U0001f680", ABS, {}),
    ("pid-file", "/run/" + RLO + "dip.t", ABS, {}),
    ("log-file", f"/var/log/{RUN}/t{ZWSP}.log", ABS, {"log_pattern": "done"}),
    ("log-pattern", "done \U0001f680", "1-200 printable ASCII", {"log_file": f"/l/{RUN}.log"}),
    ("completion-marker", f"s3://{BUCKET}/runs/{RUN}/_SUCCESS{ZWSP}", "keys may only use", {}),
    ("checkpoint-s3-uri", f"s3://{BUCKET}/runs/\U0001f680/", "keys may only use", {}),
    ("action", "stop".translate(FW), "must be one of", {}),
    ("action", "st\u043ep", "must be one of", {}),  # Cyrillic o
    ("action", "stop" + ZWSP, "must be one of", {}),
    ("grace-seconds", "300".translate(FW), "whole number", {}),
    ("grace-seconds", "\u0663\u0660\u0660", "whole number", {}),  # Arabic-Indic digits: int() would read 300
    # str.upper()/lower() turn these into ASCII: long s and dotless i upper-case to S and I, the Kelvin sign
    # lower-cases to k; they were accepted as SIGTERM and checkpoint before the values had to be ASCII.
    ("signal", "\u017f\u0131gterm", "must be one of SIGTERM", {}),
    ("on-rebalance", "chec\u212apoint", "checkpoint or ignore", {}),
    ("dry-run", "tru\u0435", "true or false", {}),  # Cyrillic e
    ("save-on-signal", "tru\u0435", "true or false", {}),
    ("resume-command", "/opt/train --resume " + "x".translate(FW), SHELL, {}),
]:
    TAG_CASES.append(_tag("non-ascii", f"{name} {value.encode('unicode_escape').decode()[:40]}", name, value, expect, **more))

# --- unknown actions and case variants -------------------------------------------------------------------------------
for value, expect, ok in [
    ("shutdown", "must be one of stop, terminate, hibernate", False),
    ("reboot", "must be one of", False),
    ("delete", "must be one of", False),
    ("stop-instance", "must be one of", False),
    ("terminate;stop", "must be one of", False),
    (" stop", "must be one of", False),
    ("stop\n", "must be one of", False),
    ("", "must be one of", False),
    ("Stop", "no completion marker", True),
    ("TERMINATE", "no completion marker", True),
    ("HiBeRnAtE", "no completion marker", True),
]:
    TAG_CASES.append(_tag("action", f"action {value!r}", "action", value, expect, accepted=ok))
TAG_CASES += [
    Case("unknown key autostop:actions", "action", {key("actions"): "stop"}, "did you mean autostop:action"),
    Case("unknown key autostop:dryrun", "action", {key("dryrun"): "true"}, "did you mean autostop:dry-run"),
    Case("key variant Autostop:action", "action", {"Autostop:action": "terminate"}, "not spelled exactly"),
    _tag("action", "signal SIGKILL", "signal", "SIGKILL", "must be one of SIGTERM"),
    _tag("action", "signal 9", "signal", "9", "must be one of SIGTERM"),
]

# --- grace values --------------------------------------------------------------------------------------------------------
for name, values in {
    "grace-seconds": [
        ("-1", "whole number"),
        ("-0", "whole number"),
        ("1801", "outside 0..1800"),
        ("3600", "outside 0..1800"),
        ("99999", "outside 0..1800"),
        ("100000", "whole number"),
        ("1.5", "whole number"),
        ("300.0", "whole number"),
        ("0x12c", "whole number"),
        ("1e3", "whole number"),
        ("300s", "whole number"),
        (" 300", "whole number"),
        ("300\n", "whole number"),
        ("+300", "whole number"),
        ("", "whole number"),
        ("0", ""),
        ("1800", ""),
        ("0300", ""),
    ],
    "spot-grace-seconds": [
        ("-1", "whole number"),
        ("111", "outside 0..110"),
        ("999", "outside 0..110"),
        ("1000", "whole number"),
        ("1.5", "whole number"),
        ("0x1f", "whole number"),
        ("", "whole number"),
        ("0", ""),
        ("110", ""),
    ],
}.items():
    for value, expect in values:
        ok = not expect
        TAG_CASES.append(_tag("grace", f"{name} {value!r}", name, value, expect or "no completion marker", accepted=ok))


# --- EventBridge events --------------------------------------------------------------------------------------------------
def scheduled(**changes: Any) -> dict[str, Any]:
    return _change(events.scheduled_event(), changes)


def object_created(key_name: str, bucket: str = BUCKET, **changes: Any) -> dict[str, Any]:
    return _change(events.object_created(bucket, key_name, size=4), changes)


def ec2_event(detail_type: str, detail: Any, **changes: Any) -> dict[str, Any]:
    event = events.ec2_event(detail_type, detail, when=datetime(2026, 11, 30, 10, 0, tzinfo=UTC), resources=[])
    event["id"] = "ec2-1"
    return _change(event, changes)


def _change(event: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for k, v in changes.items():
        k = k.replace("_", "-")
        if v is _DROP:
            event.pop(k, None)
        else:
            event[k] = v
    return event


_DROP = object()
DROP: Any = _DROP
JUNK = "x" * (300 * 1024)
"""More than EventBridge's 256 KB event limit."""
SPOT = "EC2 Spot Instance Interruption Warning"
REBALANCE = "EC2 Instance Rebalance Recommendation"
STATE = "EC2 Instance State-change Notification"
CONTROL_ID = "{control}"
"""Placeholder for the control instance's id in EC2 events (filled in by the test)."""


def _without(d: dict[str, Any], *path: str) -> dict[str, Any]:
    out = json.loads(json.dumps(d))
    node = out
    for p in path[:-1]:
        node = node[p]
    node.pop(path[-1])
    return out


def _set(d: dict[str, Any], value: Any, *path: str) -> dict[str, Any]:
    node = d
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return d


CONTROL_MARKER = f"instances/arn:aws:ec2:us-east-1:123456789012:instance/{CONTROL_ID}/runs/ctl-run/_SUCCESS"
"""The control run's default marker, below its instance's own prefix (CONTROL_ID is filled in per world)."""
EVENT_CASES: list[Case] = [
    # schedule
    Case("schedule: valid tick (control)", "event:schedule", scheduled(), "", accepted=True),
    Case("schedule: missing time", "event:schedule", scheduled(time=DROP), "malformed event: time"),
    Case("schedule: missing detail", "event:schedule", scheduled(detail=DROP), "malformed event: detail"),
    Case("schedule: missing source", "event:schedule", scheduled(source=DROP), "malformed event: source"),
    Case("schedule: time not a time", "event:schedule", scheduled(time="yesterday"), "malformed event: time"),
    Case("schedule: detail a string", "event:schedule", scheduled(detail="{}"), "malformed event: detail"),
    Case("schedule: resources not a list", "event:schedule", scheduled(resources="arn"), "malformed event: resources"),
    Case("schedule: source aws.s3", "event:schedule", scheduled(source="aws.s3"), "not a 'Scheduled Event' event from aws.events"),
    Case("schedule: custom source", "event:schedule", scheduled(source="my.app"), "not a 'Scheduled Event' event"),
    Case("schedule: detail-type Object Created", "event:schedule", scheduled(detail_type="Object Created"), "not a 'Scheduled Event'"),
    Case("schedule: 300 KB detail", "event:schedule", scheduled(detail={"junk": JUNK}), "oversized event"),
    Case("schedule: a list", "event:schedule", [scheduled()], "a JSON object is required, not list"),
    Case("schedule: a string", "event:schedule", json.dumps(scheduled()), "a JSON object is required, not str"),
    Case("schedule: null", "event:schedule", None, "a JSON object is required, not NoneType"),
    Case("schedule: a number", "event:schedule", 5, "a JSON object is required, not int"),
    Case("schedule: empty object", "event:schedule", {}, "malformed event"),
    # S3 Object Created
    Case("s3: marker of a complete run (control)", "event:s3", object_created(CONTROL_MARKER), "", accepted=True),
    Case("s3: missing object key", "event:s3", _without(object_created(CONTROL_MARKER), "detail", "object", "key"), "detail.object.key"),
    Case("s3: missing bucket", "event:s3", _without(object_created(CONTROL_MARKER), "detail", "bucket"), "detail.bucket"),
    Case("s3: missing detail", "event:s3", object_created(CONTROL_MARKER, detail=DROP), "malformed event: detail"),
    Case("s3: key a number", "event:s3", object_created(12345), "detail.object.key"),  # type: ignore[arg-type]
    Case("s3: key a list", "event:s3", object_created([CONTROL_MARKER]), "detail.object.key"),  # type: ignore[arg-type]
    Case("s3: size a word", "event:s3", _set(object_created(CONTROL_MARKER), "big", "detail", "object", "size"), "detail.object.size"),
    Case("s3: source aws.ec2", "event:s3", object_created(CONTROL_MARKER, source="aws.ec2"), "not a 'Object Created' event from aws.s3"),
    Case("s3: Object Deleted", "event:s3", object_created(CONTROL_MARKER, detail_type="Object Deleted"), "detail-type 'Object Deleted'"),
    Case("s3: 300 KB detail", "event:s3", object_created(CONTROL_MARKER, id=JUNK), "oversized event"),
    Case("s3: a list", "event:s3", [object_created(CONTROL_MARKER)], "a JSON object is required, not list"),
    Case("s3: null", "event:s3", None, "a JSON object is required"),
    # markers that belong to no running instance's run
    Case("marker: _SUCCESS of a run no instance has", "marker", object_created("runs/ghost-run/_SUCCESS"), "nobody's completion marker"),
    Case(
        "marker: another instance's run (run-10 for run-1)",
        "marker",
        object_created("runs/exp10/_SUCCESS"),
        "nobody's completion marker",
    ),
    Case(
        "marker: the control's key in another bucket",
        "marker",
        object_created(CONTROL_MARKER, bucket="other-bucket"),
        "nobody's completion marker",
    ),
    Case("marker: a key with ..", "marker", object_created("runs/ctl-run/../ctl-run/_SUCCESS"), "nobody's completion marker"),
    # EC2 events (Spot interruption warning, rebalance recommendation, state change)
    Case(
        "ec2: Spot warning (control)", "event:ec2", ec2_event(SPOT, {"instance-id": CONTROL_ID, "instance-action": "terminate"}), "", True
    ),
    Case("ec2: missing detail", "event:ec2", _change(ec2_event(SPOT, {}), {"detail": DROP}), "malformed EC2 event: detail"),
    Case("ec2: missing instance id", "event:ec2", ec2_event(SPOT, {"instance-action": "terminate"}), "detail.instance-id"),
    Case("ec2: instance id a number", "event:ec2", ec2_event(SPOT, {"instance-id": 12345}), "detail.instance-id"),
    Case("ec2: instance id with ;", "event:ec2", ec2_event(SPOT, {"instance-id": "i-0123456789abcdef0; reboot"}), "detail.instance-id"),
    Case("ec2: state a list", "event:ec2", ec2_event(STATE, {"instance-id": CONTROL_ID, "state": ["running"]}), "detail.state"),
    Case("ec2: time without zone", "event:ec2", ec2_event(SPOT, {"instance-id": CONTROL_ID}, time="2026-11-30T10:00:00"), "timezone"),
    Case("ec2: time a word", "event:ec2", ec2_event(SPOT, {"instance-id": CONTROL_ID}, time="soon"), "malformed EC2 event: time"),
    Case("ec2: source aws.s3", "event:ec2", ec2_event(SPOT, {"instance-id": CONTROL_ID}, source="aws.s3"), "malformed EC2 event: source"),
    Case("ec2: other detail-type", "event:ec2", ec2_event("EC2 Instance Launch Successful", {"instance-id": CONTROL_ID}), "detail-type"),
    Case("ec2: 300 KB detail", "event:ec2", ec2_event(SPOT, {"instance-id": CONTROL_ID, "junk": JUNK}), "oversized event"),
    Case("ec2: rebalance, 300 KB detail", "event:ec2", ec2_event(REBALANCE, {"instance-id": CONTROL_ID, "junk": JUNK}), "oversized"),
    Case("ec2: a list", "event:ec2", [ec2_event(SPOT, {"instance-id": CONTROL_ID})], "malformed EC2 event: event"),
    Case("ec2: a string", "event:ec2", SPOT, "malformed EC2 event: event"),
    Case("ec2: null", "event:ec2", None, "malformed EC2 event: event"),
    Case("ec2: unknown instance", "event:ec2", ec2_event(SPOT, {"instance-id": "i-0000000000000000f"}), "instance does not exist"),
    Case(
        "ec2: state change to stopping", "event:ec2", ec2_event(STATE, {"instance-id": CONTROL_ID, "state": "stopping"}), "starts nothing"
    ),
    Case("ec2: rebalance without the tag", "event:ec2", ec2_event(REBALANCE, {"instance-id": CONTROL_ID}), "on-rebalance is not"),
    Case("ec2: started, no run record", "event:ec2", ec2_event(STATE, {"instance-id": CONTROL_ID, "state": "running"}), "no run record"),
]
