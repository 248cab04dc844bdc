"""Each scenario drives the synthesized state machine end to end and checks the path taken, the
instance's final state and what is in S3. Names follow the outcome they prove."""

from __future__ import annotations

import json

from local.runtime import LocalControlPlane
from shared.naming import execution_name
from tests.workflow.conftest import base_tags, checkpoint_commands, keys, run_key, session_of, start_and_wait, write_checkpoint

TAIL_OK = ["Record outcome", "Outcome is a failure?", "Done"]
TAIL_FAILED = ["Record outcome", "Outcome is a failure?", "Failed"]


def trainer_args(*options: str) -> list[str]:
    """Toy-trainer options for an instance whose checkpoint dir and PID file are the test's defaults."""
    return ["--checkpoint-dir", "{root}/ckpt", "--pid-file", "{root}/train.pid", *options]


def marker(cp: LocalControlPlane, run: str) -> None:
    """The run's default completion marker, where its trainer puts it: under its instance's own prefix."""
    cp.put_object(cp.run_uri(run, f"runs/{run}/_SUCCESS"), "done")


def launch_finished(cp: LocalControlPlane, name: str, run: str, **tags: str) -> str:
    iid = cp.launch_instance(name, tags=base_tags(run, **tags))
    write_checkpoint(cp.by_name[name].root, 10)
    return iid


def test_happy_path_stops_only_after_the_checkpoint_is_verified(cp: LocalControlPlane) -> None:
    iid = launch_finished(cp, "happy", "run-happy")
    marker(cp, "run-happy")
    run = start_and_wait(cp, iid, "run-happy")

    assert (run.status, run.outcome) == ("SUCCEEDED", "Stopped"), run.reason
    assert run.states.index("Verify checkpoint") < run.states.index("Stop instance") < run.states.index("Stopped")
    assert run.states[-len(TAIL_OK) :] == TAIL_OK
    assert cp.instance_state("happy") == "stopped"
    manifest_key = run_key(cp, f"runs/run-happy/manifests/{run.name}.json")
    assert run.output and run.output["manifest_uri"] == f"s3://{cp.deployment.bucket}/{manifest_key}"
    manifest = json.loads(cp.aws.client("s3").get_object(Bucket=cp.deployment.bucket, Key=manifest_key)["Body"].read())
    assert manifest["step"] == 10 and manifest["instance_id"] == iid
    assert sorted(keys(cp, f"runs/run-happy/checkpoints/{run.name}/")) == sorted(f["key"] for f in manifest["files"])
    assert any(n["outcome"] == "Stopped" and n["instance_id"] == iid for n in cp.notifications())


def test_terminate_only_when_tagged(cp: LocalControlPlane) -> None:
    iid = launch_finished(cp, "term", "run-term", action="terminate")
    marker(cp, "run-term")
    run = start_and_wait(cp, iid, "run-term")
    assert (run.status, run.outcome) == ("SUCCEEDED", "Terminated"), run.reason
    assert cp.instance_state("term") == "terminated"


def test_dry_run_checkpoints_but_leaves_the_instance_running(cp: LocalControlPlane) -> None:
    iid = launch_finished(cp, "dry", "run-dry", dry_run="true")
    marker(cp, "run-dry")
    run = start_and_wait(cp, iid, "run-dry")
    assert (run.status, run.outcome) == ("SUCCEEDED", "DryRun")
    assert "Dry run" in run.states and "Stopped" not in run.states
    assert cp.instance_state("dry") == "running"
    assert keys(cp, f"runs/run-dry/manifests/{run.name}.json")


def test_not_complete_sends_no_checkpoint_command(cp: LocalControlPlane) -> None:
    iid = launch_finished(cp, "notyet", "run-notyet")
    run = start_and_wait(cp, iid, "run-notyet")
    assert (run.status, run.outcome) == ("SUCCEEDED", "NotComplete")
    assert run.states == ["Evaluate completion", "Run complete?", "Not complete", *TAIL_OK]
    assert "no completion marker" in run.reason
    assert checkpoint_commands(cp, iid) == []
    assert cp.instance_state("notyet") == "running"


def test_inconclusive_probe_does_nothing(cp: LocalControlPlane) -> None:
    iid = cp.launch_instance("unsure", tags=base_tags("run-unsure", log_file="{root}/run-unsure.log", log_pattern="Training complete"))
    run = start_and_wait(cp, iid, "run-unsure")
    assert (run.status, run.outcome) == ("SUCCEEDED", "Inconclusive")
    assert "run-unsure.log is missing" in run.reason
    assert checkpoint_commands(cp, iid) == []
    assert cp.instance_state("unsure") == "running"


def test_checkpoint_command_failed_when_there_is_no_checkpoint(cp: LocalControlPlane) -> None:
    iid = cp.launch_instance("empty", tags=base_tags("run-empty"))
    marker(cp, "run-empty")
    run = start_and_wait(cp, iid, "run-empty")
    assert (run.status, run.error) == ("FAILED", "CheckpointFailed")
    assert "NoCheckpoint" in (run.cause or "")
    assert run.states[-len(TAIL_FAILED) :] == TAIL_FAILED and "Stop instance" not in run.states
    assert cp.instance_state("empty") == "running"


def test_trainer_that_does_not_exit_in_time_blocks_the_stop(cp: LocalControlPlane) -> None:
    tags = base_tags(
        "run-stubborn",
        pid_file="{root}/train.pid",
        completion_marker=f"s3://{cp.deployment.bucket}/runs/run-stubborn/_SUCCESS",
        grace_seconds="1",
    )
    trainer = trainer_args(
        "--steps",
        "3",
        "--step-seconds",
        "0.01",
        "--on-signal",
        "ignore",
        "--hold-seconds",
        "60",
        "--marker-uri",
        "s3://{bucket}/{prefix}runs/run-stubborn/_SUCCESS",
    )
    iid = cp.launch_instance("stubborn", tags=tags, trainer=trainer)
    _wait_for_key(cp, "runs/run-stubborn/_SUCCESS")
    run = start_and_wait(cp, iid, "run-stubborn")
    assert (run.status, run.error) == ("FAILED", "CheckpointFailed")
    assert "TrainerDidNotExit" in (run.cause or "")
    assert keys(cp, f"runs/run-stubborn/checkpoints/{run.name}/") == []
    assert cp.instance_state("stubborn") == "running"
    assert cp.by_name["stubborn"].trainer.poll() is None  # still training: nothing was killed


def test_trainer_with_nothing_on_disk_is_not_signalled(cp: LocalControlPlane) -> None:
    """No checkpoint on disk and no save-on-signal tag: signalling would end the run with nothing to upload."""
    tags = base_tags("run-bare", pid_file="{root}/train.pid", completion_marker=f"s3://{cp.deployment.bucket}/runs/run-bare/_SUCCESS")
    trainer = trainer_args("--steps", "100000", "--step-seconds", "0.01", "--checkpoint-every", "1000000", "--on-signal", "save-and-exit")
    iid = cp.launch_instance("bare", tags=tags, trainer=trainer)
    marker(cp, "run-bare")
    run = start_and_wait(cp, iid, "run-bare")
    assert (run.status, run.error) == ("FAILED", "CheckpointFailed"), run.reason
    assert "NoCheckpoint" in (run.cause or "") and "Nothing was signalled" in (run.cause or "")
    assert "Stop instance" not in run.states
    assert cp.instance_state("bare") == "running"
    assert cp.by_name["bare"].trainer.poll() is None  # still training


def test_cooperative_trainer_is_signalled_and_its_final_checkpoint_uploaded(cp: LocalControlPlane) -> None:
    tags = base_tags(
        "run-coop",
        pid_file="{root}/train.pid",
        completion_marker=f"s3://{cp.deployment.bucket}/runs/run-coop/_SUCCESS",
        save_on_signal="true",  # it has no checkpoint on disk yet, and saves one when signalled
    )
    trainer = trainer_args("--steps", "100000", "--step-seconds", "0.01", "--checkpoint-every", "1000000", "--on-signal", "save-and-exit")
    iid = cp.launch_instance("coop", tags=tags, trainer=trainer)
    marker(cp, "run-coop")  # e.g. a job scheduler declares the run finished while the trainer still runs
    run = start_and_wait(cp, iid, "run-coop")
    assert (run.status, run.outcome) == ("SUCCEEDED", "Stopped"), run.reason
    key = run_key(cp, f"runs/run-coop/manifests/{run.name}.json")
    manifest = json.loads(cp.aws.client("s3").get_object(Bucket=cp.deployment.bucket, Key=key)["Body"].read())
    assert manifest["step"] > 0  # the checkpoint saved on SIGTERM, not an older one
    assert cp.by_name["coop"].trainer.returncode == 0


def test_upload_unverified_leaves_the_instance_running(cp: LocalControlPlane) -> None:
    iid = cp.launch_instance("lossy", tags=base_tags("run-lossy"), faults=["lose_object"])
    write_checkpoint(cp.by_name["lossy"].root, 3)
    marker(cp, "run-lossy")
    run = start_and_wait(cp, iid, "run-lossy")
    assert (run.status, run.error) == ("FAILED", "UploadUnverified")
    assert "missing" in (run.cause or "")
    assert "Stop instance" not in run.states
    assert cp.instance_state("lossy") == "running"


def test_stop_refused_by_ec2_is_stop_failed(cp: LocalControlPlane) -> None:
    iid = cp.launch_instance("protected", tags=base_tags("run-prot", action="terminate"))
    cp.aws.client("ec2").modify_instance_attribute(InstanceId=iid, DisableApiTermination={"Value": True})  # termination protection
    write_checkpoint(cp.by_name["protected"].root, 4)
    marker(cp, "run-prot")
    run = start_and_wait(cp, iid, "run-prot")
    assert (run.status, run.error) == ("FAILED", "StopFailed")
    assert "OperationNotPermitted" in (run.cause or "")
    assert "Stop refused" in run.states
    assert cp.instance_state("protected") == "running"
    assert keys(cp, f"runs/run-prot/manifests/{run.name}.json")  # the checkpoint itself was saved


def test_impossible_hibernate_is_refused_before_the_trainer_is_touched(cp: LocalControlPlane) -> None:
    iid = launch_finished(cp, "nohib", "run-nohib", action="hibernate")
    marker(cp, "run-nohib")
    run = start_and_wait(cp, iid, "run-nohib")
    assert (run.status, run.error) == ("FAILED", "StopFailed")
    assert run.states == ["Evaluate completion", "Run complete?", "Action not possible", *TAIL_FAILED]
    assert "hibernation" in (run.cause or "")
    assert checkpoint_commands(cp, iid) == []
    assert cp.instance_state("nohib") == "running"


def test_hibernate_when_the_instance_supports_it(cp: LocalControlPlane) -> None:
    iid = cp.launch_instance(
        "hib", tags=base_tags("run-hib", action="hibernate"), run_instances={"HibernationOptions": {"Configured": True}}
    )
    write_checkpoint(cp.by_name["hib"].root, 7)
    marker(cp, "run-hib")
    run = start_and_wait(cp, iid, "run-hib")
    assert (run.status, run.outcome) == ("SUCCEEDED", "Hibernated")
    assert cp.instance_state("hib") == "stopped"


def test_duplicate_events_lead_to_one_action(cp: LocalControlPlane) -> None:
    iid = launch_finished(cp, "dup", "run-dup")
    marker(cp, "run-dup")
    marker(cp, "run-dup")  # a second Object Created event for the same run
    cp.schedule_tick()  # and an overlapping sweep
    cp.wait_executions()
    cp.schedule_tick()
    cp.wait_executions()
    ours = [e for e in cp.executions() if e["name"].startswith(iid)]
    assert [e["name"] for e in ours] == [execution_name(iid, "run-dup", "complete", session=session_of(cp, iid))]
    assert len(checkpoint_commands(cp, iid)) == 1
    assert cp.instance_state("dup") == "stopped"


def _wait_for_key(cp: LocalControlPlane, key: str, timeout: float = 30) -> None:
    import time

    s3 = cp.aws.client("s3")
    deadline = time.monotonic() + timeout
    while not s3.list_objects_v2(Bucket=cp.deployment.bucket, Prefix=run_key(cp, key)).get("KeyCount"):
        if time.monotonic() > deadline:
            raise TimeoutError(key)
        time.sleep(0.1)


# --- endings without their own Notify (the execution-ended rule) ------------------------------------------------


def _wait_notes(cp: LocalControlPlane, execution: str, timeout: float = 20) -> list[dict]:  # type: ignore[type-arg]
    import time

    deadline = time.monotonic() + timeout
    seen: list[dict] = []  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        cp.wait_executions()
        seen += [n for n in cp.notifications() if n.get("execution") == execution]
        if seen:
            return seen
        time.sleep(0.2)
    return seen


def test_the_last_attempt_ending_before_acting_is_notified_as_attempts_exhausted(cp: LocalControlPlane) -> None:
    """F10: "attempts exhausted" was only a log line of the next trigger; the last attempt's end now says so."""
    from shared.executions import MAX_ATTEMPTS

    iid = launch_finished(cp, "exhausted", "run-exhausted")  # no marker: NotComplete
    session = session_of(cp, iid)
    name = execution_name(iid, "run-exhausted", "complete", MAX_ATTEMPTS, session)
    payload = {"instance_id": iid, "run_id": "run-exhausted", "reason": "complete", "attempt": MAX_ATTEMPTS, "trigger": {}}
    payload["session"] = session
    sfn = cp.aws.client("stepfunctions")
    sfn.start_execution(stateMachineArn=cp.deployment.state_machine_arn, name=name, input=json.dumps(payload))
    notes = _wait_notes(cp, name)
    outcomes = sorted(n["outcome"] for n in notes)
    assert outcomes == ["AttemptsExhausted", "NotComplete"], notes
    exhausted = next(n for n in notes if n["outcome"] == "AttemptsExhausted")
    assert exhausted["instance_id"] == iid and f"attempt {MAX_ATTEMPTS} of {MAX_ATTEMPTS} ended NotComplete" in exhausted["reason"]
    assert cp.instance_state("exhausted") == "running"


def test_a_failure_outside_the_outcome_states_is_notified(cp: LocalControlPlane) -> None:
    """F10: input that is not a JSON object fails in States.Runtime before any outcome state: notified as ExecutionFailed."""
    sfn = cp.aws.client("stepfunctions")
    started = sfn.start_execution(stateMachineArn=cp.deployment.state_machine_arn, name="by-hand-not-an-object", input='"oops"')
    notes = _wait_notes(cp, "by-hand-not-an-object")
    status = sfn.describe_execution(executionArn=started["executionArn"])["status"]
    assert status == "FAILED"
    assert [n["outcome"] for n in notes] == ["ExecutionFailed"], notes
    assert "failed outside its outcome states" in notes[0]["reason"]
