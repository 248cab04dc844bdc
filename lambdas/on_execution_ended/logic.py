"""Executions that end without their own Notify: timed out, aborted, or failed outside the outcome states.

Every lifecycle execution normally ends through Record outcome and Notify. Three endings skip them: the state
machine's timeout (TIMED_OUT), StopExecution (ABORTED), and a failure no Catch handles (FAILED with a
``States.*`` or Lambda error rather than one of the failure outcomes, which the ``Failed`` state raises after
Notify). An EventBridge rule on the state machine's "Step Functions Execution Status Change" events sends
those here: the run record gets the ending (its ``active`` claim released, so the run is not blocked until
the lease lapses) and the outcome topic a readable notification. A run whose last attempt
(:data:`MAX_ATTEMPTS`) ended before anything was done is notified as ``AttemptsExhausted``: no trigger starts
another attempt for that run and session.

AWS calls: GetItem, PutItem (DynamoDB, through :class:`RunRecords`), Publish (SNS).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from shared import constants as c
from shared.constants import MAX_ATTEMPTS
from shared.notifications import clean_reason, outcome_notice, publish
from shared.observability import logger
from shared.records import RunKey, RunRecords

STATUS_CHANGE = "Step Functions Execution Status Change"
ENDED_WITHOUT_NOTIFY = ("TIMED_OUT", "ABORTED", "FAILED")
OUTCOME_TIMED_OUT = "ExecutionTimedOut"
OUTCOME_ABORTED = "ExecutionAborted"
OUTCOME_FAILED = "ExecutionFailed"
OUTCOME_ATTEMPTS_EXHAUSTED = "AttemptsExhausted"
OUTCOME_BY_STATUS = {"TIMED_OUT": OUTCOME_TIMED_OUT, "ABORTED": OUTCOME_ABORTED, "FAILED": OUTCOME_FAILED}
ENV_TOPIC_ARN = c.ENV_OUTCOME_TOPIC_ARN
"""The outcome topic's ARN in this function's environment (set by infra/stack.py)."""


@dataclass
class EndedResult:
    """What one status-change event did (the function's return value, also logged; :meth:`as_dict`). A plain
    dataclass: nothing this function runs needs pydantic (benchmarks/imports.py)."""

    execution: str = ""
    outcome: str | None = None
    reason: str = ""
    recorded: bool = False
    notified: bool = False
    ignored: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields, JSON-ready."""
        return asdict(self)


def _json(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def judge(detail: dict[str, Any]) -> tuple[str, str] | str:
    """(outcome, reason) for an execution status change that must be recorded and notified, or why not."""
    status = str(detail.get("status", ""))
    name = str(detail.get("name", ""))
    error, cause = detail.get("error"), detail.get("cause")
    if status == "SUCCEEDED":
        inp, out = _json(detail.get("input")), _json(detail.get("output"))
        attempt = inp.get("attempt")
        retryable = out.get("outcome") in c.RETRYABLE_OUTCOMES and "manifest_uri" not in out
        if isinstance(attempt, int) and attempt >= MAX_ATTEMPTS and retryable:
            return OUTCOME_ATTEMPTS_EXHAUSTED, (
                f"attempt {attempt} of {MAX_ATTEMPTS} ended {out.get('outcome')} ({out.get('reason', '')}): no trigger starts another "
                f"attempt for this run in this session (the instance keeps running). Fix the cause, then start {name}-next by hand "
                "with the same input, or use a new run id"
            )
        return "succeeded: its own Notify published the outcome"
    if status not in ENDED_WITHOUT_NOTIFY:
        return f"status {status or 'missing'} is not an ending without a notification"
    if status == "FAILED" and error in c.FAILED_OUTCOMES:
        return f"failed in its outcome {error}: its own Notify published it"
    what = {
        "TIMED_OUT": "timed out (the state machine's timeout)",
        "ABORTED": "was aborted (StopExecution)",
        "FAILED": "failed outside its outcome states",
    }[status]
    reason = f"execution {name} {what}"
    if error or cause:
        reason += f": {error or 'error'}: {clean_reason(str(cause or ''))[:500]}"
    reason += (
        "; no outcome was recorded by the execution. Nothing more is done for this run and reason in this session; "
        "check the instance's state and the execution's history"
    )
    return OUTCOME_BY_STATUS[status], reason


def handle_ended(event: Any, *, records: RunRecords | None, sns: Any, topic_arn: str, state_machine_arn: str | None = None) -> EndedResult:
    """Record and notify one "Step Functions Execution Status Change" event of the lifecycle state machine.

    The run (instance, run id, session) comes from the execution's input; without them only the notification
    goes out. A record that does not exist is not created (the execution ended before it claimed one).
    Never raises for a malformed event; an SNS or DynamoDB error propagates (EventBridge retries the delivery).
    """
    if not isinstance(event, dict) or event.get("detail-type") != STATUS_CHANGE or event.get("source") != "aws.states":
        return EndedResult(ignored="not a Step Functions Execution Status Change event")
    detail = event.get("detail")
    if not isinstance(detail, dict):
        return EndedResult(ignored="malformed event: no detail")
    name = str(detail.get("name", ""))
    if state_machine_arn and detail.get("stateMachineArn") != state_machine_arn:
        return EndedResult(execution=name, ignored="an execution of another state machine")
    judged = judge(detail)
    if isinstance(judged, str):
        return EndedResult(execution=name, ignored=judged)
    outcome, reason = judged
    inp = _json(detail.get("input"))
    iid, run_id, session = inp.get("instance_id"), inp.get("run_id"), inp.get("session")
    result = EndedResult(execution=name, outcome=outcome, reason=reason)

    if records is not None and outcome != OUTCOME_ATTEMPTS_EXHAUSTED and all(isinstance(v, str) and v for v in (iid, run_id, session)):
        key = RunKey(str(iid), str(run_id), str(session))
        if records.get(key) is not None:

            def change(record: dict[str, Any]) -> None:
                record["outcome"] = outcome
                record["reason"] = reason[:1000]
                executions = list(record.get("executions") or [])
                if name not in executions:
                    executions.append(name)
                record["executions"] = executions[-20:]
                if record.get("active") == name:  # release the trainer: this execution will never record it
                    record.pop("active")
                    record.pop("active_until", None)

            records.update(key, change, status=outcome, execution=name, detail=reason)
            result.recorded = True
    message = {
        "outcome": outcome,
        "reason": reason,
        "execution": name,
        "status": detail.get("status"),
        **({"instance_id": iid} if isinstance(iid, str) else {}),
        **({"run_id": run_id} if isinstance(run_id, str) else {}),
        **({"error": detail.get("error")} if detail.get("error") else {}),
    }
    notice = outcome_notice(message, instance_name=None, execution_arn=str(detail.get("executionArn", "")))
    publish(sns, topic_arn, notice, outcome=outcome)
    result.notified = True
    logger.info("execution ended without its own notification", extra=result.as_dict())
    return result
