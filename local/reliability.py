"""docs/RELIABILITY.md from a test run: ``python -m local.reliability [build/reliability] [docs/RELIABILITY.md]``.

The fault-injection suite (tests/faults), the bad-input suite (tests/badinput) and the property test
(tests/property) each write their rows to ``build/reliability/*.json`` as they run (``make reliability``
runs the three and then this). This module only renders those rows: every fault and bad input tried, the
outcome, whether anything was destroyed, and the property test's example count, plus what stays untested
because moto cannot emulate it. It refuses to render a run with a missing file or an unsafe row, so the
document can only say "never destroyed" when the run showed it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

MOTO_GAPS = [
    (
        "S3 `BadDigest`",
        "moto stores an object whose bytes do not match the sent SHA-256; real S3 rejects the upload. "
        "The verifier's size and checksum comparison still catches the stored object (UploadUnverified).",
    ),
    ("S3 composite checksums", "moto returns no `-<parts>` suffix and no `ChecksumType`; both forms are accepted and unit-tested."),
    (
        "Lambda invoke errors in Step Functions",
        "moto reports a throttled Invoke as `Exception`, so the `Lambda.*` Retry of the "
        "Task states is asserted on the template, not exercised.",
    ),
    (
        "SDK-integration timeouts and retries",
        "moto's executor turns a timeout into `States.Runtime` and never retries at the SDK "
        "level; AWS's `States.ALL` does not catch `States.Runtime`.",
    ),
    (
        "SDK-integration error names",
        "moto names them `ssm.X`; the fault injector renames them to AWS's `Ssm.X` so the SendCommand throttling Retry runs locally.",
    ),
    (
        "The SSM agent",
        "the local agent runs the real scripts, validates `allowedPattern` and simulates delivery, "
        "`PingStatus` and stop/start; the real agent's cgroup handling and delivery timing are not emulated.",
    ),
    (
        "IAM",
        "not enforced by moto: proved on the synthesized template (tests/infra/test_least_privilege.py) and by cdk-nag "
        "(AwsSolutions, NIST 800-53 rev 5).",
    ),
    ("Auto Scaling", "only the `aws:autoscaling:groupName` tag is simulated, not a group replacing a stopped member."),
    ("Disk full", "simulated by making the manifest write fail with ENOSPC in the script's helper, not by a full filesystem."),
    (
        "EventBridge",
        "moto never fires schedules and drops Lambda targets; the local runtime delivers both through the deployed "
        "rules. Real delivery delays and retries to the dead-letter queue are not exercised.",
    ),
]


class ReportError(ValueError):
    """The rows are missing or show an unsafe result; the document is not written."""


def _load(folder: Path, name: str, *, rows: bool = True) -> dict[str, Any]:
    path = folder / name
    if not path.exists():
        raise ReportError(f"{path} is missing: run `make reliability` (it runs the suites that write it)")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or (rows and not isinstance(data.get("rows"), list)):
        raise ReportError(f"{path} has no rows")
    return data


def _cell(value: Any, limit: int = 160) -> str:
    text = " ".join(str(value).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render(folder: Path) -> str:
    """The document's Markdown text from ``folder``'s faults.json, bad_input.json and property.json.

    Raises:
        ReportError: a file is missing, or a row says something was destroyed without a verified checkpoint,
            or an input was acted on, or the property test saw a violation.
    """
    faults = _load(folder, "faults.json")
    bad = _load(folder, "bad_input.json")
    prop = _load(folder, "property.json", rows=False)

    unsafe = [r for r in faults["rows"] if r.get("destroyed") and not r.get("verified_checkpoint")]
    acted = [r for r in bad["rows"] if r.get("acted") and not r.get("control")]
    violations = prop.get("violation_details") or ([] if not prop.get("violations") else [f"{prop['violations']} violation(s)"])
    problems = [f"fault {r['fault']!r} destroyed without a verified checkpoint" for r in unsafe]
    problems += [f"bad input {r['case']!r} was acted on" for r in acted]
    problems += [f"property violation: {v}" for v in violations]
    failed = [r for r in faults["rows"] if not r.get("passed", True)]
    problems += [f"fault {r['fault']!r} ended {r.get('observed')}, expected {r.get('expected')}" for r in failed]
    if problems:
        raise ReportError("; ".join(problems))

    examples = prop.get("examples_run", 0)
    drawn = prop.get("drawn") or {}
    events = sum((drawn.get("events") or {}).values())
    faults_injected = sum((prop.get("faults_injected") or {}).values())
    destroyed = prop.get("destructive_actions") or {}
    if destroyed.get("observed", 0) != destroyed.get("proven_by_verified_checkpoint", 0):
        raise ReportError("property test: a stop or termination was not proven by a verified checkpoint")
    lines = [
        "# Reliability",
        "",
        "Generated by `make reliability` from one run of the fault-injection suite (`tests/faults`), the bad-input",
        "suite (`tests/badinput`) and the invariant property test (`tests/property`) over the local control plane",
        "(moto, the synthesized state machine, the real handlers and on-instance scripts). Do not edit by hand.",
        "",
        f"- Faults injected: **{len(faults['rows'])}**; instances destroyed without a verified checkpoint: **0**.",
        f"- Bad inputs tried: **{len([r for r in bad['rows'] if not r.get('control')])}**; acted on: **0** "
        f"(plus {len([r for r in bad['rows'] if r.get('control')])} well-formed controls, which were acted on as they should be).",
        f"- Property test: **{examples} examples**, {events} events, {faults_injected} faults injected; "
        f"{destroyed.get('observed', 0)} stops/terminations, {destroyed.get('proven_by_verified_checkpoint', 0)} of them proven by a "
        "checkpoint S3 verified; violations: **0**.",
        "- Run: "
        + ", ".join(
            f"{name} {data.get('generated_at', '?')}" for name, data in (("faults", faults), ("bad input", bad), ("property", prop))
        )
        + ".",
        "",
        "A **destroyed** instance is one the control plane stopped, hibernated or terminated. `yes, verified` means",
        "after a checkpoint that S3 verified and that is newer than the decision; it may never be `yes` without it.",
        "",
        "## Faults",
        "",
        "| fault | where | expected | observed | destroyed | notified | reason |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in faults["rows"]:
        destroyed = "yes, verified" if r.get("destroyed") else "no"
        lines.append(
            f"| {_cell(r['fault'], 70)} | {_cell(r.get('where', ''), 50)} | {_cell(r.get('expected', ''), 40)} | "
            f"{_cell(r.get('observed', ''), 30)} | {destroyed} | {'yes' if r.get('notified') else 'no'} | {_cell(r.get('reason', ''))} |"
        )
    lines += ["", "## Bad input", "", "| case | kind | outcome | acted | reason |", "|---|---|---|---|---|"]
    for r in bad["rows"]:
        acted_cell = "control: yes" if r.get("control") else ("yes" if r.get("acted") else "no")
        lines.append(
            f"| {_cell(r['case'], 70)} | {_cell(r.get('kind', ''), 30)} | {_cell(r.get('outcome', ''), 30)} | {acted_cell} | "
            f"{_cell(r.get('reason', ''))} |"
        )
    lines += ["", "## Property test", ""]
    lines.append(
        f"{examples} examples (`make property-long` runs 200). Each example launches fresh instances, "
        "draws events and faults, runs them to the end and checks: every stop/termination followed a checkpoint that "
        "S3 verified, newer than the decision, read at exactly the versions the instance's own result line names; no "
        "instance without the opt-in tag was touched; no run was acted on twice; no proof and no run record uses a "
        f"version the second tenant wrote ({prop.get('second_tenant_forged_versions', 0)} forged object and manifest "
        "versions in this run)."
    )
    for title, counts in (
        ("Instances drawn", drawn.get("instances") or {}),
        ("Events drawn", drawn.get("events") or {}),
        ("Faults injected", prop.get("faults_injected") or {}),
        ("Execution outcomes", prop.get("execution_outcomes") or {}),
    ):
        if counts:
            lines += ["", f"{title}: " + ", ".join(f"`{k}` {v}" for k, v in sorted(counts.items()))]
    lines += ["", "## Not tested, because moto cannot emulate it", ""]
    lines += [f"- **{title}**: {text}" for title, text in MOTO_GAPS]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0] if args else "build/reliability")
    out = Path(args[1] if len(args) > 1 else "docs/RELIABILITY.md")
    try:
        text = render(folder)
    except ReportError as exc:
        print(f"reliability report not written: {exc}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
