"""Task-token waiters (shared/waiters.py), Send command and on_status_event against moto's DynamoDB and small fakes
of SSM, EC2 and Step Functions that record what they were asked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, ReadTimeoutError
from moto import mock_aws

from on_status_event.logic import handle
from send_command.logic import follow_command, send_command
from shared import constants as c
from shared.errors import CommandNotSent, CommandOutcomeUnknown, TransientAwsError
from shared.waiters import COMMAND, STOP, Waiters, complete_command, execution_of, send_task_success, settle_stale, stop_settled
from shared.workflow import EvaluateOutput

TABLE = "runs"
IID = "i-0123456789abcdef0"
EXEC = "i-0123456789abcdef0-run-a-complete-261130031803"
CMD = "11111111-2222-3333-4444-555555555555"
SESSION = "2026-11-30T03:18:03Z"


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


@dataclass
class FakeSfn:
    sent: list[tuple[str, str]] = field(default_factory=list)
    fail: Exception | None = None

    def send_task_success(self, taskToken: str, output: str) -> None:  # noqa: N803 (boto3's names)
        if self.fail is not None:
            raise self.fail
        self.sent.append((taskToken, output))


@dataclass
class FakeSsm:
    invocation: dict[str, Any] = field(default_factory=dict)
    send_error: Exception | None = None
    waiters: Waiters | None = None
    seen_waiter_at_send: bool | None = None

    def get_command_invocation(self, CommandId: str, InstanceId: str) -> dict[str, Any]:  # noqa: N803
        if not self.invocation:
            raise client_error("InvocationDoesNotExist")
        return self.invocation

    def send_command(self, **kwargs: Any) -> dict[str, Any]:
        if self.waiters is not None:
            self.seen_waiter_at_send = self.waiters.get(IID, EXEC, COMMAND) is not None
        if self.send_error is not None:
            raise self.send_error
        self.sent = kwargs
        return {"Command": {"CommandId": CMD}}


@pytest.fixture()
def waiters() -> Iterator[Waiters]:
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        keys = [(c.RECORDS_PARTITION_KEY, "HASH"), (c.RECORDS_SORT_KEY, "RANGE")]
        ddb.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": n, "KeyType": t} for n, t in keys],
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n, _ in keys],
            BillingMode="PAY_PER_REQUEST",
        )
        yield Waiters(ddb, TABLE)


def ended(status: str = "Success", comment: str = f"autostop {EXEC}") -> dict[str, Any]:
    return {"Status": status, "StatusDetails": status, "ResponseCode": 0, "StandardOutputContent": "{}", "Comment": comment}


def test_execution_of_reads_only_autostop_comments() -> None:
    assert execution_of(f"autostop {EXEC}") == EXEC
    assert execution_of("deploy v2") is None and execution_of(None) is None and execution_of("autostop ") is None


def test_a_command_that_ended_completes_its_waiter_once(waiters: Waiters) -> None:
    sfn = FakeSfn()
    waiters.put(IID, EXEC, COMMAND, "tok-1")
    ssm = FakeSsm(invocation=ended())
    assert complete_command(ssm, sfn, waiters, command_id=CMD, instance_id=IID) == "completed"
    [(token, output)] = sfn.sent
    assert token == "tok-1" and '"Status":"Success"' in output and f'"CommandId":"{CMD}"' in output
    assert waiters.get(IID, EXEC, COMMAND) is None
    # The same event again: nothing waits any more.
    assert complete_command(ssm, sfn, waiters, command_id=CMD, instance_id=IID) == "no_waiter"
    assert len(sfn.sent) == 1


@pytest.mark.parametrize(
    ("invocation", "expected"),
    [(ended("InProgress"), "running"), (ended(comment="someone else's"), "not_ours"), ({}, "unknown")],
)
def test_nothing_is_completed_unless_our_command_has_ended(waiters: Waiters, invocation: dict[str, Any], expected: str) -> None:
    sfn = FakeSfn()
    waiters.put(IID, EXEC, COMMAND, "tok-1")
    assert complete_command(FakeSsm(invocation=invocation), sfn, waiters, command_id=CMD, instance_id=IID) == expected
    assert sfn.sent == [] and waiters.get(IID, EXEC, COMMAND) is not None


def test_a_closed_task_is_a_duplicate_and_a_throttle_is_transient() -> None:
    assert send_task_success(FakeSfn(fail=client_error("TaskTimedOut")), "t", {}) is False
    with pytest.raises(TransientAwsError):
        send_task_success(FakeSfn(fail=client_error("ThrottlingException")), "t", {})
    with pytest.raises(ClientError):
        send_task_success(FakeSfn(fail=client_error("AccessDeniedException")), "t", {})


@pytest.mark.parametrize(
    ("state", "launch", "settled"),
    [("stopped", None, True), ("terminated", None, True), ("stopping", SESSION, False), ("running", SESSION, False)],
)
def test_stop_settled(state: str, launch: str | None, settled: bool) -> None:
    assert stop_settled(state, launch, SESSION) is settled
    assert stop_settled("running", "2026-11-30T04:00:00Z", SESSION) is True  # started again: a new session


@dataclass
class FakeEc2:
    state: str = "stopped"
    launch: datetime = datetime(2026, 11, 30, 3, 18, 3, tzinfo=UTC)

    def get_paginator(self, name: str) -> Any:
        ec2 = self

        class Pages:
            def paginate(self, Filters: list[dict[str, Any]]) -> list[dict[str, Any]]:  # noqa: N803
                (ids,) = [f["Values"] for f in Filters if f["Name"] == "instance-id"]
                insts = [{"InstanceId": i, "State": {"Name": ec2.state}, "LaunchTime": ec2.launch} for i in ids]
                return [{"Reservations": [{"Instances": insts}]}]

        return Pages()


def test_the_sweep_settles_stale_waiters_whose_event_was_lost(waiters: Waiters) -> None:
    sfn = FakeSfn()
    waiters.put(IID, EXEC, COMMAND, "tok-cmd", command_id=CMD)
    waiters.put(IID, EXEC, STOP, "tok-stop", stop={"outcome": "Stopped", "called": True}, session=SESSION)
    young = settle_stale(FakeSsm(invocation=ended()), FakeEc2(), sfn, waiters, older_than=3600)
    assert young == {"waiting": 2, "stale": 0, "completed": 0} and sfn.sent == []
    settled = settle_stale(FakeSsm(invocation=ended()), FakeEc2(), sfn, waiters, older_than=0)
    assert settled == {"waiting": 2, "stale": 2, "completed": 2}
    assert sorted(t for t, _ in sfn.sent) == ["tok-cmd", "tok-stop"]
    assert waiters.query() == []


def test_an_instance_ec2_no_longer_knows_keeps_no_other_stop_from_settling(waiters: Waiters) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    (inst,) = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"]
    ec2.stop_instances(InstanceIds=[inst["InstanceId"]])
    session = inst["LaunchTime"].strftime("%Y-%m-%dT%H:%M:%SZ")
    gone = "i-0fffffffffffffff0"  # terminated long ago: DescribeInstances with InstanceIds=[it] fails the whole call
    with pytest.raises(ClientError, match="InvalidInstanceID.NotFound"):
        ec2.describe_instances(InstanceIds=[inst["InstanceId"], gone])
    sfn = FakeSfn()
    waiters.put(inst["InstanceId"], EXEC, STOP, "tok-stopped", stop={"outcome": "Stopped", "called": True}, session=session)
    waiters.put(gone, EXEC, STOP, "tok-gone", stop={"outcome": "Terminated", "called": True}, session=SESSION)
    assert settle_stale(FakeSsm(), ec2, sfn, waiters, older_than=0)["completed"] == 2
    outputs = {token: json.loads(out)["state"] for token, out in sfn.sent}
    assert outputs == {"tok-stopped": "stopped", "tok-gone": "terminated"} and waiters.query() == []


def test_the_sweep_leaves_a_stop_that_is_still_on_its_way(waiters: Waiters) -> None:
    sfn = FakeSfn()
    waiters.put(IID, EXEC, STOP, "tok-stop", stop={"outcome": "Stopped", "called": True}, session=SESSION)
    assert settle_stale(FakeSsm(), FakeEc2(state="stopping"), sfn, waiters, older_than=0)["completed"] == 0
    assert settle_stale(FakeSsm(), FakeEc2(state="running"), sfn, waiters, older_than=0)["completed"] == 0
    assert sfn.sent == [] and len(waiters.query(IID)) == 1


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"source": "aws.s3"}, "source: 'aws.s3'"),
        ({"detail-type": None}, "detail-type: None"),
        ({"time": "yesterday"}, "time: 'yesterday'"),
        ({"time": "2026-12-05T10:00:00"}, "is not a time with a zone"),
        ({"time": 1e20}, "time: 1e+20"),
        ({"time": 253402300800}, "time: 253402300800"),
        ({"detail": "{}"}, "detail: '{}'"),
        ({"detail": {"instance-id": "i-1", "state": "stopped"}}, "instance-id: 'i-1'"),
        ({"detail": {"instance-id": IID, "state": 3}}, "state: 3"),
    ],
)
def test_a_malformed_status_event_is_ignored_before_any_call(change: dict[str, Any], why: str) -> None:
    event = {"source": "aws.ec2", "detail-type": c.STATE_CHANGE, "time": "2026-12-05T10:00:00Z", "detail": {"instance-id": IID}}
    ignored = handle({**event, **change}, ssm=None, sfn=None, waiters=None)["ignored"]  # type: ignore[arg-type]
    assert ignored.startswith("malformed event: ") and why in ignored


def test_status_events_complete_stops_and_commands_and_ignore_the_rest(waiters: Waiters) -> None:
    sfn = FakeSfn()
    waiters.put(IID, EXEC, STOP, "tok-stop", stop={"outcome": "Stopped", "called": True, "expected_state": "stopped"})
    stopping = {"source": "aws.ec2", "detail-type": c.STATE_CHANGE, "detail": {"instance-id": IID, "state": "stopping"}}
    assert "ignored" in handle(stopping, ssm=FakeSsm(), sfn=sfn, waiters=waiters)
    stopped = {**stopping, "detail": {"instance-id": IID, "state": "stopped"}}
    assert handle(stopped, ssm=FakeSsm(), sfn=sfn, waiters=waiters)["results"] == ["completed"]
    assert '"state":"stopped"' in sfn.sent[0][1] and '"outcome":"Stopped"' in sfn.sent[0][1]
    malformed = {"source": "aws.ssm", "detail-type": "EC2 Command Invocation Status-change Notification", "detail": {"command-id": "x"}}
    assert "malformed" in handle(malformed, ssm=FakeSsm(), sfn=sfn, waiters=waiters)["ignored"]
    early = {**malformed, "detail": {"command-id": CMD, "instance-id": IID, "status": "Success"}}
    waiters.put(IID, EXEC, COMMAND, "tok-cmd")
    with pytest.raises(TransientAwsError):  # GetCommandInvocation does not show the end yet: Lambda retries
        handle(early, ssm=FakeSsm(invocation=ended("InProgress")), sfn=sfn, waiters=waiters)
    assert handle(early, ssm=FakeSsm(invocation=ended()), sfn=sfn, waiters=waiters)["results"] == ["completed"]


def evaluation() -> EvaluateOutput:
    return EvaluateOutput.model_validate(
        {
            "decision": "complete",
            "outcome": None,
            "reason": "done",
            "instance_id": IID,
            "run_id": "run-a",
            "decided_at": "2026-11-30T03:20:00Z",
            "command": {"document": "doc", "parameters": {"executionTimeout": ["3600"]}, "delivery_timeout_seconds": 120},
        }
    )


def test_send_records_the_waiter_before_it_sends(waiters: Waiters) -> None:
    ssm = FakeSsm(waiters=waiters)
    out = send_command(ssm, waiters, evaluation(), execution=EXEC, token="tok")
    assert ssm.seen_waiter_at_send is True and out.command_id == CMD
    assert ssm.sent["Comment"] == f"autostop {EXEC}" and ssm.sent["DocumentVersion"] == c.PINNED_DOCUMENT_VERSION
    assert waiters.get(IID, EXEC, COMMAND)["command_id"] == CMD
    assert evaluation().command is not None and evaluation().command.wait_seconds == 120 + 3600 + 60


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (client_error("ThrottlingException"), TransientAwsError),
        (client_error("InvalidInstanceId"), CommandNotSent),
        (client_error("InternalServerError", 500), CommandOutcomeUnknown),
        (ReadTimeoutError(endpoint_url="https://ssm"), CommandOutcomeUnknown),
    ],
)
def test_send_names_what_a_failure_means(waiters: Waiters, error: Exception, raised: type[Exception]) -> None:
    with pytest.raises(raised):
        send_command(FakeSsm(send_error=error), waiters, evaluation(), execution=EXEC, token="tok")


def test_follow_completes_at_once_when_the_command_already_ended(waiters: Waiters) -> None:
    sfn = FakeSfn()
    done = follow_command(FakeSsm(invocation=ended()), sfn, waiters, instance_id=IID, execution=EXEC, token="tok", command_id=CMD)
    assert done.completed and sfn.sent[0][0] == "tok" and waiters.get(IID, EXEC, COMMAND) is None
    running = FakeSsm(invocation=ended("InProgress"))
    waiting = follow_command(running, sfn, waiters, instance_id=IID, execution=EXEC, token="t2", command_id=CMD)
    assert not waiting.completed and waiters.get(IID, EXEC, COMMAND)["token"] == "t2"


# --- found by an adversarial review: stale tokens, repeated attempts, late events -------------------------------


def test_a_stale_token_never_removes_the_waiter_of_a_retried_task(waiters: Waiters) -> None:
    from shared.waiters import complete_stop

    sfn = FakeSfn(fail=client_error("TaskTimedOut"))  # T1's task attempt is over
    stale = {"instance_id_of": IID, "execution": EXEC, "token": "T1", "stop": {"outcome": "Stopped", "called": True}}
    waiters.put(IID, EXEC, STOP, "T2", stop=stale["stop"], session=SESSION)  # the retried attempt's waiter
    assert complete_stop(sfn, waiters, stale, state="stopped", launch_time=None) == "duplicate"
    assert waiters.get(IID, EXEC, STOP)["token"] == "T2"


def test_a_second_attempt_of_run_command_looks_the_command_up_instead_of_sending(waiters: Waiters) -> None:
    waiters.put(IID, EXEC, COMMAND, "tok-1")  # attempt 1 got as far as its waiter (a Lambda service error after)
    ssm = FakeSsm()
    with pytest.raises(CommandOutcomeUnknown):
        send_command(ssm, waiters, evaluation(), execution=EXEC, token="tok-2")
    assert not hasattr(ssm, "sent")


def test_a_throttled_send_leaves_no_waiter_so_the_retry_sends(waiters: Waiters) -> None:
    with pytest.raises(TransientAwsError):
        send_command(FakeSsm(send_error=client_error("ThrottlingException")), waiters, evaluation(), execution=EXEC, token="tok-1")
    assert waiters.get(IID, EXEC, COMMAND) is None
    assert send_command(FakeSsm(), waiters, evaluation(), execution=EXEC, token="tok-2").command_id == CMD


def test_an_event_for_another_command_of_the_execution_completes_nothing(waiters: Waiters) -> None:
    sfn = FakeSfn()
    waiters.put(IID, EXEC, COMMAND, "tok", command_id="99999999-2222-3333-4444-555555555555")
    assert complete_command(FakeSsm(invocation=ended()), sfn, waiters, command_id=CMD, instance_id=IID) == "other_command"
    assert sfn.sent == []


def test_a_late_stopped_event_of_an_earlier_stop_completes_no_later_wait(waiters: Waiters) -> None:
    sfn = FakeSfn()
    waiters.put(IID, EXEC, STOP, "tok-stop", stop={"outcome": "Stopped", "called": True, "expected_state": "stopped"})
    late = {
        "source": "aws.ec2",
        "detail-type": c.STATE_CHANGE,
        "time": "2020-01-01T00:00:00Z",  # long before the waiter was written
        "detail": {"instance-id": IID, "state": "stopped"},
    }
    assert handle(late, ssm=FakeSsm(), sfn=sfn, waiters=waiters)["results"] == []
    assert sfn.sent == [] and waiters.get(IID, EXEC, STOP) is not None
