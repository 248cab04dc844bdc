"""``python -m local demo`` and ``python -m local simulate SCENARIO.json --report REPORT.json``."""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "demo.json"


class ScenarioError(Exception):
    pass


def _run(scenario_path: Path, *, show: bool, keep: bool) -> tuple[dict[str, Any], float]:
    from pydantic import ValidationError

    from local.report import build_report, execution_states, state_lines
    from local.runtime import LocalControlPlane
    from local.scenario import Scenario, run_steps

    try:
        scenario = Scenario.load(scenario_path)
    except (OSError, ValueError, ValidationError) as exc:
        raise ScenarioError(f"cannot use scenario {scenario_path}: {exc}") from exc
    started = time.monotonic()
    print(f"autostop local: scenario {scenario.name!r} ({scenario_path.name})")
    print(f"  {scenario.description}" if scenario.description else "", end="\n" if scenario.description else "")
    print("  synthesizing the CDK app (cached after the first run) and deploying it into moto ...")
    with LocalControlPlane(context=scenario.context or None, keep=keep, agent_boot_seconds=scenario.agent_boot_seconds) as cp:
        kept = "" if keep else " (removed at the end; --keep keeps it)"
        print(f"  ready in {time.monotonic() - started:.1f} s; checkpoint bucket {cp.deployment.bucket}")
        print(f"  function logs (every decision and its reason): {cp.log_file}{kept}")
        steps = run_steps(cp, scenario)
        report = build_report(cp, scenario=scenario.name, steps=steps)
        if show:
            sfn = cp.aws.client("stepfunctions")
            definitions: dict[str, dict[str, Any]] = {}
            for ex in sorted(cp.executions(), key=lambda e: e["startDate"]):
                arn = ex["stateMachineArn"]
                if arn not in definitions:
                    definitions[arn] = json.loads(sfn.describe_state_machine(stateMachineArn=arn)["definition"])
                print(f"\n  execution {ex['name']}  [{ex['status']}]")
                for line in state_lines(execution_states(sfn, ex["executionArn"]), definitions[arn]):
                    print(line)
    elapsed = time.monotonic() - started
    return report, elapsed


def _summary(report: dict[str, Any]) -> None:
    print()
    for ex in report["executions"]:
        reason = (ex["output"] or {}).get("reason") if ex["output"] else ex["cause"]
        print(f"  outcome {ex['outcome']}: {reason}")
    for inst in report["instances"]:
        print(f"  instance {inst['name']} ({inst['id']}): {inst['state']}")
    uploaded = [o for o in report["objects"] if "/checkpoints/" in o["uri"] or "/manifests/" in o["uri"]]
    for obj in uploaded:
        print(f"  object {obj['uri']}  {obj['size']} bytes  {obj['checksum']}")
    print(f"  notifications sent: {len(report['notifications'])}")


def _peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="one instance trains, finishes, is checkpointed, verified and stopped")
    sim = sub.add_parser("simulate", help="run a scenario file and write a JSON report (exit 0 whatever the outcomes)")
    sim.add_argument("scenario", type=Path)
    sim.add_argument("--report", type=Path, required=True)
    for p in (demo, sim):
        p.add_argument("--keep", action="store_true", help="keep the work folder (instance sandboxes, function logs)")
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    try:
        if args.command == "demo":
            return _demo(keep=args.keep)
        return _simulate(args.scenario, args.report, keep=args.keep)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _demo(*, keep: bool) -> int:
    report, elapsed = _run(DEMO, show=True, keep=keep)
    _summary(report)
    print(f"\n  demo took {elapsed:.1f} s, peak memory {_peak_mb():.0f} MB (largest process)")
    ok = [e["outcome"] for e in report["executions"]] == ["Stopped"] and report["instances"][0]["state"] == "stopped"
    print("  RESULT: the instance was stopped only after its checkpoint was verified in S3" if ok else "  RESULT: unexpected outcome")
    print(NEXT_STEPS)
    return 0 if ok else 1


NEXT_STEPS = """
  Next, on your AWS account (credentials in the environment, as for the AWS CLI):
    make deploy                                  # the stack, through the pinned CDK CLI; writes cdk-outputs.json
    .venv/bin/autostop tag i-0123456789abcdef0 --run-id my-run --checkpoint-dir /home/ubuntu/checkpoints
    .venv/bin/autostop status my-run             # the run's record, checkpoint and outcome
  (make destroy removes the stack; the checkpoint bucket and the run records table are kept.)"""


def _simulate(scenario: Path, report_path: Path, *, keep: bool) -> int:
    report, elapsed = _run(scenario, show=True, keep=keep)
    _summary(report)
    report["duration_seconds"] = round(elapsed, 2)
    report_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\n  report written to {report_path} ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
