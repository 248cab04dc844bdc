#!/usr/bin/env python3
"""State transitions and Lambda invocations of one lifecycle run, counted from the execution history.

Runs the whole control plane locally (moto, the synthesized state machine, a simulated instance) for a finished run
whose checkpoint is 1 MiB and 768 MiB (``AUTOSTOP_BENCH_TRANSITION_SIZES`` in MiB overrides), from the completion
marker to Stopped, and prints per execution: state transitions (every ``*StateEntered`` event: what Step Functions
Standard bills), the part up to and including the Stop instance state (where StopInstances is called), Task states
that invoked a Lambda, the Lambda invocations per function while the run lasted (the execution's Tasks, the marker
trigger, on_status_event completing its task tokens), and the wall time of the local run (a count, not a speed figure).
Asserts nothing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "lambdas")]

from local.runtime import LocalControlPlane  # noqa: E402

SIZES_MIB = [int(x) for x in os.environ.get("AUTOSTOP_BENCH_TRANSITION_SIZES", "1,768").split(",") if x.strip()]
TAGS = {"autostop:enabled": "true", "autostop:checkpoint-dir": "{root}/ckpt"}


def write_checkpoint(root: Path, step: int, size: int) -> None:
    """A complete directory checkpoint of ``size`` bytes (written in 8 MiB blocks)."""
    d = root / "ckpt" / f"step-{step:06d}"
    d.mkdir(parents=True, exist_ok=True)
    block = bytes(range(256)) * (8 * 1024 * 1024 // 256)
    with open(d / "model.bin", "wb") as f:
        left = size
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)
    (d / "meta.json").write_text(json.dumps({"step": step}))


def history(cp: LocalControlPlane, arn: str) -> list[dict[str, Any]]:
    sfn = cp.aws.client("stepfunctions")
    events: list[dict[str, Any]] = []
    for page in sfn.get_paginator("get_execution_history").paginate(executionArn=arn):
        events.extend(page["events"])
    return events


def one_run(cp: LocalControlPlane, size_mib: int) -> dict[str, Any]:
    run = f"bench-{size_mib}"
    name = f"bench-{size_mib}"
    iid = cp.launch_instance(name, tags={**TAGS, "autostop:run-id": run})
    write_checkpoint(cp.by_name[name].root, 10, size_mib * 1024 * 1024)
    before = dict(cp.aws.lambdas.calls)
    started = time.monotonic()
    cp.put_object(cp.run_uri(run, f"runs/{run}/_SUCCESS"), "done")
    cp.wait_executions(timeout=1800)
    seconds = time.monotonic() - started
    [execution] = [e for e in cp.executions() if e["name"].startswith(f"{iid}-{run}-")]
    events = history(cp, execution["executionArn"])
    entered = [e["stateEnteredEventDetails"]["name"] for e in events if e["type"].endswith("StateEntered")]
    to_stop = entered[: entered.index("Stop instance") + 1] if "Stop instance" in entered else entered
    lambda_tasks = sum(
        1 for e in events if e["type"] in ("LambdaFunctionScheduled", "TaskScheduled") and "lambda" in json.dumps(e, default=str)
    )
    invoked = {k: v - before.get(k, 0) for k, v in cp.aws.lambdas.calls.items() if v - before.get(k, 0)}
    return {
        "size": f"{size_mib} MiB",
        "outcome": cp.instance_state(name),
        "transitions": len(entered),
        "to_stop": len(to_stop),
        "lambda_tasks": lambda_tasks,
        "invoked": invoked,
        "path": entered,
        "seconds": seconds,
    }


def main() -> None:
    print("State transitions per lifecycle run (marker -> Stopped), counted from the execution history")
    print("goal (issue 12): <= 12 to StopInstances, <= 20 for the whole run, independent of checkpoint size\n")
    rows = []
    with LocalControlPlane() as cp:
        for size in SIZES_MIB:
            rows.append(one_run(cp, size))
    print(f"{'checkpoint':>10}  {'instance':>8}  {'to StopInstances':>16}  {'whole run':>9}  {'Lambda tasks':>12}  local wall s")
    for r in rows:
        print(f"{r['size']:>10}  {r['outcome']:>8}  {r['to_stop']:>16}  {r['transitions']:>9}  {r['lambda_tasks']:>12}  {r['seconds']:.1f}")
    for r in rows:
        print(f"  {r['size']}: Lambda invocations per function (the execution's Tasks and the events serving it): {r['invoked']}")
    print("\npath of the last run: " + " -> ".join(rows[-1]["path"]))


if __name__ == "__main__":
    main()
