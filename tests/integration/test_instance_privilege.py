"""Issue 9, findings 2, 5, 6 and 7 on the instance, run for real: the restore reads only the exact verified versions,
tags never widen privilege (resume command, path tags, PID file), and log lines count only when written in this boot.

The scripts run as in test_restore_script.py (rendered, under bash, the AWS CLI against a moto server). Tests that
switch users run as root and use uid 65534 (nobody), never a new user. ``AUTOSTOP_TEST_SCRIPTS`` (a directory holding
rendered probe.sh and restore.sh) runs the same tests against other versions of the scripts, e.g. the last commit's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration import test_restore_script as restore_tests
from tests.integration.conftest import BUCKET, World, ended_session
from tests.integration.test_evaluate_paths import earlier_session, evaluate, restore_document, run_tags
from tests.integration.test_instance_scripts import b64crc, probe_env, run, write
from tests.integration.test_restore_script import (
    allowlist,
    baseline,
    marker_command,
    pin,
    put_checkpoint,
    restore_env,
)

# Fixtures of the script tests: a moto server per module, a versioned bucket per test, the agent's environment.
endpoint = restore_tests.endpoint
s3 = restore_tests.s3
bucket = restore_tests.bucket
base_env = restore_tests.base_env
children = restore_tests.children
started = restore_tests.started
_ = restore_document  # the fixture, used by the resume planning tests

_OTHER = os.environ.get("AUTOSTOP_TEST_SCRIPTS")
RESTORE = Path(_OTHER) / "restore.sh" if _OTHER else restore_tests.RESTORE
PROBE = Path(_OTHER) / "probe.sh" if _OTHER else restore_tests.PROBE
NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def users_dir(path: Path, uid: int = NOBODY) -> Path:
    """A directory owned by UID that UID can reach (its parents searchable)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, uid)
    for parent in [path, *path.parents]:
        if parent == Path("/tmp"):
            break
        parent.chmod(parent.stat().st_mode | 0o011)
    return path


def manifest_of(s3: Any, bucket: str, up: dict[str, str]) -> dict[str, Any]:
    body = s3.get_object(Bucket=bucket, Key=up["SSM_ManifestKey"], VersionId=up["SSM_ManifestVersionId"])["Body"].read()
    value = json.loads(body)
    assert isinstance(value, dict)
    return value


# --- F2: only the exact verified versions are restored ------------------------------------------------------


def test_f2_a_manifest_and_objects_rewritten_after_verify_are_never_restored(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path
) -> None:
    """Another tenant overwrites the verified objects and the manifest (consistent with its own bytes): the restore
    still reads the verified versions, so the instance gets its own checkpoint back."""
    up, files = put_checkpoint(s3, bucket, base_env, tmp_path)
    forged = manifest_of(s3, bucket, up)
    for f in forged["files"]:
        evil = b"EVIL" * (f["size"] // 4) + b"E" * (f["size"] % 4)
        f["version_id"] = s3.put_object(Bucket=bucket, Key=f["key"], Body=evil)["VersionId"]
        f["checksum_crc32"] = b64crc(evil)
    s3.put_object(Bucket=bucket, Key=up["SSM_ManifestKey"], Body=json.dumps(forged).encode())
    ckdir = tmp_path / "ckpt"
    ckdir.mkdir()

    proc, out = run(RESTORE, restore_env(base_env, bucket, ckdir, up, tmp_path))

    assert proc.returncode == 0, proc.stderr
    for rel, data in files.items():
        assert (ckdir / "step-100" / rel).read_bytes() == data, f"{rel} is not the verified object"


def test_f2_a_manifest_whose_sha256_differs_is_not_trusted(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    up, _ = put_checkpoint(s3, bucket, base_env, tmp_path)
    ckdir = tmp_path / "ckpt"
    env = restore_env(base_env, bucket, ckdir, {**up, "SSM_ManifestSha256": "0" * 64}, tmp_path)

    proc, out = run(RESTORE, env)

    assert proc.returncode == 67, proc.stderr
    assert out["error"] == "ChecksumMismatch" and "nothing in it was trusted" in out["message"], out
    assert not (ckdir / "step-100").exists()


@pytest.mark.parametrize("how", ["other-prefix", "no-version"])
def test_f2_keys_outside_the_verified_prefix_or_without_a_version_are_refused(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, how: str
) -> None:
    up, _ = put_checkpoint(s3, bucket, base_env, tmp_path)
    manifest = manifest_of(s3, bucket, up)
    entry = manifest["files"][0]
    if how == "other-prefix":  # another run's object, as a forged manifest would name it
        other = "runs/run-7/checkpoints/x/step-100/model.bin"
        data = b"x" * entry["size"]
        entry.update(key=other, version_id=s3.put_object(Bucket=bucket, Key=other, Body=data)["VersionId"])
        entry["checksum_crc32"] = b64crc(data)
        why = "outside the verified upload prefix"
    else:
        del entry["version_id"]
        why = "no valid S3 version_id"
    up = pin(s3, bucket, up, json.dumps(manifest).encode())
    ckdir = tmp_path / "ckpt"

    proc, out = run(RESTORE, restore_env(base_env, bucket, ckdir, up, tmp_path))

    assert proc.returncode == 66, proc.stderr
    assert out["error"] == "ManifestInvalid" and why in out["message"], out
    assert not (ckdir / "step-100").exists()


def test_f2_a_future_mtime_in_the_manifest_is_never_set(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    up, files = put_checkpoint(s3, bucket, base_env, tmp_path)
    manifest = manifest_of(s3, bucket, up)
    manifest["checkpoint"]["mtime"] = "2099-01-01T00:00:00Z"  # it would outrank every later save
    up = pin(s3, bucket, up, json.dumps(manifest).encode())
    ckdir = tmp_path / "ckpt"
    ckdir.mkdir()

    proc, out = run(RESTORE, restore_env(base_env, bucket, ckdir, up, tmp_path))

    assert proc.returncode == 0, proc.stderr
    for rel in files:
        assert (ckdir / "step-100" / rel).stat().st_mtime <= time.time()


def test_f2_resume_of_a_record_without_the_pinned_version_fails(world: World, restore_document: str) -> None:
    """A run record written before version pinning: ResumeFailed with the reason, never an unpinned restore."""
    inst = world.instance("a", run_tags())
    earlier_session(world, inst.instance_id, "Stopped", pinned=False)  # its checkpoint entry has no manifest_version_id

    out = evaluate(world, inst.instance_id, "resume")

    assert (out["decision"], out["outcome"], out["command"]) == ("refused", "ResumeFailed", None)
    assert "ManifestVersionId, ManifestSha256, UploadPrefix" in out["reason"] and "older autostop" in out["reason"]


def test_f2_resume_sends_the_pinned_version_sha256_and_prefix(world: World, restore_document: str) -> None:
    from shared.records import checkpoint_entry

    inst = world.instance("a", run_tags())
    prefix = f"instances/arn:aws:ec2:us-east-1:123456789012:instance/{inst.instance_id}/run-a/checkpoints/old-exec/"
    entry = checkpoint_entry(
        manifest_uri=f"s3://{BUCKET}/runs/run-a/manifests/old-exec.json",
        execution="old-exec",
        files=[{"key": f"{prefix}step_700/w.bin", "size": 1234, "sha256": "ab" * 32, "version_id": "v-1"}],
        total_bytes=1234,
        step=700,
        fresh=True,
        verified_at="2026-01-01T00:00:00Z",
        manifest_version_id="3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY",
        manifest_sha256="cd" * 32,
        upload_prefix=prefix,
    )
    ended_session(world, inst.instance_id, "2026-01-01T00:00:00Z", "Stopped", checkpoint=entry)

    out = evaluate(world, inst.instance_id, "resume")

    assert out["decision"] == "resume", out["reason"]
    params = {k: v[0] for k, v in out["command"]["parameters"].items()}
    assert (params["ManifestVersionId"], params["ManifestSha256"], params["UploadPrefix"]) == (
        "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY",
        "cd" * 32,
        prefix,
    )


# --- F5: a tag writer never gets root -------------------------------------------------------------------------


def test_f5_a_resume_command_that_would_run_as_root_needs_the_allowlist(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path
) -> None:
    up, _ = put_checkpoint(s3, bucket, base_env, tmp_path)
    ckdir = tmp_path / "ckpt"  # missing: root creates it in root's directory, so the trainer would be root
    command, marker = marker_command(tmp_path)
    env = restore_env(base_env, bucket, ckdir, up, tmp_path, ResumeCommand=command)
    env["AUTOSTOP_RESUME_ALLOWLIST"] = str(allowlist(tmp_path, "/usr/bin/true"))  # lists another command

    proc, out = run(RESTORE, env)

    assert proc.returncode == 69, proc.stderr
    assert out["error"] == "ResumeCommandRefused", out
    assert "would run as root" in out["message"] and "Add that line" in out["message"]
    assert not marker.exists(), "the tag's command ran as root"
    assert not (ckdir / "step-100").exists(), "refused before anything is downloaded"


@pytest.mark.parametrize("how", ["group-writable", "not-root-owned", "symlink-elsewhere"])
def test_f5_an_untrusted_allowlist_is_ignored(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, how: str) -> None:
    up, _ = put_checkpoint(s3, bucket, base_env, tmp_path)
    command, marker = marker_command(tmp_path)
    env = restore_env(base_env, bucket, tmp_path / "ckpt", up, tmp_path, ResumeCommand=command)
    path = Path(env["AUTOSTOP_RESUME_ALLOWLIST"])  # lists the command
    if how == "group-writable":
        path.chmod(0o664)
    elif how == "not-root-owned":
        os.chown(path, NOBODY, NOBODY)
    else:
        link = path.parent / "link"
        link.symlink_to(path)
        env["AUTOSTOP_RESUME_ALLOWLIST"] = str(link)
    proc, out = run(RESTORE, env)
    assert proc.returncode == 69 and out["error"] == "ResumeCommandRefused", out
    assert not marker.exists()


@needs_root
def test_f5_a_missing_checkpoint_dir_in_a_users_directory_is_not_created_by_root(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path
) -> None:
    up, _ = put_checkpoint(s3, bucket, base_env, tmp_path)
    home = users_dir(tmp_path / "home")
    proc, out = run(RESTORE, restore_env(base_env, bucket, home / "ckpt", up, tmp_path))
    assert proc.returncode == 68, proc.stderr
    assert out["error"] == "RestoreConflict" and "the trainer's user must create it" in out["message"], out
    assert not (home / "ckpt").exists()


@needs_root
@pytest.mark.parametrize("how", ["world-writable", "other-users", "setuid"])
def test_f5_a_non_root_trainer_runs_only_a_program_it_or_root_owns_and_nobody_else_can_write(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, how: str
) -> None:
    up, _ = put_checkpoint(s3, bucket, base_env, tmp_path)
    ckdir = users_dir(tmp_path / "ckpt")
    program = restore_tests.PROGRAMS / f"prog-{os.getpid()}-{time.monotonic_ns()}"
    marker = restore_tests.PROGRAMS / f"ran-{program.name}"
    program.write_text(f"#!/bin/sh\ntouch {marker}\nexec sleep 30\n")
    program.chmod({"world-writable": 0o777, "other-users": 0o755, "setuid": 0o4755}[how])
    if how == "other-users":
        os.chown(program, 1, 1)  # daemon: neither the trainer's user nor root
    proc, out = run(RESTORE, restore_env(base_env, bucket, ckdir, up, tmp_path, ResumeCommand=str(program)))
    assert proc.returncode == 69 and out["error"] == "ResumeCommandRefused", out
    assert str(program) in out["message"] and "uid 65534" in out["message"]
    assert not marker.exists()


@needs_root
def test_f5_a_non_root_trainer_cannot_gain_privileges(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, started: list[int]
) -> None:
    up, _ = put_checkpoint(s3, bucket, base_env, tmp_path)
    ckdir = users_dir(tmp_path / "ckpt")
    proc, out = run(RESTORE, restore_env(base_env, bucket, ckdir, up, tmp_path, ResumeCommand="/bin/sleep 30"))
    assert proc.returncode == 0, proc.stderr
    started.append(out["pid"])
    status = Path(f"/proc/{out['pid']}/status").read_text()
    assert "\nUid:\t65534\t65534\t65534\t65534\n" in status
    assert "\nNoNewPrivs:\t1\n" in status, "set-user-ID programs (sudo) would give it root"


@pytest.mark.parametrize(
    "override",
    [
        {"CheckpointDir": "/var/log"},
        {"CheckpointDir": "/etc/autostop"},
        {"CheckpointDir": "/root/ckpt"},
        {"PidFile": "/etc/cron.d/x"},
        {"PidFile": "/run/sshd.pid"},
        {"LogFile": "/etc/shadow"},
        {"LogFile": "/usr/lib/x.log"},
    ],
)
def test_f5_path_tags_naming_system_locations_are_refused(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, override: dict[str, str]
) -> None:
    up = {
        "SSM_ManifestKey": "runs/run-42/manifests/none.json",  # never read: the parameters are refused first
        "SSM_ManifestVersionId": "v1",
        "SSM_ManifestSha256": "0" * 64,
        "SSM_UploadPrefix": "runs/run-42/checkpoints/x/",
    }
    env = restore_env(base_env, bucket, tmp_path / "ckpt", up, tmp_path, **override)
    proc, out = run(RESTORE, env)
    assert proc.returncode == 64, proc.stderr
    assert out["error"] == "InvalidParameter" and "system location" in out["message"], out


def test_f5_the_probe_never_reads_a_system_location(base_env: dict[str, str], tmp_path: Path) -> None:
    env = {**probe_env(base_env, log_file="/etc/passwd", pattern="^root:"), "AUTOSTOP_STATE_DIR": str(tmp_path / "state")}
    proc, out = run(PROBE, env)
    assert proc.returncode == 64 and out["error"] == "InvalidParameter" and "system location" in out["message"], out


@needs_root
@pytest.mark.parametrize("how", ["root-only", "symlink"])
def test_f5_the_probe_reads_only_the_trainers_own_log(base_env: dict[str, str], tmp_path: Path, how: str) -> None:
    """log-file + log-pattern must not tell a tag writer one bit of a file the trainer's user cannot read."""
    ckdir = users_dir(tmp_path / "ckpt")
    secret = tmp_path / "secret.txt"
    write(secret, b"api-key=hunter2\n")
    secret.chmod(0o600)  # root's
    if how == "root-only":
        log = secret
    else:
        log = users_dir(tmp_path / "logs") / "train.log"
        log.symlink_to(secret)
        os.lchown(log, NOBODY, NOBODY)
    env = {**probe_env(base_env, log_file=str(log), pattern="hunter2"), "AUTOSTOP_STATE_DIR": str(tmp_path / "state")}
    env["SSM_CheckpointDir"] = str(ckdir)
    proc, out = run(PROBE, env)
    assert proc.returncode == 0, proc.stderr
    assert out["log"] == {"state": "unreadable"}, proc.stderr
    # The trainer's own log is read.
    own = users_dir(tmp_path / "own") / "train.log"
    write(own, b"hunter2\n")
    os.chown(own, NOBODY, NOBODY)
    env.update(SSM_LogFile=str(own))
    assert run(PROBE, env)[1]["log"] == {"state": "matched"}


# --- F6: the PID file ------------------------------------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("how", ["root-file", "symlink", "other-users-process", "root-directory"])
def test_f6_the_restore_never_replaces_a_pid_file_that_is_not_the_trainers(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]], how: str
) -> None:
    up, _ = put_checkpoint(s3, bucket, base_env, tmp_path)
    ckdir = users_dir(tmp_path / "ckpt")
    run_dir = users_dir(tmp_path / "run")
    pid_file = run_dir / "train.pid"
    target = tmp_path / "important.conf"
    write(target, b"setting=1\n")  # root's
    if how == "root-file":
        pid_file.write_bytes(b"setting=1\n")
    elif how == "symlink":
        pid_file.symlink_to(target)
        os.lchown(pid_file, NOBODY, NOBODY)
    elif how == "other-users-process":
        daemon = subprocess.Popen(["sleep", "30"])  # root's process
        children.append(daemon)
        pid_file.write_text(f"{daemon.pid}\n")
        os.chown(pid_file, NOBODY, NOBODY)
        os.utime(pid_file, (time.time() - 600, time.time() - 600))
    else:
        pid_file = tmp_path / "train.pid"  # in root's directory
    before = pid_file.read_bytes() if how in ("root-file", "other-users-process") else None
    command, marker = marker_command(tmp_path)

    proc, out = run(RESTORE, restore_env(base_env, bucket, ckdir, up, tmp_path, PidFile=str(pid_file), ResumeCommand=command))

    assert proc.returncode == 69 and out["error"] == "ResumeCommandRefused", out
    assert "PID file" in out["message"] and "Nothing was downloaded" in out["message"]
    assert not marker.exists()
    assert target.read_bytes() == b"setting=1\n"
    if before is not None:
        assert pid_file.read_bytes() == before
    if how == "symlink":
        assert pid_file.is_symlink()
    if how == "root-directory":
        assert not pid_file.exists()


@needs_root
def test_f6_the_pid_file_of_a_dead_trainer_is_replaced_by_the_trainers_user(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, started: list[int]
) -> None:
    up, _ = put_checkpoint(s3, bucket, base_env, tmp_path)
    ckdir = users_dir(tmp_path / "ckpt")
    pid_file = users_dir(tmp_path / "run") / "train.pid"
    pid_file.write_text(f"{restore_tests.scripts.exited_pid()}\n")
    os.chown(pid_file, NOBODY, NOBODY)
    proc, out = run(RESTORE, restore_env(base_env, bucket, ckdir, up, tmp_path, PidFile=str(pid_file), ResumeCommand="/bin/sleep 30"))
    assert proc.returncode == 0, proc.stderr
    started.append(out["pid"])
    assert pid_file.read_text() == f"{out['pid']}\n" and pid_file.stat().st_uid == NOBODY


# --- F7: log lines count only when written in this boot -------------------------------------------------------


def probe_log(base_env: dict[str, str], tmp_path: Path, log: Path, boot: str, boot_time: int | None = None) -> tuple[str, str]:
    env = {
        **probe_env(base_env, log_file=str(log), pattern="training complete"),
        "AUTOSTOP_STATE_DIR": str(tmp_path / "state"),
        "AUTOSTOP_BOOT_ID": boot,
    }
    if boot_time is not None:
        env["AUTOSTOP_BOOT_TIME"] = str(boot_time)
    proc, out = run(PROBE, env)
    assert proc.returncode == 0, proc.stderr
    return str(out["log"]["state"]), proc.stderr


def test_f7_an_earlier_boots_completion_line_never_counts_without_a_restore(base_env: dict[str, str], tmp_path: Path) -> None:
    """The owner stopped and started the instance (or the agent came up after the resume wait): no restore ran."""
    log = tmp_path / "train.log"
    log.write_text("epoch 1\n")
    assert probe_log(base_env, tmp_path, log, "boot-1")[0] == "not_matched"  # boot 1: the log is read from its start
    with log.open("a") as f:
        f.write("training complete\n")  # boot 1's trainer finished (and autostop or the owner stopped it)
    with log.open("a") as f:
        f.write("epoch 1 (restarted)\n")  # boot 2: user data restarted the trainer, appending

    state, why = probe_log(base_env, tmp_path, log, "boot-2")
    assert state == "unreadable", "an earlier session's completion line counted"
    assert "earlier session" in why and "only lines written from now on count" in why
    assert probe_log(base_env, tmp_path, log, "boot-2")[0] == "not_matched"
    assert baseline(tmp_path / "state", log)["boot"] == "boot-2"
    with log.open("a") as f:
        f.write("training complete\n")  # boot 2's trainer finished
    assert probe_log(base_env, tmp_path, log, "boot-2")[0] == "matched"


def test_f7_a_log_last_written_before_this_boot_is_not_evidence(base_env: dict[str, str], tmp_path: Path) -> None:
    """No baseline at all (never probed): the log's mtime shows it belongs to an earlier boot."""
    log = tmp_path / "train.log"
    write(log, b"training complete\n", time.time() - 3600)
    boot = int(time.time()) - 60
    assert probe_log(base_env, tmp_path, log, "boot-9", boot)[0] == "unreadable"
    assert probe_log(base_env, tmp_path, log, "boot-9", boot)[0] == "not_matched"


def test_f7_the_restore_and_the_probe_share_the_baseline(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    up, _ = put_checkpoint(s3, bucket, base_env, tmp_path)
    log = tmp_path / "train.log"
    log.write_text("training complete\n")
    env = {**restore_env(base_env, bucket, tmp_path / "ckpt", up, tmp_path, LogFile=str(log)), "AUTOSTOP_BOOT_ID": "boot-3"}
    assert run(RESTORE, env)[0].returncode == 0
    assert baseline(tmp_path / "state", log) == {"boot": "boot-3", "dev": log.stat().st_dev, "ino": log.stat().st_ino, "offset": 18}
    assert probe_log(base_env, tmp_path, log, "boot-3")[0] == "not_matched"


def test_probe_and_restore_scripts_under_test() -> None:
    """Which scripts ran (AUTOSTOP_TEST_SCRIPTS runs these tests against another version)."""
    assert RESTORE.exists() and PROBE.exists(), (RESTORE, PROBE)
    assert sys.executable
