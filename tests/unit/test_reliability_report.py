"""docs/RELIABILITY.md is rendered only from a run that shows nothing unsafe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from local.reliability import ReportError, main, render

SAFE_FAULT = {
    "fault": "throttle StopInstances once",
    "where": "lambda ec2:StopInstances",
    "expected": "Stopped",
    "observed": "Stopped",
    "destroyed": True,
    "verified_checkpoint": True,
    "notified": True,
    "reason": "StopInstances accepted after 2 object(s) verified",
    "passed": True,
}
KEPT = {**SAFE_FAULT, "fault": "object missing", "observed": "UploadUnverified", "expected": "UploadUnverified", "destroyed": False}
BAD = {"case": "checkpoint-dir ../etc", "kind": "tag", "outcome": "skipped", "reason": "must be an absolute path", "acted": False}
PROPERTY = {
    "examples_run": 8,
    "drawn": {"events": {"marker": 30, "sweep": 10}},
    "faults_injected": {"lose_object": 2, "ssm:SendCommand:5xx": 1},
    "destructive_actions": {"observed": 3, "proven_by_verified_checkpoint": 3},
    "violations": 0,
    "violation_details": [],
}


def write(folder: Path, faults: list[dict[str, Any]], bad: list[dict[str, Any]], prop: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "faults.json").write_text(json.dumps({"rows": faults}))
    (folder / "bad_input.json").write_text(json.dumps({"rows": bad}))
    (folder / "property.json").write_text(json.dumps(prop))
    return folder


def test_a_safe_run_is_rendered_with_every_row_and_the_moto_gaps(tmp_path: Path) -> None:
    text = render(write(tmp_path, [SAFE_FAULT, KEPT], [BAD], PROPERTY))
    assert "| throttle StopInstances once |" in text and "| yes, verified |" in text
    assert "| object missing |" in text and "| UploadUnverified | no |" in text
    assert "| checkpoint-dir ../etc | tag | skipped | no |" in text
    assert "**8 examples**, 40 events, 3 faults injected" in text and "violations: **0**" in text
    assert "3 stops/terminations, 3 of them proven" in text
    assert "## Not tested, because moto cannot emulate it" in text and "BadDigest" in text


@pytest.mark.parametrize(
    ("faults", "bad", "prop", "message"),
    [
        ([{**SAFE_FAULT, "verified_checkpoint": False}], [BAD], PROPERTY, "destroyed without a verified checkpoint"),
        ([SAFE_FAULT], [{**BAD, "acted": True}], PROPERTY, "was acted on"),
        ([SAFE_FAULT], [BAD], {**PROPERTY, "violations": 1, "violation_details": ["i-1 stopped twice"]}, "property violation"),
        (
            [SAFE_FAULT],
            [BAD],
            {**PROPERTY, "destructive_actions": {"observed": 3, "proven_by_verified_checkpoint": 2}},
            "not proven by a verified checkpoint",
        ),
        ([{**KEPT, "passed": False, "observed": "Stopped"}], [BAD], PROPERTY, "expected UploadUnverified"),
    ],
)
def test_an_unsafe_run_is_refused_and_nothing_is_written(
    tmp_path: Path, faults: list[dict[str, Any]], bad: list[dict[str, Any]], prop: dict[str, Any], message: str
) -> None:
    folder = write(tmp_path / "rows", faults, bad, prop)
    with pytest.raises(ReportError, match=message):
        render(folder)
    out = tmp_path / "RELIABILITY.md"
    assert main([str(folder), str(out)]) == 1 and not out.exists()


def test_a_missing_suite_file_is_a_clear_error(tmp_path: Path) -> None:
    folder = write(tmp_path, [SAFE_FAULT], [BAD], PROPERTY)
    (folder / "property.json").unlink()
    with pytest.raises(ReportError, match="property.json is missing: run `make reliability`"):
        render(folder)
