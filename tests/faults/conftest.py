"""Fault-injection suite: one control plane per module with local.faults installed, and a session-wide
collector of (fault, where, expected, observed, destroyed?, reason) rows written to
``build/reliability/faults.json`` at the end of the session (the input of docs/RELIABILITY.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from local import faults as lf
from local.aws import REPO
from local.runtime import LocalControlPlane
from tests.workflow.conftest import Run, base_tags, start_and_wait, write_checkpoint

OUTPUT = REPO / "build" / "reliability" / "faults.json"


@dataclass
class Row:
    fault: str
    where: str
    expected: str
    observed: str
    destroyed: bool
    """The control plane stopped, hibernated or terminated the instance (EC2 accepted the call)."""
    verified_checkpoint: bool
    """A checkpoint that S3 verified exists for this execution (Verify checkpoint returned verified)."""
    notified: bool
    final_state: str
    reason: str
    injected: int
    passed: bool


class Collector:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def write(self, path: Path = OUTPUT) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [asdict(r) for r in self.rows]
        unsafe = [r for r in rows if r["destroyed"] and not r["verified_checkpoint"]]
        doc = {
            "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "faults": len(rows),
            "destroyed_without_verified_checkpoint": len(unsafe),
            "rows": rows,
        }
        path.write_text(json.dumps(doc, indent=1) + "\n")


@pytest.fixture(scope="session")
def reliability() -> Iterator[Collector]:
    collector = Collector()
    yield collector
    if collector.rows:
        collector.write()


@dataclass
class Plane:
    """A control plane with fault injection."""

    cp: LocalControlPlane
    faults: lf.FaultInjector


def plane(context: dict[str, Any] | None = None) -> Iterator[Plane]:
    with LocalControlPlane(context=context) as cp:
        yield Plane(cp, lf.install(cp.aws))


@pytest.fixture(scope="module")
def fp() -> Iterator[Plane]:
    yield from plane()


def marker_tags(cp: LocalControlPlane, run: str, **extra: str) -> dict[str, str]:
    """Tags whose completion marker does not end in ``_SUCCESS``, so no S3 event starts an execution of its own:
    the test's execution is the only one and every injected fault lands in it."""
    return base_tags(run, completion_marker=f"s3://{cp.deployment.bucket}/runs/{run}/DONE", **extra)


def launch_done(cp: LocalControlPlane, name: str, run: str, *, tags: dict[str, str] | None = None, **launch: Any) -> str:
    """A finished run: a checkpoint on disk and its completion marker in S3."""
    iid = cp.launch_instance(name, tags={**marker_tags(cp, run), **(tags or {})}, **launch)
    write_checkpoint(cp.by_name[name].root, 5)
    cp.put_object(cp.run_uri(run, f"runs/{run}/DONE"), "done")  # the trainer writes it under its instance's prefix
    return iid


def observe(p: Plane, name: str, iid: str, run: Run) -> dict[str, Any]:
    """What happened: outcome, whether we destroyed, whether the checkpoint was verified, the notification."""
    cp = p.cp
    notes = [n for n in cp.notifications() if n.get("execution") == run.name]
    verified = "Checkpoint verified?" in run.states and any(s in run.states for s in ("Stop instance", "Dry run"))
    return {
        "observed": str(run.outcome or run.error or run.status),
        "destroyed": p.faults.destroyed(iid),
        "verified_checkpoint": verified,
        "notified": bool(notes),
        "final_state": cp.instance_state(name),
        "reason": run.reason[:400],
    }


__all__ = ["Collector", "Plane", "Row", "launch_done", "marker_tags", "observe", "plane", "start_and_wait"]
