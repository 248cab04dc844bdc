"""Scenario files for ``python -m local simulate``: instances to launch, then steps to run in order.

Format (JSON)::

    {
      "name": "demo",
      "instances": [
        {"name": "trainer-1", "market": "on-demand", "agent": "online", "faults": [],
         "tags": {"autostop:enabled": "true", "autostop:run-id": "demo-run",
                  "autostop:checkpoint-dir": "{root}/checkpoints", "autostop:pid-file": "{root}/trainer.pid"},
         "trainer": {"steps": 10, "step_seconds": 0.05, "marker_uri": "s3://{bucket}/runs/demo-run/_SUCCESS"}}
      ],
      "steps": [
        {"step": "wait_for_trainer_exit", "instance": "trainer-1"},
        {"step": "put_object", "uri": "s3://{bucket}/runs/demo-run/_SUCCESS", "body": "done"},
        {"step": "schedule_tick"},
        {"step": "sleep", "seconds": 1},
        {"step": "wait_executions", "timeout": 120}
      ]
    }

``{root}`` is the instance's sandbox folder (its disk), ``{bucket}`` the checkpoint bucket, ``{name}``
the instance name. ``trainer`` keys are ``local/trainer.py`` options with ``_`` for ``-``; the
checkpoint dir, PID file and log file default to the instance's autostop tags. ``trainer: null``
starts no trainer. ``faults`` (simulation only): ``corrupt_upload``, ``lose_object`` (see local/faults.sh).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from local.runtime import LocalControlPlane
from local.trainer import build_parser as trainer_parser


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InstanceSpec(Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,40}$")
    tags: dict[str, str] = {}
    market: Literal["on-demand", "spot"] = "on-demand"
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


class ScheduleTick(Model):
    step: Literal["schedule_tick"]


class Sleep(Model):
    step: Literal["sleep"]
    seconds: float = Field(ge=0, le=600)


class WaitExecutions(Model):
    step: Literal["wait_executions"]
    timeout: float = 180


Step = Annotated[WaitForTrainerExit | PutObject | ScheduleTick | Sleep | WaitExecutions, Field(discriminator="step")]


class Scenario(Model):
    name: str = "scenario"
    description: str = ""
    context: dict[str, Any] = {}
    """CDK context overrides for this run (cdk.json keys)."""
    instances: list[InstanceSpec] = Field(min_length=1)
    steps: list[Step] = []

    @classmethod
    def load(cls, path: Path) -> Scenario:
        return cls.model_validate(json.loads(path.read_text()))


def run_steps(cp: LocalControlPlane, scenario: Scenario, log: Any = print) -> list[dict[str, Any]]:
    """Launch the scenario's instances, then run its steps; returns a record of each step."""
    prefix = cp.deployment.environment.get("AUTOSTOP_TAG_PREFIX", "autostop")
    for spec in scenario.instances:
        iid = cp.launch_instance(
            spec.name, tags=spec.tags, market=spec.market, agent=spec.agent, trainer=spec.trainer_argv(prefix), faults=list(spec.faults)
        )
        log(f"  launched {spec.name} ({iid}, {spec.market}, agent {spec.agent}{', trainer started' if spec.trainer is not None else ''})")
    records: list[dict[str, Any]] = []
    for step in scenario.steps:
        started = time.monotonic()
        record: dict[str, Any] = {"step": step.step}
        if isinstance(step, WaitForTrainerExit):
            cp.wait_for_trainer_exit(step.instance, timeout=step.timeout)
            record["instance"] = step.instance or "all"
        elif isinstance(step, PutObject):
            uri = cp.placeholders("-").expand(step.uri)
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
        record["seconds"] = round(time.monotonic() - started, 2)
        log(f"  step {step.step}: {json.dumps({k: v for k, v in record.items() if k != 'step'})}")
        records.append(record)
    return records
