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
from dataclasses import dataclass, field
from typing import Any

from shared import constants as c

EVENT_SOURCE = "autostop"
"""``source`` of every event autostop puts on the default bus (``aws.*`` is reserved for AWS)."""
DETAIL_OUTCOME = "Autostop Outcome"
DETAIL_NOT_EVALUATED = "Autostop Instances Not Evaluated"
SUBJECT_MAX = 100
"""SNS Subject: at most 100 printable ASCII characters, no line breaks."""
MACHINE_PROTOCOLS = ("sqs", "lambda", "http", "https", "email-json", "firehose")
"""SNS subscription protocols that get the JSON form (``default`` and ``email`` get the text)."""

WHAT_TO_DO: dict[str, str] = {
    c.OUTCOME_STOPPED: "Nothing. Starting the instance again resumes the run from this checkpoint "
    "(with an autostop:resume-command tag the trainer is restarted for you).",
    c.OUTCOME_TERMINATED: "Nothing. Resume the run on a new instance from this checkpoint.",
    c.OUTCOME_HIBERNATED: "Nothing. Starting the instance continues the trainer from memory.",
    c.OUTCOME_DRY_RUN: "autostop:dry-run is set, so the instance keeps running and billing. Remove the tag to let autostop stop it.",
    c.OUTCOME_NOT_COMPLETE: "Nothing. The run is still training; autostop looks again at the next sweep.",
    c.OUTCOME_INCONCLUSIVE: "autostop could not tell whether the run finished and left the instance running. "
    "If this repeats, `autostop explain INSTANCE` shows every signal.",
    c.OUTCOME_SKIPPED: "Fix the tags named above (`autostop tag INSTANCE ... --dry-run` checks them); "
    "the next sweep picks the instance up.",
    c.OUTCOME_CHECKPOINT_FAILED: "The instance is still running and billing. Read the command output (console link), "
    "fix the cause, then `autostop retry EXECUTION`.",
    c.OUTCOME_UPLOAD_UNVERIFIED: "The instance is still running and billing: the checkpoint in S3 could not be verified, "
    "so nothing was stopped. Read the reason, then `autostop retry EXECUTION`.",
    c.OUTCOME_STOP_FAILED: "The checkpoint is verified but the instance was not stopped and is still billing: "
    "stop it yourself, or fix the reason and `autostop retry EXECUTION`.",
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


def tag_value(text: str) -> str:
    """``text`` as an EC2 tag value: safe characters only, at most 256 characters."""
    clean = " ".join(_TAG_UNSAFE.sub(" ", text).split())
    return clean if len(clean) <= c.TAG_VALUE_MAX else clean[: c.TAG_VALUE_MAX - 3] + "..."


_LAMBDA_ERROR = re.compile(r"\{.*\"errorMessage\".*\}", re.DOTALL)


def clean_reason(text: str) -> str:
    """``text`` with a Lambda error object (``{"errorMessage", "errorType", "stackTrace"...}``, as Step Functions
    puts it into an error's Cause) replaced by ``<errorType>: <errorMessage>``; no stack trace, one line."""
    match = _LAMBDA_ERROR.search(text)
    if match:
        try:
            err = json.loads(match.group(0))
        except ValueError:
            err = None
        if isinstance(err, dict):
            short = f"{err.get('errorType', 'Error')}: {err.get('errorMessage', '')}".strip()
            text = text[: match.start()] + short + text[match.end() :]
    return " ".join(text.split())


def console_url(execution_arn: str) -> str:
    """The Step Functions console page of an execution (``arn:aws:states:<region>:...:execution:...``), or ""."""
    parts = execution_arn.split(":")
    if len(parts) < 7 or parts[2] != "states":
        return ""
    region = parts[3]
    return f"https://{region}.console.aws.amazon.com/states/home?region={region}#/v2/executions/details/{execution_arn}"


def subject_line(text: str) -> str:
    """``text`` as an SNS Subject: printable ASCII, one line, at most :data:`SUBJECT_MAX` characters."""
    clean = "".join(ch if 32 <= ord(ch) < 127 else " " for ch in text)
    clean = " ".join(clean.split())
    return clean if len(clean) <= SUBJECT_MAX else clean[: SUBJECT_MAX - 3] + "..."


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
        """The ``Message`` for ``Publish(MessageStructure="json")``: text for e-mail, JSON for machines."""
        as_json = json.dumps(self.data, default=str)
        return json.dumps({"default": self.text, "email": self.text, **dict.fromkeys(MACHINE_PROTOCOLS, as_json)})


def outcome_notice(result: dict[str, Any], *, instance_name: str | None, execution_arn: str) -> Notice:
    """The notice of one execution's ``result`` ({outcome, reason, instance_id?, run_id?, execution, manifest_uri?}).

    Subject: ``autostop <outcome>: <Name or instance id> run <run id>``. Text: the reason, what to do, the console
    URL, the checkpoint. ``data``: ``result`` plus ``subject``, ``what_to_do``, ``console_url``, ``instance_name``.
    """
    outcome = str(result.get("outcome") or "Unknown")
    iid, run_id = result.get("instance_id"), result.get("run_id")
    who = instance_name or iid or "unknown instance"
    subject = subject_line(f"autostop {outcome}: {who}" + (f" run {run_id}" if run_id else ""))
    todo = WHAT_TO_DO.get(outcome, GENERIC_TO_DO)
    url = console_url(execution_arn)
    lines = [
        f"Outcome: {outcome}",
        f"Instance: {who}" + (f" ({iid})" if iid and iid != who else ""),
        *([f"Run: {run_id}"] if run_id else []),
        f"Why: {result.get('reason') or 'no reason given'}",
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
    list the first :data:`NOTICE_LIST_MAX` (``data["count"]`` is the total; each instance's tag has its reason).
    """
    count = len(problems)
    listed = dict(sorted(problems.items())[:NOTICE_LIST_MAX])
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
