"""Scenario files for ``python -m local simulate``: instances to launch, then steps to run in order.

Format (JSON)::

    {
      "name": "demo",
      "instances": [
        {"name": "trainer-1", "market": "on-demand", "agent": "online", "faults": [],
         "tags": {"autostop:enabled": "true", "autostop:run-id": "demo-run",
                  "autostop:checkpoint-dir": "{root}/checkpoints", "autostop:pid-file": "{root}/trainer.pid"},
         "trainer": {"steps": 10, "step_seconds": 0.05, "marker_uri": "s3://{bucket}/{prefix}runs/demo-run/_SUCCESS"}}
      ],
      "steps": [
        {"step": "wait_for_trainer_exit", "instance": "trainer-1"},
        {"step": "put_object", "instance": "trainer-1", "uri": "s3://{bucket}/{prefix}runs/demo-run/_SUCCESS", "body": "done"},
        {"step": "schedule_tick"},
        {"step": "sleep", "seconds": 1},
        {"step": "wait_executions", "timeout": 120}
      ]
    }

``{root}`` is the instance's sandbox folder (its disk), ``{bucket}`` the checkpoint bucket, ``{name}``
the instance name, ``{prefix}`` its own key prefix ``instances/<instance ARN>/`` (the only keys the instance may
write: its trainer's completion marker goes there; a ``put_object`` step names the ``instance`` it acts as).
``spot`` (``one-time`` | ``persistent``) makes a spot instance of that request type.
Steps that act on one instance: ``spot_interruption`` {instance, seconds_left (0..120, default 120: the
notice is on time; fewer: it is 120 - seconds_left s old), action (terminate | stop | hibernate)},
``rebalance_recommendation`` {instance}, ``stop_instance`` / ``start_instance`` {instance} (what a person
does in the console; a started machine keeps its disk, runs nothing, and its agent is online after
``agent_boot_seconds``, a scenario key, default 2). ``trainer`` keys are ``local/trainer.py`` options with ``_`` for ``-``; the
checkpoint dir, PID file and log file default to the instance's autostop tags. ``trainer: null``
starts no trainer. ``faults`` (simulation only): ``corrupt_upload``, ``lose_object`` (see local/faults.sh).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from local.runtime import LocalControlPlane
from local.trainer import build_parser as trainer_parser


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InstanceSpec(Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,40}$")
    tags: dict[str, str] = {}
    market: Literal["on-demand", "spot"] = "on-demand"
    spot: Literal["one-time", "persistent"] | None = None
    """Spot request type (implies ``market: spot``); ``market: spot`` alone means persistent."""
    agent: Literal["online", "offline"] = "online"
    trainer: dict[str, Any] | None = None
    faults: list[Literal["corrupt_upload", "lose_object"]] = []

    @field_validator("trainer")
    @classmethod
    def _known_trainer_options(cls, trainer: dict[str, Any] | None) -> dict[str, Any] | None:
        if trainer is None:
            return None
        options = {a.dest for a in trainer_parser()._actions if a.dest != "help"}
        unknown = sorted(set(trainer) - options)
        if unknown:
            raise ValueError(f"unknown trainer option(s) {unknown}; known: {sorted(options)} (see python local/trainer.py --help)")
        return trainer

    @model_validator(mode="after")
    def _spot_market(self) -> InstanceSpec:
        if self.spot is not None:
            self.market = "spot"
        elif self.market == "spot":
            self.spot = "persistent"
        return self

    def trainer_argv(self, prefix: str) -> list[str] | None:
        """The trainer's command-line options; checkpoint dir, PID and log file default to the tags."""
        if self.trainer is None:
            return None
        opts = dict(self.trainer)
        for option, tag in (("checkpoint_dir", "checkpoint-dir"), ("pid_file", "pid-file"), ("log_file", "log-file")):
            if option not in opts and f"{prefix}:{tag}" in self.tags:
                opts[option] = self.tags[f"{prefix}:{tag}"]
        argv: list[str] = []
        for key, value in opts.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        return argv


class WaitForTrainerExit(Model):
    step: Literal["wait_for_trainer_exit"]
    instance: str | None = None
    timeout: float = 120


class PutObject(Model):
    step: Literal["put_object"]
    uri: str
    body: str = ""
    instance: str | None = None
    """The instance (or its trainer) that puts it: expands ``{prefix}`` and ``{root}``."""


class ScheduleTick(Model):
    step: Literal["schedule_tick"]


class Sleep(Model):
    step: Literal["sleep"]
    seconds: float = Field(ge=0, le=600)


class WaitExecutions(Model):
    step: Literal["wait_executions"]
    timeout: float = 180


class SpotInterruption(Model):
    step: Literal["spot_interruption"]
    instance: str
    seconds_left: int = Field(default=120, ge=0, le=120, strict=True)
    """Seconds until EC2 reclaims the instance when the warning is put (120 = on time; less = a late notice)."""
    action: Literal["terminate", "stop", "hibernate"] = "terminate"


class RebalanceRecommendation(Model):
    step: Literal["rebalance_recommendation"]
    instance: str


class StopInstance(Model):
    step: Literal["stop_instance"]
    instance: str


class StartInstance(Model):
    step: Literal["start_instance"]
    instance: str


Step = Annotated[
    WaitForTrainerExit
    | PutObject
    | ScheduleTick
    | Sleep
    | WaitExecutions
    | SpotInterruption
    | RebalanceRecommendation
    | StopInstance
    | StartInstance,
    Field(discriminator="step"),
]


class Scenario(Model):
    name: str = "scenario"
    description: str = ""
    context: dict[str, Any] = {}
    """CDK context overrides for this run (cdk.json keys)."""
    instances: list[InstanceSpec] = Field(min_length=1)
    steps: list[Step] = []
    agent_boot_seconds: float = Field(default=2.0, ge=0, le=600)
    """How long a started instance's SSM agent takes to come online."""

    @model_validator(mode="after")
    def _known_instances(self) -> Scenario:
        names = [i.name for i in self.instances]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"instance names must be unique: {duplicates}")
        for number, step in enumerate(self.steps, 1):
            instance = getattr(step, "instance", None)
            if instance is not None and instance not in names:
                raise ValueError(f"step {number} ({step.step}) names instance {instance!r}, which is not one of {names}")
        return self

    @classmethod
    def load(cls, path: Path) -> Scenario:
        return cls.model_validate(json.loads(path.read_text()))


def run_steps(cp: LocalControlPlane, scenario: Scenario, log: Any = print) -> list[dict[str, Any]]:
    """Launch the scenario's instances, then run its steps; returns a record of each step."""
    prefix = cp.deployment.environment.get("AUTOSTOP_TAG_PREFIX", "autostop")
    for spec in scenario.instances:
        iid = cp.launch_instance(
            spec.name,
            tags=spec.tags,
            market=spec.market,
            spot=spec.spot,
            agent=spec.agent,
            trainer=spec.trainer_argv(prefix),
            faults=list(spec.faults),
        )
        market = f"spot ({spec.spot})" if spec.spot else spec.market
        log(f"  launched {spec.name} ({iid}, {market}, agent {spec.agent}{', trainer started' if spec.trainer is not None else ''})")
    names = {inst.instance_id: name for name, inst in cp.by_name.items()}
    records: list[dict[str, Any]] = []
    for number, step in enumerate(scenario.steps, 1):
        started = time.monotonic()
        record: dict[str, Any] = {"step": step.step}
        if isinstance(step, WaitForTrainerExit):
            cp.wait_for_trainer_exit(step.instance, timeout=step.timeout)
            record["instance"] = step.instance or "all"
        elif isinstance(step, PutObject):
            uri = cp.placeholders(step.instance or "-").expand(step.uri)
            cp.put_object(uri, step.body)
            record["uri"] = uri
        elif isinstance(step, ScheduleTick):
            summary = cp.schedule_tick()
            record["sweep"] = {k: summary[k] for k in ("instances", "decisions", "skipped", "waiting")}
            record["sweep"]["executions"] = [{"name": e["name"], "status": e["status"]} for e in summary["executions"]]
        elif isinstance(step, Sleep):
            time.sleep(step.seconds)
        elif isinstance(step, WaitExecutions):
            cp.wait_executions(timeout=step.timeout)
        elif isinstance(step, SpotInterruption):
            record.update(cp.spot_interruption(step.instance, step.seconds_left, step.action))
        elif isinstance(step, RebalanceRecommendation):
            record.update(cp.rebalance_recommendation(step.instance))
        elif isinstance(step, StopInstance):
            record.update(cp.stop_instance(step.instance))
        elif isinstance(step, StartInstance):
            record.update(cp.start_instance(step.instance))
        record["seconds"] = round(time.monotonic() - started, 2)
        log(f"  step {number}: {describe_step(record, names)}")
        records.append(record)
    return records


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def describe_step(record: dict[str, Any], names: dict[str, str] | None = None) -> str:
    """One step's record (what :func:`run_steps` returns) as a sentence for the console."""
    names = names or {}
    took = f"({record['seconds']:.1f} s)"
    step = record["step"]
    if step == "wait_for_trainer_exit":
        who = "every trainer" if record["instance"] == "all" else f"the trainer on {record['instance']}"
        return f"{who} finished and exited {took}"
    if step == "put_object":
        return f"put {record['uri']}; its Object Created event goes to the deployed rules {took}"
    if step == "schedule_tick":
        sweep = record["sweep"]
        decisions = ", ".join(f"{n} {d.replace('_', ' ')}" for d, n in sorted(sweep["decisions"].items()))
        text = f"a schedule tick swept {_plural(sweep['instances'], 'instance')}" + (f" ({decisions})" if decisions else "")
        started = [f"{e['name']} ({e['status']})" for e in sweep["executions"]]
        text += f"; executions: {', '.join(started)}" if started else "; no execution started"
        for key, label in (("skipped", "skipped"), ("waiting", "not started")):
            for iid, reason in sweep[key].items():
                text += f"; {label} {names.get(iid, iid)}: {reason}"
        return f"{text} {took}"
    if step == "sleep":
        return f"slept {took}"
    if step == "wait_executions":
        return f"every execution ended {took}"
    if step == "spot_interruption":
        return (
            f"EC2 Spot interruption warning for {record['instance']} put at {record['time']}: {record['action']} "
            f"at {record['deadline']} {took}"
        )
    if step == "rebalance_recommendation":
        return f"EC2 rebalance recommendation for {record['instance']} put at {record['time']} {took}"
    if step in ("stop_instance", "start_instance"):
        verb = "stopped" if step == "stop_instance" else "started"
        if "error" in record:
            return f"{step.replace('_', ' ')} {record['instance']} was refused: {record['error']} {took}"
        text = f"{verb} {record['instance']} as a person in the console would: {record['previous_state']} → {record['state']}"
        return text + (f", new launch time {record['launch_time']}" if "launch_time" in record else "") + f" {took}"
    return f"{step} {took}"
