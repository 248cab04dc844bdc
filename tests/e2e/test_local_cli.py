"""End to end through the README's commands: ``python -m local demo`` and ``python -m local simulate``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def run_local(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "local", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def simulate(scenario: Path, tmp_path: Path) -> dict[str, Any]:
    report = tmp_path / "report.json"
    proc = run_local("simulate", str(scenario), "--report", str(report))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(report.read_text())


def test_demo_stops_the_instance_after_a_verified_checkpoint() -> None:
    proc = run_local("demo")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    numbered = [
        line.split(None, 1) for line in out.splitlines() if re.fullmatch(r"\d+(-\d+)?", line.split(None, 1)[0] if line.strip() else "")
    ]
    names = [rest.rsplit(None, 1)[0] if "×" not in rest else rest for _, rest in numbered]
    assert names[0] == "Evaluate completion" and names[-1] == "Done"
    assert names.index("Verify checkpoint") < names.index("Stop instance")
    # No poll loop: the execution waits for the command's and the stop's events (task tokens), so the path is the
    # same eleven states whatever the checkpoint's size.
    assert [n for n, _ in numbered] == [str(i) for i in range(1, 12)], numbered
    assert names[2:7] == ["Run checkpoint command", "Verify checkpoint", "Checkpoint verified?", "Stop instance", "Instance stopped?"]
    # Steps as sentences, not JSON; the outcome; then the way to a deployed stack and a tagged instance.
    assert "step 1: the trainer on trainer-1 finished and exited (" in out and "step 2: every execution ended (" in out
    assert not [line for line in out.splitlines() if line.strip().startswith("step ") and "{" in line]
    assert "outcome Stopped" in out
    assert "instance trainer-1" in out and ": stopped" in out
    assert out.rstrip().splitlines()[-4:-1] == [
        "    make deploy                                  # the stack, through the pinned CDK CLI; writes cdk-outputs.json",
        "    .venv/bin/autostop tag i-0123456789abcdef0 --run-id my-run --checkpoint-dir /home/ubuntu/checkpoints",
        "    .venv/bin/autostop status my-run             # the run's record, checkpoint and outcome",
    ]


def test_example_scenario_report(tmp_path: Path) -> None:
    report = simulate(REPO / "examples" / "scenario.json", tmp_path)
    state = {i["name"]: i["state"] for i in report["instances"]}
    assert state == {"trainer-a": "stopped", "trainer-b": "terminated", "idle-c": "running"}
    outcomes = sorted(e["outcome"] for e in report["executions"])
    assert outcomes == ["Stopped", "Terminated"]
    for ex in report["executions"]:
        assert ex["states"][0] == "Evaluate completion" and ex["states"][-1] == "Done"
    idle = next(i["id"] for i in report["instances"] if i["name"] == "idle-c")
    assert "absolute path" in report["steps"][1]["sweep"]["skipped"][idle]
    manifests = [o for o in report["objects"] if "/manifests/" in o["uri"]]
    assert len(manifests) == 2 and all(o["checksum"].startswith("SHA256:") for o in manifests)
    assert sorted(n["outcome"] for n in report["notifications"]) == ["NotEvaluated", "Stopped", "Terminated"]
    # idle-c's invalid tag is visible on the instance and in the sweep's one notice, not only in a log line
    (notice,) = [n for n in report["notifications"] if n["outcome"] == "NotEvaluated"]
    assert list(notice["instances"]) == [idle] and "absolute path" in notice["instances"][idle]["reason"]
    assert report["function_errors"] == []


def test_failure_variant_upload_unverified_keeps_the_instance_running(tmp_path: Path) -> None:
    report = simulate(REPO / "examples" / "upload-unverified.json", tmp_path)
    [execution] = report["executions"]
    assert (execution["status"], execution["outcome"]) == ("FAILED", "UploadUnverified")
    assert "missing" in execution["cause"]
    assert "Stop instance" not in execution["states"]
    assert [i["state"] for i in report["instances"]] == ["running"]
    assert [n["outcome"] for n in report["notifications"]] == ["UploadUnverified"]


def test_corrupted_upload_is_caught_by_the_verifier(tmp_path: Path) -> None:
    scenario = json.loads((REPO / "examples" / "upload-unverified.json").read_text())
    scenario["name"] = "corrupt-upload"
    scenario["instances"][0]["faults"] = ["corrupt_upload"]
    path = tmp_path / "corrupt.json"
    path.write_text(json.dumps(scenario))
    report = simulate(path, tmp_path)
    [execution] = report["executions"]
    assert execution["outcome"] == "UploadUnverified"
    assert "bytes in S3" in execution["cause"]
    assert report["instances"][0]["state"] == "running"


def test_invalid_scenario_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"instances": [{"name": "x", "trainer": {"bogus_option": 1}}], "steps": [{"step": "tick"}]}))
    proc = run_local("simulate", str(bad), "--report", str(tmp_path / "r.json"))
    assert proc.returncode == 2
    assert "unknown trainer option(s) ['bogus_option']" in proc.stderr
    assert "'tick'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r.json").exists()


def test_spot_example_checkpoints_on_warnings_and_tagged_rebalance_without_stopping(tmp_path: Path) -> None:
    report = simulate(REPO / "examples" / "spot.json", tmp_path)
    ids = {i["name"]: i["id"] for i in report["instances"]}
    by_name = {next(n for n, i in ids.items() if e["name"].startswith(i)): e for e in report["executions"]}
    # spot-d (no on-rebalance tag) got nothing; the other three one SpotCheckpointSaved each, never a stop.
    assert sorted(by_name) == ["spot-a", "spot-b", "spot-c"]
    assert {n: e["outcome"] for n, e in by_name.items()} == dict.fromkeys(("spot-a", "spot-b", "spot-c"), "SpotCheckpointSaved")
    assert all("Stop instance" not in e["states"] for e in by_name.values())
    assert "-interruption-" in by_name["spot-a"]["name"] and "-rebalance-" in by_name["spot-c"]["name"]
    late = by_name["spot-b"]["output"]["reason"]
    grace = int(late.split("trainer grace ")[1].split(" s")[0])
    assert grace <= 5, late  # 50 s left at the notice: 45 s are kept for the upload
    records = {r["run_id"]: r for r in report["run_records"]}
    assert sorted(records) == ["spot-a", "spot-b", "spot-c"]
    assert all(r["last_checkpoint"]["manifest_uri"] == by_name[r["run_id"]]["output"]["manifest_uri"] for r in records.values())
    assert report["function_errors"] == []


def test_resume_example_restores_trains_on_and_stops_again_under_a_second_record(tmp_path: Path) -> None:
    report = simulate(REPO / "examples" / "resume.json", tmp_path)
    executions = sorted(report["executions"], key=lambda e: e["name"].rsplit("-", 1)[-1])
    kinds = [(e["name"].split("-run-r-")[1].split("-")[0], e["outcome"]) for e in executions]
    assert sorted(kinds) == [("complete", "Stopped"), ("complete", "Stopped"), ("resume", "Resumed")]
    first_session = {e["name"].rsplit("-", 1)[-1] for e in executions if e["outcome"] == "Stopped"}
    assert len(first_session) == 2  # each stop in its own session
    assert [i["state"] for i in report["instances"]] == ["stopped"]
    records = sorted(report["run_records"], key=lambda r: r["session"])
    assert [sorted(r["locks"]) for r in records] == [["complete"], ["complete", "resume"]]
    assert [r["last_checkpoint"]["step"] for r in records] == [10, 30]
    assert report["function_errors"] == []
