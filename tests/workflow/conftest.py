"""Workflow scenarios: the synthesized state machine on moto's executor, real handlers, real documents.

One control plane per module (synthesized once, deployed into moto once); each test launches its own
instances, so tests do not see each other's runs.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from local.report import execution_states, outcome_of
from local.runtime import LocalControlPlane
from shared.executions import StartResult, start_lifecycle_execution
from shared.instances import snapshot


@dataclass
class Run:
    """A finished execution as a test sees it."""

    name: str
    status: str
    outcome: str | None
    states: list[str]
    error: str | None
    cause: str | None
    output: dict[str, Any] | None

    @property
    def reason(self) -> str:
        return str((self.output or {}).get("reason") or self.cause or "")


@pytest.fixture(scope="module")
def cp() -> Iterator[LocalControlPlane]:
    with LocalControlPlane() as plane:
        yield plane


def base_tags(run: str, **extra: str) -> dict[str, str]:
    tags = {"autostop:enabled": "true", "autostop:run-id": run, "autostop:checkpoint-dir": "{root}/ckpt"}
    tags.update({f"autostop:{k.replace('_', '-')}": v for k, v in extra.items()})
    return tags


def write_checkpoint(root: Path, step: int, size: int = 2048) -> Path:
    """A complete directory checkpoint on the simulated instance's disk."""
    d = root / "ckpt" / f"step-{step:06d}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.bin").write_bytes(bytes(range(256)) * (size // 256))
    (d / "meta.json").write_text(json.dumps({"step": step}))
    return d


def session_of(cp: LocalControlPlane, instance_id: str) -> str | None:
    """The instance's current session (LaunchTime), as the triggers name it."""
    raw = cp.aws.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return snapshot(raw).session


def start_as_trigger(cp: LocalControlPlane, instance_id: str, run_id: str, source: str = "test") -> StartResult:
    """Start the run's lifecycle execution as a trigger would (same name, so a trigger's own execution for the same
    run and session is this one), without waiting."""
    return start_lifecycle_execution(
        cp.aws.client("stepfunctions"),
        cp.deployment.state_machine_arn,
        instance_id=instance_id,
        run_id=run_id,
        reason="complete",
        trigger={"source": source},
        session=session_of(cp, instance_id),
    )


def start_and_wait(cp: LocalControlPlane, instance_id: str, run_id: str, timeout: float = 90) -> Run:
    """:func:`start_as_trigger`, then wait for the execution to close."""
    return wait_closed(cp, start_as_trigger(cp, instance_id, run_id).execution_arn, timeout)


def wait_closed(cp: LocalControlPlane, arn: str, timeout: float = 90) -> Run:
    sfn = cp.aws.client("stepfunctions")
    deadline = time.monotonic() + timeout
    while True:
        d = sfn.describe_execution(executionArn=arn)
        if d["status"] != "RUNNING":
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{arn} still RUNNING")
        time.sleep(0.2)
    outcome, output = outcome_of(d)
    return Run(
        name=d["name"],
        status=d["status"],
        outcome=outcome,
        states=[s["name"] for s in execution_states(sfn, arn)],
        error=d.get("error"),
        cause=d.get("cause"),
        output=output,
    )


def checkpoint_commands(cp: LocalControlPlane, instance_id: str) -> list[dict[str, Any]]:
    return [c for c in cp.fleet.sent if instance_id in c["instance_ids"] and "Checkpoint" in c["document"]]


def run_key(cp: LocalControlPlane, key: str) -> str:
    """KEY of a run (``runs/<run-id>/...``) as stored: under the own prefix of the instance tagged with that run."""
    match = re.match(r"runs/([^/]+)/", key)
    return cp.run_uri(match.group(1), key).split("/", 3)[3] if match else key


def keys(cp: LocalControlPlane, prefix: str) -> list[str]:
    resp = cp.aws.client("s3").list_objects_v2(Bucket=cp.deployment.bucket, Prefix=run_key(cp, prefix))
    return [o["Key"] for o in resp.get("Contents", [])]
