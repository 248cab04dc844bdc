#!/usr/bin/env python3
"""Cold-start import cost of every Lambda handler as a paired ratio against ``import boto3`` (the floor any of
them pays), with tracing off and on. Each round runs a fresh interpreter for boto3 and for the handler, one right
after the other, so a busy machine slows both alike; the median of the per-round ratios is printed. Asserts nothing.

    python benchmarks/imports.py            # AUTOSTOP_BENCH_IMPORT_ROUNDS=7 by default
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAMBDAS = REPO / "lambdas"
HANDLERS = sorted(p.parent.name for p in LAMBDAS.glob("*/handler.py"))
ROUNDS = int(os.environ.get("AUTOSTOP_BENCH_IMPORT_ROUNDS", "7"))


def seconds(statement: str, trace_disabled: str) -> float:
    """Wall seconds of a fresh ``python -c statement`` (interpreter start included, as in a cold start)."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(LAMBDAS),
        "POWERTOOLS_SERVICE_NAME": "autostop",
        "POWERTOOLS_TRACE_DISABLED": trace_disabled,
        "AWS_DEFAULT_REGION": "us-east-1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], env=env, check=True)
    return time.perf_counter() - started


def paired(handler: str, trace_disabled: str) -> tuple[float, float]:
    """(median handler seconds, median ratio handler / boto3) over ROUNDS pairs."""
    ratios, times = [], []
    for _ in range(ROUNDS):
        base = seconds("import boto3", trace_disabled)
        took = seconds(f"import {handler}.handler", trace_disabled)
        times.append(took)
        ratios.append(took / base)
    return statistics.median(times), statistics.median(ratios)


def main() -> None:
    seconds("import boto3; import aws_lambda_powertools", "true")  # warm the page cache once
    print(f"handler import, paired against `import boto3` ({ROUNDS} rounds, medians; goal <= 1.5x)")
    print(f"{'handler':<22} {'trace off s':>11} {'ratio':>6} {'trace on s':>11} {'ratio':>6}")
    for handler in HANDLERS:
        off_s, off_r = paired(handler, "true")
        on_s, on_r = paired(handler, "false")
        print(f"{handler:<22} {off_s:>11.3f} {off_r:>5.2f}x {on_s:>11.3f} {on_r:>5.2f}x")


if __name__ == "__main__":
    main()
