#!/usr/bin/env python3
"""The schedule sweep at fleet scale: AWS calls per operation, CPU seconds, peak memory and a modelled duration for
marker, PID-file and log-pattern fleets of N = 100, 1,000 and 10,000 instances. Prints a table; asserts nothing.

    python benchmarks/sweep.py                       # the three fleet kinds at 100, 1,000 and 10,000
    AUTOSTOP_BENCH_SWEEP_SIZES=100,1000 python benchmarks/sweep.py
    python benchmarks/sweep.py --lambdas OTHER/lambdas   # the same benchmark against another tree (before/after)

How it runs. The product's own :func:`on_schedule_tick.logic.sweep` runs with real boto3 clients; a botocore
``before-call`` hook counts every call per operation and answers it from an in-memory fleet (moto's per-instance tag
lookup is quadratic in N, so moto is not used here: the product is unchanged, only the AWS side is a fake). The
answers have the real shapes: DescribeInstances pages of 1,000, DescribeInstanceInformation pages of 50,
ListCommandInvocations with the probe's JSON line, HeadObject 404 / LastModified, StartExecution's
ExecutionAlreadyExists. Each fleet size runs in its own process (peak RSS is per process).

The fleet, each sweep: 1 % of the runs finished since the last sweep (marker present, trainer exited, completion line
logged); 2 % finished earlier and their execution ended (DryRun) while the instance still runs; 1 % were retried
(attempts 1 and 2 ended Inconclusive, attempt 3 ended DryRun); the rest still train. Two sweeps run back to back
(the second sees the first one's executions RUNNING). Marker fleets are swept on three ticks: their markers are reported
by S3 events, and each sweep reads only the markers whose recheck slot it is (``shared.evaluation.MarkerRecheck``,
every marker about once per period); every marker is present, as if every S3 event had been lost. A second table
spreads each fleet's markers over one whole period with the product's MarkerRecheck: HeadObject per sweep (mean, max)
and the period.

Modelled duration at 256 MB = measured CPU x CPU_FACTOR + the calls x LATENCY (per operation, below; HeadObject in the
Evaluator's 16 threads) + probe waits x poll seconds. The CPU is the sweep's process time minus the fake's own. When
the sweep hands the pages left to a continuation (it does when the modelled time left falls under its margin), the
benchmark runs that continuation too: "hops" counts the invocations, "model s" is the longest one (each has its own
300 s timeout), the calls and CPU are their sum.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SIZES = [int(n) for n in os.environ.get("AUTOSTOP_BENCH_SWEEP_SIZES", "100,1000,10000").split(",")]
KINDS = ("marker", "pid", "log")
REGION = "us-east-1"
ACCOUNT = "123456789012"
BUCKET = "autostop-bench"
MACHINE = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:autostop-lifecycle"
LAUNCH = datetime(2026, 12, 1, 8, 0, 0, tzinfo=UTC)

CPU_FACTOR = 1769 / 256
"""Lambda gives a function one full vCPU at 1,769 MB and CPU in proportion to memory below it; this machine's core is
taken as one such vCPU."""
LATENCY = {
    "DescribeInstances": 0.300,
    "HeadObject": 0.020,
    "StartExecution": 0.040,
    "DescribeExecution": 0.030,
    "BatchGetItem": 0.015,
    "PutItem": 0.010,
    "UpdateItem": 0.010,
    "Invoke": 0.030,
}
"""Seconds per call in the same region (assumed round trips; a DescribeInstances page of 1,000 instances is slow)."""
DEFAULT_LATENCY = 0.050
"""Every other operation (SSM SendCommand, DescribeInstanceInformation, ListCommandInvocations, EC2 tags, SNS)."""
HEAD_THREADS = 16
POLL_SECONDS = 2.0
LAMBDA_TIMEOUT = 300
SCHEDULER_PER_PAGE = 1000
"""AWS Instance Scheduler's yardstick: one DescribeInstances per 1,000 instances per period."""


def fleet_tags(kind: str, i: int) -> dict[str, str]:
    run = f"run-{i:05d}"
    tags = {"autostop:enabled": "true", "autostop:run-id": run, "autostop:action": "stop"}
    if kind == "marker":
        tags["autostop:checkpoint-dir"] = "/data/ckpt"
    elif kind == "pid":
        tags |= {"autostop:checkpoint-dir": "/data/ckpt", "autostop:pid-file": "/run/trainer.pid"}
    else:
        tags |= {
            "autostop:checkpoint-dir": f"/data/runs/{run}/ckpt",
            "autostop:log-file": f"/data/runs/{run}/train.log",
            "autostop:log-pattern": "training complete",
        }
    return tags


def role(i: int) -> str:
    """What instance ``i``'s run is doing this sweep (see the module docstring)."""
    if i % 100 == 0:
        return "finished"
    if i % 50 == 1:
        return "ended"
    if i % 100 == 2:
        return "retried"
    return "training"


class FakeAWS:
    """Answers every call of the sweep from memory and counts it (one botocore before-call hook per client)."""

    def __init__(self, kind: str, n: int, lambdas: Path) -> None:
        from shared.naming import execution_name

        self.kind, self.n = kind, n
        self.calls: Counter[str] = Counter()
        self.fake_cpu = 0.0
        self.sleeps = 0
        self.ids = [f"i-{i:017x}" for i in range(n)]
        self.index = {iid: i for i, iid in enumerate(self.ids)}
        self.session = LAUNCH.strftime("%Y-%m-%dT%H:%M:%SZ")
        self.executions: dict[str, dict[str, Any]] = {}
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        """Run records: the DryRun executions below took the complete lock, as Evaluate does (shared/records.py)."""
        for i, iid in enumerate(self.ids):
            run = f"run-{i:05d}"
            if role(i) == "ended":
                self.executions[execution_name(iid, run, "complete", 1, self.session)] = self._closed("DryRun")
                self._lock(iid, run, execution_name(iid, run, "complete", 1, self.session))
            elif role(i) == "retried":
                for attempt, outcome in ((1, "Inconclusive"), (2, "Inconclusive"), (3, "DryRun")):
                    self.executions[execution_name(iid, run, "complete", attempt, self.session)] = self._closed(outcome)
                self._lock(iid, run, execution_name(iid, run, "complete", 3, self.session))
        self.pages = [self._page(start) for start in range(0, n, 1000)] or [[]]
        self.found: set[str] = set()
        """Finished runs whose marker a sweep has read (each is a run that sweep finds finished, once)."""
        self.commands: dict[str, dict[str, Any]] = {}

    def _lock(self, iid: str, run: str, execution: str) -> None:
        sort = f"{run}#{self.session}"
        self.items[(iid, sort)] = {"instance_id": {"S": iid}, "run": {"S": sort}, "locks": {"M": {"complete": {"S": execution}}}}

    @staticmethod
    def _closed(outcome: str) -> dict[str, Any]:
        return {"status": "SUCCEEDED", "output": json.dumps({"outcome": outcome})}

    def _page(self, start: int) -> list[dict[str, Any]]:
        instances = []
        for i in range(start, min(start + 1000, self.n)):
            tags = [{"Key": k, "Value": v} for k, v in fleet_tags(self.kind, i).items()]
            instances.append({"InstanceId": self.ids[i], "State": {"Name": "running"}, "Tags": tags, "LaunchTime": LAUNCH})
        return [{"ReservationId": f"r-{start:017x}", "Instances": instances}]

    def attach(self, client: Any) -> Any:
        client.meta.events.register("before-parameter-build.*.*", self._stash)
        client.meta.events.register("before-call.*.*", self._answer)
        return client

    @staticmethod
    def _stash(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["bench_params"] = dict(params)

    def _answer(self, model: Any, context: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]]:
        started = time.process_time()
        op = model.name
        self.calls[op] += 1
        params = context.get("bench_params", {})
        handler = getattr(self, "op_" + op, None)
        body = handler(params) if handler else {}
        status = 400 if "Error" in body else 200
        body.setdefault("ResponseMetadata", {"HTTPStatusCode": status})
        self.fake_cpu += time.process_time() - started
        return SimpleNamespace(status_code=status, headers={}, raw=None), body

    # --- EC2 ---
    def op_DescribeInstances(self, params: dict[str, Any]) -> dict[str, Any]:
        if "InstanceIds" in params:
            found = [self.pages[self.index[i] // 1000][0]["Instances"][self.index[i] % 1000] for i in params["InstanceIds"]]
            return {"Reservations": [{"Instances": found}]}
        page = int(params.get("NextToken") or 0)
        out: dict[str, Any] = {"Reservations": self.pages[page]}
        if page + 1 < len(self.pages):
            out["NextToken"] = str(page + 1)
        return out

    # --- SSM ---
    def op_DescribeInstanceInformation(self, params: dict[str, Any]) -> dict[str, Any]:
        ids = params["Filters"][0]["Values"]
        return {"InstanceInformationList": [{"InstanceId": i, "PingStatus": "Online"} for i in ids]}

    def op_SendCommand(self, params: dict[str, Any]) -> dict[str, Any]:
        command_id = f"00000000-0000-4000-8000-{len(self.commands):012d}"
        self.commands[command_id] = {"ids": list(params["InstanceIds"]), "listed": 0}
        return {"Command": {"CommandId": command_id}}

    def op_ListCommandInvocations(self, params: dict[str, Any]) -> dict[str, Any]:
        command = self.commands[params["CommandId"]]
        command["listed"] += 1
        done = command["listed"] > 1  # the probe finishes while the sweep sleeps one poll interval
        return {"CommandInvocations": [self._invocation(i, done) for i in command["ids"]]}

    def _invocation(self, iid: str, done: bool) -> dict[str, Any]:
        if not done:
            return {"InstanceId": iid, "Status": "InProgress"}
        finished = role(self.index[iid]) != "training"
        pid = {"state": "exited" if finished else "running", "pid": 4242}
        log = {"state": "matched" if finished else "not_matched"}
        line = json.dumps({"probe": 1, "pid": pid, "log": log})
        return {"InstanceId": iid, "Status": "Success", "CommandPlugins": [{"Output": line}]}

    # --- S3 ---
    def op_HeadObject(self, params: dict[str, Any]) -> dict[str, Any]:
        iid = params["Key"].split("instance/")[1].split("/")[0]
        if role(self.index[iid]) == "training":
            return {"Error": {"Code": "404", "Message": "Not Found"}}
        if role(self.index[iid]) == "finished":
            self.found.add(iid)
        return {"LastModified": LAUNCH + timedelta(hours=3), "ContentLength": 0}

    # --- Step Functions ---
    def op_StartExecution(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["name"]
        if name in self.executions:
            return {"Error": {"Code": "ExecutionAlreadyExists", "Message": name}}
        self.executions[name] = {"status": "RUNNING"}
        payload = json.loads(params["input"])
        self._lock(payload["instance_id"], payload["run_id"], name)  # its Evaluate claims the run seconds later
        return {"executionArn": MACHINE.replace(":stateMachine:", ":execution:") + ":" + name, "startDate": LAUNCH}

    def op_DescribeExecution(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["executionArn"].rsplit(":", 1)[1]
        found = self.executions[name]
        return {"executionArn": params["executionArn"], "stateMachineArn": MACHINE, "startDate": LAUNCH, **found}

    # --- DynamoDB (run records) ---
    def op_BatchGetItem(self, params: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, list[dict[str, Any]]] = {}
        for table, spec in params["RequestItems"].items():
            keys = [(k["instance_id"]["S"], k["run"]["S"]) for k in spec["Keys"]]
            out[table] = [self.items[k] for k in keys if k in self.items]
        return {"Responses": out, "UnprocessedKeys": {}}

    def op_PutItem(self, params: dict[str, Any]) -> dict[str, Any]:
        item = params["Item"]
        self.items[(item["instance_id"]["S"], item["run"]["S"])] = item
        return {}

    def op_UpdateItem(self, params: dict[str, Any]) -> dict[str, Any]:
        return {}


def environment(lambdas: Path) -> None:
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": REGION,
            "POWERTOOLS_SERVICE_NAME": "autostop",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_NAMESPACE": "autostop-bench",
            "POWERTOOLS_LOG_LEVEL": "ERROR",
            "AUTOSTOP_CHECKPOINT_BUCKET": BUCKET,
            "AUTOSTOP_INSTANCE_ARN_PREFIX": f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/",
            "AUTOSTOP_STATE_MACHINE_ARN": MACHINE,
            "AUTOSTOP_PROBE_DOCUMENT": "autostop-probe",
            "AUTOSTOP_CHECKPOINT_DOCUMENT": "autostop-checkpoint",
            "AUTOSTOP_RUNS_TABLE": "autostop-runs",
            "AUTOSTOP_MARKER_RECHECK_MINUTES": "60",
            "AUTOSTOP_POLL_SECONDS": str(POLL_SECONDS),
        }
    )
    sys.path.insert(0, str(lambdas))


def modelled(calls: Counter[str], cpu: float, sleeps: int) -> float:
    """Modelled seconds of one sweep invocation at 256 MB (see the module docstring)."""
    io = sum(n * LATENCY.get(op, DEFAULT_LATENCY) / (HEAD_THREADS if op == "HeadObject" else 1) for op, n in calls.items())
    return cpu * CPU_FACTOR + io + sleeps * POLL_SECONDS


class Invocation:
    """One invocation of the sweep function: its own calls, CPU and probe waits, and the modelled time left."""

    def __init__(self, fake: FakeAWS) -> None:
        self.fake, self.calls0, self.fake_cpu0, self.sleeps0 = fake, Counter(fake.calls), fake.fake_cpu, fake.sleeps
        self.started = time.process_time()
        self.handed: list[str] = []

    def figures(self) -> tuple[Counter[str], float, int]:
        calls = Counter(self.fake.calls)
        calls.subtract(self.calls0)
        cpu = max(time.process_time() - self.started - (self.fake.fake_cpu - self.fake_cpu0), 0.0)
        return +calls, cpu, self.fake.sleeps - self.sleeps0

    def seconds_left(self) -> float:
        return LAMBDA_TIMEOUT - modelled(*self.figures())

    def hand_over(self, token: str) -> bool:
        self.fake.calls["Invoke"] += 1  # an Event Invoke of the function itself
        self.handed.append(token)
        return True


def run_case(kind: str, n: int, lambdas: Path) -> list[dict[str, Any]]:
    """Sweep one fleet on two (marker: three) ticks in this process, following continuations; one row per tick."""
    environment(lambdas)
    import boto3

    from on_schedule_tick.logic import sweep
    from shared.evaluation import Clients, Evaluator
    from shared.notifications import Outlets
    from shared.settings import settings

    fake = FakeAWS(kind, n, lambdas)
    services = ("ec2", "s3", "ssm", "stepfunctions", "sns", "events", "dynamodb", "lambda")
    clients = {name: fake.attach(boto3.client(name, region_name=REGION)) for name in services}

    def sleep(_: float) -> None:
        fake.sleeps += 1

    evaluator = Evaluator(clients=Clients(s3=clients["s3"], ssm=clients["ssm"]), settings=settings(), sleep=sleep)
    outlets = Outlets(sns=clients["sns"], topic_arn=f"arn:aws:sns:{REGION}:{ACCOUNT}:autostop", events=clients["events"])
    accepted = inspect.signature(sweep).parameters
    ticks = ["2026-12-01T11:05:00Z", "2026-12-01T11:10:00Z"] + (["2026-12-01T11:15:00Z"] if kind == "marker" else [])
    rows = []
    for number, tick in enumerate(ticks, 1):
        found_before = len(fake.found)
        fake.calls.clear()
        fake.fake_cpu, fake.sleeps = 0.0, 0
        kwargs: dict[str, Any] = {"ec2": clients["ec2"], "sfn": clients["stepfunctions"], "evaluator": evaluator, "outlets": outlets}
        kwargs["scheduled_at"] = tick
        if "records" in accepted:
            from shared.records import RunRecords

            kwargs["records"] = RunRecords(clients["dynamodb"], "autostop-runs", sleep=sleep)
        invocations: list[Invocation] = []
        token: str | None = None
        while True:
            inv = Invocation(fake)
            invocations.append(inv)
            if "hand_over" in accepted:
                kwargs |= {"next_token": token, "seconds_left": inv.seconds_left, "hand_over": inv.hand_over}
            sweep(**kwargs)
            if not inv.handed:
                break
            token = inv.handed[0]
        label = f"sweep {number}"
        figures = [inv.figures() for inv in invocations]
        rows.append(
            {
                "kind": kind,
                "n": n,
                "sweep": label,
                "calls": dict(fake.calls),
                "cpu": sum(f[1] for f in figures),
                "hops": len(invocations),
                "model_s": max(modelled(*f) for f in figures),
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "finished": len(fake.found) - found_before
                if kind == "marker"
                else (sum(role(i) == "finished" for i in range(n)) if number == 1 else 0),
            }
        )
    if kind == "marker":
        rows[0]["spread"] = recheck_spread(fake.ids, settings())
    return rows


def recheck_spread(ids: list[str], settings: Any) -> dict[str, float]:
    """HeadObject per sweep over one whole recheck period of a marker fleet (DescribeInstances pages of 1,000, every
    marker watched by its S3 event), by the product's MarkerRecheck: mean, max, and the longest period in minutes."""
    from shared.evaluation import MarkerRecheck

    pages = [ids[k : k + 1000] for k in range(0, len(ids), 1000)]
    first = MarkerRecheck.at(int(datetime(2026, 12, 1, 11, 5, tzinfo=UTC).timestamp() // 60), settings)
    period = max(first.period(len(p)) for p in pages)
    reads = [sum(len(MarkerRecheck(tick=first.tick + t, period_ticks=first.period_ticks).due(p)) for p in pages) for t in range(period)]
    return {"mean": sum(reads) / period, "max": max(reads), "minutes": period * settings.schedule_minutes}


COLUMNS = (
    ("DescribeInstances", "DescInst"),
    ("DescribeInstanceInformation", "DescInfo"),
    ("SendCommand", "SendCmd"),
    ("ListCommandInvocations", "ListInv"),
    ("HeadObject", "HeadObj"),
    ("StartExecution", "StartEx"),
    ("DescribeExecution", "DescEx"),
    ("BatchGetItem", "BatchGet"),
    ("Invoke", "Invoke"),
)


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    print(title)
    head = f"{'fleet':<7}{'N':>7} {'sweep':<8}" + "".join(f"{short:>9}" for _, short in COLUMNS)
    print(head + f"{'other':>7}{'new runs':>9}{'CPU s':>8}{'peak MB':>8}{'hops':>5}{'model s':>9}{'Sched.DI':>9}")
    for r in rows:
        calls = Counter(r["calls"])
        shown = "".join(f"{calls.pop(op, 0):>9}" for op, _ in COLUMNS)
        other = sum(calls.values())
        yard = -(-r["n"] // SCHEDULER_PER_PAGE)
        figures = f"{other:>7}{r['finished']:>9}{r['cpu']:>8.2f}{r['peak_mb']:>8.0f}{r['hops']:>5}{r['model_s']:>9.1f}{yard:>9}"
        print(f"{r['kind']:<7}{r['n']:>7} {r['sweep']:<8}{shown}{figures}")
    others = sorted({op for r in rows for op in r["calls"]} - {op for op, _ in COLUMNS})
    if others:
        print(f"other = {', '.join(others)}")


def assumptions() -> None:
    lat = ", ".join(f"{op} {s * 1000:.0f} ms" for op, s in LATENCY.items())
    print(
        f"model: duration at 256 MB = CPU x {CPU_FACTOR:.2f} (1,769 MB = 1 vCPU; this core = 1 vCPU) + calls x latency "
        f"({lat}; every other call {DEFAULT_LATENCY * 1000:.0f} ms; HeadObject in {HEAD_THREADS} threads) + probe waits x "
        f"{POLL_SECONDS:g} s; function timeout {LAMBDA_TIMEOUT} s"
    )
    print(
        "fleet per sweep: 1 % of runs newly finished, 2 % ended earlier (execution closed DryRun, instance running), 1 % "
        "retried (attempts 1-2 Inconclusive, 3 DryRun), the rest training; sweep 2 follows sweep 1 (its executions RUNNING, "
        "their runs claimed in the run records as Evaluate does); "
        "marker fleets: each sweep reads the markers whose recheck slot it is (every marker present: all S3 events lost)"
    )
    print(f"Sched.DI = Instance Scheduler's yardstick, one DescribeInstances per {SCHEDULER_PER_PAGE:,} instances per period")
    print("hops = invocations of the sweep function (continuations included); model s = the longest one")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lambdas", type=Path, default=REPO / "lambdas", help="the lambdas/ tree to measure")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # kind:n, run in a child process
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    if args.case:
        kind, n = args.case.split(":")
        print(json.dumps(run_case(kind, int(n), args.lambdas.resolve())))
        return
    rows = []
    for kind in KINDS:
        for n in SIZES:
            cmd = [sys.executable, __file__, "--lambdas", str(args.lambdas.resolve()), "--case", f"{kind}:{n}"]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.extend(json.loads(out.strip().splitlines()[-1]))
    print_table(rows, f"schedule sweep at fleet scale{args.title} ({args.lambdas})")
    assumptions()
    print_spread(rows)


def print_spread(rows: list[dict[str, Any]]) -> None:
    spread = [r for r in rows if "spread" in r]
    if not spread:
        return
    print("\nmarker recheck spread over one whole period (the safety net for lost S3 events; marker_recheck_minutes 60):")
    print(f"{'N':>7}{'HeadObject/sweep mean':>23}{'max':>6}{'each marker every':>19}")
    for r in spread:
        sp = r["spread"]
        print(f"{r['n']:>7}{sp['mean']:>23.1f}{sp['max']:>6}{sp['minutes']:>15} min")


if __name__ == "__main__":
    main()
