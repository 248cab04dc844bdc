"""The local control plane on a small stand-in template (independent of the stack's own resources):
DynamoDB tables and any number of documents deployed, the spot/rebalance/stop/start methods, the report."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from unittest import mock

import pytest

from local.aws import ACCOUNT, REGION
from local.report import build_report, plain
from local.runtime import LocalControlPlane
from local.scenario import Scenario, run_steps

RECEIVED: list[dict[str, Any]] = []


def capture(event: dict[str, Any], context: Any) -> None:
    RECEIVED.append(event)


def document(name: str) -> dict[str, Any]:
    return {
        "Type": "AWS::SSM::Document",
        "Properties": {
            "DocumentType": "Command",
            "Content": {
                "schemaVersion": "2.2",
                "description": name,
                "mainSteps": [{"action": "aws:runShellScript", "name": name, "inputs": {"runCommand": ["true"]}}],
            },
        },
    }


EC2_EVENTS = [
    "EC2 Spot Instance Interruption Warning",
    "EC2 Instance Rebalance Recommendation",
    "EC2 Instance State-change Notification",
]
TEMPLATE: dict[str, Any] = {
    "Resources": {
        "CheckpointsBucket1234": {"Type": "AWS::S3::Bucket", "Properties": {}},
        "RunsTableABCD": {
            "Type": "AWS::DynamoDB::Table",
            "Properties": {
                "KeySchema": [{"AttributeName": "instance_id", "KeyType": "HASH"}, {"AttributeName": "run", "KeyType": "RANGE"}],
                "AttributeDefinitions": [
                    {"AttributeName": "instance_id", "AttributeType": "S"},
                    {"AttributeName": "run", "AttributeType": "S"},
                ],
                "BillingMode": "PAY_PER_REQUEST",
                "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                "SSESpecification": {"SSEEnabled": True},
            },
        },
        "ProbeDoc": document("probe"),
        "CheckpointDoc": document("checkpoint"),
        "RestoreDoc": document("restore"),
        "Topic": {"Type": "AWS::SNS::Topic", "Properties": {}},
        "FnRole": {"Type": "AWS::IAM::Role", "Properties": {"AssumeRolePolicyDocument": {"Statement": []}}},
        "CaptureFn": {
            "Type": "AWS::Lambda::Function",
            "Properties": {
                "Handler": "tests.integration.test_local_runtime.capture",
                "Role": {"Fn::GetAtt": ["FnRole", "Arn"]},
                "Environment": {
                    "Variables": {
                        "AUTOSTOP_RUNS_TABLE": {"Ref": "RunsTableABCD"},
                        "RUNS_TABLE_ARN": {"Fn::GetAtt": ["RunsTableABCD", "Arn"]},
                        "AUTOSTOP_RESTORE_DOCUMENT": {"Ref": "RestoreDoc"},
                        "AUTOSTOP_TAG_PREFIX": "autostop",
                    }
                },
            },
        },
        "Lifecycle": {
            "Type": "AWS::StepFunctions::StateMachine",
            "Properties": {
                "DefinitionString": json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
                "RoleArn": {"Fn::GetAtt": ["FnRole", "Arn"]},
            },
        },
        "Ec2EventsRule": {
            "Type": "AWS::Events::Rule",
            "Properties": {
                "EventPattern": {"source": ["aws.ec2"], "detail-type": EC2_EVENTS},
                "Targets": [{"Id": "fn", "Arn": {"Fn::GetAtt": ["CaptureFn", "Arn"]}}],
            },
        },
    }
}


@pytest.fixture(scope="module")
def cp() -> Iterator[LocalControlPlane]:
    with mock.patch("local.runtime.synthesize", return_value=TEMPLATE), LocalControlPlane(agent_boot_seconds=0.3) as plane:
        yield plane


def events_for(cp: LocalControlPlane, iid: str, detail_type: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while cp.aws.lambdas.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    return [e for e in RECEIVED if e["detail"]["instance-id"] == iid and e["detail-type"] == detail_type]


def test_tables_and_every_document_are_deployed(cp: LocalControlPlane) -> None:
    dep = cp.deployment
    assert dep.table == "autostop-local-runs" and dep.tables == {"RunsTableABCD": dep.table}
    described = cp.aws.client("dynamodb").describe_table(TableName=dep.table)["Table"]
    assert [k["AttributeName"] for k in described["KeySchema"]] == ["instance_id", "run"]
    assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert sorted(dep.documents) == ["CheckpointDoc", "ProbeDoc", "RestoreDoc"]
    assert dep.environment["AUTOSTOP_RUNS_TABLE"] == dep.table
    assert dep.environment["RUNS_TABLE_ARN"] == f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{dep.table}"
    assert dep.environment["AUTOSTOP_RESTORE_DOCUMENT"] == "Autostop-RestoreDoc"


def test_spot_launches_and_interruption_warnings(cp: LocalControlPlane) -> None:
    iid = cp.launch_instance("spot-a", tags={}, spot="one-time", trainer=None)
    raw = cp.aws.client("ec2").describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    [request] = cp.aws.client("ec2").describe_spot_instance_requests(SpotInstanceRequestIds=[raw["SpotInstanceRequestId"]])[
        "SpotInstanceRequests"
    ]
    assert (raw["InstanceLifecycle"], request["Type"], request["InstanceInterruptionBehavior"]) == ("spot", "one-time", "terminate")

    before = time.time()
    on_time = cp.spot_interruption("spot-a")
    late = cp.spot_interruption("spot-a", seconds_left=30)
    events = events_for(cp, iid, "EC2 Spot Instance Interruption Warning")
    assert sorted(e["id"] for e in events) == sorted([on_time["event_id"], late["event_id"]])
    by_id = {e["id"]: e for e in events}
    for record in (on_time, late):
        event = by_id[record["event_id"]]
        assert event["time"] == record["time"] and event["source"] == "aws.ec2"
        assert event["detail"] == {"instance-id": iid, "instance-action": "terminate"}
        assert event["resources"] == [f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{iid}"]
    notice = time.mktime(time.strptime(late["time"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert before - 91 <= notice <= time.time() - 89  # 120 - 30 s old
    deadline = time.mktime(time.strptime(late["deadline"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert deadline - notice == 120
    with pytest.raises(ValueError, match="from 0 to 120"):
        cp.spot_interruption("spot-a", seconds_left=121)

    rebalance = cp.rebalance_recommendation("spot-a")
    [event] = events_for(cp, iid, "EC2 Instance Rebalance Recommendation")
    assert event["id"] == rebalance["event_id"] and event["detail"] == {"instance-id": iid}

    refused = cp.stop_instance("spot-a")
    assert refused["error"].startswith("UnsupportedOperation:") and cp.instance_state("spot-a") == "running"


def test_stop_and_start_as_a_person_would(cp: LocalControlPlane) -> None:
    iid = cp.launch_instance("od-b", tags={"autostop:enabled": "true"}, trainer=None)
    cp.by_name["od-b"].agent_boot_seconds = 3  # long enough to see it offline right after the start, even on a busy machine
    launched = cp.aws.client("ec2").describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["LaunchTime"]
    assert cp.stop_instance("od-b") == {"instance": "od-b", "id": iid, "previous_state": "running", "state": "stopped"}
    started = cp.start_instance("od-b")
    assert (started["previous_state"], started["state"]) == ("stopped", "running")
    assert started["launch_time"] > launched.strftime("%Y-%m-%dT%H:%M:%SZ")
    states = [e["detail"]["state"] for e in events_for(cp, iid, "EC2 Instance State-change Notification")]
    assert sorted(states) == sorted(["pending", "running", "stopping", "stopped", "pending", "running"])
    inst = cp.by_name["od-b"]
    assert inst.boots == 2 and not inst.agent_online
    deadline = time.monotonic() + 30
    while not inst.agent_online and time.monotonic() < deadline:
        time.sleep(0.1)
    assert inst.agent_online


def test_scenario_steps_and_report(cp: LocalControlPlane) -> None:
    scenario = Scenario.model_validate(
        {
            "instances": [{"name": "sc-c", "spot": "persistent", "tags": {"autostop:run-id": "r1"}}],
            "steps": [
                {"step": "spot_interruption", "instance": "sc-c", "seconds_left": 60},
                {"step": "rebalance_recommendation", "instance": "sc-c"},
                {"step": "stop_instance", "instance": "sc-c"},
                {"step": "start_instance", "instance": "sc-c"},
            ],
        }
    )
    steps = run_steps(cp, scenario, log=lambda *_: None)
    iid = cp.by_name["sc-c"].instance_id
    assert [s["step"] for s in steps] == ["spot_interruption", "rebalance_recommendation", "stop_instance", "start_instance"]
    assert steps[0]["id"] == iid and "deadline" in steps[0] and steps[2]["state"] == "stopped" and steps[3]["state"] == "running"

    table = cp.aws.client("dynamodb")
    for run in ("r1#2030-01-01T00:00:00Z", "r0#2029-01-01T00:00:00Z"):
        table.put_item(
            TableName=cp.deployment.table,
            Item={
                "instance_id": {"S": iid},
                "run": {"S": run},
                "version": {"N": "3"},
                "auto_stopped": {"BOOL": True},
                "last_checkpoint": {"M": {"bytes": {"N": "1048617"}, "ratio": {"N": "0.5"}}},
                "history": {"L": [{"M": {"status": {"S": "stopped"}}}]},
            },
        )
    report = build_report(cp, scenario="t", steps=steps)
    json.dumps(report)  # plain JSON
    mine = [r for r in report["run_records"] if r["instance_id"] == iid]
    assert [r["run"] for r in mine] == ["r0#2029-01-01T00:00:00Z", "r1#2030-01-01T00:00:00Z"]
    assert mine[0]["version"] == 3 and mine[0]["last_checkpoint"] == {"bytes": 1048617, "ratio": 0.5}
    [inst] = [i for i in report["instances"] if i["id"] == iid]
    assert inst["tags"] == {"Name": "sc-c", "autostop:run-id": "r1"}
    assert inst["spot"]["type"] == "persistent" and inst["spot"]["state"] == "active" and inst["boots"] == 2
    for key in ("scenario", "instances", "executions", "objects", "notifications", "steps", "ssm_commands", "function_errors"):
        assert key in report
    assert [e["state"] for e in report["ec2_events"] if e["instance-id"] == iid] == [
        "pending",
        "running",
        "stopping",
        "stopped",
        "pending",
        "running",
    ]


def test_plain_turns_dynamodb_values_into_json() -> None:
    assert plain({"a": Decimal("2"), "b": [Decimal("1.5")], "c": {"x"}, "d": b"hi"}) == {"a": 2, "b": [1.5], "c": ["x"], "d": "hi"}
