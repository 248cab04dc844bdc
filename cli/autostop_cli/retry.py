"""``autostop retry``: start the next attempt of a run whose execution failed, timed out or was aborted.

Only when it is safe: the execution ended and did not succeed; the instance exists, runs in the same session,
is opted in with valid tags naming the same run; no execution of the run is running or holds the run record's
lock for the execution's reason (an execution that claimed it may have signalled the trainer: the run is then
final), and no stop was requested in that session. The attempt is started by
:func:`shared.executions.start_lifecycle_execution`, the function the triggers use, so it gets the name and
input a trigger would give it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click
from botocore.exceptions import ClientError

from autostop_cli.output import emit_json
from autostop_cli.target import AwsContext, Target, pass_aws, target_options
from shared import constants as c
from shared.errors import error_code
from shared.evaluation import tag_policy
from shared.executions import MAX_ATTEMPTS, StartResult, start_lifecycle_execution
from shared.instances import describe_instance
from shared.naming import execution_name
from shared.records import RunKey, RunRecords, stop_was_requested
from shared.tags import InvalidTags, parse_instance_config

RETRYABLE_REASONS = (c.REASON_COMPLETE, c.REASON_RESUME)
"""Spot interruption and rebalance executions answer a notice that has passed; they are not retried."""
ENDED_UNSUCCESSFULLY = ("FAILED", "TIMED_OUT", "ABORTED")


class Refused(Exception):
    """Retrying is not safe; the message says why."""


@dataclass(frozen=True)
class Failed:
    """The execution to retry: its description and its input (instance, run, reason, session, attempt)."""

    arn: str
    name: str
    status: str
    instance_id: str
    run_id: str
    reason: str
    session: str | None
    attempt: int


def read_failed(sfn: Any, arn: str) -> Failed:
    """The execution, if it ended without success and is an autostop lifecycle execution (DescribeExecution)."""
    try:
        d = sfn.describe_execution(executionArn=arn)
    except ClientError as exc:
        raise Refused(f"cannot read execution {arn}: {error_code(exc)}") from exc
    if d["status"] not in ENDED_UNSUCCESSFULLY:
        why = "is still running" if d["status"] == "RUNNING" else f"ended {d['status']}"
        raise Refused(f"execution {d['name']} {why}: only a FAILED, TIMED_OUT or ABORTED execution is retried")
    try:
        inp = json.loads(d.get("input") or "{}")
    except ValueError:
        inp = {}
    fields = (inp.get("instance_id"), inp.get("run_id"), inp.get("reason"))
    if not all(isinstance(v, str) and v for v in fields):
        raise Refused(f"execution {d['name']} has no instance_id, run_id and reason in its input: not an autostop lifecycle execution")
    attempt = inp.get("attempt") if isinstance(inp.get("attempt"), int) else 1
    session = inp.get("session") if isinstance(inp.get("session"), str) else None
    return Failed(arn, d["name"], d["status"], *fields, session=session, attempt=attempt)  # type: ignore[arg-type]


def check_instance(ec2: Any, target: Target, failed: Failed) -> None:
    """Refused unless the instance exists, runs in the execution's session, is opted in with valid tags of the same run."""
    snap = describe_instance(ec2, failed.instance_id)
    if snap is None:
        raise Refused(f"instance {failed.instance_id} no longer exists")
    if snap.state != "running":
        raise Refused(f"instance {failed.instance_id} is {snap.state}: an attempt would be skipped")
    if failed.session and snap.session != failed.session:
        raise Refused(f"instance {failed.instance_id} was started again since (session {snap.session}, not {failed.session})")
    try:
        config = parse_instance_config(snap.instance_id, snap.tags, tag_policy(target.settings))
    except InvalidTags as exc:
        raise Refused("the instance's tags are not valid (or it is not opted in): " + "; ".join(exc.problems)) from exc
    if config.run_id != failed.run_id:
        raise Refused(f"the instance is now tagged with run {config.run_id!r}, not {failed.run_id!r}")


def check_record(records: RunRecords, failed: Failed, now: float) -> None:
    """Refused when the run's session record shows a stop request, an acting execution, or the reason's lock taken."""
    if not failed.session:
        return
    record = records.get(RunKey(failed.instance_id, failed.run_id, failed.session)) or {}
    mark = stop_was_requested(record)
    if mark:
        raise Refused(f"execution {mark['execution']} already requested {mark.get('action')} for this session at {mark.get('at')}")
    if record.get("active") and int(record.get("active_until") or 0) > now:
        raise Refused(f"execution {record['active']} is acting on this run's trainer now")
    holder = (record.get("locks") or {}).get(failed.reason)
    if holder:
        raise Refused(
            f"execution {holder} claimed this run's {failed.reason} and may have signalled the trainer; a new attempt "
            "would be skipped. Tag a new run id to start over"
        )


def check_running(sfn: Any, target: Target, failed: Failed) -> None:
    """Refused when any execution of the same instance and run is RUNNING (ListExecutions, DescribeExecution)."""
    pages = sfn.get_paginator("list_executions").paginate(stateMachineArn=target.state_machine_arn, statusFilter="RUNNING")
    for page in pages:
        for ex in page["executions"]:
            if not ex["name"].startswith(f"{failed.instance_id}-"):
                continue
            inp = json.loads(sfn.describe_execution(executionArn=ex["executionArn"]).get("input") or "{}")
            if inp.get("run_id") == failed.run_id:
                raise Refused(f"execution {ex['name']} of this run is running")


class _PastFailed:
    """Step Functions as :func:`start_lifecycle_execution` sees it: attempts up to the failed one read as retryable.

    start_lifecycle_execution walks attempts 1, 2, ... and passes a closed attempt only when it did nothing
    (``may_retry``); the checks above established that for the failed execution, which the user names, so its
    attempt and the earlier ones are shown as closed without an outcome that counts. Everything else is passed through.
    """

    def __init__(self, sfn: Any, passed: set[str]) -> None:
        self._sfn = sfn
        self._passed = passed

    def start_execution(self, **kwargs: Any) -> Any:
        return self._sfn.start_execution(**kwargs)

    def describe_execution(self, executionArn: str) -> dict[str, Any]:  # noqa: N803 (boto3's parameter name)
        d = self._sfn.describe_execution(executionArn=executionArn)
        if executionArn in self._passed and d["status"] != "RUNNING":
            return {**d, "status": "SUCCEEDED", "output": json.dumps({"outcome": c.OUTCOME_SKIPPED})}
        return d


def start_next(sfn: Any, target: Target, failed: Failed) -> StartResult:
    """The next attempt after ``failed`` (StartExecution through :func:`start_lifecycle_execution`)."""
    if failed.attempt >= MAX_ATTEMPTS:
        raise Refused(f"attempt {failed.attempt} is the last of {MAX_ATTEMPTS}; tag a new run id to start over")
    names = [execution_name(failed.instance_id, failed.run_id, failed.reason, n, failed.session) for n in range(1, failed.attempt + 1)]
    if names[-1] != failed.name:
        raise Refused(f"execution {failed.name} is not named as autostop names attempt {failed.attempt} ({names[-1]})")
    passed = {target.state_machine_arn.replace(":stateMachine:", ":execution:", 1) + ":" + n for n in names}
    trigger = {"source": "autostop-cli", "retry_of": failed.arn, "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    return start_lifecycle_execution(
        _PastFailed(sfn, passed),
        target.state_machine_arn,
        instance_id=failed.instance_id,
        run_id=failed.run_id,
        reason=failed.reason,
        trigger=trigger,
        session=failed.session,
    )


@click.command("retry")
@click.argument("execution_arn", metavar="EXECUTION-ARN")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@target_options
@pass_aws
def retry(aws: AwsContext, execution_arn: str, as_json: bool) -> None:
    """Start the next attempt of the run whose execution EXECUTION-ARN failed, timed out or was aborted.

    Refused (exit 1, with the reason) unless it is safe: the execution ended FAILED, TIMED_OUT or ABORTED (a
    complete or resume one) before it claimed the run; the instance runs in the same session, opted in with valid
    tags of the same run; no execution of the run is running; no stop was requested. AWS calls:
    DescribeExecution, DescribeInstances, DynamoDB GetItem, ListExecutions, StartExecution.
    """
    target = aws.target
    sfn = aws.client("stepfunctions")
    try:
        failed = read_failed(sfn, execution_arn)
        if failed.reason not in RETRYABLE_REASONS:
            raise Refused(f"a {failed.reason} execution answers a notice that has passed; it is not retried")
        check_instance(aws.client("ec2"), target, failed)
        check_record(RunRecords(aws.client("dynamodb"), target.runs_table), failed, time.time())
        check_running(sfn, target, failed)
        result = start_next(sfn, target, failed)
    except Refused as exc:
        if as_json:
            emit_json({"started": False, "refused": str(exc)})
        else:
            click.echo(f"not retried: {exc}", err=True)
        sys.exit(1)
    started = result.status == "started"
    if as_json:
        emit_json({"started": started, **result.model_dump(), "console_url": target.console_url(result.execution_arn)})
    else:
        click.echo(f"{result.status}: {result.name}" + (f" ({result.detail})" if result.detail else ""))
        click.echo(f"  {target.console_url(result.execution_arn)}")
    if not started:
        sys.exit(1)
