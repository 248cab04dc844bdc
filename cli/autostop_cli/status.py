"""``autostop status``: runs and sessions from the run records, with their executions and last checkpoint."""

from __future__ import annotations

from typing import Any

import click

from autostop_cli.output import emit_json, show, table
from autostop_cli.runs import describe_execution, execution_names, read_records
from autostop_cli.target import AwsContext, Target, pass_aws, target_options


def session_status(record: dict[str, Any], sfn: Any, target: Target) -> dict[str, Any]:
    """One record as ``status`` shows it: keys, status, outcome, reason, checkpoint, executions with console URLs.

    AWS calls: one DescribeExecution per execution the record names.
    """
    checkpoint = record.get("last_checkpoint") or {}
    executions = []
    for name in execution_names(record):
        ex = describe_execution(sfn, target.state_machine_arn, name)
        ex["console_url"] = target.console_url(ex["arn"])
        executions.append(ex)
    return {
        "instance_id": record.get("instance_id"),
        "run_id": record.get("run_id"),
        "session": record.get("session"),
        "status": record.get("status"),
        "outcome": record.get("outcome"),
        "reason": record.get("reason"),
        "active": record.get("active"),
        "stop_requested": record.get("stop_requested"),
        "auto_stopped": bool(record.get("auto_stopped")),
        "updated_at": record.get("updated_at") or record.get("created_at"),
        "last_checkpoint": {
            "manifest_uri": checkpoint.get("manifest_uri"),
            "version_id": checkpoint.get("manifest_version_id"),
            "bytes": checkpoint.get("bytes"),
            "files": checkpoint.get("files"),
            "step": checkpoint.get("step"),
            "verified_at": checkpoint.get("verified_at"),
        }
        if checkpoint.get("manifest_uri")
        else None,
        "executions": executions,
    }


def print_sessions(sessions: list[dict[str, Any]]) -> None:
    rows = [(s["instance_id"], s["run_id"], s["session"], s["status"], s["outcome"] or "-", s["updated_at"]) for s in sessions]
    click.echo(table(["INSTANCE", "RUN", "SESSION", "STATUS", "OUTCOME", "UPDATED"], rows))
    for s in sessions:
        click.echo(f"\n{s['instance_id']}  {s['run_id']}  session {s['session']}")
        if s["reason"]:
            click.echo(f"  reason: {s['reason']}")
        if s["active"]:
            click.echo(f"  acting now: {s['active']}")
        if s["stop_requested"]:
            mark = s["stop_requested"]
            click.echo(f"  stop requested: {mark.get('action')} by {mark.get('execution')} at {mark.get('at')}")
        cp = s["last_checkpoint"]
        if cp:
            click.echo(f"  last verified checkpoint: {cp['manifest_uri']}")
            size = show(cp["bytes"], " bytes")
            click.echo(f"    version {show(cp['version_id'])}, {size}, step {show(cp['step'])}, verified {cp['verified_at']}")
        else:
            click.echo("  last verified checkpoint: none")
        for ex in s["executions"]:
            click.echo(f"  execution {ex['name']}  {ex['status']}" + (f" ({ex['error']})" if ex.get("error") else ""))
            click.echo(f"    {ex['console_url']}")


@click.command("status")
@click.argument("selector", metavar="[INSTANCE|RUN-ID]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the sessions as JSON.")
@target_options
@pass_aws
def status(aws: AwsContext, selector: str | None, as_json: bool) -> None:
    """Runs and sessions from the run records: status, outcome, last verified checkpoint, executions.

    INSTANCE (i-...) or RUN-ID selects; without it every record is listed.
    AWS calls: DynamoDB Query/Scan of the run records table, DescribeExecution per execution.
    """
    target = aws.target
    records = read_records(aws.client("dynamodb"), target.runs_table, selector)
    sfn = aws.client("stepfunctions")
    sessions = [session_status(r, sfn, target) for r in records]
    if as_json:
        emit_json({"stack": target.stack_name, "region": target.region, "sessions": sessions})
    elif not sessions:
        click.echo("no run records" + (f" for {selector}" if selector else ""))
    else:
        print_sessions(sessions)
