"""The restore document's script (infra/documents/restore.sh), its log offset and the stale PID state, run for real.

As in test_instance_scripts.py: the rendered script runs under ``bash`` with its parameters as ``SSM_<Name>``
environment variables, the AWS CLI of this virtualenv talks to a moto server, and the checkpoint it restores
was uploaded by the real checkpoint script.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.constructs.documents import RESTORE_PARAMETERS, render_script
from tests.integration import test_instance_scripts as scripts
from tests.integration.test_instance_scripts import CHECKPOINT, INSTANCE_ID, PROBE, checkpoint_env, keys, probe_env, run, write

# The fixtures of the instance-script tests (a moto server per module, a bucket per test, the agent's environment).
endpoint = scripts.endpoint
s3 = scripts.s3
base_env = scripts.base_env
children = scripts.children

RESTORE = Path(tempfile.mkdtemp(prefix="autostop-scripts-")) / "restore.sh"
RESTORE.write_text(render_script("restore.sh"))
# Resume programs live outside pytest's tmp_path, whose parametrized names may hold characters the
# ResumeCommand pattern refuses.
PROGRAMS = Path(tempfile.mkdtemp(prefix="autostop-resume-"))
RESUMED = PROGRAMS / "resumed.py"
RESUMED.write_text(
    """
import json, os, sys, time
out = sys.argv[1]
info = {
    "argv": sys.argv,
    "env": {k: v for k, v in os.environ.items() if k.startswith(("AUTOSTOP_", "SSM_"))},
    "sid": os.getsid(0),
    "pid": os.getpid(),
    "stdin": os.readlink("/proc/self/fd/0"),
    "cwd": os.getcwd(),
}
with open(out + ".tmp", "w") as f:
    json.dump(info, f)
os.rename(out + ".tmp", out)
print("resumed from", os.environ["AUTOSTOP_RESUME_CHECKPOINT"], flush=True)
time.sleep(60)
"""
)
RUN_ID = "run-42"
MIB = 1024 * 1024
CHECKSUM = "A" * 43 + "=-3"  # a composite SHA-256 checksum's form


@pytest.fixture
def bucket(s3: Any) -> str:
    """A versioned bucket, as the stack's: the restore reads exact versions."""
    name = f"ckpt-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def pin(s3: Any, bucket: str, up: dict[str, str], body: bytes) -> dict[str, str]:
    """Writes BODY as the manifest and returns UP pinned to that version (as Verify records it)."""
    version = s3.put_object(Bucket=bucket, Key=up["SSM_ManifestKey"], Body=body)["VersionId"]
    return {**up, "SSM_ManifestVersionId": version, "SSM_ManifestSha256": hashlib.sha256(body).hexdigest()}


EXECUTION = "run-42-resume-20260102030405"


@pytest.fixture
def started() -> Iterator[list[int]]:
    """Pids of resume commands a test saw started (not our children: killed by pid afterwards)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def uploaded_checkpoint(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> tuple[dict[str, str], dict[str, bytes]]:
    """A checkpoint directory step-100 (two files) uploaded by the real checkpoint script. Returns its env and files."""
    ckdir = tmp_path / "original"
    files = {
        "model.bin": write(ckdir / "step-100" / "model.bin", os.urandom(3000)),
        "opt/optimizer.pt": write(ckdir / "step-100" / "opt" / "optimizer.pt", os.urandom(1000)),
    }
    write(ckdir / "step-50.pt", b"older", time.time() - 600)
    env = checkpoint_env(base_env, bucket, ckdir)
    proc, out = run(CHECKPOINT, env)
    assert proc.returncode == 0, proc.stderr
    assert out["checkpoint"] == "step-100"
    return {**env, "SSM_ManifestVersionId": out["manifest_version_id"], "SSM_ManifestSha256": out["manifest_sha256"]}, files


def put_checkpoint(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, algorithm: str = "CRC32"
) -> tuple[dict[str, str], dict[str, bytes]]:
    """What uploaded_checkpoint leaves on the instance and in S3, written directly (each script run costs seconds).
    ALGORITHM: CRC32 (what the checkpoint writes) or SHA256 (the form of manifests written before CRC32)."""
    ckdir = tmp_path / "original"
    files = {
        "model.bin": write(ckdir / "step-100" / "model.bin", os.urandom(3000)),
        "opt/optimizer.pt": write(ckdir / "step-100" / "opt" / "optimizer.pt", os.urandom(1000)),
    }
    env = checkpoint_env(base_env, bucket, ckdir)
    entries = []
    for rel, data in files.items():
        key = f"{env['SSM_UploadPrefix']}step-100/{rel}"
        if algorithm == "CRC32":
            version = s3.put_object(Bucket=bucket, Key=key, Body=data, ChecksumCRC32=scripts.b64crc(data))["VersionId"]
            checksum = {"checksum_crc32": scripts.b64crc(data)}
        else:
            version = s3.put_object(Bucket=bucket, Key=key, Body=data, ChecksumSHA256=scripts.b64sha(data))["VersionId"]
            checksum = {"sha256": hashlib.sha256(data).hexdigest(), "checksum_sha256": scripts.b64sha(data)}
        entries.append({"key": key, "path": rel, "size": len(data), **checksum, "parts": 0, "version_id": version})
    mtime = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((ckdir / "step-100" / "opt" / "optimizer.pt").stat().st_mtime))
    manifest = {
        "schema_version": 1, "run_id": RUN_ID, "instance_id": INSTANCE_ID, "execution_name": "run-42-complete-1",
        "decision_time": "2026-01-02T03:04:05Z", "created_at": "2026-01-02T03:05:00Z",
        "checkpoint": {"name": "step-100", "path": str(ckdir / "step-100"), "mtime": mtime}, "layout": "directory",
        "step": 100, "mode": "stop", "fresh": False, "bucket": bucket, "files": entries, "total_bytes": 4000,
    }  # fmt: skip
    return pin(s3, bucket, env, json.dumps(manifest).encode()), files


def restore_env(base_env: dict[str, str], bucket: str, ckdir: Path, up: dict[str, str], tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The restore's parameters for the checkpoint UP (its checkpoint env, pinned: SSM_ManifestVersionId, SSM_ManifestSha256)."""
    env = {
        **base_env,
        "AUTOSTOP_STATE_DIR": str(tmp_path / "state"),
        "SSM_RunId": RUN_ID,
        "SSM_InstanceId": INSTANCE_ID,
        "SSM_ExecutionName": EXECUTION,
        "SSM_CheckpointDir": str(ckdir),
        "SSM_Bucket": bucket,
        "SSM_ManifestKey": up["SSM_ManifestKey"],
        "SSM_ManifestVersionId": up["SSM_ManifestVersionId"],
        "SSM_ManifestSha256": up["SSM_ManifestSha256"],
        "SSM_UploadPrefix": up["SSM_UploadPrefix"],
        "SSM_PidFile": "",
        "SSM_LogFile": "",
        "SSM_ResumeCommand": "",
    }
    env.update({f"SSM_{k}": v for k, v in overrides.items()})
    # The machine's administrator allowlisted the tagged command (it runs as root: the test's checkpoint
    # directories are root's); the tests of the refusal point AUTOSTOP_RESUME_ALLOWLIST elsewhere.
    env["AUTOSTOP_RESUME_ALLOWLIST"] = str(allowlist(tmp_path, env["SSM_ResumeCommand"]))
    return env


def allowlist(tmp_path: Path, *commands: str) -> Path:
    """A root-owned resume-command allowlist (mode 644, in a root-owned 755 directory) listing COMMANDS."""
    directory = tmp_path / f"etc-autostop-{time.monotonic_ns()}"
    directory.mkdir(mode=0o755)
    path = directory / "resume-commands"
    path.write_text("# one command per line\n" + "".join(f"{c}\n" for c in commands if c))
    path.chmod(0o644)
    return path


def baseline_file(state: Path, log: Path) -> Path:
    return state / "log-baselines" / hashlib.sha256(str(log).encode()).hexdigest()


def baseline(state: Path, log: Path) -> dict[str, Any]:
    """The log baseline the scripts recorded: {"boot", "dev", "ino", "offset"}."""
    value = json.loads(baseline_file(state, log).read_text())
    assert isinstance(value, dict)
    return value


def assert_restored(ckdir: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        assert (ckdir / "step-100" / rel).read_bytes() == data
    assert not [p for p in ckdir.iterdir() if p.name.startswith(".autostop-restore-")], "the staging directory was left behind"


# --- restore: success ----------------------------------------------------------------------------------


def test_restore_downloads_verifies_and_starts_the_resume_command_without_a_shell(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, started: list[int]
) -> None:
    up, files = uploaded_checkpoint(s3, bucket, base_env, tmp_path)
    ckdir = tmp_path / "data" / "ckpt"  # does not exist yet
    log = tmp_path / "train.log"
    log.write_text("epoch 9\ntraining complete\n")  # the previous run's last lines
    old_size = log.stat().st_size
    pid_file = tmp_path / "train.pid"
    pid_file.write_text("999999\n")
    os.utime(pid_file, (time.time() - 3600, time.time() - 3600))
    info = PROGRAMS / f"info-{os.getpid()}-{time.monotonic_ns()}.json"
    argv = [sys.executable, str(RESUMED), str(info), "--resume=auto", "lr=0.1", "a,b+c@d%e:f", "%HOME%"]
    env = restore_env(
        base_env, bucket, ckdir, up, tmp_path,
        PidFile=str(pid_file), LogFile=str(log), ResumeCommand=" ".join(argv),
    )  # fmt: skip

    proc, out = run(RESTORE, env)

    assert proc.returncode == 0, proc.stderr
    pid = out["pid"]
    started.append(pid)
    assert out == {
        "result": "restored",
        "checkpoint": "step-100",
        "files": 2,
        "bytes": sum(len(d) for d in files.values()),
        "step": 100,
        "present": "downloaded",
        "trainer": "started",
        "pid": pid,
    }
    assert_restored(ckdir, files)
    # The restored files keep the time they were placed: the manifest's mtime is never copied (a forged future one
    # would outrank every later save).
    assert time.time() - 60 < (ckdir / "step-100" / "model.bin").stat().st_mtime <= time.time()
    # The PID file names the started process, which runs the argv exactly: no shell, no globbing, no expansion.
    assert pid_file.read_text() == f"{pid}\n"
    assert Path(f"/proc/{pid}").exists()
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1] == [a.encode() for a in argv]
    deadline = time.monotonic() + 10
    while not info.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = json.loads(info.read_text())
    assert seen["argv"] == argv[1:]  # sys.argv: the script, then its arguments
    assert seen["sid"] == pid, "not started in a new session"
    assert seen["stdin"] == "/dev/null"
    assert seen["env"] == {
        "AUTOSTOP_RUN_ID": RUN_ID,
        "AUTOSTOP_RESUME_CHECKPOINT": str(ckdir / "step-100"),
        "AUTOSTOP_CHECKPOINT_DIR": str(ckdir),
        "AUTOSTOP_STATE_DIR": env["AUTOSTOP_STATE_DIR"],
    }
    # The log offset is the log's size before the resumed trainer wrote to it; its output is appended.
    assert baseline(tmp_path / "state", log)["offset"] == old_size
    assert baseline(tmp_path / "state", log)["ino"] == log.stat().st_ino
    deadline = time.monotonic() + 10
    while "resumed from" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.read_text().startswith("epoch 9\ntraining complete\nresumed from ")

    # The probe sees the resumed trainer running and ignores the previous run's completion line.
    probe_base = {**base_env, "AUTOSTOP_STATE_DIR": env["AUTOSTOP_STATE_DIR"]}
    _, probed = run(PROBE, probe_env(probe_base, str(pid_file), str(log), "training complete"))
    assert probed == {"probe": 1, "pid": {"state": "running", "pid": pid}, "log": {"state": "not_matched"}}


def test_restore_runs_the_resume_command_as_the_owner_of_the_checkpoint_dir(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, started: list[int]
) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching users needs root")
    up, files = put_checkpoint(s3, bucket, base_env, tmp_path)
    ckdir = tmp_path / "ckpt"
    ckdir.mkdir()
    os.chown(ckdir, 65534, 65534)
    (tmp_path / "run").mkdir()
    os.chown(tmp_path / "run", 65534, 65534)  # the trainer's own directory
    pid_file = tmp_path / "run" / "train.pid"
    env = restore_env(base_env, bucket, ckdir, up, tmp_path, PidFile=str(pid_file), ResumeCommand="/bin/sleep 30")

    proc, out = run(RESTORE, env)

    assert proc.returncode == 0, proc.stderr
    started.append(out["pid"])
    status = Path(f"/proc/{out['pid']}/status").read_text()
    assert "\nUid:\t65534\t65534\t65534\t65534\n" in status
    for rel in files:
        assert (ckdir / "step-100" / rel).stat().st_uid == 65534
    assert (ckdir / "step-100" / "opt").stat().st_uid == 65534
    assert pid_file.stat().st_uid == 65534
    assert (tmp_path / "state" / f"resume-{RUN_ID}.log").exists()
    # The PID file it wrote proves the trainer to the probe and the checkpoint script.
    _, probed = run(PROBE, probe_env(base_env, str(pid_file)))
    assert probed["pid"] == {"state": "running", "pid": out["pid"]}


@pytest.mark.parametrize("algorithm", ["CRC32", "SHA256"])  # SHA256: manifests written before CRC32
def test_restore_keeps_a_checkpoint_already_in_place(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, algorithm: str
) -> None:
    up, files = put_checkpoint(s3, bucket, base_env, tmp_path, algorithm)
    ckdir = Path(up["SSM_CheckpointDir"])  # the disk survived the stop
    before = {rel: (ckdir / "step-100" / rel).stat() for rel in files}
    env = restore_env(base_env, bucket, ckdir, up, tmp_path)

    proc, out = run(RESTORE, env)

    assert proc.returncode == 0, proc.stderr
    assert (out["present"], out["trainer"], out["pid"], out["files"]) == ("already_present", "not_configured", None, 2)
    for rel, st in before.items():
        now = (ckdir / "step-100" / rel).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), f"{rel} was rewritten"
    assert_restored(ckdir, files)
    assert not (tmp_path / "state").exists(), "no LogFile: no log offset"


@pytest.mark.parametrize("algorithm", ["CRC32", "SHA256"])  # SHA256: manifests written before CRC32
def test_restore_downloads_only_what_is_missing(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, algorithm: str) -> None:
    up, files = put_checkpoint(s3, bucket, base_env, tmp_path, algorithm)
    ckdir = Path(up["SSM_CheckpointDir"])
    (ckdir / "step-100" / "opt" / "optimizer.pt").unlink()
    inode = (ckdir / "step-100" / "model.bin").stat().st_ino

    proc, out = run(RESTORE, restore_env(base_env, bucket, ckdir, up, tmp_path))

    assert proc.returncode == 0, proc.stderr
    assert out["present"] == "downloaded"
    assert (ckdir / "step-100" / "model.bin").stat().st_ino == inode
    assert_restored(ckdir, files)


def test_restore_single_file_checkpoint(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    orig = tmp_path / "orig"
    data = write(orig / "iter_0042.pt", os.urandom(2000))
    up = checkpoint_env(base_env, bucket, orig)
    proc, out = run(CHECKPOINT, up)
    assert proc.returncode == 0, proc.stderr
    up |= {"SSM_ManifestVersionId": out["manifest_version_id"], "SSM_ManifestSha256": out["manifest_sha256"]}
    ckdir = tmp_path / "ckpt"
    ckdir.mkdir()

    proc, out = run(RESTORE, restore_env(base_env, bucket, ckdir, up, tmp_path))

    assert proc.returncode == 0, proc.stderr
    assert (out["checkpoint"], out["step"], out["files"]) == ("iter_0042.pt", 42, 1)
    assert (ckdir / "iter_0042.pt").read_bytes() == data
    assert sorted(p.name for p in ckdir.iterdir()) == ["iter_0042.pt"]


# --- restore: failures ---------------------------------------------------------------------------------


def marker_command(tmp_path: Path) -> tuple[str, Path]:
    """A resume command that leaves a file behind if it ever runs."""
    marker = PROGRAMS / f"ran-{os.getpid()}-{time.monotonic_ns()}"
    return f"/usr/bin/touch {marker}", marker


@pytest.mark.parametrize("how", ["missing-object", "missing-manifest"])
def test_restore_missing_object_is_download_failed(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, how: str) -> None:
    up, files = put_checkpoint(s3, bucket, base_env, tmp_path)
    if how == "missing-object":
        key = f"{up['SSM_UploadPrefix']}step-100/opt/optimizer.pt"
        s3.delete_object(Bucket=bucket, Key=key, VersionId=s3.head_object(Bucket=bucket, Key=key)["VersionId"])
    else:
        s3.delete_object(Bucket=bucket, Key=up["SSM_ManifestKey"], VersionId=up["SSM_ManifestVersionId"])
    ckdir = tmp_path / "ckpt"
    command, marker = marker_command(tmp_path)
    log = tmp_path / "train.log"
    previous = "epoch 9\ntraining complete\n"  # the previous session's lines, completion included
    log.write_text(previous)
    env = restore_env(base_env, bucket, ckdir, up, tmp_path, ResumeCommand=command, LogFile=str(log))

    proc, out = run(RESTORE, env)

    assert proc.returncode == 67, proc.stderr
    assert (out["result"], out["error"]) == ("failed", "DownloadFailed")
    assert any(s in out["message"] for s in ("NoSuchKey", "NoSuchVersion", "Not Found", "404")), out
    assert not marker.exists(), "the resume command ran"
    assert not (ckdir / "step-100").exists(), "a partial checkpoint was placed"
    # The log offset was recorded before the download: even after a failed restore, the previous session's
    # completion line never counts for this one.
    assert baseline(tmp_path / "state", log)["offset"] == len(previous)
    assert log.read_text() == previous
    probe = {**probe_env(base_env, log_file=str(log), pattern="training complete"), "AUTOSTOP_STATE_DIR": str(tmp_path / "state")}
    assert run(PROBE, probe)[1]["log"] == {"state": "not_matched"}
    if ckdir.exists():
        assert list(ckdir.iterdir()) == []
    scripts.assert_no_temp_left(env)


def test_restore_on_a_disk_without_room_fails_and_places_nothing(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    up, files = put_checkpoint(s3, bucket, base_env, tmp_path)
    ckdir = tmp_path / "ckpt"
    env = restore_env(base_env, bucket, ckdir, up, tmp_path)

    def no_room() -> None:  # files over 2,000 bytes fail as on a full disk (EFBIG): the 3,000-byte model.bin
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))

    argv = ["bash", str(RESTORE)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, preexec_fn=no_room)

    out = json.loads(proc.stdout.splitlines()[-1])
    assert proc.returncode == 67, proc.stderr
    assert (out["error"], out["message"]) == ("DownloadFailed", "cannot write the restored file: File too large; free disk space")
    assert not (ckdir / "step-100").exists(), "a partial checkpoint was placed"
    scripts.assert_no_temp_left(env)


@pytest.mark.parametrize(("transfer", "algorithm"), [("sdk", "CRC32"), ("cli", "CRC32"), ("sdk", "SHA256"), ("cli", "SHA256")])
@pytest.mark.parametrize("how", ["different-bytes", "lying-checksum", "truncated"])
def test_restore_corrupted_object_is_checksum_mismatch(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, how: str, transfer: str, algorithm: str
) -> None:
    """Manifests of both forms (CRC32; SHA-256 from before), through botocore and through the AWS CLI."""
    up, files = put_checkpoint(s3, bucket, base_env, tmp_path, algorithm)
    key = f"{up['SSM_UploadPrefix']}step-100/model.bin"
    good = files["model.bin"]
    bad = bytes([good[0] ^ 0xFF]) + good[1:]
    lie = {"ChecksumCRC32": scripts.b64crc(good)} if algorithm == "CRC32" else {"ChecksumSHA256": scripts.b64sha(good)}
    if how == "different-bytes":  # an object with the same size (moto then holds no checksum)
        version = s3.put_object(Bucket=bucket, Key=key, Body=bad)["VersionId"]
    elif how == "lying-checksum":  # moto stores the checksum it was given without checking it (real S3: BadDigest)
        version = s3.put_object(Bucket=bucket, Key=key, Body=bad, **lie)["VersionId"]
    else:
        version = s3.put_object(Bucket=bucket, Key=key, Body=good[:-1], ChecksumAlgorithm=algorithm)["VersionId"]
    # The verified manifest lists that version (the bytes S3 holds for it differ from what the manifest says).
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=up["SSM_ManifestKey"])["Body"].read())
    for f in manifest["files"]:
        if f["key"] == key:
            f["version_id"] = version
    up = pin(s3, bucket, up, json.dumps(manifest).encode())
    ckdir = tmp_path / "ckpt"
    ckdir.mkdir()
    command, marker = marker_command(tmp_path)
    env = restore_env(base_env, bucket, ckdir, up, tmp_path, ResumeCommand=command) | {"AUTOSTOP_TRANSFER": transfer}

    proc, out = run(RESTORE, env)

    assert proc.returncode == 67, proc.stderr
    assert (out["result"], out["error"]) == ("failed", "ChecksumMismatch"), out
    assert not marker.exists(), "the resume command ran"
    assert list(ckdir.iterdir()) == [], "nothing may be placed before every file is verified"
    scripts.assert_no_temp_left(env)


@pytest.mark.parametrize("what", ["different-content", "symlink", "directory"])
def test_restore_never_overwrites_a_different_file(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, what: str) -> None:
    up, files = put_checkpoint(s3, bucket, base_env, tmp_path)
    ckdir = tmp_path / "ckpt"
    target = ckdir / "step-100" / "opt" / "optimizer.pt"
    elsewhere = write(tmp_path / "elsewhere.bin", b"keep me")
    if what == "different-content":
        write(target, b"the user's newer optimizer state")
    elif what == "symlink":
        target.parent.mkdir(parents=True)
        target.symlink_to(tmp_path / "elsewhere.bin")
    else:
        target.mkdir(parents=True)
    command, marker = marker_command(tmp_path)
    env = restore_env(base_env, bucket, ckdir, up, tmp_path, ResumeCommand=command)

    proc, out = run(RESTORE, env)

    assert proc.returncode == 68, proc.stderr
    assert (out["result"], out["error"]) == ("failed", "RestoreConflict")
    assert str(target) in out["message"]
    assert not (ckdir / "step-100" / "model.bin").exists(), "nothing is placed when any target conflicts"
    if what == "different-content":
        assert target.read_bytes() == b"the user's newer optimizer state"
    elif what == "symlink":
        assert target.is_symlink() and (tmp_path / "elsewhere.bin").read_bytes() == elsewhere
    assert not marker.exists()


def test_restore_refuses_a_symlinked_checkpoint_dir(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    up, _ = put_checkpoint(s3, bucket, base_env, tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    proc, out = run(RESTORE, restore_env(base_env, bucket, tmp_path / "link" / "ckpt", up, tmp_path))
    assert proc.returncode == 68, proc.stderr
    assert out["error"] == "RestoreConflict" and "symbolic link" in out["message"]
    assert list((tmp_path / "real").iterdir()) == []


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"run_id": "run-7"}, "belongs to run 'run-7'"),
        ({"instance_id": "i-0fffffffffffffff0"}, "belongs to instance"),
        ({"bucket": "other-bucket"}, "names bucket"),
        ({"schema_version": 2}, "schema_version 1"),
        ({"files": []}, "lists no files"),
        ({"checkpoint": {"name": "../etc", "path": "/x", "mtime": "2026-01-02T03:04:05Z"}}, "checkpoint name"),
        ({"files": [{"key": "k", "path": "../../etc/cron.d/x", "size": 1, "sha256": "0" * 64}]}, "invalid path"),
        ({"files": [{"key": "k", "path": "/etc/passwd", "size": 1, "sha256": "0" * 64}]}, "invalid path"),
        ({"files": [{"key": "k", "path": "a", "size": "1", "sha256": "0" * 64}]}, "invalid size"),
        ({"files": [{"key": "k", "path": "a", "size": 200 * 2**40, "sha256": "0" * 64}]}, "invalid size"),  # > 5 TiB
        (
            {"files": [{"key": "k", "path": "a", "size": 12 * MIB, "checksum_sha256": CHECKSUM, "parts": 2, "part_size": 5 * MIB}]},
            "part_size",
        ),
        ({"files": [{"key": "k", "path": "a", "size": 12 * MIB, "checksum_sha256": CHECKSUM, "parts": 3, "part_size": 1024}]}, "part_size"),
        (
            {"files": [{"key": "k", "path": "a", "size": 2**40, "checksum_sha256": CHECKSUM, "parts": 209716, "part_size": 5 * MIB}]},
            "part_size",
        ),
        (
            {
                "files": [
                    {
                        "key": "k",
                        "path": "a",
                        "size": 12 * MIB,
                        "sha256": "0" * 64,
                        "checksum_sha256": CHECKSUM,
                        "parts": 3,
                        "part_size": 5 * MIB,
                    }
                ]
            },
            "or a sha256 beside it",
        ),
        ({"files": [{"key": "k", "path": "a", "size": 12 * MIB, "checksum_sha256": CHECKSUM, "parts": 3}]}, "no sha256"),
        ({"files": [{"key": "k", "path": "a", "size": 1, "checksum_crc32": "AAAA"}]}, "invalid checksum_crc32"),
        ({"files": [{"key": "k", "path": "a", "size": 1, "checksum_crc32": "AAAAAA==", "sha256": "0" * 64}]}, "SHA-256 beside it"),
        ({"files": [{"key": "k", "path": "a", "size": 1, "checksum_crc32": "AAAAAA==", "checksum_sha256": CHECKSUM}]}, "SHA-256 beside"),
        (
            {"files": [{"key": "k", "path": "a", "size": 12 * MIB, "checksum_crc32": "AAAAAA==-3", "parts": 3, "part_size": 1024}]},
            "part_size",
        ),
        ({"files": [{"key": "k", "path": "a", "size": 12 * MIB, "checksum_crc32": "AAAAAA==-3", "parts": 3}]}, "does not fit its parts"),
        (
            {"files": [{"key": "k", "path": "a", "size": 12 * MIB, "checksum_crc32": "AAAAAA==", "parts": 3, "part_size": 5 * MIB}]},
            "does not fit its parts",
        ),
        (
            {"files": [{"key": "k", "path": "a", "size": 12 * MIB, "checksum_crc32": "AAAAAA==-2", "parts": 3, "part_size": 5 * MIB}]},
            "does not fit its parts",
        ),
        ({"files": [{"key": "k", "path": "a", "size": 1, "checksum_crc32": "AAAAAA==", "version_id": "null"}]}, "no valid S3 version_id"),
        (None, "not valid JSON"),
    ],
)
def test_restore_rejects_an_invalid_manifest(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, change: dict[str, Any] | None, why: str
) -> None:
    up, _ = put_checkpoint(s3, bucket, base_env, tmp_path)
    key = up["SSM_ManifestKey"]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    for f in (change or {}).get("files", []):
        f.update(key=up["SSM_UploadPrefix"] + f["key"], version_id=f.get("version_id", "v1"))
    body = b"{not json" if change is None else json.dumps({**manifest, **change}).encode()
    up = pin(s3, bucket, up, body)  # pinned: what is tested is the manifest's content
    ckdir = tmp_path / "ckpt"
    proc, out = run(RESTORE, restore_env(base_env, bucket, ckdir, up, tmp_path))
    assert proc.returncode == 66, proc.stderr
    assert out["error"] == "ManifestInvalid" and why in out["message"], out
    assert not ckdir.exists()


@pytest.mark.parametrize(
    "override",
    [
        {"ResumeCommand": "/bin/echo --x=$(touch {pwned})"},
        {"ResumeCommand": "/bin/echo `touch {pwned}`"},
        {"ResumeCommand": "/bin/echo a;touch {pwned}"},
        {"ResumeCommand": "/bin/echo a | touch {pwned}"},
        {"ResumeCommand": "/bin/echo 'a b'"},
        {"ResumeCommand": "/bin/echo  two-spaces"},
        {"ResumeCommand": "/bin/echo trailing "},
        {"ResumeCommand": "touch {pwned}"},
        {"ResumeCommand": "/usr/../bin/touch {pwned}"},
        {"ResumeCommand": "/bin/echo " + " ".join(["a"] * 32)},
        {"ResumeCommand": "/bin/echo a\ntouch {pwned}"},
        {"CheckpointDir": "/data/../etc"},
        {"ManifestKey": "runs/manifest.txt"},
        {"LogFile": "relative.log"},
        {"PidFile": "/run/x $(id).pid"},
        {"ExecutionName": "a" * 81},
    ],
)
def test_restore_rejects_invalid_parameters_and_never_runs_them(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, override: dict[str, str]
) -> None:
    pwned = tmp_path / "pwned"
    ckdir = tmp_path / "ckpt"
    up = {
        "SSM_ManifestKey": "runs/run-42/manifests/x.json",
        "SSM_ManifestVersionId": "3HL4kqtJlcpXroDTDmJ-rmSpXd3dIbrHY",
        "SSM_ManifestSha256": "0" * 64,
        "SSM_UploadPrefix": "runs/run-42/checkpoints/x/",
    }
    env = restore_env(base_env, bucket, ckdir, up, tmp_path)
    env.update({f"SSM_{k}": v.format(pwned=pwned) for k, v in override.items()})

    proc, out = run(RESTORE, env)

    assert proc.returncode == 64, proc.stderr
    assert (out["result"], out["error"]) == ("failed", "InvalidParameter")
    assert next(iter(override)) in out["message"]
    assert not pwned.exists(), "a parameter reached a shell"
    assert not ckdir.exists()


def test_restore_document_pattern_agrees_with_the_script() -> None:
    """SendCommand checks the document's pattern first; the script re-checks the same one."""
    pattern = RESTORE_PARAMETERS["ResumeCommand"]["allowedPattern"]
    rendered = RESTORE.read_text()  # lib/restore_helper.py RESTORE_PARAMETERS (single-quoted where that is the same)
    assert f'r"{pattern}"' in rendered or f"r'{pattern}'" in rendered


def test_restore_refuses_to_start_a_second_trainer(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    up, _ = put_checkpoint(s3, bucket, base_env, tmp_path)
    trainer = subprocess.Popen(["sleep", "30"])
    children.append(trainer)
    pid_file = tmp_path / "train.pid"
    pid_file.write_text(f"{trainer.pid}\n")  # written this boot by a live trainer
    command, marker = marker_command(tmp_path)
    env = restore_env(base_env, bucket, tmp_path / "ckpt", up, tmp_path, PidFile=str(pid_file), ResumeCommand=command)

    proc, out = run(RESTORE, env)

    assert proc.returncode == 69, proc.stderr
    assert out["error"] == "ResumeCommandFailed" and f"already running (pid {trainer.pid}" in out["message"]
    assert not marker.exists()
    assert pid_file.read_text() == f"{trainer.pid}\n"


def test_restore_starts_the_trainer_over_a_stale_pid_file(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]], started: list[int]
) -> None:
    """A PID file from before the boot names whatever has that pid now: not a trainer, so resume."""
    up, _ = put_checkpoint(s3, bucket, base_env, tmp_path)
    other = subprocess.Popen(["sleep", "30"])
    children.append(other)
    pid_file = tmp_path / "train.pid"
    pid_file.write_text(f"{other.pid}\n")
    env = restore_env(base_env, bucket, tmp_path / "ckpt", up, tmp_path, PidFile=str(pid_file), ResumeCommand="/bin/sleep 30")
    env["AUTOSTOP_BOOT_TIME"] = str(int(time.time()) + 5)  # the PID file was written before this "boot"

    proc, out = run(RESTORE, env)

    assert proc.returncode == 0, proc.stderr
    started.append(out["pid"])
    assert out["trainer"] == "started" and out["pid"] != other.pid
    assert pid_file.read_text() == f"{out['pid']}\n"
    assert other.poll() is None


@pytest.mark.parametrize(
    ("command", "why"),
    [("/bin/true", "ended within 2 s (exit status 0)"), ("/no/such/program", "could not be started (executing /no/such/program")],
)
def test_restore_resume_command_that_does_not_keep_running(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, command: str, why: str
) -> None:
    up, files = put_checkpoint(s3, bucket, base_env, tmp_path)
    ckdir = tmp_path / "ckpt"
    proc, out = run(RESTORE, restore_env(base_env, bucket, ckdir, up, tmp_path, ResumeCommand=command))
    assert proc.returncode == 69, proc.stderr
    assert out["error"] == "ResumeCommandFailed" and why in out["message"], out
    assert_restored(ckdir, files)  # the checkpoint stays in place


# --- stale PID files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("process", ["alive", "exited"])
def test_probe_reports_a_pid_file_from_before_the_boot_as_stale(
    base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]], process: str
) -> None:
    if process == "alive":
        sleeper = subprocess.Popen(["sleep", "30"])
        children.append(sleeper)
        pid = sleeper.pid
    else:
        pid = scripts.exited_pid()
    pid_file = tmp_path / "train.pid"
    pid_file.write_text(f"{pid}\n")
    env = {**probe_env(base_env, pid_file=str(pid_file)), "AUTOSTOP_BOOT_TIME": str(int(time.time()) + 5)}
    proc, out = run(PROBE, env)
    assert proc.returncode == 0
    assert out["pid"] == {"state": "stale", "pid": pid}
    # Without the override the real boot time applies: the file is newer, so the usual states.
    _, out = run(PROBE, probe_env(base_env, pid_file=str(pid_file)))
    assert out["pid"] == {"state": "running" if process == "alive" else "exited", "pid": pid}


def test_checkpoint_does_not_signal_the_pid_of_a_stale_pid_file(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    ckdir = tmp_path / "ck"
    write(ckdir / "step-3.pt", b"weights")
    trainer, pid_file, counter = scripts.start_trainer(children, "exit", tmp_path, ckdir)
    env = {**checkpoint_env(base_env, bucket, ckdir, PidFile=str(pid_file)), "AUTOSTOP_BOOT_TIME": str(int(time.time()) + 5)}
    proc, out = run(CHECKPOINT, env)
    assert proc.returncode == 0, proc.stderr
    assert (out["trainer"], out["checkpoint"], out["fresh"]) == ("not_running", "step-3.pt", False)
    assert not counter.exists() and trainer.poll() is None, "the process of a stale PID file was signalled"


# --- probe: this boot's log baseline ---------------------------------------------------------------------

BOOT = "test-boot-1"


def write_baseline(state: Path, log: Path, offset: int, boot: str = BOOT, same_file: bool = True) -> None:
    record = baseline_file(state, log)
    record.parent.mkdir(parents=True, exist_ok=True)
    for d in (state, record.parent):
        d.chmod(0o755)  # the state directory may not be writable by group or others
    st = log.stat()
    dev, ino = (st.st_dev, st.st_ino) if same_file else (st.st_dev, st.st_ino + 1)
    record.write_text(json.dumps({"boot": boot, "dev": dev, "ino": ino, "offset": offset}, separators=(",", ":")) + "\n")


def probe_log(base_env: dict[str, str], state: Path, log: Path, pattern: str = "training complete", boot: str = BOOT) -> str:
    env = {**probe_env(base_env, log_file=str(log), pattern=pattern), "AUTOSTOP_STATE_DIR": str(state), "AUTOSTOP_BOOT_ID": boot}
    proc, out = run(PROBE, env)
    assert proc.returncode == 0, proc.stderr
    assert out["pid"] == {"state": "not_configured", "pid": None}
    print(proc.stderr)  # the reason, shown when a test fails
    return str(out["log"]["state"])


@pytest.mark.parametrize(
    ("log_text", "record", "state"),
    [
        ("training complete\n", "len", "not_matched"),  # only the previous session's line
        ("training complete\n", "len-then-new", "matched"),  # the resumed run finished too
        ("old\n" * 10, "truncated", "matched"),  # truncated after the baseline: all of it is this boot's
        ("training complete\n", "other-inode", "matched"),  # replaced after the baseline: all of it is this boot's
        ("training complete\n", "garbage", "unreadable"),  # never fall back to the old lines
        ("training complete\n", "none", "matched"),  # never probed or restored, written this boot
    ],
)
def test_probe_scans_only_after_this_boots_baseline(
    base_env: dict[str, str], tmp_path: Path, log_text: str, record: str, state: str
) -> None:
    log = tmp_path / "train.log"
    log.write_text(log_text)
    state_dir = tmp_path / "state"
    if record in ("len", "len-then-new"):
        write_baseline(state_dir, log, len(log_text))
    elif record == "truncated":
        write_baseline(state_dir, log, 999999)
        log.write_text("epoch 1\ntraining complete\n")
    elif record == "other-inode":
        write_baseline(state_dir, log, len(log_text), same_file=False)
    elif record == "garbage":
        baseline_file(state_dir, log).parent.mkdir(parents=True)
        state_dir.chmod(0o755)
        baseline_file(state_dir, log).write_text("twelve\n")
    if record == "len-then-new":
        with log.open("a") as f:
            f.write("step 5\ntraining complete\n")
    assert probe_log(base_env, state_dir, log) == state


def test_probe_baseline_check_at_the_boundary(base_env: dict[str, str], tmp_path: Path) -> None:
    """A match that starts right at the baseline counts; one that ends right before it does not."""
    log = tmp_path / "train.log"
    old = "DONE\n"
    log.write_text(old + "DONE\n")
    state_dir = tmp_path / "state"
    write_baseline(state_dir, log, len(old))
    assert probe_log(base_env, state_dir, log, pattern="^DONE$") == "matched"
    log.write_text(old)
    assert probe_log(base_env, state_dir, log, pattern="^DONE$") == "not_matched"


def test_restore_is_plain_bash() -> None:
    text = RESTORE.read_text()
    assert "# @include " not in text and "{{" not in text
    assert "eval " not in text
    subprocess.run(["bash", "-n", str(RESTORE)], check=True)
    assert keys  # the shared helpers import cleanly
