"""``autostop report``: per run, hours trained, time to stop, checkpoint size and time, hours not billed since.

Everything comes from the run records and DescribeInstances; what they do not hold is ``unknown`` (None in JSON):

* session start: the record's session (the instance's LaunchTime for that power-on);
* completion judged: the history entry ``claimed:complete`` (Evaluate judged the run complete and claimed it);
* checkpoint verified: ``last_checkpoint.verified_at``; checkpoint seconds = completion judged → verified (the
  trainer's grace, the upload and the verification together); upload seconds: ``last_checkpoint.upload_seconds``,
  the instance's own upload time (unknown for checkpoints verified before it was recorded);
* stopped: the history entry of the Stopped / Hibernated / Terminated outcome (else the stop mark's time);
* stopped until: the next session's start on the same instance, else now while the instance is still stopped,
  else its current LaunchTime (it was started again outside autostop's records).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import click

from autostop_cli.output import emit_json, hours, iso, show, table
from autostop_cli.runs import history_time, read_records
from autostop_cli.target import AwsContext, pass_aws, target_options
from shared import constants as c
from shared.instances import snapshot
from shared.models import InstanceSnapshot
from shared.times import parse_time

STOPPED_STATES = ("stopping", "stopped", "shutting-down", "terminated")


FILTER_VALUES_MAX = 200
"""Values per DescribeInstances filter asked for at once."""


def instances(ec2: Any, ids: list[str]) -> dict[str, InstanceSnapshot]:
    """Snapshots of the instances EC2 still knows (DescribeInstances paginator, filtered by instance id, 200 ids a call)."""
    out: dict[str, InstanceSnapshot] = {}
    for i in range(0, len(ids), FILTER_VALUES_MAX):
        chunk = ids[i : i + FILTER_VALUES_MAX]
        pages = ec2.get_paginator("describe_instances").paginate(Filters=[{"Name": "instance-id", "Values": chunk}])
        for page in pages:
            out.update({raw["InstanceId"]: snapshot(raw) for r in page.get("Reservations", []) for raw in r.get("Instances", [])})
    return out


def stopped_until(record: dict[str, Any], later: datetime | None, snap: InstanceSnapshot | None, now: datetime) -> datetime | None:
    """When the stop that ended ``record``'s session ended (see the module docstring), or None when unknown."""
    if later is not None:
        return later
    if snap is None:
        return now if record.get("outcome") == c.OUTCOME_TERMINATED else None
    if snap.session == record.get("session") and snap.state in STOPPED_STATES:
        return now
    return snap.launch_time if snap.session and snap.session > str(record.get("session")) else None


def session_report(record: dict[str, Any], later: datetime | None, snap: InstanceSnapshot | None, now: datetime) -> dict[str, Any]:
    """One session's numbers (hours, seconds, bytes; None where unknown)."""
    start = parse_time(record.get("session"))
    judged = parse_time(history_time(record, f"claimed:{c.REASON_COMPLETE}"))
    checkpoint = record.get("last_checkpoint") or {}
    verified = parse_time(checkpoint.get("verified_at"))
    stopped = parse_time(history_time(record, *sorted(c.DESTRUCTIVE_OUTCOMES)) or (record.get("stop_requested") or {}).get("at"))
    until = stopped_until(record, later, snap, now) if stopped else None
    seconds = (verified - judged).total_seconds() if judged and verified and verified >= judged else None
    return {
        "instance_id": record.get("instance_id"),
        "run_id": record.get("run_id"),
        "session": record.get("session"),
        "outcome": record.get("outcome"),
        "completion_judged_at": iso(judged),
        "hours_trained": hours(start, judged),
        "hours_completion_to_stop": hours(judged, stopped),
        "stopped_at": iso(stopped),
        "checkpoint_bytes": checkpoint.get("bytes"),
        "checkpoint_seconds": seconds,
        "upload_seconds": checkpoint.get("upload_seconds"),
        "hours_stopped_since": hours(stopped, until),
        "stopped_until": None if until is None or until == now else iso(until),
    }


def build_report(records: list[dict[str, Any]], snaps: dict[str, InstanceSnapshot], now: datetime) -> list[dict[str, Any]]:
    """Runs (instance, run id) with their sessions' reports and totals."""
    by_instance: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_instance[str(r.get("instance_id"))].append(r)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for iid, recs in by_instance.items():
        recs.sort(key=lambda r: str(r.get("session")))
        for i, r in enumerate(recs):
            later = parse_time(recs[i + 1].get("session")) if i + 1 < len(recs) else None
            runs[(iid, str(r.get("run_id")))].append(session_report(r, later, snaps.get(iid), now))
    return [{"instance_id": iid, "run_id": run, "sessions": sessions, **totals(sessions)} for (iid, run), sessions in sorted(runs.items())]


def totals(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums over sessions; None when no session knows the value."""

    def total(key: str) -> float | None:
        values = [s[key] for s in sessions if s[key] is not None]
        return round(sum(values), 2) if values else None

    return {"hours_trained": total("hours_trained"), "hours_stopped_since": total("hours_stopped_since")}


def print_report(runs: list[dict[str, Any]]) -> None:
    headers = ["INSTANCE", "RUN", "SESSION", "OUTCOME", "TRAINED h", "TO STOP h", "CKPT BYTES", "CKPT s", "UPLOAD s", "STOPPED h"]
    rows = [
        (
            s["instance_id"],
            s["run_id"],
            s["session"],
            s["outcome"] or "-",
            s["hours_trained"],
            s["hours_completion_to_stop"],
            s["checkpoint_bytes"],
            s["checkpoint_seconds"],
            s["upload_seconds"],
            s["hours_stopped_since"],
        )
        for run in runs
        for s in run["sessions"]
    ]
    click.echo(table(headers, rows))
    stopped = [r["hours_stopped_since"] for r in runs if r["hours_stopped_since"] is not None]
    saved = show(round(sum(stopped), 2) if stopped else None)
    click.echo(f"\nruns: {len(runs)}; instance hours not billed since autostop stopped them: {saved}")
    click.echo("(CKPT s: completion judged to checkpoint verified, grace and upload together; UPLOAD s: the upload alone)")


@click.command("report")
@click.argument("selector", metavar="[INSTANCE|RUN-ID]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@target_options
@pass_aws
def report(aws: AwsContext, selector: str | None, as_json: bool) -> None:
    """Per run: hours trained, completion to stop, checkpoint bytes and time, hours stopped (not billed) since.

    Values the run records do not hold are shown as unknown. AWS calls: DynamoDB Query/Scan, DescribeInstances.
    """
    target = aws.target
    records = read_records(aws.client("dynamodb"), target.runs_table, selector)
    snaps = instances(aws.client("ec2"), sorted({str(r.get("instance_id")) for r in records}))
    now = datetime.now(UTC).replace(microsecond=0)
    runs = build_report(records, snaps, now)
    if as_json:
        emit_json({"stack": target.stack_name, "generated_at": iso(now), "runs": runs})
    elif not runs:
        click.echo("no run records" + (f" for {selector}" if selector else ""))
    else:
        print_report(runs)
