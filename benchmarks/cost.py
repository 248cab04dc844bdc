#!/usr/bin/env python3
"""What autostop costs a month at AWS list prices (us-east-1, before any free tier), as a model: every line is
printed as count x assumption x price, for a fleet of ``INSTANCES`` at a ``SWEEP_MINUTES`` sweep, at
``RUNS_PER_INSTANCE`` runs per instance per month, for the polling state machine (before issue 12) and for the
event-driven one this tree deploys.
Monitoring (alarms, dashboard, the topic's KMS key, steady custom metrics) does not grow with the fleet and is
printed apart, as fixed cost. Provisioned concurrency for the Spot path's first function is priced as an option.

Counts come from the tables at the top: DESIGNS (state transitions per run, both measured from the execution
history: the polling design as issue 12 measured it, the event-driven one by benchmarks/transitions.py), TASK_SECONDS, EVENT_SECONDS and
PARAMETERS (stated assumptions: durations, cold shares, log bytes, record units). Prices come from
PRICES, each with the title of the AWS pricing page it is read from, or "assumed" where the stored page text does
not show the rate. Nothing here calls AWS. Asserts nothing.

    python benchmarks/cost.py
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

INSTANCES = 100
SWEEP_MINUTES = 5
RUNS_PER_INSTANCE = {"4 runs/instance": 4, "daily runs": 30}
MONTH_HOURS = 730
"""AWS bills a month as 730 hours."""
SWEEPS = MONTH_HOURS * 60 // SWEEP_MINUTES
LAMBDA_GB = 0.25
"""Every function: 256 MB, arm64 (infra/constructs/functions.py)."""

# --- parameters: per run, per sweep, per invocation -------------------------------------------------------------
TASK_SECONDS = {  # assumed warm durations at 256 MB of the Task Lambdas every run invokes
    "Evaluate completion": 0.8,
    "Verify checkpoint": 0.8,
    "Stop instance": 0.5,
    "Record outcome": 0.6,
}
EVENT_SECONDS = {  # event-driven design only: the Lambdas that turn an AWS event into SendTaskSuccess (assumed)
    "checkpoint command completed (SSM status event)": 0.3,
    "stop confirmed (EC2 state-change event)": 0.3,
}
DESIGNS = {
    # issue 12, measured on the landed code: 15 + 4k + 4m transitions for k checkpoint polls and m stop polls at the
    # deployed 10 s poll; 87 for a 2-minute checkpoint and a 1-minute stop (Record outcome and Notify merged since: -1)
    "polling (before)": {"transitions": 86, "tasks": TASK_SECONDS, "events": {}},
    # this tree, measured by benchmarks/transitions.py at 1 MiB and 768 MiB: 11 transitions (6 up to Stop instance)
    # whatever the checkpoint's size; Send command records the task token and sends the command (one more Task
    # Lambda), on_status_event completes the command's and the stop's tokens (two event Lambdas)
    "event-driven": {"transitions": 11, "tasks": {**TASK_SECONDS, "Send command": 0.3}, "events": EVENT_SECONDS},
}
PARAMETERS = {
    "sweep_seconds": 1.5,  # assumed: warm sweep of 100 instances at 256 MB (DescribeInstances, evaluation, one probe)
    "event_seconds": 0.3,  # assumed: a trigger or completion-event Lambda (one lookup, one API call)
    "init_seconds": 0.8,  # assumed: billed INIT of a cold start (imports ~0.3 s at full CPU, client creation)
    "sweep_cold_share": 0.2,  # assumed: a 5-minute schedule mostly finds its environment warm
    "run_cold_share": 1.0,  # assumed: a run's functions are invoked minutes to days apart: every one cold
    "marker_share": 1.0,  # share of runs whose completion signal is a _SUCCESS marker (worst case for HeadObject)
    "marker_recheck_minutes": 60,  # cdk.json: the sweep's own HeadObject of a marker once an hour
    "checkpoint_objects": 10,  # assumed: files in one checkpoint (Verify reads each object's metadata)
    "ddb_writes": 12,  # assumed: write request units per run (claim, history, checkpoint entry, stop mark, outcome)
    "ddb_reads": 6,  # assumed: read request units per run (strongly consistent record reads)
    "log_kb_sweep": 3.0,  # assumed: the sweep's log lines at 100 instances (bounded summary) + REPORT line, KB
    "log_kb_invocation": 2.0,  # assumed: a Task or trigger Lambda's lines + EMF metrics + REPORT, KB
    "log_kb_transition": 3.0,  # assumed: the state machine logs ALL with execution data: ~2 events per transition
    "email_subscribers": 1,
    "kms_per_publish": 1,  # assumed: one KMS request per publish to the encrypted topic
    "tracing": 1,  # infra/config.py default today (cdk.json `tracing`): X-Ray traces every sweep and execution
}


@dataclass(frozen=True)
class Price:
    usd: float
    unit: str
    source: str


LAMBDA = "AWS Lambda Pricing"
PAGE = "page found in the docs corpus"
PRICES = {  # (USD per unit, unit, source page title; "assumed" where the stored page text does not show the rate)
    "lambda_request": Price(0.20 / 1e6, "request", f"{LAMBDA}: {PAGE}, rate as its stored transcriptions quote it"),
    "lambda_gb_s": Price(0.0000133334, "GB-s arm64", f"{LAMBDA}: arm64 rate assumed (the page renders rates by script)"),
    "lambda_pc_gb_s": Price(0.0000033334, "GB-s provisioned arm64", f"{LAMBDA}, Provisioned Concurrency: arm64 rate assumed"),
    "sfn_transition": Price(0.025 / 1000, "transition", "AWS Step Functions Pricing, Standard: assumed ($0.025 per 1,000)"),
    "eb_scheduled": Price(0.0, "schedule event", "Amazon EventBridge pricing: assumed free (events from aws.events)"),
    "eb_aws_event": Price(0.0, "AWS event", f"Amazon EventBridge pricing: {PAGE} (AWS management events free)"),
    "eb_custom_event": Price(1.00 / 1e6, "custom event", "Amazon EventBridge pricing: custom events, assumed $1.00/M"),
    "ssm_run_command": Price(0.0, "command", "AWS Systems Manager Pricing: assumed (Run Command on EC2 free)"),
    "s3_get_head": Price(0.0004 / 1000, "GET/HEAD", "Amazon S3 Pricing, S3 Standard requests: assumed"),
    "s3_put": Price(0.005 / 1000, "PUT", "Amazon S3 Pricing, S3 Standard requests: assumed"),
    "ddb_write": Price(0.625 / 1e6, "WRU", "Amazon DynamoDB pricing, on-demand: assumed"),
    "ddb_read": Price(0.125 / 1e6, "RRU", "Amazon DynamoDB pricing, on-demand: assumed"),
    "sns_publish": Price(0.50 / 1e6, "publish", "Amazon SNS pricing: assumed"),
    "sns_email": Price(2.00 / 100_000, "e-mail", "Amazon SNS pricing: assumed"),
    "kms_request": Price(0.03 / 10_000, "request", "AWS Key Management Service pricing: assumed"),
    "logs_gb": Price(0.50, "GB ingested", "Amazon CloudWatch pricing, Logs Standard: assumed"),
    "xray_trace": Price(5.00 / 1e6, "trace", "AWS X-Ray pricing: assumed"),
    "alarm_metric": Price(0.10, "alarm metric-month", "Amazon CloudWatch pricing (README 'What you see')"),
    "dashboard": Price(3.00, "dashboard-month", "Amazon CloudWatch pricing (README 'What you see')"),
    "custom_metric": Price(0.30, "metric-month", "Amazon CloudWatch pricing (README 'What you see')"),
    "kms_key": Price(1.00, "key-month", "AWS Key Management Service pricing (README 'What you see')"),
}
MONITORING = [  # README "What you see": fixed, whatever the fleet size
    ("CloudWatch alarm metrics (5 alarms)", 20, "alarm_metric"),
    ("CloudWatch dashboard", 1, "dashboard"),
    ("KMS key of the outcome topic", 1, "kms_key"),
    ("custom metrics with hourly data (Evaluations)", 4, "custom_metric"),
]


@dataclass(frozen=True)
class Line:
    service: str
    what: str
    count: float
    assumption: str
    price: str

    @property
    def usd(self) -> float:
        return self.count * PRICES[self.price].usd


def lambda_lines(kind: str, invocations: float, seconds: float, cold_share: float) -> list[Line]:
    """Requests and GB-s (INIT of the cold share included, billed since August 2025) of one function kind."""
    billed = seconds + cold_share * PARAMETERS["init_seconds"]
    return [
        Line("Lambda", f"{kind}: invocations", invocations, "1 request each", "lambda_request"),
        Line("Lambda", f"{kind}: GB-s", invocations * billed * LAMBDA_GB, f"{billed:.2f} s x {LAMBDA_GB} GB each", "lambda_gb_s"),
    ]


def sweep_lines() -> list[Line]:
    """The schedule and its sweep: a fixed cost of the deployment, whatever the runs."""
    p = PARAMETERS
    rechecks = MONTH_HOURS * 60 / p["marker_recheck_minutes"] if p["marker_recheck_minutes"] else SWEEPS
    return [
        Line("EventBridge", "schedule rule events", SWEEPS, f"every {SWEEP_MINUTES} min", "eb_scheduled"),
        *lambda_lines("sweep", SWEEPS, p["sweep_seconds"], p["sweep_cold_share"]),
        Line(
            "S3", "sweep HeadObject of markers", INSTANCES * p["marker_share"] * rechecks, f"{rechecks:.0f} rechecks/month", "s3_get_head"
        ),
        Line("SSM", "sweep probe SendCommand", SWEEPS * math.ceil(INSTANCES / 50), "1 per 50 PID/log instances", "ssm_run_command"),
        Line("CloudWatch Logs", "sweep log lines", SWEEPS * p["log_kb_sweep"] / 1e6, f"{p['log_kb_sweep']} KB each", "logs_gb"),
        Line("X-Ray", "sweep traces", SWEEPS * p["tracing"], "1 per sweep if tracing", "xray_trace"),
    ]


def run_lines(runs: float, design: dict[str, Any]) -> list[Line]:
    """Everything one run causes, times ``runs``: triggers, the execution, its Lambdas, records, notices."""
    p = PARAMETERS
    functions = {**design["tasks"], **design["events"]}
    invocations = runs * (len(functions) + 2)  # + the instance-start trigger and the marker trigger
    logged_kb = invocations * p["log_kb_invocation"] + runs * design["transitions"] * p["log_kb_transition"]
    lambdas = [line for name, seconds in functions.items() for line in lambda_lines(name, runs, seconds, p["run_cold_share"])]
    return [
        Line("EventBridge", "instance-start and S3 marker events", runs * (1 + p["marker_share"]), "AWS events", "eb_aws_event"),
        *lambda_lines("instance event (start)", runs, p["event_seconds"], p["run_cold_share"]),
        *lambda_lines("marker trigger", runs * p["marker_share"], p["event_seconds"], p["run_cold_share"]),
        *lambdas,
        Line("Step Functions", "state transitions", runs * design["transitions"], f"{design['transitions']} per run", "sfn_transition"),
        Line("SSM", "checkpoint SendCommand", runs, "1 per run", "ssm_run_command"),
        Line("S3", "marker PUT (the trainer's)", runs * p["marker_share"], "1 per run", "s3_put"),
        Line(
            "S3",
            "trigger + Verify HEAD/GET",
            runs * (p["marker_share"] + p["checkpoint_objects"] + 1),
            "marker, objects, manifest",
            "s3_get_head",
        ),
        Line("DynamoDB", "run record writes", runs * p["ddb_writes"], f"{p['ddb_writes']} WRU per run", "ddb_write"),
        Line("DynamoDB", "run record reads", runs * p["ddb_reads"], f"{p['ddb_reads']} RRU per run", "ddb_read"),
        Line("SNS", "outcome publishes", runs, "1 per run", "sns_publish"),
        Line("SNS", "e-mail deliveries", runs * p["email_subscribers"], f"{p['email_subscribers']} subscriber", "sns_email"),
        Line("KMS", "topic key requests", runs * p["kms_per_publish"], "per publish", "kms_request"),
        Line("EventBridge", "Autostop Outcome events", runs, "1 PutEvents entry per run", "eb_custom_event"),
        Line("CloudWatch Logs", "functions + state machine", logged_kb / 1e6, "KB per invocation/transition", "logs_gb"),
        Line("X-Ray", "run traces", runs * 3 * p["tracing"], "start, marker, execution", "xray_trace"),
    ]


TITLES = list(dict.fromkeys(price.source for price in PRICES.values()))
SOURCES = {key: TITLES.index(price.source) + 1 for key, price in PRICES.items()}


def print_lines(title: str, lines: list[Line], top: int = 99) -> float:
    """Print ``lines`` (count x assumption x price = USD, share, [source]), dearest first; return their sum."""
    total = sum(line.usd for line in lines)
    print(f"\n{title}: USD {total:.3f} per month")
    for line in sorted(lines, key=lambda item: -item.usd)[:top]:
        price, share = PRICES[line.price], line.usd / total if total else 0.0
        what, rate = f"{line.service} {line.what}", f"{price.usd:.3g} USD/{price.unit}"
        cost = f"{line.usd:7.4f} {share:6.1%} [{SOURCES[line.price]}]"
        count = f"{line.count:,.1f}" if line.count >= 10 else f"{line.count:.4f}"
        print(f"  {what:<52} {count:>11} x {line.assumption:<30} x {rate:<30} = {cost}")
    return total


def scenarios() -> dict[tuple[str, str], float]:
    """Print every (runs, design) scenario's lines; return their totals."""
    totals = {}
    for label, per_instance in RUNS_PER_INSTANCE.items():
        for design, counts in DESIGNS.items():
            lines = sweep_lines() + run_lines(INSTANCES * per_instance, counts)
            title = f"{INSTANCES} instances, {label} ({INSTANCES * per_instance} runs), {design} state machine"
            totals[(label, design)] = print_lines(title, lines)
    return totals


def provisioned_concurrency() -> float:
    """One always-ready environment of the Spot path's first function (256 MB), and the lines it replaces."""
    seconds = MONTH_HOURS * 3600
    lines = [Line("Lambda", "provisioned concurrency, 1 environment", seconds * LAMBDA_GB, "730 h x 0.25 GB", "lambda_pc_gb_s")]
    return print_lines("Option: provisioned concurrency for the Spot warning's function (1 x 256 MB, all month)", lines)


def main() -> None:
    print(f"autostop monthly cost model: us-east-1 list prices, no free tier, {SWEEPS:,} sweeps a month")
    totals = scenarios()
    monitoring = [Line("CloudWatch/KMS", what, count, "per month", key) for what, count, key in MONITORING]
    fixed = print_lines("Fixed: monitoring (README 'What you see'), whatever the fleet size", monitoring)
    option = provisioned_concurrency()
    print(f"\nsummary per {INSTANCES} instances a month (goal: <= USD 1.00 at 4 runs per instance, monitoring apart)")
    for (label, design), usd in totals.items():
        verdict = ("meets" if usd <= 1.0 else "misses") + " the goal" if label == "4 runs/instance" else ""
        print(f"  {label:<16} {design:<7} USD {usd:6.3f}  {verdict}")
    every_sweep = INSTANCES * PARAMETERS["marker_share"] * SWEEPS * PRICES["s3_get_head"].usd
    print(f"  sweep HeadObject on every sweep instead of hourly (before the recheck change): USD {every_sweep:.3f}")
    print(f"  + monitoring USD {fixed:.2f} fixed; provisioned concurrency option USD {option:.2f}")
    print("sources (us-east-1 list prices as the AWS pricing pages state them):")
    for number, title in enumerate(TITLES, 1):
        print(f"  [{number}] {title}")


if __name__ == "__main__":
    main()
