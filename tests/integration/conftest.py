"""Handlers under moto: emulated AWS with the simulated SSM agents, the stack's real documents, a bucket.

The state machine here is a one-state stand-in: these tests look at what the handlers do, the
workflow tests run the real, synthesized state machine.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from infra.constructs.documents import CHECKPOINT_PARAMETERS, PROBE_PARAMETERS, command_content
from local.agent import AgentFleet, SimulatedInstance
from local.aws import LambdaContext, LocalAws
from tests.conftest import function_env

BUCKET = "ckpt-bucket"
RUNS_TABLE = "autostop-runs"
CTX = LambdaContext(function_name="t", invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:t", aws_request_id="r")
"""The Lambda context handlers get in these tests (the local runtime's stand-in for the real one)."""


@dataclass
class World:
    aws: LocalAws
    fleet: AgentFleet
    tmp: Path
    state_machine_arn: str
    calls: Counter[str] = field(default_factory=Counter)

    def client(self, service: str) -> Any:
        return self.aws.client(service)

    def notifications(self) -> list[dict[str, Any]]:
        """The SQS messages the outcome topic delivered (the JSON form), received and deleted."""
        sqs = self.client("sqs")
        url = sqs.get_queue_url(QueueName=OUTCOME_QUEUE)["QueueUrl"]
        out: list[dict[str, Any]] = []
        while msgs := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            for m in msgs:
                out.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return out

    @staticmethod
    def own(instance_id: str) -> str:
        """``instances/<instance ARN>/``: the instance's own key prefix (the stack's instance policy)."""
        return f"instances/arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}/"

    def run_key(self, run: str, key: str) -> str:
        """KEY of run RUN as stored: below the own prefix of the one instance tagged with that run id."""
        found = self.client("ec2").describe_instances(Filters=[{"Name": "tag:autostop:run-id", "Values": [run]}])["Reservations"]
        (iid,) = {i["InstanceId"] for r in found for i in r["Instances"]}
        return self.own(iid) + key

    def instance(self, name: str, tags: dict[str, str], *, agent: str = "online", state: str = "running") -> SimulatedInstance:
        root = self.tmp / name
        root.mkdir(parents=True, exist_ok=True)
        expanded = {k: v.replace("{root}", str(root)) for k, v in tags.items()}
        ec2 = self.client("ec2")
        iid = ec2.run_instances(
            ImageId="ami-12345678",
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in expanded.items()]}],
        )["Instances"][0]["InstanceId"]
        inst = SimulatedInstance(instance_id=iid, name=name, root=root, agent_online=agent == "online")
        self.fleet.add(inst)
        if state == "stopped":
            ec2.stop_instances(InstanceIds=[iid])
        return inst

    def count_calls(self) -> None:
        """Count every AWS operation the handlers make from now on (botocore before-call hook)."""
        import boto3

        def hook(model: Any, **_: Any) -> None:
            self.calls[model.name] += 1

        boto3.DEFAULT_SESSION = None
        from shared.clients import client

        client.cache_clear()
        for service in ("ec2", "s3", "ssm", "stepfunctions"):
            client(service).meta.events.register("before-call", hook)


def create_runs_table(dynamodb: Any, name: str = RUNS_TABLE) -> None:
    """The run records table with the stack's key schema (infra/constructs/records.py)."""
    from lambdas.shared import constants as c

    dynamodb.create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": c.RECORDS_PARTITION_KEY, "KeyType": "HASH"},
            {"AttributeName": c.RECORDS_SORT_KEY, "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": c.RECORDS_PARTITION_KEY, "AttributeType": "S"},
            {"AttributeName": c.RECORDS_SORT_KEY, "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )


def ended_session(
    world: World,
    instance_id: str,
    session: str,
    outcome: str,
    *,
    run: str = "run-a",
    checkpoint: dict[str, Any] | None = None,
    action: str | None = None,
    execution: str = "old-exec",
) -> None:
    """An earlier ``session`` of ``run`` as the state machine leaves it: Verify checkpoint writes the verified
    ``checkpoint`` entry (if any), then the real Record outcome step records ``outcome`` (with the Spot
    warning's instance ``action`` in the trigger, if any), which sets ``resumable``/``hibernated``."""
    from record_outcome.logic import record_outcome
    from shared.records import RunKey, RunRecords

    records = RunRecords(world.client("dynamodb"), RUNS_TABLE)
    if checkpoint is not None:
        records.update(
            RunKey(instance_id, run, session),
            lambda r: r.update(last_checkpoint=checkpoint),
            status="checkpoint-verified",
            execution=execution,
        )
    decision = "spot_checkpoint" if outcome.startswith("Spot") else "complete"
    state = {
        "trigger": {"source": "test", **({"action": action} if action else {})},
        "evaluation": {"decision": decision, "instance_id": instance_id, "run_id": run, "session": session},
        "result": {"outcome": outcome, "reason": f"ended {outcome}"},
    }
    out = record_outcome(state, execution, records=records, ec2=world.client("ec2"), tag_prefix="autostop")
    assert out.recorded, out.detail


def dead_pid() -> int:
    """A PID no process has: the highest one the kernel can hand out, checked to be free."""
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid
    raise RuntimeError(f"pid {pid} is in use; cannot build an exited-trainer fixture")


OUTCOME_QUEUE = "outcomes"


def outcome_topic(aws: LocalAws) -> str:
    """An outcome topic with a raw-delivery SQS queue subscribed (``World.notifications`` reads it), as the stack's."""
    topic = aws.client("sns").create_topic(Name="outcomes")["TopicArn"]
    url = aws.client("sqs").create_queue(QueueName=OUTCOME_QUEUE)["QueueUrl"]
    queue_arn = aws.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    aws.client("sns").subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})
    return topic


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    with LocalAws() as aws, mock.patch.dict(os.environ, function_env()):
        fleet = AgentFleet(aws, delivery_timeout_cap=0.5)
        ssm = aws.client("ssm")
        for name, script, params in (
            ("Autostop-Probe", "probe.sh", PROBE_PARAMETERS),
            ("Autostop-Checkpoint", "checkpoint.sh", CHECKPOINT_PARAMETERS),
        ):
            timeout = "60" if script == "probe.sh" else "{{ executionTimeout }}"
            content = command_content("test", script, params, step=script.removesuffix(".sh"), timeout=timeout)
            ssm.create_document(Name=name, Content=json.dumps(content), DocumentType="Command", DocumentFormat="JSON")
        aws.client("s3").create_bucket(Bucket=BUCKET)
        aws.client("s3").put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})  # as the stack's bucket
        create_runs_table(aws.client("dynamodb"))
        os.environ["AUTOSTOP_RUNS_TABLE"] = RUNS_TABLE
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
        yield World(aws=aws, fleet=fleet, tmp=tmp_path, state_machine_arn=arn)
        for inst in fleet.instances.values():
            inst.power_off()
        client.cache_clear()
        settings.cache_clear()
