"""``status``, ``report`` and ``retry`` after real lifecycles of the synthesized state machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from local.runtime import LocalControlPlane
from shared.naming import execution_name
from shared.records import RunKey, RunRecords
from tests.cli.conftest import Cli
from tests.workflow.conftest import base_tags, session_of, start_and_wait, wait_closed, write_checkpoint

CONSOLE = "https://us-east-1.console.aws.amazon.com/states/home?region=us-east-1#/v2/executions/details/"


def finish(cp: LocalControlPlane, name: str, run: str, *, checkpoint: bool = True, **tags: str) -> str:
    """Launch NAME tagged for RUN, (a checkpoint on disk,) the run's default marker put: the marker trigger starts
    the execution; wait for it."""
    iid = cp.launch_instance(name, tags=base_tags(run, **tags))
    if checkpoint:
        write_checkpoint(cp.by_name[name].root, 7)
    cp.put_object(cp.run_uri(run, f"runs/{run}/_SUCCESS"), "done")
    cp.wait_executions()
    return iid


def arn_of(cp: LocalControlPlane, name: str) -> str:
    return cp.deployment.state_machine_arn.replace(":stateMachine:", ":execution:") + ":" + name


@pytest.fixture(scope="module")
def claimed_then_failed(cp: LocalControlPlane) -> str:
    """A run whose execution claimed it and sent the checkpoint command, which found no checkpoint: CheckpointFailed."""
    return finish(cp, "runs-empty", "runs-empty", checkpoint=False)


@pytest.fixture(scope="module")
def stopped(cp: LocalControlPlane) -> str:
    """A run stopped by autostop after a verified checkpoint."""
    iid = finish(cp, "runs-happy", "runs-happy")
    assert cp.instance_state("runs-happy") == "stopped"
    return iid


def test_status_shows_outcome_checkpoint_and_console_urls(cp: LocalControlPlane, autostop: Cli, stopped: str) -> None:
    data = autostop.json("status", stopped)
    [s] = data["sessions"]
    assert (s["instance_id"], s["run_id"], s["outcome"], s["auto_stopped"]) == (stopped, "runs-happy", "Stopped", True)
    assert s["session"] == session_of(cp, stopped)
    cp_ = s["last_checkpoint"]
    assert cp_["manifest_uri"].startswith(f"s3://{cp.deployment.bucket}/instances/") and cp_["manifest_uri"].endswith(".json")
    assert cp_["version_id"] and cp_["bytes"] > 0 and cp_["step"] == 7
    name = execution_name(stopped, "runs-happy", "complete", 1, s["session"])
    [ex] = [e for e in s["executions"] if e["name"] == name]
    assert ex["status"] == "SUCCEEDED" and ex["console_url"] == CONSOLE + arn_of(cp, name)

    assert autostop.json("status", "runs-happy")["sessions"] == data["sessions"]  # by run id
    assert any(x["run_id"] == "runs-happy" for x in autostop.json("status")["sessions"])  # everything
    text = autostop("status", stopped).stdout
    assert "INSTANCE" in text and "Stopped" in text and cp_["manifest_uri"] in text and CONSOLE + arn_of(cp, name) in text
    assert "no run records for nobody" in autostop("status", "nobody").stdout


def test_report_hours_checkpoint_and_time_stopped(cp: LocalControlPlane, autostop: Cli, stopped: str) -> None:
    data = autostop.json("report", stopped)
    [run] = data["runs"]
    [s] = run["sessions"]
    assert (run["instance_id"], run["run_id"], s["outcome"]) == (stopped, "runs-happy", "Stopped")
    assert s["hours_trained"] is not None and s["hours_trained"] >= 0
    assert s["hours_completion_to_stop"] is not None and s["hours_completion_to_stop"] >= 0
    assert s["checkpoint_bytes"] > 0 and s["checkpoint_seconds"] >= 0
    # the instance's own upload time, from its result line through Verify into the record; a part of the whole
    assert 0 <= s["upload_seconds"] <= s["checkpoint_seconds"] + 1
    assert s["hours_stopped_since"] is not None and s["hours_stopped_since"] >= 0 and s["stopped_until"] is None
    assert run["hours_stopped_since"] == s["hours_stopped_since"]
    text = autostop("report", stopped).stdout
    assert "runs-happy" in text and "not billed" in text


def test_report_says_unknown_where_the_records_hold_nothing(cp: LocalControlPlane, autostop: Cli, claimed_then_failed: str) -> None:
    [run] = autostop.json("report", claimed_then_failed)["runs"]
    [s] = run["sessions"]
    assert s["outcome"] == "CheckpointFailed" and s["hours_trained"] is not None
    assert s["hours_completion_to_stop"] is s["checkpoint_bytes"] is s["hours_stopped_since"] is None
    line = next(ln for ln in autostop("report", "runs-empty").stdout.splitlines() if "runs-empty" in ln)
    assert line.split()[3:] == ["CheckpointFailed", str(s["hours_trained"]), "unknown", "unknown", "unknown", "unknown", "unknown"]

    iid = cp.launch_instance("runs-notyet", tags=base_tags("runs-notyet"))
    assert start_and_wait(cp, iid, "runs-notyet").outcome == "NotComplete"  # decided before any claim: no record
    assert autostop.json("report", iid)["runs"] == []
    assert "no run records" in autostop("report", iid).stdout


def test_retry_after_a_failed_execution_starts_the_next_attempt(cp: LocalControlPlane, autostop: Cli) -> None:
    iid = finish(cp, "runs-hib", "runs-hib", action="hibernate")  # refused before the trainer is touched: StopFailed
    session = session_of(cp, iid)
    first = execution_name(iid, "runs-hib", "complete", 1, session)
    assert cp.aws.client("stepfunctions").describe_execution(executionArn=arn_of(cp, first))["status"] == "FAILED"

    autostop("tag", iid, "--run-id", "runs-hib", "--checkpoint-dir", str(cp.by_name["runs-hib"].root / "ckpt"), "--action", "stop")
    out = autostop.json("retry", arn_of(cp, first))
    second = execution_name(iid, "runs-hib", "complete", 2, session)
    assert (out["started"], out["name"]) == (True, second)
    assert out["console_url"] == CONSOLE + arn_of(cp, second)
    run = wait_closed(cp, arn_of(cp, second))
    assert (run.status, run.outcome) == ("SUCCEEDED", "Stopped"), run.reason
    assert cp.instance_state("runs-hib") == "stopped"

    refused = autostop("retry", arn_of(cp, first), code=1)  # the instance is stopped now
    assert "is stopped" in refused.stderr


def test_retry_refuses_what_is_not_safe(cp: LocalControlPlane, autostop: Cli, stopped: str, claimed_then_failed: str) -> None:
    session = session_of(cp, stopped)
    ok = arn_of(cp, execution_name(stopped, "runs-happy", "complete", 1, session))
    assert "ended SUCCEEDED" in autostop("retry", ok, code=1).stderr
    assert "cannot read execution" in autostop("retry", arn_of(cp, "no-such-execution"), code=1).stderr

    # The checkpoint command ran (and found nothing): the execution claimed the run, which is final.
    iid = claimed_then_failed
    failed = arn_of(cp, execution_name(iid, "runs-empty", "complete", 1, session_of(cp, iid)))
    assert autostop.json("retry", failed, code=1)["refused"].startswith("execution ")
    assert "claimed this run's complete" in autostop("retry", failed, code=1).stderr


def test_retry_refuses_when_the_instance_is_no_longer_opted_in_or_a_stop_was_requested(cp: LocalControlPlane, autostop: Cli) -> None:
    iid = finish(cp, "runs-hib2", "runs-hib2", action="hibernate")
    session = session_of(cp, iid)
    failed = arn_of(cp, execution_name(iid, "runs-hib2", "complete", 1, session))
    ec2 = cp.aws.client("ec2")
    ec2.create_tags(Resources=[iid], Tags=[{"Key": "autostop:enabled", "Value": "false"}])
    assert "autostop:enabled is not 'true'" in autostop("retry", failed, code=1).stderr
    ec2.create_tags(Resources=[iid], Tags=[{"Key": "autostop:enabled", "Value": "true"}, {"Key": "autostop:run-id", "Value": "other"}])
    assert "now tagged with run 'other'" in autostop("retry", failed, code=1).stderr
    ec2.create_tags(Resources=[iid], Tags=[{"Key": "autostop:run-id", "Value": "runs-hib2"}, {"Key": "autostop:action", "Value": "stop"}])

    records = RunRecords(cp.aws.client("dynamodb"), cp.deployment.table)
    mark = {"execution": "someone-else", "action": "stop", "at": "2026-01-01T00:00:00Z"}
    records.update(RunKey(iid, "runs-hib2", str(session)), lambda r: r.update(stop_requested=mark), status="test", execution="test")
    assert "already requested stop" in autostop("retry", failed, code=1).stderr


def test_console_script_against_the_moto_server(cp: LocalControlPlane, outputs: Path, stopped: str) -> None:
    """The installed entry point, in another process, through --endpoint-url (the moto server shares the state)."""
    exe = Path(sys.executable).parent / "autostop"
    if not exe.exists():
        pytest.skip("autostop console script not installed (pip install -e .)")
    argv = [str(exe), "status", stopped, "--json", "--outputs", str(outputs), "--endpoint-url", cp.aws.endpoint_url]
    env = {k: v for k, v in cp.aws.subprocess_env().items() if k != "AWS_ENDPOINT_URL"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    [s] = json.loads(proc.stdout)["sessions"]
    assert (s["run_id"], s["outcome"]) == ("runs-happy", "Stopped")


def test_report_ends_the_stopped_time_at_the_next_start(cp: LocalControlPlane, autostop: Cli) -> None:
    iid = finish(cp, "runs-restart", "runs-restart")
    first_session = session_of(cp, iid)
    record = cp.start_instance("runs-restart")
    cp.wait_executions()
    [run] = autostop.json("report", iid)["runs"]
    first = next(s for s in run["sessions"] if s["session"] == first_session)
    assert first["outcome"] == "Stopped" and first["stopped_until"] == record["launch_time"]
    assert first["hours_stopped_since"] is not None and first["hours_stopped_since"] >= 0
