"""Property suite: one control plane per module with local.faults installed, an :class:`Observer` that sees
every destructive EC2 call, checkpoint command and tag write *as the control plane makes it* (when, from
which caller, inside which Step Functions execution and state, in which session of the instance), and a
session-wide :class:`Stats` written to ``build/reliability/property.json`` at the end.

The observer takes nothing from the code under test: the caller comes from the Python stack of the thread
that made the call (code under ``lambdas/``, moto's Step Functions executor, or neither: the test), the
execution from the executor's own ``Environment`` on that stack, the session and tags from moto's EC2
backend at that very moment.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from local import faults as lf
from local.aws import ACCOUNT, LAMBDAS, REGION, REPO
from local.runtime import LocalControlPlane

OUTPUT = REPO / "build" / "reliability" / "property.json"
EXAMPLES = int(os.environ.get("AUTOSTOP_PROPERTY_EXAMPLES", "8"))
SEED = os.environ.get("AUTOSTOP_PROPERTY_SEED") or None
_LAMBDAS_DIR = str(LAMBDAS) + os.sep
_SFN_DIR = os.sep + os.path.join("moto", "stepfunctions") + os.sep
_AWS_PY = str(REPO / "local" / "aws.py")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "property: the control plane's invariant as a Hypothesis property (tests/property)")


# --- what the control plane did, as it did it ------------------------------------------------------------


@dataclass
class Caller:
    origin: str
    """``lambda`` (code under lambdas/), ``sfn`` (the state machine's own Task) or ``other`` (the test)."""
    execution: str | None
    """The Step Functions execution whose thread made the call, if any."""
    state: str | None


@dataclass
class Destroy:
    """One StopInstances / TerminateInstances that EC2 accepted (seen inside moto, after the state changed)."""

    instance_id: str
    operation: str
    hibernate: bool
    at: datetime
    caller: Caller
    session: datetime | None
    """The instance's LaunchTime when the call was made (its current session)."""
    tags: dict[str, str]
    """The instance's tags when the call was made."""

    @property
    def kind(self) -> str:
        return "Hibernate" if self.hibernate else self.operation


@dataclass
class Command:
    """One SendCommand that SSM accepted (the simulated fleet stored it)."""

    command_id: str
    document: str
    instance_ids: list[str]
    parameters: dict[str, str]
    at: datetime
    caller: Caller
    sessions: dict[str, datetime | None]


@dataclass
class TagWrite:
    """One CreateTags / DeleteTags attempt by the control plane."""

    operation: str
    resources: list[str]
    keys: list[str]
    caller: Caller


def _environment_class() -> type | None:
    try:
        from moto.stepfunctions.parser.asl.eval.environment import Environment
    except ImportError:  # pragma: no cover - moto moved it
        return None
    return Environment


def caller(skip: int = 2) -> Caller:
    """Who is making the current call: walk this thread's stack (innermost first)."""
    env_cls = _environment_class()
    origin = None
    execution = state = None
    frame = sys._getframe(skip)
    while frame is not None:
        name = frame.f_code.co_filename
        if origin is None and name.startswith(_LAMBDAS_DIR):
            origin = "lambda"
        elif origin is None and _SFN_DIR in name:
            origin = "sfn"
        if execution is None and env_cls is not None and _SFN_DIR in name:
            for value in frame.f_locals.values():
                if isinstance(value, env_cls):
                    data = value.states.context_object.context_object_data
                    execution = str(data.get("Execution", {}).get("Name") or "") or None
                    state = str((data.get("State") or {}).get("Name") or "") or None
                    break
        frame = frame.f_back  # type: ignore[assignment]
    return Caller(origin or "other", execution, state)


def _ec2_backend() -> Any:
    from moto.ec2.models import ec2_backends

    return ec2_backends[ACCOUNT][REGION]


def launch_time(iid: str) -> datetime | None:
    """The instance's LaunchTime as moto holds it right now (naive UTC there), or None."""
    try:
        value = _ec2_backend().get_instance(iid).launch_time
    except Exception:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(microsecond=0)  # EC2's LaunchTime has whole seconds


def current_tags(iid: str) -> dict[str, str]:
    return dict(_ec2_backend().tags.get(iid, {}))


class _Recording(list):  # type: ignore[type-arg]
    """``AgentFleet.sent``, with a hook called (in the sending thread) for every accepted command."""

    def __init__(self, items: list[Any], hook: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(items)
        self._hook = hook

    def append(self, item: Any) -> None:
        self._hook(item)
        super().append(item)


class Observer:
    """Installed once per control plane; examples read the entries of their own instances."""

    def __init__(self, cp: LocalControlPlane, injector: lf.FaultInjector) -> None:
        self.destroys: list[Destroy] = []
        self.commands: list[Command] = []
        self.tag_writes: list[TagWrite] = []
        self.problems: list[str] = []
        self._lock = threading.Lock()
        cp.aws.on_instances_stopped.append(self._stopped)
        cp.fleet.sent = _Recording(cp.fleet.sent, self._sent)
        # Observers first in the injector's list: they never fail a call (``when`` answers False), so the
        # faults behind them still apply, and every attempt of the control plane passes through them.
        for operation in ("CreateTags", "DeleteTags"):
            fault = lf.AwsFault("ec2", operation, "throttle", times=None, when=self._tag_observer(operation))
            with injector._lock:
                injector.faults.insert(0, fault)

    def _stopped(self, ids: list[str]) -> None:
        try:
            who = caller(3)
            operation = "StopInstances"
            frame = sys._getframe(1)
            while frame is not None:
                if frame.f_code.co_filename == _AWS_PY and frame.f_code.co_name in ("stop_instances", "terminate_instances"):
                    operation = "TerminateInstances" if frame.f_code.co_name == "terminate_instances" else "StopInstances"
                    break
                frame = frame.f_back  # type: ignore[assignment]
            params = (getattr(lf._local, "params", None) or [{}])[-1] or {}
            now = datetime.now(UTC)
            for iid in ids:
                entry = Destroy(
                    instance_id=iid,
                    operation=operation,
                    hibernate=bool(params.get("Hibernate")) and operation == "StopInstances",
                    at=now,
                    caller=who,
                    session=launch_time(iid),
                    tags=current_tags(iid),
                )
                with self._lock:
                    self.destroys.append(entry)
        except Exception as exc:  # never break the call being observed; the example reports it
            self.problems.append(f"observer failed on a stop: {type(exc).__name__}: {exc}")

    def _sent(self, item: dict[str, Any]) -> None:
        try:
            ids = list(item.get("instance_ids") or [])
            entry = Command(
                command_id=str(item.get("command_id")),
                document=str(item.get("document")),
                instance_ids=ids,
                parameters=dict(item.get("parameters") or {}),
                at=datetime.now(UTC),
                caller=caller(3),
                sessions={iid: launch_time(iid) for iid in ids},
            )
            with self._lock:
                self.commands.append(entry)
        except Exception as exc:
            self.problems.append(f"observer failed on a command: {type(exc).__name__}: {exc}")

    def _tag_observer(self, operation: str) -> Callable[[dict[str, Any]], bool]:
        def when(params: dict[str, Any]) -> bool:
            try:
                entry = TagWrite(
                    operation=operation,
                    resources=list(params.get("Resources") or []),
                    keys=[str(t.get("Key")) for t in params.get("Tags") or []],
                    caller=caller(3),
                )
                with self._lock:
                    self.tag_writes.append(entry)
            except Exception as exc:
                self.problems.append(f"observer failed on {operation}: {type(exc).__name__}: {exc}")
            return False

        return when


@dataclass
class Plane:
    cp: LocalControlPlane
    faults: lf.FaultInjector
    observer: Observer


@pytest.fixture(scope="module")
def plane() -> Iterator[Plane]:
    with LocalControlPlane(agent_boot_seconds=0.5) as cp:
        injector = lf.install(cp.aws)
        yield Plane(cp, injector, Observer(cp, injector))


# --- the report -------------------------------------------------------------------------------------------


@dataclass
class Stats:
    examples: int = 0
    failed_examples: int = 0
    seconds: list[float] = field(default_factory=list)
    instances: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    aws_faults: Counter[str] = field(default_factory=Counter)
    instance_faults: Counter[str] = field(default_factory=Counter)
    faults_injected: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    destructive: Counter[str] = field(default_factory=Counter)
    proven: Counter[str] = field(default_factory=Counter)
    checkpoint_commands: int = 0
    trainer_signals: int = 0
    forged_versions: int = 0
    """Object and manifest versions the second tenant wrote over other runs' keys."""
    violations: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def write(self, path: Path = OUTPUT) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        secs = sorted(self.seconds)
        doc = {
            "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "settings": {
                "max_examples": EXAMPLES,
                "derandomize": SEED is None,
                "seed": SEED,
                "command": "AUTOSTOP_PROPERTY_EXAMPLES=N [AUTOSTOP_PROPERTY_SEED=S] pytest tests/property",
            },
            "examples_run": self.examples,
            "examples_failed": self.failed_examples,
            "seconds": {
                "total": round(time.monotonic() - self.started, 1),
                "per_example_mean": round(sum(secs) / len(secs), 1) if secs else 0,
                "per_example_max": round(secs[-1], 1) if secs else 0,
            },
            "drawn": {
                "instances": dict(sorted(self.instances.items())),
                "events": dict(sorted(self.events.items())),
                "aws_faults": dict(sorted(self.aws_faults.items())),
                "instance_faults": dict(sorted(self.instance_faults.items())),
            },
            "faults_injected": dict(sorted(self.faults_injected.items())),
            "execution_outcomes": dict(sorted(self.outcomes.items())),
            "checkpoint_commands": self.checkpoint_commands,
            "trainer_signal_lines": self.trainer_signals,
            "second_tenant_forged_versions": self.forged_versions,
            "destructive_actions": {
                "observed": sum(self.destructive.values()),
                "by_kind": dict(sorted(self.destructive.items())),
                "proven_by_verified_checkpoint": sum(self.proven.values()),
                "proven_by_kind": dict(sorted(self.proven.items())),
            },
            "violations": len(self.violations),
            "violation_details": self.violations[-20:],
        }
        path.write_text(json.dumps(doc, indent=1, default=str) + "\n")


@pytest.fixture(scope="session")
def stats() -> Iterator[Stats]:
    collected = Stats()
    yield collected
    if collected.examples:
        collected.write()
