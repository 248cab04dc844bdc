"""The local control plane: emulated AWS, the deployed template, simulated instances and trainers."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

from local.agent import AgentFleet, SimulatedInstance
from local.aws import ACCOUNT, REGION, REPO, LocalAws
from local.deploy import Deployment, deploy, synthesize

LOCAL_OVERRIDES = {
    "AUTOSTOP_POLL_SECONDS": "0.2",
    # Scenarios tick the schedule at arbitrary times and lose S3 events on purpose: every local sweep reads every
    # marker (tests/integration/test_triggers.py covers the deployed default: each marker once an hour, spread over the sweeps).
    "AUTOSTOP_MARKER_RECHECK_MINUTES": "0",
    "AUTOSTOP_PROBE_TIMEOUT_SECONDS": "20",
    # A scenario's sweep completes a waiting task token whose status event was lost at once, not two minutes later.
    "AUTOSTOP_SETTLE_AFTER_SECONDS": "0",
}
"""Function settings the local runtime shortens (probe polling); everything else is the template's."""
TRAINER = Path(__file__).resolve().parent / "trainer.py"


@dataclass
class Placeholders:
    """Values a scenario can refer to as ``{root}``, ``{bucket}``, ``{name}``, ``{trainer}`` (the toy trainer as
    an absolute command: this Python and local/trainer.py, for an ``autostop:resume-command`` tag) and, once the
    instance exists, ``{prefix}``: its own key prefix ``instances/<instance ARN>/`` (where its trainer puts the
    completion marker, e.g. ``s3://{bucket}/{prefix}runs/<run-id>/_SUCCESS``)."""

    root: Path
    bucket: str
    name: str
    prefix: str = "{prefix}"

    def expand(self, value: Any) -> Any:
        if isinstance(value, str):
            trainer = f"{sys.executable} {Path(__file__).resolve().parent / 'trainer.py'}"
            return (
                value.replace("{root}", str(self.root))
                .replace("{bucket}", self.bucket)
                .replace("{name}", self.name)
                .replace("{trainer}", trainer)
                .replace("{prefix}", self.prefix)
            )
        if isinstance(value, list):
            return [self.expand(v) for v in value]
        if isinstance(value, dict):
            return {k: self.expand(v) for k, v in value.items()}
        return value


class LocalControlPlane:
    """The whole control plane on this machine. Use as a context manager::

    with LocalControlPlane() as cp:
        iid = cp.launch_instance("trainer-1", tags={...}, trainer=[...])
        cp.wait_for_trainer_exit("trainer-1")
        cp.wait_executions()
    """

    def __init__(
        self,
        *,
        workdir: Path | None = None,
        context: dict[str, Any] | None = None,
        log_file: Path | None = None,
        keep: bool = False,
        agent_boot_seconds: float = 2.0,
    ) -> None:
        self._own_workdir = workdir is None and not keep
        self.agent_boot_seconds = agent_boot_seconds
        """How long a started instance's SSM agent takes to come online (StartInstances only; launches are online at once)."""
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="autostop-local-"))
        self.context = context
        self.log_file = log_file or self.workdir / "lambda.log"
        self._stack = ExitStack()
        self.by_name: dict[str, SimulatedInstance] = {}

    # --- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> LocalControlPlane:
        template = synthesize(self.context)
        self.aws = self._stack.enter_context(LocalAws())
        self.fleet = AgentFleet(self.aws, agent_boot_seconds=self.agent_boot_seconds)
        self.deployment: Deployment = deploy(template, self.aws.client)
        env = {**self.deployment.environment, **LOCAL_OVERRIDES}
        self._stack.enter_context(mock.patch.dict(os.environ, env))
        self._reset_function_caches()
        self._route_function_logs()
        self._stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message="No application metrics to publish")
        self._stack.callback(self._power_off_all)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        if self._own_workdir and not os.environ.get("AUTOSTOP_KEEP_WORKDIR"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _reset_function_caches(self) -> None:
        lambdas = str(REPO / "lambdas")
        if lambdas not in sys.path:
            sys.path.insert(0, lambdas)
        from shared.clients import client
        from shared.settings import settings

        client.cache_clear()
        settings.cache_clear()

    def _route_function_logs(self) -> None:
        """Send the functions' Powertools log lines to ``log_file`` instead of the console."""
        from shared.observability import logger

        handler = logging.FileHandler(self.log_file)
        handler.setFormatter(logger.registered_handler.formatter)
        original = logger.registered_handler
        log = logging.getLogger(logger.name)
        log.removeHandler(original)
        log.addHandler(handler)

        def restore() -> None:
            log.removeHandler(handler)
            log.addHandler(original)
            handler.close()

        self._stack.callback(restore)

    def _power_off_all(self) -> None:
        for inst in self.by_name.values():
            inst.power_off()

    def write_outputs(self, path: Path) -> Path:
        """Write the deployment's stack outputs to ``path`` in the ``cdk deploy --outputs-file`` format
        (``{"Autostop": {"OutputKey": "value"}}``), for tools that find a deployment that way (``autostop --outputs``)."""
        path.write_text(json.dumps(self.deployment.outputs_file(), indent=2) + "\n")
        return path

    # --- instances -------------------------------------------------------------------------------------

    def placeholders(self, name: str) -> Placeholders:
        inst = self.by_name.get(name)
        prefix = self.instance_prefix(inst.instance_id) if inst else "{prefix}"
        return Placeholders(root=self.workdir / "instances" / name, bucket=self.deployment.bucket, name=name, prefix=prefix)

    def instance_prefix(self, instance_id: str) -> str:
        """``instances/<instance ARN>/``: the keys this instance may write and read (the stack's instance policy)."""
        return f"instances/{self.deployment.environment['AUTOSTOP_INSTANCE_ARN_PREFIX']}{instance_id}/"

    def run_uri(self, run_id: str, key: str) -> str:
        """``s3://<bucket>/instances/<ARN of the instance tagged with RUN_ID>/<KEY>``: where that instance's trainer
        puts objects of the run, such as its completion marker (``runs/<run-id>/_SUCCESS``)."""
        ec2 = self.aws.client("ec2")
        found = ec2.describe_instances(Filters=[{"Name": "tag:autostop:run-id", "Values": [run_id]}])["Reservations"]
        ids = sorted(i["InstanceId"] for r in found for i in r["Instances"])
        if len(ids) != 1:
            raise LookupError(f"{len(ids)} instances are tagged autostop:run-id={run_id}: {ids}")
        return f"s3://{self.deployment.bucket}/{self.instance_prefix(ids[0])}{key}"

    def launch_instance(
        self,
        name: str,
        *,
        tags: dict[str, str],
        market: str = "on-demand",
        spot: str | None = None,
        agent: str = "online",
        trainer: list[str] | None = None,
        faults: list[str] | None = None,
        run_instances: dict[str, Any] | None = None,
    ) -> str:
        """RunInstances in moto, a sandbox folder as its disk, its SSM agent, and its trainer (optional).

        ``tags`` and ``trainer`` may use ``{root}`` (the sandbox), ``{bucket}`` and ``{name}``;
        ``run_instances`` adds RunInstances parameters (e.g. ``DisableApiTermination``, ``HibernationOptions``).
        ``spot`` (``one-time`` | ``persistent``) launches a spot instance of a request of that type
        (interruption behaviour: terminate for one-time, stop for persistent); ``market="spot"`` alone
        means persistent.
        """
        if spot is None and market == "spot":
            spot = "persistent"
        if spot not in (None, "one-time", "persistent"):
            raise ValueError(f"spot must be one-time, persistent or None, not {spot!r}")
        ph = self.placeholders(name)
        ph.root.mkdir(parents=True, exist_ok=True)
        ec2 = self.aws.client("ec2")
        kwargs: dict[str, Any] = {
            "ImageId": "ami-12345678",
            "MinCount": 1,
            "MaxCount": 1,
            "InstanceType": "g5.xlarge",
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": "Name", "Value": name}]
                    + [{"Key": k, "Value": ph.expand(v)} for k, v in tags.items() if "{prefix}" not in v],
                }
            ],
        }
        kwargs.update(run_instances or {})
        if spot is not None:
            kwargs["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": spot,
                    "InstanceInterruptionBehavior": "stop" if spot == "persistent" else "terminate",
                },
            }
        iid = ec2.run_instances(**kwargs)["Instances"][0]["InstanceId"]
        inst = SimulatedInstance(instance_id=iid, name=name, root=ph.root, agent_online=agent == "online", faults=tuple(faults or ()))
        self.fleet.add(inst)
        self.by_name[name] = inst
        later = {k: v for k, v in tags.items() if "{prefix}" in v}  # tagged once the instance (its ARN) exists
        if later:
            ph = self.placeholders(name)
            ec2.create_tags(Resources=[iid], Tags=[{"Key": k, "Value": ph.expand(v)} for k, v in later.items()])
        resume = tags.get("autostop:resume-command")
        if resume:  # the simulated trainers run as root: only an allowlisted command may be resumed as root
            inst.allow_resume_command(self.placeholders(name).expand(resume))
        if trainer is not None:
            ph = self.placeholders(name)  # now with {prefix}
            argv = [sys.executable, str(TRAINER), *[str(a) for a in ph.expand(trainer)]]
            inst.trainer = inst.start_process(argv, self.aws.subprocess_env(), "trainer.out")
        return iid

    def wait_for_trainer_exit(self, name: str | None = None, timeout: float = 60) -> None:
        """Block until the trainer on ``name`` (default: every instance) has exited.

        The trainer is the one launched with the instance and, after a start, the process named by the
        instance's PID-file tag if one runs on that machine (a trainer the restore command resumed).
        """
        names = [name] if name else list(self.by_name)
        deadline = time.monotonic() + timeout
        for n in names:
            inst = self.by_name[n]
            if inst.trainer is not None:
                inst.trainer.wait(timeout=max(0.0, deadline - time.monotonic()))
            pid = self._resumed_trainer_pid(n)
            while pid is not None and pid in inst.pids():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the trainer on {n} (pid {pid}) still runs after {timeout} s")
                time.sleep(0.1)

    def _resumed_trainer_pid(self, name: str) -> int | None:
        inst = self.by_name[name]
        if inst.boots < 2:
            return None
        prefix = self.deployment.environment.get("AUTOSTOP_TAG_PREFIX", "autostop")
        pid_file = self.tags(name).get(f"{prefix}:pid-file")
        try:
            text = Path(pid_file).read_text().strip() if pid_file else ""
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def tags(self, name: str) -> dict[str, str]:
        """The instance's current EC2 tags."""
        raw = self._describe(name)
        return {t["Key"]: t["Value"] for t in raw.get("Tags", [])}

    def _describe(self, name: str) -> dict[str, Any]:
        resp = self.aws.client("ec2").describe_instances(InstanceIds=[self.by_name[name].instance_id])
        return dict(resp["Reservations"][0]["Instances"][0])

    # --- what happens to instances (as AWS or a person would do it) ------------------------------------

    def stop_instance(self, name: str) -> dict[str, Any]:
        """StopInstances, as a person in the console: the machine powers off. Refusals are returned, not raised."""
        return self._state_call(name, "stop_instances", "StoppingInstances")

    def start_instance(self, name: str) -> dict[str, Any]:
        """StartInstances, as a person in the console: the machine boots (new ``LaunchTime``), its agent follows."""
        record = self._state_call(name, "start_instances", "StartingInstances")
        record["launch_time"] = self._describe(name)["LaunchTime"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return record

    def _state_call(self, name: str, operation: str, key: str) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        iid = self.by_name[name].instance_id
        record: dict[str, Any] = {"instance": name, "id": iid}
        try:
            [change] = getattr(self.aws.client("ec2"), operation)(InstanceIds=[iid])[key]
        except ClientError as exc:
            record["error"] = f"{exc.response['Error']['Code']}: {exc.response['Error']['Message']}"
            return record
        record.update(previous_state=change["PreviousState"]["Name"], state=self.instance_state(name))
        return record

    def spot_interruption(self, name: str, seconds_left: int = 120, action: str = "terminate") -> dict[str, Any]:
        """Put an "EC2 Spot Instance Interruption Warning" for ``name`` whose notice is ``120 - seconds_left`` s old.

        EC2 sends it two minutes before it reclaims the instance; ``seconds_left`` < 120 simulates a notice
        that reached the control plane late. The instance itself is not reclaimed here.
        """
        if not isinstance(seconds_left, int) or not 0 <= seconds_left <= 120:
            raise ValueError(f"seconds_left must be a whole number of seconds from 0 to 120, not {seconds_left!r}")
        if action not in ("terminate", "stop", "hibernate"):
            raise ValueError(f"action must be terminate, stop or hibernate, not {action!r}")
        iid = self.by_name[name].instance_id
        when = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=120 - seconds_left)
        event = self._put_ec2_event("EC2 Spot Instance Interruption Warning", {"instance-id": iid, "instance-action": action}, iid, when)
        deadline = (when + timedelta(seconds=120)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"instance": name, "id": iid, "event_id": event["id"], "time": event["time"], "deadline": deadline, "action": action}

    def rebalance_recommendation(self, name: str) -> dict[str, Any]:
        """Put an "EC2 Instance Rebalance Recommendation" for ``name`` (EC2 sends it when spot capacity is at risk)."""
        iid = self.by_name[name].instance_id
        event = self._put_ec2_event("EC2 Instance Rebalance Recommendation", {"instance-id": iid}, iid, datetime.now(UTC))
        return {"instance": name, "id": iid, "event_id": event["id"], "time": event["time"]}

    def _put_ec2_event(self, detail_type: str, detail: dict[str, Any], iid: str, when: datetime) -> dict[str, Any]:
        """PutEvents on the default bus with EC2's source and shape; the deployed rules decide delivery."""
        resources = [f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{iid}"]
        resp = self.aws.client("events").put_events(
            Entries=[{"Source": "aws.ec2", "DetailType": detail_type, "Detail": json.dumps(detail), "Resources": resources, "Time": when}]
        )
        [entry] = resp["Entries"]
        if resp["FailedEntryCount"] or "EventId" not in entry:
            raise RuntimeError(f"PutEvents refused {detail_type}: {entry}")
        return {"id": entry["EventId"], "time": when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}

    # --- triggers --------------------------------------------------------------------------------------

    def put_object(self, uri: str, body: str | bytes = b"") -> None:
        """PutObject (in-process); an Object Created event reaches the rules as on AWS."""
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        self.aws.client("s3").put_object(Bucket=bucket, Key=key, Body=body.encode() if isinstance(body, str) else body)

    def schedule_tick(self, when: datetime | None = None) -> dict[str, Any]:
        """Deliver one "Scheduled Event" through the schedule rule's target and wait for the sweep to finish.

        Returns the sweep's summary. (moto stores schedule rules but never fires them.)
        """
        from moto.awslambda.models import lambda_backends
        from moto.events.models import events_backends

        rule_name = next(name for logical, name in self.deployment.rules.items() if "Schedule" in logical)
        rule = events_backends[ACCOUNT][REGION].describe_rule(rule_name, None)
        event = {
            "version": "0",
            "id": f"local-tick-{time.time_ns()}",
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": ACCOUNT,
            "time": (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": REGION,
            "resources": [rule.arn],
            "detail": {},
        }
        results = []
        for target in rule.targets:
            fn = lambda_backends[ACCOUNT][REGION].get_function(target["Arn"])
            result, errored = self.aws.lambdas.invoke(fn.handler, event, fn.function_name, fn.function_arn)
            if errored:
                raise RuntimeError(f"sweep failed: {result['errorType']}: {result['errorMessage']}")
            results.append(result)
        return results[0]

    # --- waiting -----------------------------------------------------------------------------------------

    def executions(self) -> list[dict[str, Any]]:
        sfn = self.aws.client("stepfunctions")
        out: list[dict[str, Any]] = []
        for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=self.deployment.state_machine_arn):
            out.extend(page["executions"])
        return out

    def wait_executions(self, timeout: float = 120) -> None:
        """Wait until no EventBridge delivery is in flight and no execution is RUNNING."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.aws.lambdas.pending() == 0 and all(e["status"] != "RUNNING" for e in self.executions()):
                time.sleep(0.2)  # a delivery may start an execution right after the check
                if self.aws.lambdas.pending() == 0 and all(e["status"] != "RUNNING" for e in self.executions()):
                    return
            time.sleep(0.2)
        raise TimeoutError(f"executions still running after {timeout} s")

    def instance_state(self, name: str) -> str:
        iid = self.by_name[name].instance_id
        resp = self.aws.client("ec2").describe_instances(InstanceIds=[iid])
        return str(resp["Reservations"][0]["Instances"][0]["State"]["Name"])

    def notifications(self) -> list[dict[str, Any]]:
        sqs = self.aws.client("sqs")
        out = []
        while True:
            resp = sqs.receive_message(QueueUrl=self.deployment.notifications_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            msgs = resp.get("Messages", [])
            if not msgs:
                return out
            for m in msgs:
                out.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=self.deployment.notifications_queue_url, ReceiptHandle=m["ReceiptHandle"])
