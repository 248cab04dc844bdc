"""Spot interruptions, rebalance recommendations, run records and resume, end to end on the synthesized
state machine: EC2 events go through the deployed EventBridge rules to the trigger, the executions run
the real documents on simulated instances, and each test checks the path taken, the instance's state,
S3, the run record and the instance's informational tags."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from local.runtime import LocalControlPlane
from tests.workflow.conftest import Run, base_tags, keys, session_of, wait_closed

SAVED_PATH = ["Run emergency checkpoint command", "Verify emergency checkpoint", "Spot checkpoint saved"]


def runs_for(cp: LocalControlPlane, iid: str, reason: str) -> list[Run]:
    """Every closed execution for ``iid`` and lifecycle ``reason``, oldest first."""
    cp.wait_executions()
    found = [e for e in cp.executions() if e["name"].startswith(f"{iid}-") and f"-{reason}-" in e["name"] + "-"]
    found.sort(key=lambda e: e["startDate"])
    return [wait_closed(cp, e["executionArn"]) for e in found]


def only_run(cp: LocalControlPlane, iid: str, reason: str) -> Run:
    runs = runs_for(cp, iid, reason)
    assert len(runs) == 1, [r.name for r in runs]
    return runs[0]


def records(cp: LocalControlPlane, iid: str) -> list[dict[str, Any]]:
    from shared.records import RunRecords

    items = RunRecords(cp.aws.client("dynamodb"), cp.deployment.table).sessions(iid, tags_of(cp, iid)["autostop:run-id"])
    return sorted(items, key=lambda r: r["session"])


def tags_of(cp: LocalControlPlane, iid: str) -> dict[str, str]:
    raw = cp.aws.client("ec2").describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    return {t["Key"]: t["Value"] for t in raw.get("Tags", [])}


def wait_for(predicate: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def checkpoints_on_disk(root: Path) -> list[str]:
    ckpt = root / "ckpt"
    return sorted(p.name for p in ckpt.iterdir() if p.name.startswith("step-")) if ckpt.exists() else []


def manifest(cp: LocalControlPlane, uri: str) -> dict[str, Any]:
    key = uri.removeprefix(f"s3://{cp.deployment.bucket}/")
    return json.loads(cp.aws.client("s3").get_object(Bucket=cp.deployment.bucket, Key=key)["Body"].read())


def trainer(*options: str) -> list[str]:
    return ["--checkpoint-dir", "{root}/ckpt", "--pid-file", "{root}/train.pid", "--log-file", "{root}/train.log", *options]


def launch_training(cp: LocalControlPlane, name: str, run: str, *trainer_options: str, spot: str | None = "persistent", **tags: str) -> str:
    """A Spot Instance whose trainer runs long and has saved at least one checkpoint."""
    iid = cp.launch_instance(
        name,
        tags=base_tags(run, pid_file="{root}/train.pid", **tags),
        spot=spot,
        trainer=trainer("--steps", "100000", "--step-seconds", "0.05", "--checkpoint-every", "10", *trainer_options),
    )
    wait_for(lambda: checkpoints_on_disk(cp.by_name[name].root), f"a first checkpoint on {name}")
    return iid


def trainer_log(cp: LocalControlPlane, name: str) -> str:
    log = cp.by_name[name].root / "train.log"
    return log.read_text() if log.exists() else ""


# --- Spot interruption -----------------------------------------------------------------------------------


def test_interruption_with_a_cooperative_trainer_saves_a_fresh_checkpoint_and_never_stops(cp: LocalControlPlane) -> None:
    iid = launch_training(cp, "coop", "run-coop")
    cp.spot_interruption("coop", seconds_left=120)
    run = only_run(cp, iid, "interruption")

    assert (run.status, run.outcome) == ("SUCCEEDED", "SpotCheckpointSaved"), run.reason
    assert all(s in run.states for s in SAVED_PATH) and "Stop instance" not in run.states
    assert "Evaluate completion" in run.states and "Run complete?" in run.states
    # AWS reclaims the instance; autostop does not stop it.
    assert cp.instance_state("coop") == "running"
    # The trainer saved on the signal and exited (one signal, one save).
    cp.wait_for_trainer_exit("coop", timeout=30)
    log = trainer_log(cp, "coop")
    assert log.count("received SIGTERM") == 1 and "saved checkpoint; exiting" in log
    signalled_at = int(log.split("received SIGTERM at step ")[1].split(";")[0])
    saved = manifest(cp, run.output["manifest_uri"])  # type: ignore[index]
    # What was uploaded is the trainer's state at the signal: saved then, or already saved at that very step.
    assert saved["mode"] == "interruption" and saved["step"] == signalled_at
    expected = "the trainer saved it after the signal" if saved["fresh"] else "the trainer exited on the signal without a newer save"
    assert expected in run.reason
    assert sorted(keys(cp, f"runs/run-coop/checkpoints/{run.name}/")) == sorted(f["key"] for f in saved["files"])
    # The run record holds the verified checkpoint; the tags say what happened.
    (record,) = records(cp, iid)
    assert record["outcome"] == "SpotCheckpointSaved" and record["locks"] == {"interruption": run.name}
    assert record["last_checkpoint"]["manifest_uri"] == run.output["manifest_uri"]  # type: ignore[index]
    objects = [
        {"key": f["key"], "size": f["size"], "checksum_crc32": f["checksum_crc32"], "version_id": f["version_id"]} for f in saved["files"]
    ]
    assert record["last_checkpoint"]["objects"] == objects
    assert "active" not in record
    tags = tags_of(cp, iid)
    assert tags["autostop:state"] == "SpotCheckpointSaved"
    assert tags["autostop:last-checkpoint"] == run.output["manifest_uri"]  # type: ignore[index]
    assert "autostop:last-error" not in tags
    assert any(n["outcome"] == "SpotCheckpointSaved" and n["instance_id"] == iid for n in cp.notifications())


def test_interruption_with_a_trainer_that_ignores_the_signal_uploads_the_older_checkpoint(cp: LocalControlPlane) -> None:
    # The trainer has saved step 10 and now holds (alive, saving nothing) and ignores every signal.
    iid = cp.launch_instance(
        "deaf",
        tags=base_tags("run-deaf", pid_file="{root}/train.pid", spot_grace_seconds="2"),
        spot="persistent",
        trainer=trainer("--steps", "10", "--step-seconds", "0.01", "--hold-seconds", "600", "--on-signal", "ignore"),
    )
    wait_for(lambda: "holding" in trainer_log(cp, "deaf"), "the trainer to finish its steps and hold")
    before = checkpoints_on_disk(cp.by_name["deaf"].root)
    cp.spot_interruption("deaf", seconds_left=120)
    run = only_run(cp, iid, "interruption")

    assert (run.status, run.outcome) == ("SUCCEEDED", "SpotCheckpointSaved"), run.reason
    assert "did not save a newer checkpoint in time (trainer still_running)" in run.reason
    saved = manifest(cp, run.output["manifest_uri"])  # type: ignore[index]
    assert saved["fresh"] is False
    assert saved["checkpoint"]["name"] == before[-1] == "step-000010" and saved["step"] == 10
    assert "ignoring SIGTERM" in trainer_log(cp, "deaf")
    assert cp.by_name["deaf"].trainer.poll() is None  # type: ignore[union-attr]  # still training, not killed
    assert cp.instance_state("deaf") == "running"
    cp.stop_instance("deaf")


def test_late_notice_shrinks_the_grace_and_a_too_late_one_fails_without_signalling(cp: LocalControlPlane) -> None:
    # 50 s left: 45 s are kept for the upload, so the trainer gets 5 s, not the default 30.
    iid = launch_training(cp, "late", "run-late")
    cp.spot_interruption("late", seconds_left=50)
    run = only_run(cp, iid, "interruption")
    assert run.outcome == "SpotCheckpointSaved", run.reason
    (sent,) = [c for c in cp.fleet.sent if iid in c["instance_ids"] and "Checkpoint" in c["document"]]
    left = int(sent["parameters"]["executionTimeout"])  # seconds left at the decision
    assert 40 <= left <= 50
    assert sent["parameters"]["GraceSeconds"] == str(max(0, min(30, left - 45)))

    # 5 s left: nothing can be uploaded in time; the trainer is not signalled, nothing is sent.
    iid2 = launch_training(cp, "too-late", "run-too-late")
    cp.spot_interruption("too-late", seconds_left=5)
    run2 = only_run(cp, iid2, "interruption")
    assert (run2.status, run2.error) == ("FAILED", "SpotCheckpointFailed")
    assert "too late to upload anything" in run2.reason
    assert not [c for c in cp.fleet.sent if iid2 in c["instance_ids"] and "Checkpoint" in c["document"]]
    assert "SIGTERM" not in trainer_log(cp, "too-late")
    assert tags_of(cp, iid2)["autostop:last-error"].startswith("SpotCheckpointFailed")
    for name in ("late", "too-late"):
        cp.stop_instance(name)


# --- Rebalance recommendations ------------------------------------------------------------------------------


def test_rebalance_checkpoints_only_when_tagged_and_never_stops(cp: LocalControlPlane) -> None:
    # The trainer keeps every checkpoint: it trains on during the upload and must not rotate away the one
    # being uploaded (the script would fail the upload rather than send a changed file).
    tagged = launch_training(cp, "rebal", "run-rebal", "--keep", "1000", on_rebalance="checkpoint")
    untagged = launch_training(cp, "no-rebal", "run-no-rebal")
    cp.rebalance_recommendation("rebal")
    cp.rebalance_recommendation("no-rebal")

    run = only_run(cp, tagged, "rebalance")
    assert run.outcome == "SpotCheckpointSaved", run.reason
    assert "rebalance recommendation" in run.reason and "the trainer was not signalled; the newest checkpoint on disk" in run.reason
    assert cp.instance_state("rebal") == "running"
    # No interruption is due: the trainer is not signalled and trains on; what was on disk was uploaded.
    assert "SIGTERM" not in trainer_log(cp, "rebal") and cp.by_name["rebal"].trainer.poll() is None  # type: ignore[union-attr]
    (early,) = [c for c in cp.fleet.sent if tagged in c["instance_ids"] and "Checkpoint" in c["document"]]
    assert (early["parameters"]["PidFile"], early["parameters"]["GraceSeconds"]) == ("", "0")
    assert runs_for(cp, untagged, "rebalance") == []
    assert not [c for c in cp.fleet.sent if untagged in c["instance_ids"] and "Checkpoint" in c["document"]]
    assert "SIGTERM" not in trainer_log(cp, "no-rebal")
    # A later interruption warning is its own action on the same run (its own lock reason); it signals.
    cp.spot_interruption("rebal", seconds_left=100)
    assert only_run(cp, tagged, "interruption").outcome == "SpotCheckpointSaved"
    assert trainer_log(cp, "rebal").count("received SIGTERM") == 1
    (record,) = records(cp, tagged)
    assert set(record["locks"]) == {"rebalance", "interruption"}
    for name in ("rebal", "no-rebal"):
        cp.stop_instance(name)


# --- One-time Spot requests cannot be stopped ---------------------------------------------------------------


def test_one_time_spot_with_action_stop_is_refused_before_the_trainer_is_signalled(cp: LocalControlPlane) -> None:
    iid = cp.launch_instance("one-time", tags=base_tags("run-once"), spot="one-time")
    (cp.by_name["one-time"].root / "ckpt" / "step-000001").mkdir(parents=True)
    (cp.by_name["one-time"].root / "ckpt" / "step-000001" / "w.bin").write_bytes(b"w")
    cp.put_object(cp.run_uri("run-once", "runs/run-once/_SUCCESS"), "done")
    run = only_run(cp, iid, "complete")
    assert (run.status, run.error) == ("FAILED", "StopFailed")
    assert "its Spot request is one-time" in run.reason and "autostop:action=terminate" in run.reason
    assert "Run checkpoint command" not in run.states
    assert cp.instance_state("one-time") == "running"

    iid2 = cp.launch_instance("one-time-term", tags=base_tags("run-once-t", action="terminate"), spot="one-time")
    (cp.by_name["one-time-term"].root / "ckpt" / "step-000001").mkdir(parents=True)
    (cp.by_name["one-time-term"].root / "ckpt" / "step-000001" / "w.bin").write_bytes(b"w")
    cp.put_object(cp.run_uri("run-once-t", "runs/run-once-t/_SUCCESS"), "done")
    assert only_run(cp, iid2, "complete").outcome == "Terminated"
    assert cp.instance_state("one-time-term") == "terminated"
    cp.stop_instance("one-time")  # fails (one-time); terminate it to free the machine
    cp.aws.client("ec2").terminate_instances(InstanceIds=[iid])


# --- Resume after an auto-stop -----------------------------------------------------------------------------


def resume_tags(run: str, steps: int, evidence: str = "marker") -> dict[str, str]:
    """Tags of a run whose completion evidence is its marker (``marker``) or a log line (``log``)."""
    marker = f"s3://{{bucket}}/runs/{run}/_SUCCESS"
    log = f"{{root}}/{run}.log"
    command = (
        f"{{trainer}} --checkpoint-dir {{root}}/ckpt --pid-file {{root}}/train.pid --log-file {log} "
        f"--steps {steps} --step-seconds 0.2 --checkpoint-every 5 --keep 100 --resume"
        + (f" --marker-uri s3://{{bucket}}/{{prefix}}runs/{run}/_SUCCESS" if evidence == "marker" else "")
    )
    evidence_tags = {"completion_marker": marker} if evidence == "marker" else {"log_file": log, "log_pattern": "Training complete"}
    return base_tags(run, pid_file="{root}/train.pid", resume_command=command, **evidence_tags)


def finish_first_session(cp: LocalControlPlane, name: str, run: str, evidence: str = "marker") -> tuple[str, Run]:
    """Train 10 steps and show completion (marker, or log line then a sweep): the run completes and is
    auto-stopped with a verified checkpoint."""
    options = ["--steps", "10", "--step-seconds", "0.02", "--checkpoint-every", "5"]
    if evidence == "marker":
        options += ["--marker-uri", f"s3://{{bucket}}/{{prefix}}runs/{run}/_SUCCESS"]
    iid = cp.launch_instance(
        name,
        tags=resume_tags(run, steps=30, evidence=evidence),
        trainer=["--checkpoint-dir", "{root}/ckpt", "--pid-file", "{root}/train.pid", "--log-file", f"{{root}}/{run}.log", *options],
    )
    cp.wait_for_trainer_exit(name)
    if evidence == "log":
        cp.schedule_tick()
    wait_for(lambda: any(e["name"].startswith(f"{iid}-{run}-complete-") for e in cp.executions()), "the run's execution")
    first = only_run(cp, iid, "complete")
    assert first.outcome == "Stopped", first.reason
    assert cp.instance_state(name) == "stopped"
    return iid, first


def test_stop_start_resume_train_complete_stop_again(cp: LocalControlPlane) -> None:
    iid, first = finish_first_session(cp, "again", "run-again")
    first_session = session_of(cp, iid)
    root = cp.by_name["again"].root
    # The volume lost the checkpoints while stopped, so the restore really downloads.
    for p in (root / "ckpt").iterdir():
        p.rename(root / f"lost-{p.name}")

    cp.start_instance("again")
    resumed = only_run(cp, iid, "resume")
    assert (resumed.status, resumed.outcome) == ("SUCCEEDED", "Resumed"), resumed.reason
    assert resumed.states.index("Describe SSM agent") < resumed.states.index("Run restore command") < resumed.states.index("Confirm resume")
    assert "step-000010" in resumed.reason and "resume command started" in resumed.reason
    assert (root / "ckpt" / "step-000010" / "model.bin").read_bytes() == (root / "lost-step-000010" / "model.bin").read_bytes()
    # The old marker is older than this session: a sweep right now must not end the resumed run.
    cp.schedule_tick()
    cp.wait_for_trainer_exit("again", timeout=60)
    log = (root / "run-again.log").read_text()
    assert "resumed from checkpoint step-000010 (step 10)" in log and "Training complete (30 steps)" in log

    second = runs_for(cp, iid, "complete")
    assert [r.outcome for r in second] == ["Stopped", "Stopped"], [r.reason for r in second]
    assert second[0].name == first.name and second[1].name != first.name
    assert cp.instance_state("again") == "stopped"
    assert manifest(cp, second[1].output["manifest_uri"])["step"] == 30  # type: ignore[index]

    # Two sessions, two records: each with its own execution and lock.
    old, new = records(cp, iid)
    assert old["session"] == first_session and new["session"] != first_session
    assert old["locks"] == {"complete": first.name} and old["auto_stopped"] is True
    assert new["locks"] == {"resume": resumed.name, "complete": second[1].name} and new["auto_stopped"] is True
    assert new["last_checkpoint"]["step"] == 30
    assert [h["status"] for h in new["history"]][-3:] == ["checkpoint-verified", "stop-requested", "Stopped"]
    assert tags_of(cp, iid)["autostop:state"] == "Stopped"


def test_resume_with_a_missing_or_corrupted_object_fails_and_leaves_the_instance_running(cp: LocalControlPlane) -> None:
    s3 = cp.aws.client("s3")
    bucket = cp.deployment.bucket
    # "corrupt" shows completion by a log line: the previous session's "Training complete" is still in the log.
    for name, damage, evidence in (("missing", "delete", "marker"), ("corrupt", "overwrite", "log")):
        iid, first = finish_first_session(cp, name, f"run-{name}", evidence)
        root = cp.by_name[name].root
        for p in (root / "ckpt").iterdir():
            p.rename(root / f"lost-{p.name}")
        files = manifest(cp, first.output["manifest_uri"])["files"]  # type: ignore[index]
        target = next(f for f in files if f["key"].endswith("model.bin"))
        if damage == "delete":  # the verified version itself is gone (an administrator or a lifecycle rule)
            s3.delete_object(Bucket=bucket, Key=target["key"], VersionId=target["version_id"])
        else:  # S3 hands back other bytes for that very version (no API does this: moto's storage is edited)
            from moto.s3.models import s3_backends

            stored = s3_backends["123456789012"]["aws"].get_object(bucket, target["key"], version_id=target["version_id"])
            assert stored is not None
            stored.value = bytes(reversed(stored.value))

        cp.start_instance(name)
        run = only_run(cp, iid, "resume")
        assert (run.status, run.error) == ("FAILED", "ResumeFailed"), run.reason
        expected = "DownloadFailed" if damage == "delete" else "ChecksumMismatch"
        assert expected in run.reason and "nothing was deleted" in run.reason
        assert cp.instance_state(name) == "running"
        # Nothing was placed, nothing removed; no trainer was started.
        assert checkpoints_on_disk(root) == []
        assert (root / "lost-step-000010" / "model.bin").exists()
        assert cp._resumed_trainer_pid(name) is None or cp._resumed_trainer_pid(name) not in cp.by_name[name].pids()
        assert tags_of(cp, iid)["autostop:last-error"].startswith("ResumeFailed")
        # No sweep stops it: not the stale marker, nor the previous session's completion line (the restore
        # recorded the log's size before it failed).
        cp.schedule_tick()
        cp.wait_executions()
        assert cp.instance_state(name) == "running"
        cp.stop_instance(name)
