"""Outcome notifications people can read and machines can parse, and the same as an EventBridge event.

One :class:`Notice` per execution outcome (Record outcome, on_execution_ended) or per sweep that found
instances it could not act on (the schedule sweep). SNS gets it with ``MessageStructure=json``: e-mail
subscribers read the text (subject, reason, what to do, console URL); SQS, Lambda, HTTP(S), Firehose and
``email-json`` subscribers get one JSON object (the full result plus the same fields). The default event bus
gets it with ``source`` = ``autostop`` (AWS Chatbot, Slack, any rule target).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared import constants as c

EVENT_SOURCE = "autostop"
"""``source`` of every event autostop puts on the default bus (``aws.*`` is reserved for AWS)."""
DETAIL_OUTCOME = "Autostop Outcome"
DETAIL_NOT_EVALUATED = "Autostop Instances Not Evaluated"
SUBJECT_MAX = 100
"""SNS Subject: at most 100 printable ASCII characters, no line breaks."""
MESSAGE_MAX = 200 * 1024
"""A notice's Message stays below this (SNS takes 256 KB including attributes and subject)."""
REASON_MAX = 1000
"""Characters of a reason in a notice (the run record and the execution keep the whole of it)."""

WHAT_TO_DO: dict[str, str] = {
    c.OUTCOME_STOPPED: "Nothing. Starting the instance again resumes the run from this checkpoint "
    "(with an autostop:resume-command tag the trainer is restarted for you).",
    c.OUTCOME_TERMINATED: "Nothing. Resume the run on a new instance from this checkpoint.",
    c.OUTCOME_HIBERNATED: "Nothing. Starting the instance continues the trainer from memory.",
    c.OUTCOME_DRY_RUN: "autostop:dry-run is set, so the instance keeps running and billing. Remove the tag to let autostop stop it.",
    c.OUTCOME_NOT_COMPLETE: "Nothing. The run is still training; autostop looks again at the next sweep.",
    c.OUTCOME_INCONCLUSIVE: "autostop could not tell whether the run finished and left the instance running. "
    "If this repeats, `autostop explain INSTANCE` shows every signal.",
    c.OUTCOME_SKIPPED: "If the reason names tags, fix them (`autostop tag INSTANCE ... --dry-run` checks them) and the next "
    "sweep looks again; otherwise nothing: the reason says why this execution did not act.",
    c.OUTCOME_CHECKPOINT_FAILED: "The instance is still running and billing. Read the command output (console link) and fix "
    "the cause; this run's checkpoint step is spent (the trainer may have been signalled), so tag a new run id "
    "(`autostop tag INSTANCE --run-id NEW ...`) or stop the instance yourself.",
    c.OUTCOME_UPLOAD_UNVERIFIED: "The instance is still running and billing: the checkpoint in S3 could not be verified, "
    "so nothing was stopped. Read the reason and fix it, then tag a new run id (`autostop tag INSTANCE --run-id NEW ...`) "
    "or stop the instance yourself.",
    c.OUTCOME_STOP_FAILED: "The instance was not stopped and is still billing. If the tagged action was impossible (the "
    "reason says so, before any checkpoint), fix the tag and `autostop retry EXECUTION`; otherwise stop it yourself.",
    c.OUTCOME_SPOT_CHECKPOINT_SAVED: "Nothing. EC2 reclaims the Spot Instance; resume the run from this checkpoint.",
    c.OUTCOME_SPOT_CHECKPOINT_FAILED: "EC2 reclaims the Spot Instance without a new verified checkpoint: "
    "the run resumes from its last verified one (`autostop status RUN`).",
    c.OUTCOME_RESUMED: "Nothing. The trainer was restarted from the restored checkpoint.",
    c.OUTCOME_RESUME_FAILED: "The instance is running without its trainer. Read the reason, "
    "then start the trainer yourself or fix the cause and stop/start the instance.",
    # Executions that ended without Record outcome (on_execution_ended): the instance was not stopped by them.
    "ExecutionTimedOut": "The instance was not stopped by this execution and may still be billing; "
    "`autostop status RUN` shows the run, `autostop retry EXECUTION` starts the next attempt.",
    "ExecutionAborted": "Someone stopped this execution; the instance was not stopped by it. `autostop retry EXECUTION` to try again.",
    "ExecutionFailed": "The execution failed before it could record an outcome; the instance was not stopped by it. "
    "Read the execution's history (console link).",
    "AttemptsExhausted": "autostop gave up on this run after its last attempt: the instance keeps running and billing "
    "until you stop it or fix the cause and re-tag the run.",
}
GENERIC_TO_DO = "Read the reason and the execution's history (console link)."

_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9 +\-=._:/@]")
"""Characters outside the set every AWS service accepts in tag values become a space."""


def squeeze(text: str, keep: Callable[[str], bool], limit: int) -> str:
    """``text`` with every character ``keep`` refuses as a space, runs of whitespace as one space, and cut to at
    most ``limit`` characters (ending in ``...`` when cut)."""
    clean = " ".join("".join(ch if keep(ch) else " " for ch in text).split())
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def tag_value(text: str) -> str:
    """``text`` as an EC2 tag value: safe characters only, at most 256 characters."""
    return squeeze(text, lambda ch: _TAG_UNSAFE.fullmatch(ch) is None, c.TAG_VALUE_MAX)


def clean_reason(text: str) -> str:
    """``text`` with each Lambda error object (``{"errorMessage", "errorType", "stackTrace"...}``, as Step Functions
    puts it into an error's Cause) replaced by ``<errorType>: <errorMessage>``; no stack trace, one line."""
    decoder, out, at = json.JSONDecoder(), [], 0
    while (start := text.find("{", at)) >= 0:
        try:
            err, end = decoder.raw_decode(text, start)
        except ValueError:
            out.append(text[at : start + 1])
            at = start + 1
            continue
        lambda_error = isinstance(err, dict) and "errorMessage" in err
        short = f"{err.get('errorType', 'Error')}: {err.get('errorMessage', '')}" if lambda_error else text[start:end]
        out.append(text[at:start] + short)
        at = end
    out.append(text[at:])
    return " ".join("".join(out).split())


def console_url(execution_arn: str) -> str:
    """The Step Functions console page of an execution (``arn:aws:states:<region>:...:execution:...``), or ""."""
    parts = execution_arn.split(":")
    if len(parts) < 7 or parts[2] != "states":
        return ""
    region = parts[3]
    return f"https://{region}.console.aws.amazon.com/states/home?region={region}#/v2/executions/details/{execution_arn}"


def one_line(text: str, limit: int = REASON_MAX) -> str:
    """``text`` with every control character and line break as a space, runs of spaces as one, at most ``limit``
    characters: a tag value (an instance's Name) or a reason cannot add lines to a notice's text."""
    return squeeze(str(text), lambda ch: unicodedata.category(ch)[0] != "C", limit)


def subject_line(text: str) -> str:
    """``text`` as an SNS Subject: printable ASCII, one line, at most :data:`SUBJECT_MAX` characters."""
    return squeeze(text, lambda ch: 32 <= ord(ch) < 127, SUBJECT_MAX)


@dataclass
class Outlets:
    """Where outcomes go besides the run record: SNS (``sns`` client, ``topic_arn``) and EventBridge (``events``)."""

    sns: Any
    topic_arn: str
    events: Any


@dataclass
class Notice:
    """One notification: ``subject`` (SNS Subject), ``text`` (what people read), ``data`` (the JSON form)."""

    subject: str
    text: str
    data: dict[str, Any] = field(default_factory=dict)
    detail_type: str = DETAIL_OUTCOME

    def sns_message(self) -> str:
        """The ``Message`` for ``Publish(MessageStructure="json")``: the text for e-mail, the JSON as ``default`` for
        every other protocol (SQS, Lambda, HTTP(S), Firehose, ``email-json``). Two forms, so 256 KB holds both."""
        return json.dumps({"default": json.dumps(self.data, default=str), "email": self.text})

    def size(self) -> int:
        """Bytes SNS counts against its 256 KB message limit (the Message, UTF-8)."""
        return len(self.sns_message().encode())


def outcome_notice(result: dict[str, Any], *, instance_name: str | None, execution_arn: str) -> Notice:
    """The notice of one execution's ``result`` ({outcome, reason, instance_id?, run_id?, execution, manifest_uri?}).

    Subject: ``autostop <outcome>: <Name or instance id> run <run id>``. Text: the reason, what to do, the console
    URL, the checkpoint. ``data``: ``result`` plus ``subject``, ``what_to_do``, ``console_url``, ``instance_name``.
    """
    outcome = str(result.get("outcome") or "Unknown")
    iid, run_id = result.get("instance_id"), result.get("run_id")
    who = one_line(instance_name or iid or "unknown instance", 256)
    subject = subject_line(f"autostop {outcome}: {who}" + (f" run {run_id}" if run_id else ""))
    todo = WHAT_TO_DO.get(outcome, GENERIC_TO_DO)
    url = console_url(execution_arn)
    lines = [
        f"Outcome: {outcome}",
        f"Instance: {who}" + (f" ({iid})" if iid and iid != who else ""),
        *([f"Run: {run_id}"] if run_id else []),
        f"Why: {one_line(result.get('reason') or 'no reason given')}",
        f"What to do: {todo}",
    ]
    if result.get("manifest_uri"):
        lines.append(f"Checkpoint manifest: {result['manifest_uri']}")
    if url:
        lines.append(f"Execution: {url}")
    data = {**result, "subject": subject, "what_to_do": todo, "console_url": url, "instance_name": instance_name}
    return Notice(subject=subject, text="\n".join(lines) + "\n", data=data)


NOT_EVALUATED = "NotEvaluated"
"""The ``outcome`` (message attribute and JSON field) of a trigger's notice about instances it could not act on."""
NOTICE_LIST_MAX = 25
"""Instances listed by name in one not-evaluated notice (SNS takes 256 KB for every protocol's form together)."""


def not_evaluated_notice(problems: dict[str, dict[str, str]], *, trigger: str) -> Notice:
    """One notice for the instances a sweep or trigger could not act on whose reason changed since it last looked.

    ``problems``: instance id to {``name``, ``reason``, ``what_to_do``}. Subject counts them; the text and ``data``
    list at most :data:`NOTICE_LIST_MAX`, each reason cut to :data:`REASON_MAX` characters, and fewer when the
    message would pass :data:`MESSAGE_MAX` (``data["count"]`` is the total; each instance's tag has its reason).
    """
    ordered = [(iid, {k: one_line(v) for k, v in p.items()}) for iid, p in sorted(problems.items())]
    shown = min(len(ordered), NOTICE_LIST_MAX)
    while True:
        notice = _not_evaluated(dict(ordered[:shown]), len(problems), trigger)
        if shown <= 1 or notice.size() <= MESSAGE_MAX:
            return notice
        shown = max(1, shown // 2)


def _not_evaluated(listed: dict[str, dict[str, str]], count: int, trigger: str) -> Notice:
    plural = "s" if count != 1 else ""
    subject = subject_line(f"autostop: {count} instance{plural} not evaluated ({trigger})")
    lines = [f"The {trigger} could not act on {count} opted-in instance{plural}; they keep running and billing.", ""]
    for iid, p in listed.items():
        who = f"{p['name']} ({iid})" if p.get("name") else iid
        lines += [f"- {who}", f"  Why: {p['reason']}", f"  What to do: {p['what_to_do']}"]
    if count > len(listed):
        lines.append(f"... and {count - len(listed)} more: each has the reason in its autostop:last-error tag.")
    data = {"outcome": NOT_EVALUATED, "trigger": trigger, "count": count, "instances": listed}
    return Notice(subject=subject, text="\n".join(lines) + "\n", data=data, detail_type=DETAIL_NOT_EVALUATED)


def publish(sns: Any, topic_arn: str, notice: Notice, *, outcome: str) -> str:
    """SNS Publish of ``notice`` (message attribute ``outcome`` for subscription filters); returns the MessageId.

    Raises botocore's ClientError/BotoCoreError as SNS does.
    """
    resp = sns.publish(
        TopicArn=topic_arn,
        Subject=notice.subject,
        Message=notice.sns_message(),
        MessageStructure="json",
        MessageAttributes={"outcome": {"DataType": "String", "StringValue": outcome}},
    )
    return str(resp.get("MessageId", ""))


def put_event(events: Any, notice: Notice, *, resources: list[str]) -> bool:
    """PutEvents of ``notice.data`` on the default bus (source ``autostop``); True when EventBridge accepted it.

    ``resources``: ARNs the event is about (the execution, the instance). Raises what botocore raises; a refused
    entry (``FailedEntryCount``) returns False.
    """
    entry = {
        "Source": EVENT_SOURCE,
        "DetailType": notice.detail_type,
        "Detail": json.dumps(notice.data, default=str),
        "Resources": [r for r in resources if r],
    }
    resp = events.put_events(Entries=[entry])
    return not resp.get("FailedEntryCount")
