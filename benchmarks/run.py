#!/usr/bin/env python3
"""Measure the figures the README quotes: demo wall time and peak memory (cold and warm synth cache),
synth time through the CDK app and through the pinned CDK CLI. Prints a table; asserts nothing.

Peak memory is the largest sum of resident memory over the whole process tree (python, node/jsii,
trainer, AWS CLI processes), sampled every 50 ms from /proc.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _tree_rss_kb(pid: int) -> int:
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
        stack.extend(_children(p))
    return total


def measure(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """(wall seconds, peak tree RSS in MB, exit code) of one command."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0

    def sample() -> None:
        nonlocal peak
        while proc.poll() is None:
            peak = max(peak, _tree_rss_kb(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    code = proc.wait()
    sampler.join()
    return time.monotonic() - started, peak / 1024, code


def main() -> int:
    env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    rows = []
    shutil.rmtree(REPO / ".autostop-local" / "synth", ignore_errors=True)
    rows.append(("make demo (cold: synthesizes the app)", *measure([PY, "-m", "local", "demo"], env)))
    rows.append(("make demo (warm synth cache)", *measure([PY, "-m", "local", "demo"], env)))
    rows.append(
        (
            "simulate examples/upload-unverified.json",
            *measure([PY, "-m", "local", "simulate", "examples/upload-unverified.json", "--report", os.devnull], env),
        )
    )
    with tempfile.TemporaryDirectory() as out:
        code = f"from app import build_app; app, _ = build_app(outdir={out!r}); app.synth()"
        rows.append(("synth via app.py (cdk-nag on)", *measure([PY, "-c", code], env)))
    cdk = REPO / "node_modules" / ".bin" / "cdk"
    if cdk.exists():
        with tempfile.TemporaryDirectory() as out:
            path_env = {**env, "PATH": f"{Path(PY).parent}{os.pathsep}{env['PATH']}"}
            rows.append(("npx cdk synth --quiet (pinned CLI)", *measure([str(cdk), "synth", "--quiet", "--output", out], path_env)))
    print(f"{'what':<44} {'wall s':>8} {'peak MB':>9} {'exit':>5}")
    for name, wall, peak, code in rows:
        print(f"{name:<44} {wall:>8.1f} {peak:>9.0f} {code:>5}")
    print(f"\nmachine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    return 0 if all(r[3] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
