"""Bad-input suite fixtures: a shared emulated world per module, captured function logs, and the report.

The world is the integration tests' :class:`~tests.integration.conftest.World` (moto, simulated SSM agents
running the stack's real documents, the bucket, the runs table, a stand-in state machine), built once per
module so that a hundred bad-tag instances cost one world. Every case appends a row to the session's
report, written to ``build/reliability/bad_input.json`` for ``docs/RELIABILITY.md``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from infra.constructs.documents import CHECKPOINT_PARAMETERS, PROBE_PARAMETERS, command_content
from local.agent import AgentFleet
from local.aws import LocalAws
from tests.conftest import function_env
from tests.integration.conftest import BUCKET, RUNS_TABLE, World, create_runs_table, outcome_topic

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "build" / "reliability" / "bad_input.json"
CHECKPOINT_DOCUMENT = "Autostop-Checkpoint"


@dataclass
class SharedWorld(World):
    """A :class:`World` whose boto3 clients are made once (a client costs ~30 ms; hundreds of instances need many)."""

    clients: dict[str, Any] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        if service not in self.clients:
            self.clients[service] = self.aws.client(service)
        return self.clients[service]


@contextmanager
def shared_world(tmp: Path) -> Iterator[World]:
    """The integration ``world`` fixture's setup, for one module: same documents, bucket, table and stand-in
    state machine; every AWS call the handlers make is counted (``World.calls``)."""
    with LocalAws() as aws, mock.patch.dict(os.environ, {**function_env(), "AUTOSTOP_RUNS_TABLE": RUNS_TABLE}):
        fleet = AgentFleet(aws, delivery_timeout_cap=0.5)
        ssm = aws.client("ssm")
        for name, script, params in (
            ("Autostop-Probe", "probe.sh", PROBE_PARAMETERS),
            (CHECKPOINT_DOCUMENT, "checkpoint.sh", CHECKPOINT_PARAMETERS),
        ):
            timeout = "60" if script == "probe.sh" else "{{ executionTimeout }}"
            content = command_content("test", script, params, step=script.removesuffix(".sh"), timeout=timeout)
            ssm.create_document(Name=name, Content=json.dumps(content), DocumentType="Command", DocumentFormat="JSON")
        aws.client("s3").create_bucket(Bucket=BUCKET)
        aws.client("s3").put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})  # as the stack's bucket
        create_runs_table(aws.client("dynamodb"))
        aws.client("iam").create_role(RoleName="sfn", AssumeRolePolicyDocument="{}")
        arn = aws.client("stepfunctions").create_state_machine(
            name="lifecycle",
            definition=json.dumps({"StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 1, "End": True}}}),
            roleArn="arn:aws:iam::123456789012:role/sfn",
        )["stateMachineArn"]
        os.environ["AUTOSTOP_STATE_MACHINE_ARN"] = arn
        os.environ["AUTOSTOP_OUTCOME_TOPIC_ARN"] = outcome_topic(aws)
        from shared.clients import client
        from shared.settings import settings

        client.cache_clear()
        settings.cache_clear()
        world = SharedWorld(aws=aws, fleet=fleet, tmp=tmp, state_machine_arn=arn)
        world.count_calls()
        for service in ("dynamodb",):  # count_calls hooks ec2, s3, ssm, stepfunctions; the run records too
            client(service).meta.events.register("before-call", lambda model, **_: world.calls.update([model.name]))
        try:
            yield world
        finally:
            for inst in fleet.instances.values():
                inst.power_off()
            client.cache_clear()
            settings.cache_clear()


def checkpoint_commands(world: World) -> list[dict[str, Any]]:
    """Every SendCommand of the checkpoint document the simulated agents accepted."""
    return [s for s in world.fleet.sent if s["document"] == CHECKPOINT_DOCUMENT]


def instance_tags(world: World, instance_id: str) -> dict[str, str]:
    resp = world.client("ec2").describe_instances(InstanceIds=[instance_id])
    return {t["Key"]: t["Value"] for t in resp["Reservations"][0]["Instances"][0].get("Tags", [])}


def instance_state(world: World, instance_id: str) -> str:
    resp = world.client("ec2").describe_instances(InstanceIds=[instance_id])
    return str(resp["Reservations"][0]["Instances"][0]["State"]["Name"])


# --- logs ---------------------------------------------------------------------------------------------------------


@dataclass
class LogLines(logging.Handler):
    """Every line the functions log (Powertools logger), with its ``extra`` keys."""

    lines: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        logging.Handler.__init__(self)

    def emit(self, record: logging.LogRecord) -> None:
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        self.lines.append({"level": record.levelname, "message": record.getMessage(), **extra})

    def mark(self) -> int:
        return len(self.lines)

    def since(self, mark: int) -> list[dict[str, Any]]:
        return self.lines[mark:]

    def text(self, mark: int = 0) -> str:
        return "\n".join(json.dumps(line, default=str) for line in self.since(mark))

    __hash__ = logging.Handler.__hash__


_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


@pytest.fixture(scope="session")
def logs() -> Iterator[LogLines]:
    from shared.observability import logger

    handler = LogLines()
    logger._logger.addHandler(handler)
    yield handler
    logger._logger.removeHandler(handler)


# --- the report ---------------------------------------------------------------------------------------------------


class Report:
    """Rows of ``build/reliability/bad_input.json``: one per case tried (``control``: a well-formed input, acted on as
    it should be; every other row must have ``acted`` false, which ``local/reliability.py`` checks)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, case: str, kind: str, value: Any, outcome: str, reason: str, *, acted: bool, **more: Any) -> None:
        self.rows.append(
            {
                "case": case,
                "kind": kind,
                "input": _short(value),
                "outcome": outcome,
                "reason": reason[:400],
                "acted": acted,
                **more,
            }
        )


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=True)
    text = text.encode("unicode_escape").decode() if isinstance(value, str) else text
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


@pytest.fixture(scope="session")
def report() -> Iterator[Report]:
    rep = Report()
    yield rep
    if not rep.rows:
        return
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(rep.rows, key=lambda r: (r["kind"], r["case"]))
    kinds: dict[str, int] = {}
    for row in rows:
        kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
    REPORT.write_text(
        json.dumps(
            {
                "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "cases": len(rows),
                "acted": sum(r["acted"] for r in rows),
                "controls": sum(bool(r.get("control")) for r in rows),
                "by_kind": kinds,
                "rows": rows,
            },
            indent=1,
            ensure_ascii=True,
        )
        + "\n"
    )
