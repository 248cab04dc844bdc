#!/usr/bin/env python3
"""Cold-start import cost of every Lambda handler as a paired ratio against ``import boto3`` (the floor any of
them pays), with the X-Ray SDK off (the deployed default: ``trace_aws_calls`` false; Lambda's active tracing adds
nothing to the import) and on (``trace_aws_calls`` true: a subsegment per AWS call). Asserts nothing.

Each round runs a fresh interpreter for ``import boto3`` and, right after it, one for each handler tree, so a busy
machine slows both alike; the medians of the per-round ratios are printed, of wall time and of the child's CPU
time (user + system, from ``os.wait4``: on a machine shared with other work CPU time is the steadier figure).

The interpreters are made to start as a function's does:
- the environment a Lambda function has (``LAMBDA_TASK_ROOT``, ``AWS_LAMBDA_FUNCTION_NAME``): the X-Ray SDK's
  recorder takes its Lambda path there (a local sampler); outside Lambda it creates two X-Ray clients at import and
  overstates tracing's cost about five times;
- ``-S`` with site-packages on ``PYTHONPATH``: this virtualenv's ``.pth`` files (the editable install's finder,
  setuptools' distutils hack) would add about 10 ms to both sides that no function pays, flattering the ratio;
- the functions' code as the asset holds it (infra/asset.py): the sources and, when this machine has a Python of the
  runtime's version to compile them at synth, their bytecode, here compiled by this interpreter for itself (the
  runtime's own .pyc would be ignored by it); without it, or with ``--sources``, sources only, which every cold start
  compiles, as on Lambda's read-only /var/task;
- ``os._exit`` right after the import: a cold start ends when the handler is imported, and Lambda never tears the
  interpreter down on that path, while a normal exit would add the finalization of every module to both sides.

    python benchmarks/imports.py                  # every handler, tracing off and on
    python benchmarks/imports.py --before REV     # also lambdas/ as of git REV, in the same rounds
    python benchmarks/imports.py --sources        # also every tree as sources only (the asset before infra/asset.py)
    python benchmarks/imports.py --top HANDLER    # -X importtime: what the handler adds to `import boto3`
    python benchmarks/imports.py --parts          # botocore, Powertools, pydantic, X-Ray SDK against `import boto3`

``AUTOSTOP_BENCH_IMPORT_ROUNDS`` (default 7) sets the rounds.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from infra.asset import python_for, stage  # noqa: E402  (no CDK import: the asset's staging only)

LAMBDAS = REPO / "lambdas"
HANDLERS = sorted(p.parent.name for p in LAMBDAS.glob("*/handler.py"))
SITE_PACKAGES = sysconfig.get_paths()["purelib"]
ROUNDS = int(os.environ.get("AUTOSTOP_BENCH_IMPORT_ROUNDS", "7"))
RUNTIME_PYTHON = "3.13"
"""The functions' runtime (infra/config.py LAMBDA_PYTHON), whose bytecode infra/asset.py compiles."""
IMPORTTIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)$")


def lambda_env(tree: Path, trace_disabled: str) -> dict[str, str]:
    """The environment of a function whose code is ``tree`` (Powertools service, tracing switch, Lambda markers)."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join([str(tree), SITE_PACKAGES]),
        "LAMBDA_TASK_ROOT": str(tree),
        "AWS_LAMBDA_FUNCTION_NAME": "autostop-bench",
        "POWERTOOLS_SERVICE_NAME": "autostop",
        "POWERTOOLS_TRACE_DISABLED": trace_disabled,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def run(statement: str, env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s) of a fresh ``python -S -c statement``: interpreter start and the statement, as in a cold start
    (the interpreter leaves by ``os._exit``, without finalizing its modules)."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-S", "-c", f"{statement}; import os; os._exit(0)"], env=env)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise RuntimeError(f"{statement!r} exited {child.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def paired(handler: str, trees: list[Path], trace_disabled: str) -> list[tuple[float, float, float]]:
    """Per tree: (median wall s, median wall ratio, median CPU ratio) of ``import handler.handler`` / ``import boto3``."""
    rows: list[list[tuple[float, float, float]]] = [[] for _ in trees]
    for _ in range(ROUNDS):
        base_wall, base_cpu = run("import boto3", lambda_env(trees[-1], trace_disabled))
        for row, tree in zip(rows, trees, strict=True):
            if not (tree / handler / "handler.py").exists():  # a handler the older tree does not have
                row.append((math.nan, math.nan, math.nan))
                continue
            wall, cpu = run(f"import {handler}.handler", lambda_env(tree, trace_disabled))
            row.append((wall, wall / base_wall, cpu / base_cpu))
    return [tuple(statistics.median(col) for col in zip(*row, strict=True)) for row in rows]  # type: ignore[misc]


def tree_at(rev: str, into: Path) -> Path:
    """``lambdas/`` as of git ``rev``, extracted into the directory ``into`` (sources only, as git holds them)."""
    into.mkdir(parents=True)
    archive = into / "lambdas.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(REPO), "archive", rev, "lambdas"], stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "lambdas"


def deployed(source: Path, into: Path, *, bytecode: bool) -> Path:
    """``source`` (a ``lambdas/`` tree) as the function asset holds it (infra/asset.py ``stage``), in the new
    directory ``into``: with ``bytecode``, compiled by this interpreter (unchecked-hash .pyc, PEP 552)."""
    return stage(source, into / "lambdas", sys.executable if bytecode else None)


def table(trees: list[Path], labels: list[str]) -> None:
    """Print one line per handler: per tree and tracing switch, seconds, wall ratio and CPU ratio."""
    run("import boto3; import aws_lambda_powertools", lambda_env(LAMBDAS, "true"))  # warm the page cache once
    print(f"handler import, paired against `import boto3` ({ROUNDS} rounds, medians; goal <= 1.5x)")
    print("off = POWERTOOLS_TRACE_DISABLED (the deployed default), on = trace_aws_calls true (the X-Ray SDK patches botocore)")
    cols = [f"{label} {mode}" for label in labels for mode in ("off", "on")]
    print(f"{'handler':<22}" + "".join(f" {c + ' s':>14} {'wall':>6} {'cpu':>6}" for c in cols))
    for handler in HANDLERS:
        off = paired(handler, trees, "true")
        on = paired(handler, trees, "false")
        cells = [cell for pair in zip(off, on, strict=True) for cell in pair]
        print(f"{handler:<22}" + "".join(f" {s:>14.3f} {w:>5.2f}x {c:>5.2f}x" for s, w, c in cells))


def self_times(statement: str, env: dict[str, str]) -> dict[str, int]:
    """Self microseconds per module that ``python -X importtime -c statement`` imported."""
    command = [sys.executable, "-S", "-X", "importtime", "-c", statement]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return {m[4]: int(m[1]) for line in out.stderr.splitlines() if (m := IMPORTTIME.match(line))}


def top(handler: str, trace_disabled: str, tree: Path, limit: int = 12) -> None:
    """Print what ``import handler.handler`` adds to ``import boto3``: median self ms per top-level package, then
    per module (modules ``import boto3`` loads itself are left out, since both pay them)."""
    env = lambda_env(tree, trace_disabled)
    floor = set(self_times("import boto3", env))
    rounds = [self_times(f"import {handler}.handler", env) for _ in range(ROUNDS)]
    per_module = {m: statistics.median(r.get(m, 0) for r in rounds) / 1000 for m in set().union(*rounds) - floor}
    per_package: dict[str, float] = defaultdict(float)
    for module, ms in per_module.items():
        per_package[module.split(".")[0]] += ms
    print(f"{handler} (tracing {'off' if trace_disabled == 'true' else 'on'}): {sum(per_module.values()):.1f} ms beyond `import boto3`")
    for name, ms in sorted(per_package.items(), key=lambda kv: -kv[1])[:limit]:
        print(f"  package {name:<40} {ms:6.1f} ms")
    for name, ms in sorted(per_module.items(), key=lambda kv: -kv[1])[:limit]:
        print(f"  module  {name:<40} {ms:6.1f} ms")


BOTOCORE = "import botocore.session, botocore.config, botocore.client"
PARTS = {
    "botocore's client stack (every function but Confirm resume)": (BOTOCORE, "true"),
    "+ Powertools Logger and Metrics": (f"{BOTOCORE}; import aws_lambda_powertools", "true"),
    "+ pydantic: one model defined and validated": (
        f"{BOTOCORE}; from pydantic import BaseModel, Field\nclass M(BaseModel):\n    x: int = Field(ge=1)\nM(x=1)",
        "true",
    ),
    "+ X-Ray SDK, botocore patched (tracing on)": (f"{BOTOCORE}; import aws_xray_sdk.core as x; x.patch(['botocore'])", "false"),
    "+ asyncio alone (wrapt >= 2, the SDK's dependency, imports it)": (f"{BOTOCORE}; import asyncio", "true"),
}
"""What a handler's import is made of: each statement in a fresh interpreter, as the handlers are measured."""


def parts(tree: Path) -> None:
    """Print the median CPU ratio of each of PARTS against ``import boto3`` in the same rounds, and what it adds to
    botocore's client stack."""
    ratios: dict[str, list[float]] = {name: [] for name in PARTS}
    for _ in range(ROUNDS):
        base = run("import boto3", lambda_env(tree, "true"))[1]
        for name, (statement, trace_disabled) in PARTS.items():
            ratios[name].append(run(statement, lambda_env(tree, trace_disabled))[1] / base)
    floor = statistics.median(ratios[next(iter(PARTS))])
    print(f"what a handler's import is made of, CPU against `import boto3` ({ROUNDS} rounds, medians)")
    for name, values in ratios.items():
        ratio = statistics.median(values)
        print(f"  {name:<66} {ratio:5.2f}x  (+{ratio - floor:4.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", metavar="REV", help="also measure lambdas/ as of this git revision, in the same rounds")
    parser.add_argument("--sources", action="store_true", help="also measure every tree as sources only, without bytecode")
    parser.add_argument("--top", metavar="HANDLER", help="print the import costs HANDLER adds to `import boto3` instead")
    parser.add_argument("--parts", action="store_true", help="print what a handler's import is made of instead")
    args = parser.parse_args()
    if args.parts:
        parts(LAMBDAS)
        return
    asset_bytecode = python_for(RUNTIME_PYTHON) is not None  # what infra/asset.py ships from this machine
    with tempfile.TemporaryDirectory(prefix="autostop-imports-") as tmp:
        if args.top:
            for trace_disabled in ("true", "false"):
                top(args.top, trace_disabled, deployed(LAMBDAS, Path(tmp) / trace_disabled, bytecode=asset_bytecode))
            return
        sources = {"now": LAMBDAS}
        if args.before:
            sources = {args.before[:7]: tree_at(args.before, Path(tmp) / "git"), **sources}
        trees: dict[str, Path] = {}
        for label, source in sources.items():
            forms = [asset_bytecode, False] if args.sources and asset_bytecode else [asset_bytecode]
            for bytecode in forms:
                name = f"{label}{'' if bytecode else '-src'}"
                trees[name] = deployed(source, Path(tmp) / name, bytecode=bytecode)
        found = f"a Python {RUNTIME_PYTHON} is here" if asset_bytecode else f"no Python {RUNTIME_PYTHON} here"
        print(f"asset bytecode: {'yes' if asset_bytecode else 'no'} ({found}: infra/asset.py)")
        table(list(trees.values()), list(trees))


if __name__ == "__main__":
    main()
