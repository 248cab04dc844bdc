"""The local runtime's EC2 emulation: LaunchTime on start, state-change events through the rules, spot
requests, and the simulated machine across stop and start (disk kept, processes gone, agent boots)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.agent import AgentFleet, SimulatedInstance, host_boot_time
from local.aws import ACCOUNT, REGION, LocalAws

RECEIVED: dict[str, list[dict[str, Any]]] = {"all": [], "running": [], "spot": []}
"""Events delivered to the handlers below (Lambda targets' handlers, run in-process by the delivery patch)."""


def capture_all(event: dict[str, Any], context: Any) -> None:
    RECEIVED["all"].append(event)


def capture_running(event: dict[str, Any], context: Any) -> None:
    RECEIVED["running"].append(event)


def capture_spot(event: dict[str, Any], context: Any) -> None:
    RECEIVED["spot"].append(event)


@pytest.fixture()
def aws(tmp_path: Path) -> Iterator[LocalAws]:
    with LocalAws() as emulated:
        yield emulated


def launch(aws: LocalAws, **kwargs: Any) -> str:
    params: dict[str, Any] = {"ImageId": "ami-12345678", "MinCount": 1, "MaxCount": 1, **kwargs}
    return str(aws.client("ec2").run_instances(**params)["Instances"][0]["InstanceId"])


def describe(aws: LocalAws, iid: str) -> dict[str, Any]:
    return dict(aws.client("ec2").describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0])


def lambda_rule(aws: LocalAws, name: str, pattern: dict[str, Any]) -> list[dict[str, Any]]:
    """A rule with ``pattern`` whose target is a function running ``capture_<name>``; returns what it receives."""
    if not aws.client("iam").list_roles()["Roles"]:
        aws.client("iam").create_role(RoleName="fn", AssumeRolePolicyDocument="{}")
    fn = aws.client("lambda").create_function(
        FunctionName=f"capture-{name}",
        Runtime="python3.11",
        Role=f"arn:aws:iam::{ACCOUNT}:role/fn",
        Handler=f"tests.integration.test_local_aws.capture_{name}",
        Code={"ZipFile": b"unused"},
    )
    events = aws.client("events")
    events.put_rule(Name=name, EventPattern=json.dumps(pattern))
    events.put_targets(Rule=name, Targets=[{"Id": "fn", "Arn": fn["FunctionArn"]}])
    RECEIVED[name].clear()
    return RECEIVED[name]


def delivered(aws: LocalAws) -> None:
    """Wait until the asynchronous Lambda deliveries are done."""
    deadline = time.monotonic() + 10
    while aws.lambdas.pending() and time.monotonic() < deadline:
        time.sleep(0.05)


STATE_CHANGE = {"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]}


# --- LaunchTime and state-change events ----------------------------------------------------------------


def test_start_gives_a_new_launch_time_and_stop_keeps_it(aws: LocalAws) -> None:
    ec2 = aws.client("ec2")
    iid = launch(aws)
    first = describe(aws, iid)["LaunchTime"]
    ec2.stop_instances(InstanceIds=[iid])
    assert describe(aws, iid)["LaunchTime"] == first
    ec2.start_instances(InstanceIds=[iid])
    second = describe(aws, iid)["LaunchTime"]
    assert second > first and second.microsecond == 0
    ec2.start_instances(InstanceIds=[iid])  # already running: nothing changes, as on EC2
    assert describe(aws, iid)["LaunchTime"] == second
    ec2.stop_instances(InstanceIds=[iid])
    ec2.start_instances(InstanceIds=[iid])  # at once again: still a different second, so a different session
    assert describe(aws, iid)["LaunchTime"] > second


def test_terminated_instance_cannot_be_started(aws: LocalAws) -> None:
    ec2 = aws.client("ec2")
    iid = launch(aws)
    ec2.terminate_instances(InstanceIds=[iid])
    with pytest.raises(ec2.exceptions.ClientError, match="IncorrectInstanceState"):
        ec2.start_instances(InstanceIds=[iid])


def test_state_changes_reach_matching_rules_in_ec2s_shape(aws: LocalAws) -> None:
    everything = lambda_rule(aws, "all", STATE_CHANGE)
    running = lambda_rule(aws, "running", {**STATE_CHANGE, "detail": {"state": ["running"]}})
    ec2 = aws.client("ec2")
    iid = launch(aws)
    ec2.stop_instances(InstanceIds=[iid])
    ec2.stop_instances(InstanceIds=[iid])  # already stopped: no event
    ec2.start_instances(InstanceIds=[iid])
    ec2.terminate_instances(InstanceIds=[iid])
    delivered(aws)

    events = sorted(everything, key=lambda e: aws.ec2_events.index(e))  # delivery is concurrent, as on AWS
    assert [e["detail"]["state"] for e in events] == [
        "pending", "running", "stopping", "stopped", "pending", "running", "shutting-down", "terminated",
    ]  # fmt: skip
    for event in events:
        assert set(event) == {"version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail"}
        assert (event["version"], event["source"], event["account"], event["region"]) == ("0", "aws.ec2", ACCOUNT, REGION)
        assert event["resources"] == [f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{iid}"]
        assert event["detail"]["instance-id"] == iid and set(event["detail"]) == {"instance-id", "state"}
        time.strptime(event["time"], "%Y-%m-%dT%H:%M:%SZ")
    assert len({e["id"] for e in events}) == len(events)
    assert [e["detail"]["state"] for e in running] == ["running", "running"]
    assert events == aws.ec2_events


def test_put_events_time_is_delivered_as_ec2_writes_it(aws: LocalAws) -> None:
    received = lambda_rule(aws, "spot", {"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]})
    from datetime import UTC, datetime

    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    aws.client("events").put_events(
        Entries=[
            {
                "Source": "aws.ec2",
                "DetailType": "EC2 Spot Instance Interruption Warning",
                "Detail": json.dumps({"instance-id": "i-1", "instance-action": "terminate"}),
                "Time": when,
            }
        ]
    )
    delivered(aws)
    [event] = received
    assert event["time"] == "2030-01-02T03:04:05Z" and "ingestion-time" not in event
    assert event["detail"] == {"instance-id": "i-1", "instance-action": "terminate"}


# --- spot ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "behaviour"), [("one-time", "terminate"), ("persistent", "stop"), (None, None)])
def test_spot_instances_show_their_request(aws: LocalAws, kind: str | None, behaviour: str | None) -> None:
    options: dict[str, Any] = {}
    if kind:
        options["SpotInstanceType"] = kind
    if behaviour:
        options["InstanceInterruptionBehavior"] = behaviour
    iid = launch(aws, InstanceMarketOptions={"MarketType": "spot", "SpotOptions": options})
    raw = describe(aws, iid)
    assert raw["InstanceLifecycle"] == "spot" and raw["SpotInstanceRequestId"].startswith("sir-")
    ec2 = aws.client("ec2")
    [request] = ec2.describe_spot_instance_requests(SpotInstanceRequestIds=[raw["SpotInstanceRequestId"]])["SpotInstanceRequests"]
    assert request["Type"] == (kind or "one-time")  # EC2's defaults for RunInstances: one-time, terminate
    assert request["InstanceInterruptionBehavior"] == (behaviour or "terminate")
    assert (request["InstanceId"], request["State"]) == (iid, "active")
    assert len(ec2.describe_instances()["Reservations"]) == 1  # the request did not launch another instance


def test_on_demand_instances_have_no_spot_request(aws: LocalAws) -> None:
    raw = describe(aws, launch(aws))
    assert "InstanceLifecycle" not in raw and "SpotInstanceRequestId" not in raw
    assert aws.client("ec2").describe_spot_instance_requests()["SpotInstanceRequests"] == []


def test_one_time_spot_cannot_be_stopped_but_persistent_can(aws: LocalAws) -> None:
    ec2 = aws.client("ec2")
    one_time = launch(aws, InstanceMarketOptions={"MarketType": "spot", "SpotOptions": {"SpotInstanceType": "one-time"}})
    with pytest.raises(ec2.exceptions.ClientError, match="UnsupportedOperation.*one-time Spot Instance request"):
        ec2.stop_instances(InstanceIds=[one_time])
    assert describe(aws, one_time)["State"]["Name"] == "running"

    spot = {"SpotInstanceType": "persistent", "InstanceInterruptionBehavior": "stop"}
    persistent = launch(aws, InstanceMarketOptions={"MarketType": "spot", "SpotOptions": spot})
    request_id = describe(aws, persistent)["SpotInstanceRequestId"]

    def request_state() -> str:
        return str(ec2.describe_spot_instance_requests(SpotInstanceRequestIds=[request_id])["SpotInstanceRequests"][0]["State"])

    ec2.stop_instances(InstanceIds=[persistent])
    assert request_state() == "disabled"
    ec2.start_instances(InstanceIds=[persistent])
    assert request_state() == "active"
    ec2.terminate_instances(InstanceIds=[one_time, persistent])
    assert request_state() == "closed"


# --- the simulated machine across stop and start -----------------------------------------------------------

ENV_SCRIPT = 'echo "{\\"state_dir\\": \\"$AUTOSTOP_STATE_DIR\\", \\"boot\\": \\"$AUTOSTOP_BOOT_TIME\\", \\"pwd\\": \\"$PWD\\"}"'


@pytest.fixture()
def machine(aws: LocalAws, tmp_path: Path) -> Iterator[tuple[AgentFleet, SimulatedInstance]]:
    fleet = AgentFleet(aws, delivery_timeout_cap=3.0, agent_boot_seconds=0.6)
    aws.client("ssm").create_document(
        Name="Env",
        DocumentType="Command",
        DocumentFormat="JSON",
        Content=json.dumps(
            {
                "schemaVersion": "2.2",
                "description": "print the environment the agent gives scripts",
                "mainSteps": [{"action": "aws:runShellScript", "name": "env", "inputs": {"runCommand": [ENV_SCRIPT]}}],
            }
        ),
    )
    root = tmp_path / "gpu-1"
    root.mkdir()
    inst = SimulatedInstance(instance_id=launch(aws), name="gpu-1", root=root)
    fleet.add(inst)
    yield fleet, inst
    inst.power_off()


def run_env_command(aws: LocalAws, iid: str, timeout: float = 10) -> dict[str, Any]:
    ssm = aws.client("ssm")
    command_id = ssm.send_command(InstanceIds=[iid], DocumentName="Env")["Command"]["CommandId"]
    deadline = time.monotonic() + timeout
    while True:
        inv = ssm.get_command_invocation(CommandId=command_id, InstanceId=iid)
        if inv["Status"] not in ("Pending", "InProgress") or time.monotonic() > deadline:
            return dict(inv)
        time.sleep(0.05)


def ping(aws: LocalAws, iid: str) -> str:
    info = aws.client("ssm").describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [iid]}])
    return str(info["InstanceInformationList"][0]["PingStatus"])


def detached_sleeper(inst: SimulatedInstance, aws: LocalAws) -> int:
    """A process started on the machine that leaves its session (as a resumed trainer does) and is not tracked."""
    code = "import os, subprocess, sys; p = subprocess.Popen(['sleep', '60'], start_new_session=True); print(p.pid)"
    starter = inst.start_process([sys.executable, "-c", code], aws.subprocess_env(), "starter.out")
    starter.wait(timeout=10)
    return int((inst.root / ".sim" / "starter.out").read_text().split()[-1])


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_scripts_get_the_machines_state_dir_and_boot_time(aws: LocalAws, machine: tuple[AgentFleet, SimulatedInstance]) -> None:
    _, inst = machine
    inv = run_env_command(aws, inst.instance_id)
    assert inv["Status"] == "Success", inv
    env = json.loads(inv["StandardOutputContent"])
    assert env["state_dir"] == str(inst.root / "var" / "lib" / "autostop")
    assert int(env["boot"]) == inst.boot_time == host_boot_time()  # launched: the host's boot, until a start


def test_stop_ends_every_process_and_start_boots_with_the_disk_and_a_late_agent(
    aws: LocalAws, machine: tuple[AgentFleet, SimulatedInstance]
) -> None:
    _, inst = machine
    ec2 = aws.client("ec2")
    (inst.root / "ckpt").mkdir()
    (inst.root / "ckpt" / "step-1").write_text("weights")
    sleeper = detached_sleeper(inst, aws)
    assert alive(sleeper) and sleeper in inst.pids()
    first_boot = inst.boot_time

    ec2.stop_instances(InstanceIds=[inst.instance_id])
    deadline = time.monotonic() + 5
    while alive(sleeper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(sleeper), "a detached process survived the stop"
    assert ping(aws, inst.instance_id) == "ConnectionLost"

    time.sleep(1.1)  # so the new boot is a later second
    ec2.start_instances(InstanceIds=[inst.instance_id])
    assert inst.running and inst.processes == [] and inst.pids() == [] and inst.boots == 2
    assert (inst.root / "ckpt" / "step-1").read_text() == "weights"
    assert inst.boot_time > first_boot and abs(inst.boot_time - time.time()) < 5
    assert ping(aws, inst.instance_id) == "ConnectionLost"  # still booting
    sent = time.monotonic()
    inv = run_env_command(aws, inst.instance_id)  # SSM holds the command until the agent is online
    assert inv["Status"] == "Success", inv
    assert time.monotonic() - sent >= 0.4
    assert ping(aws, inst.instance_id) == "Online"
    assert int(json.loads(inv["StandardOutputContent"])["boot"]) == inst.boot_time


def test_an_instance_without_an_agent_stays_without_one_after_a_start(aws: LocalAws, tmp_path: Path) -> None:
    fleet = AgentFleet(aws, delivery_timeout_cap=0.3, agent_boot_seconds=0.0)
    inst = SimulatedInstance(instance_id=launch(aws), name="no-agent", root=tmp_path, agent_online=False)
    fleet.add(inst)
    ec2 = aws.client("ec2")
    ec2.stop_instances(InstanceIds=[inst.instance_id])
    ec2.start_instances(InstanceIds=[inst.instance_id])
    time.sleep(0.2)
    assert ping(aws, inst.instance_id) == "ConnectionLost"


def test_a_stop_during_boot_keeps_the_agent_offline(aws: LocalAws, machine: tuple[AgentFleet, SimulatedInstance]) -> None:
    _, inst = machine
    ec2 = aws.client("ec2")
    ec2.stop_instances(InstanceIds=[inst.instance_id])
    ec2.start_instances(InstanceIds=[inst.instance_id])
    ec2.stop_instances(InstanceIds=[inst.instance_id])
    time.sleep(0.9)  # past the first boot's agent start
    assert not inst.agent_online and ping(aws, inst.instance_id) == "ConnectionLost"


def test_other_processes_are_not_the_machines(machine: tuple[AgentFleet, SimulatedInstance]) -> None:
    _, inst = machine
    outsider = subprocess.Popen(["sleep", "30"], cwd=inst.root.parent, env={**os.environ})
    try:
        assert outsider.pid not in inst.pids()
    finally:
        outsider.kill()
        outsider.wait()
