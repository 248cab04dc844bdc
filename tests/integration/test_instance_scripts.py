"""The on-instance scripts of the SSM documents (infra/documents/probe.sh and checkpoint.sh), run for real.

Each script is run with ``bash`` the way the SSM agent runs a document with ENV_VAR interpolation:
parameters arrive as ``SSM_<Name>`` environment variables. The AWS CLI of this virtualenv talks to a moto
server (``AWS_ENDPOINT_URL``); assertions read S3 back with boto3.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from infra.constructs.documents import render_script
from local.agent import sdk_python_shim

ROOT = Path(__file__).resolve().parents[2]
# The scripts as the SSM documents carry them (shared lib/ code pasted in at "# @include" lines).
_RENDERED = Path(tempfile.mkdtemp(prefix="autostop-scripts-"))
PROBE = _RENDERED / "probe.sh"
CHECKPOINT = _RENDERED / "checkpoint.sh"
PROBE.write_text(render_script("probe.sh"))
CHECKPOINT.write_text(render_script("checkpoint.sh"))
VENV_BIN = Path(sys.executable).parent
REGION = "us-east-1"
INSTANCE_ID = "i-0123456789abcdef0"
MIB = 1024 * 1024
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


# --- fixtures and helpers ------------------------------------------------------------------------------


def safetensors_bytes(data: bytes) -> bytes:
    """A valid safetensors file holding DATA as one uint8 tensor (the format: u64 header length, JSON, data)."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [len(data)], "data_offsets": [0, len(data)]}}).encode()
    return len(header).to_bytes(8, "little") + header + data


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def s3(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"ckpt-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def base_env(endpoint: str, tmp_path: Path) -> dict[str, str]:
    """What the SSM agent gives a command, plus the moto endpoint; no SSM_ parameters yet."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return {
        "PATH": os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "/usr/bin:/bin")]),
        "HOME": str(tmp_path),
        "TMPDIR": str(scratch),
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_SSM_REGION_NAME": REGION,
        "AWS_SSM_INSTANCE_ID": INSTANCE_ID,
    }


def run(script: Path, env: dict[str, str], timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run a script; its stdout must be exactly one JSON object line. Returns the process and that object."""
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"expected one stdout line, got {proc.stdout!r}; stderr: {proc.stderr}"
    result = json.loads(lines[0])
    assert isinstance(result, dict)
    return proc, result


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def b64crc(data: bytes) -> str:
    """S3's ChecksumCRC32 of DATA: base64 of the big-endian CRC32."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def write(path: Path, data: bytes, mtime: float | None = None) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return data


def set_tree_mtime(top: Path, mtime: float) -> None:
    """Give a directory and everything below it the same mtime (children first)."""
    for p in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        os.utime(p, (mtime, mtime), follow_symlinks=False)
    os.utime(top, (mtime, mtime))


def keys(s3: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def exited_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def wait_for_state(pid: int, state: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == state:
            return
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} never reached state {state}")


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; killed and reaped afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)


TRAINER = r"""
import os, signal, sys, time
mode, counter, ckdir = sys.argv[1], sys.argv[2], sys.argv[3]

def on_term(signum, frame):
    with open(counter, "a") as f:
        f.write("TERM\n")
    if mode == "exit":
        final = os.path.join(ckdir, "step-9")
        os.makedirs(final)
        with open(os.path.join(final, "weights.bin"), "wb") as f:
            f.write(b"final weights")
        sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def start_trainer(
    children: list[subprocess.Popen[bytes]], mode: str, tmp_path: Path, ckdir: Path
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """A Python trainer that either saves a final checkpoint and exits on SIGTERM, or ignores it ("ignore")."""
    counter = tmp_path / f"signals-{mode}"
    proc = subprocess.Popen([sys.executable, "-c", TRAINER, mode, str(counter), str(ckdir)], stdout=subprocess.PIPE)
    children.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    pid_file = tmp_path / "trainer.pid"
    pid_file.write_text(f"{proc.pid}\n")
    return proc, pid_file, counter


WHY_NOT_TRAINER = {  # the reason the scripts log
    "started-after-pid-file": "pid {pid} started ",  # about 600 s after the PID file was last written
    "other-owner": "pid {pid} runs as uid 0, but ",
    "pid-1": "pid 1 is init",
    "script-parent": "pid {pid} is this script or its parent",
}


def untrusted_pid_file(
    kind: str, tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> tuple[Path, int, subprocess.Popen[bytes] | None]:
    """A PID file naming a live process that is not the trainer. Returns the file, the pid and the process (if ours)."""
    pid_file = tmp_path / "train.pid"
    if kind == "pid-1":
        pid_file.write_text("1\n")
        return pid_file, 1, None
    if kind == "script-parent":  # the script's parent: this test process
        pid_file.write_text(f"{os.getpid()}\n")
        return pid_file, os.getpid(), None
    if kind == "other-owner" and os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    sleeper = subprocess.Popen(["sleep", "30"])
    children.append(sleeper)
    pid_file.write_text(f"{sleeper.pid}\n")
    if kind == "started-after-pid-file":
        # The trainer wrote this file 10 minutes ago and exited; its pid now belongs to the sleeper.
        old = time.time() - 600
        os.utime(pid_file, (old, old))
    elif kind == "other-owner":
        os.chown(pid_file, 65534, 65534)  # the sleeper runs as root
    else:
        raise AssertionError(kind)
    return pid_file, sleeper.pid, sleeper


# --- probe.sh ------------------------------------------------------------------------------------------


def probe_env(base_env: dict[str, str], pid_file: str = "", log_file: str = "", pattern: str = "") -> dict[str, str]:
    """The probe's environment; a log's CheckpointDir (whose owner must own the log) is the log's directory unless
    ``base_env`` names one."""
    ckdir = base_env.get("SSM_CheckpointDir") or (os.path.dirname(log_file) if log_file else "")
    return {**base_env, "SSM_PidFile": pid_file, "SSM_LogFile": log_file, "SSM_LogPattern": pattern, "SSM_CheckpointDir": ckdir}


def test_probe_reads_no_log_without_the_checkpoint_dir_whose_owner_must_own_it(base_env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("training complete\n")
    env = {**probe_env(base_env, log_file=str(log), pattern="complete"), "SSM_CheckpointDir": ""}
    proc, out = run(PROBE, env)  # the probe runs as root: no trainer's user, no log read (SendCommand by hand, say)
    assert proc.returncode == 0 and out["log"] == {"state": "unreadable"}
    assert "LogFile needs CheckpointDir" in proc.stderr
    assert run(PROBE, {**env, "SSM_CheckpointDir": str(tmp_path)})[1]["log"] == {"state": "matched"}


def test_probe_not_configured(base_env: dict[str, str]) -> None:
    proc, out = run(PROBE, probe_env(base_env))
    assert proc.returncode == 0
    assert out == {"probe": 1, "pid": {"state": "not_configured", "pid": None}, "log": {"state": "not_configured"}}


def test_probe_pid_running_then_exited(base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]]) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    children.append(sleeper)
    pid_file = tmp_path / "train.pid"
    pid_file.write_text(f"  {sleeper.pid}\n\n")  # surrounding whitespace is stripped
    proc, out = run(PROBE, probe_env(base_env, pid_file=str(pid_file)))
    assert proc.returncode == 0
    assert out["pid"] == {"state": "running", "pid": sleeper.pid}

    sleeper.kill()
    sleeper.wait()
    _, out = run(PROBE, probe_env(base_env, pid_file=str(pid_file)))
    assert out["pid"] == {"state": "exited", "pid": sleeper.pid}


def test_probe_trusts_a_root_owned_pid_file_naming_another_users_process(
    base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    """A root launcher (user data, start-stop-daemon --chuid) writes the PID of a trainer that runs as another user."""
    if os.geteuid() != 0:
        pytest.skip("starting a process as another uid needs root")
    trainer = subprocess.Popen(["sleep", "30"], user=65534)
    children.append(trainer)
    pid_file = tmp_path / "train.pid"
    pid_file.write_text(f"{trainer.pid}\n")  # owned by root
    _, out = run(PROBE, probe_env(base_env, pid_file=str(pid_file)))
    assert out["pid"] == {"state": "running", "pid": trainer.pid}


def test_probe_zombie_counts_as_exited(base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]]) -> None:
    zombie = subprocess.Popen(["true"])  # not waited for: stays a zombie
    children.append(zombie)
    wait_for_state(zombie.pid, "Z")
    pid_file = tmp_path / "train.pid"
    pid_file.write_text(str(zombie.pid))
    _, out = run(PROBE, probe_env(base_env, pid_file=str(pid_file)))
    assert out["pid"] == {"state": "exited", "pid": zombie.pid}


@pytest.mark.parametrize("kind", ["started-after-pid-file", "other-owner", "pid-1", "script-parent"])
def test_probe_live_process_that_is_not_the_trainer_is_unverified_never_exited(
    base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]], kind: str
) -> None:
    """Alive, but not provably the process that wrote the PID file (a reused pid, or a stepped clock)."""
    pid_file, pid, _ = untrusted_pid_file(kind, tmp_path, children)
    proc, out = run(PROBE, probe_env(base_env, pid_file=str(pid_file)))
    assert proc.returncode == 0
    assert out["pid"] == {"state": "unverified", "pid": pid}
    assert f"cannot be shown to be the trainer ({WHY_NOT_TRAINER[kind].format(pid=pid)}" in proc.stderr


@pytest.mark.parametrize(
    ("content", "state"),
    [
        (None, "missing"),
        ("not-a-pid", "unreadable"),
        ("0", "unreadable"),
        ("-5", "unreadable"),
        ("12 34", "unreadable"),
        ("", "unreadable"),
        ("dir", "unreadable"),
    ],
)
def test_probe_pid_file_states(base_env: dict[str, str], tmp_path: Path, content: str | None, state: str) -> None:
    pid_file = tmp_path / "train.pid"
    if content == "dir":
        pid_file.mkdir()
    elif content is not None:
        pid_file.write_text(content)
    proc, out = run(PROBE, probe_env(base_env, pid_file=str(pid_file)))
    assert proc.returncode == 0
    assert out["pid"] == {"state": state, "pid": None}
    assert out["log"] == {"state": "not_configured"}


@pytest.mark.parametrize(
    ("setup", "pattern", "state"),
    [
        ("log", r"training (complete|finished)", "matched"),
        ("log", r"^epoch [0-9]+ done$", "matched"),
        ("log", r"training failed", "not_matched"),
        ("log", r"(unclosed", "unreadable"),  # invalid ERE: grep exits 2
        ("missing", r"done", "missing"),
        ("dir", r"done", "unreadable"),
        ("old-match", r"training complete", "not_matched"),  # only the last 10 MiB count
    ],
)
def test_probe_log_states(base_env: dict[str, str], tmp_path: Path, setup: str, pattern: str, state: str) -> None:
    log = tmp_path / "train.log"
    if setup == "log":
        log.write_text("epoch 1 done\nloss=0.1\ntraining complete after 3 epochs\n")
    elif setup == "dir":
        log.mkdir()
    elif setup == "old-match":
        with log.open("wb") as f:
            f.write(b"training complete\n")
            f.write((b"x" * 1023 + b"\n") * (10 * 1024 + 1))
    proc, out = run(PROBE, probe_env(base_env, log_file=str(log), pattern=pattern))
    assert proc.returncode == 0
    assert out == {"probe": 1, "pid": {"state": "not_configured", "pid": None}, "log": {"state": state}}


def test_probe_reports_both_signals(base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]]) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    children.append(sleeper)
    (tmp_path / "pid").write_text(str(sleeper.pid))
    (tmp_path / "log").write_text("step 10\n")
    _, out = run(PROBE, probe_env(base_env, str(tmp_path / "pid"), str(tmp_path / "log"), "DONE"))
    assert out == {"probe": 1, "pid": {"state": "running", "pid": sleeper.pid}, "log": {"state": "not_matched"}}


@pytest.mark.parametrize(
    "params",
    [
        {"SSM_PidFile": "relative/train.pid"},
        {"SSM_PidFile": "/tmp/x;rm -rf /"},
        {"SSM_PidFile": "/var/run/../../etc/passwd"},
        {"SSM_LogFile": "/var/log//train.log", "SSM_LogPattern": "done"},
        {"SSM_LogFile": "/var/log/train.log", "SSM_LogPattern": "line\nbreak"},
        {"SSM_LogFile": "/var/log/train.log", "SSM_LogPattern": "caf\u00e9"},
        {"SSM_LogFile": "/var/log/train.log", "SSM_LogPattern": ""},
        {"SSM_LogPattern": "x" * 201},
    ],
)
def test_probe_invalid_parameters(base_env: dict[str, str], params: dict[str, str]) -> None:
    proc, out = run(PROBE, {**probe_env(base_env), **params})
    assert proc.returncode == 64
    assert out["probe"] == 1 and out["error"] == "InvalidParameter" and out["message"]
    assert "pid" not in out


def test_probe_without_env_var_support(base_env: dict[str, str]) -> None:
    env = probe_env(base_env)
    del env["SSM_LogPattern"]
    proc, out = run(PROBE, env)
    assert proc.returncode == 64
    assert out["error"] == "InvalidParameter"
    assert "SSM Agent 3.3.2746.0 or later is required" in out["message"]


def test_probe_reads_its_own_run_from_run_ids(base_env: dict[str, str], tmp_path: Path) -> None:
    # A batched probe: one command for several instances, each substituting its own run id into the paths.
    for run_id in ("r-1", "r-2"):
        (tmp_path / run_id).mkdir()
    (tmp_path / "r-1" / "train.log").write_text("step 9\n")
    (tmp_path / "r-2" / "train.log").write_text("training complete\n")
    template = f"{tmp_path}/{{run-id}}/train.log"
    other = "i-0aaaaaaaaaaaaaaaa"
    for run_id, state in (("r-1", "not_matched"), ("r-2", "matched")):
        env = {**probe_env(base_env, log_file=template, pattern="training complete"), "SSM_CheckpointDir": f"{tmp_path}/{{run-id}}"}
        env["SSM_RunIds"] = f"{other}=r-0 {INSTANCE_ID}={run_id}"
        proc, out = run(PROBE, env)
        assert proc.returncode == 0, proc.stderr
        assert out["log"] == {"state": state}


@pytest.mark.parametrize(
    ("run_ids", "log_file", "why"),
    [
        ("i-0aaaaaaaaaaaaaaaa=r-0", "/data/{run-id}/train.log", "names no run id for this instance"),
        ("", "/data/{run-id}/train.log", "still holds '{'"),
        ("{me}=r-1 {me}=r-2", "/data/{run-id}/train.log", "names this instance twice"),
        ("{me}=r-1;reboot", "/data/{run-id}/train.log", "RunIds must be"),
        ("{me}=r-1", "/data/{run}/train.log", "still holds '{'"),
        ("{me}=..", "/data/{run-id}/train.log", "RunIds must be"),
    ],
)
def test_probe_refuses_run_ids_that_do_not_give_a_plain_path(base_env: dict[str, str], run_ids: str, log_file: str, why: str) -> None:
    env = {**probe_env(base_env, log_file=log_file, pattern="done"), "SSM_RunIds": run_ids.replace("{me}", INSTANCE_ID)}
    proc, out = run(PROBE, env)
    assert proc.returncode == 64
    assert out["error"] == "InvalidParameter" and why in out["message"], out


def test_probe_rechecks_the_substituted_path(base_env: dict[str, str]) -> None:
    # "{run-id}" cannot smuggle a '..' segment past the checks: they run on the substituted value.
    env = {**probe_env(base_env, log_file="/data/{run-id}/../etc/shadow.log", pattern="x"), "SSM_RunIds": f"{INSTANCE_ID}=r-1"}
    proc, out = run(PROBE, env)
    assert proc.returncode == 64 and "may not contain" in out["message"]


def test_probe_never_reads_a_log_through_a_symbolic_link_in_its_path(base_env: dict[str, str], tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "train.log").write_text("training complete\n")
    (tmp_path / "linked").symlink_to(real)
    env = {
        **probe_env(base_env, log_file=str(tmp_path / "linked" / "train.log"), pattern="complete"),
        "SSM_CheckpointDir": str(real),  # the trainer's directory is fine: only the log's path passes the link
        "AUTOSTOP_STATE_DIR": str(tmp_path / "state"),
    }
    proc, out = run(PROBE, env)
    assert proc.returncode == 0 and out["log"] == {"state": "unreadable"}
    assert f"its path passes through a symbolic link (it is {real / 'train.log'})" in proc.stderr
    env["SSM_LogFile"] = str(real / "train.log")
    assert run(PROBE, env)[1]["log"] == {"state": "matched"}


def test_probe_without_python3_reports_no_state(base_env: dict[str, str], tmp_path: Path) -> None:
    """The probe runs the on-instance program in python3. Without python3 it reports no state at all (exit 70): a PID
    file of an exited trainer, complete by itself with the bash probe, is then never read as complete."""
    from types import SimpleNamespace

    from local.agent import AgentFleet
    from shared.completion import probe_verdicts
    from shared.probe import parse_probe_output

    pid_file = tmp_path / "train.pid"
    pid_file.write_text(f"{exited_pid()}\n")
    env = probe_env(base_env, pid_file=str(pid_file))
    env["PATH"] = str(AgentFleet._path_without(SimpleNamespace(root=tmp_path, hidden_tools=("python3",)), env["PATH"]))  # type: ignore[arg-type]

    proc, out = run(PROBE, env)

    assert proc.returncode == 70
    assert out["probe"] == 1 and out["error"] == "ScriptFailed" and out["message"].startswith("python3 is not installed on this instance")
    result = parse_probe_output(proc.stdout)
    assert not result.ok
    config = SimpleNamespace(probe_needed=True, pid_is_completion_signal=True, log_file=None, pid_file=str(pid_file))
    verdicts = probe_verdicts(config, SimpleNamespace(probe=result))  # type: ignore[arg-type]
    assert [(v.signal, v.verdict) for v in verdicts] == [("pid", "inconclusive")]


def test_probe_program_is_the_one_program_with_only_what_it_needs() -> None:
    """The probe document pastes lib/instance.py, lib/baseline.py and lib/probe.py only: no selection, no transfer."""
    text = PROBE.read_text()
    assert text.rstrip().splitlines()[-1] == 'exec python3 -I -c "$PYHELPER" probe'
    assert "def main_probe(" in text and "def main_checkpoint(" not in text and "def select(" not in text


# --- checkpoint.sh -------------------------------------------------------------------------------------


def checkpoint_env(base_env: dict[str, str], bucket: str, ckdir: Path, **overrides: str) -> dict[str, str]:
    env = {
        **base_env,
        "SSM_RunId": "run-42",
        "SSM_InstanceId": INSTANCE_ID,
        "SSM_ExecutionName": "run-42-complete-1",
        "SSM_CheckpointDir": str(ckdir),
        "SSM_PidFile": "",
        "SSM_Bucket": bucket,
        "SSM_UploadPrefix": "runs/run-42/checkpoints/run-42-complete-1/",
        "SSM_ManifestKey": "runs/run-42/manifests/run-42-complete-1.json",
        "SSM_Signal": "TERM",
        "SSM_GraceSeconds": "10",
        "SSM_PartSizeBytes": str(64 * MIB),
        "SSM_DecisionTime": "2026-01-02T03:04:05Z",
        "SSM_Mode": "stop",
    }
    env.update({f"SSM_{k}": v for k, v in overrides.items()})
    return env


def read_manifest(s3: Any, bucket: str, env: dict[str, str]) -> dict[str, Any]:
    body = s3.get_object(Bucket=bucket, Key=env["SSM_ManifestKey"])["Body"].read()
    manifest = json.loads(body)
    assert isinstance(manifest, dict)
    return manifest


def assert_no_temp_left(env: dict[str, str]) -> None:
    assert os.listdir(env["TMPDIR"]) == [], "the script left its temp directory behind"


def test_checkpoint_uploads_newest_complete_directory(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    ckdir = tmp_path / "checkpoints"
    t0 = time.time() - 3600
    for i, name in enumerate(["step-100", "step-200", "step-300"]):
        write(ckdir / name / "model.bin", os.urandom(1000 + i))
        set_tree_mtime(ckdir / name, t0 + 10 * i)
    newest = {
        "model.bin": (ckdir / "step-300" / "model.bin").read_bytes(),
        "opt/optimizer.pt": write(ckdir / "step-300" / "opt" / "optimizer.pt", os.urandom(3000)),
        ".metadata": write(ckdir / "step-300" / ".metadata", b'{"step": 300}'),
    }
    set_tree_mtime(ckdir / "step-300", t0 + 20)
    # Newer, but not complete checkpoints:
    write(ckdir / "step-400.tmp" / "model.bin", b"half written", t0 + 100)
    write(ckdir / ".step-500" / "model.bin", b"hidden", t0 + 100)
    write(ckdir / "step-350" / "model.bin", b"done", t0 + 50)
    write(ckdir / "step-350" / "optimizer.pt.partial", b"in progress", t0 + 50)
    (ckdir / "step-600").mkdir()  # empty
    other = tmp_path / "elsewhere" / "step-999"
    write(other / "model.bin", b"not here", t0 + 200)
    (ckdir / "latest").symlink_to(other)
    env = checkpoint_env(base_env, bucket, ckdir)

    proc, out = run(CHECKPOINT, env)

    assert proc.returncode == 0, proc.stderr
    prefix, manifest_key = env["SSM_UploadPrefix"], env["SSM_ManifestKey"]
    total = sum(len(d) for d in newest.values())
    rejected = out.pop("rejected")
    manifest_body = s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read()
    assert out.pop("manifest_sha256") == hashlib.sha256(manifest_body).hexdigest()  # what Verify pins
    assert 0 <= out.pop("upload_seconds") < 60  # the upload's own seconds (autostop report, the UploadSeconds metric)
    assert out.pop("manifest_version_id") is None  # this test bucket is not versioned (the stack's is)
    assert out == {
        "result": "uploaded",
        "manifest": f"s3://{bucket}/{manifest_key}",
        "files": 3,
        "bytes": total,
        "trainer": "not_configured",
        "checkpoint": "step-300",
        "step": 300,
        "fresh": False,  # no trainer was signalled
        "rule": "every file passes its format check",
        "summary": "chose step-300 (step 300, every file passes its format check); rejected step-600 (it holds no files) and 3 more",
    }
    # The newest five entries left out, by step, each with its reason.
    assert [(r["name"], r["step"], r["reason"]) for r in rejected] == [
        ("step-600", 600, "it holds no files"),
        (".step-500", 500, "temporary name"),
        ("step-400.tmp", 400, "temporary name"),
        ("step-350", 350, "it contains step-350/optimizer.pt.partial, which is temporary"),
        ("latest", None, "symbolic link"),
    ]
    assert keys(s3, bucket) == sorted([manifest_key] + [f"{prefix}step-300/{rel}" for rel in newest])

    manifest = read_manifest(s3, bucket, env)
    assert set(manifest) == {
        "schema_version", "run_id", "instance_id", "execution_name", "decision_time", "created_at",
        "checkpoint", "layout", "step", "mode", "fresh", "bucket", "files", "total_bytes", "selection",
    }  # fmt: skip
    assert manifest["selection"] == {
        "step_source": "name:step",
        "rule": "every file passes its format check",
        "rejected": rejected,
        "open_files_check": "complete",
        "summary": out["summary"],
    }
    assert (manifest["layout"], manifest["mode"], manifest["fresh"]) == ("directory", "stop", False)
    assert manifest["schema_version"] == 1
    assert (manifest["run_id"], manifest["instance_id"], manifest["execution_name"]) == ("run-42", INSTANCE_ID, "run-42-complete-1")
    assert manifest["decision_time"] == "2026-01-02T03:04:05Z"
    assert ISO_Z.match(manifest["created_at"])
    assert manifest["checkpoint"] == {
        "name": "step-300",
        "path": str(ckdir / "step-300"),
        "mtime": datetime.fromtimestamp(int(t0 + 20), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    assert manifest["step"] == 300
    assert manifest["bucket"] == bucket
    assert manifest["total_bytes"] == total
    assert [f["path"] for f in manifest["files"]] == sorted(newest)

    manifest_head = s3.head_object(Bucket=bucket, Key=manifest_key, ChecksumMode="ENABLED")
    for entry in manifest["files"]:
        data = newest[entry["path"]]
        assert entry["key"] == f"{prefix}step-300/{entry['path']}"
        assert entry["size"] == len(data)
        assert entry["checksum_crc32"] == b64crc(data)
        assert "sha256" not in entry and "checksum_sha256" not in entry  # CRC32 only: lib/transfer.py says why
        assert entry["parts"] == 0
        head = s3.head_object(Bucket=bucket, Key=entry["key"], ChecksumMode="ENABLED")
        assert head["ChecksumCRC32"] == entry["checksum_crc32"]
        assert head["ContentLength"] == len(data)
        assert s3.get_object(Bucket=bucket, Key=entry["key"])["Body"].read() == data
        assert manifest_head["LastModified"] >= head["LastModified"]
    assert manifest_head["ChecksumSHA256"] == b64sha(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    assert_no_temp_left(env)


def test_checkpoint_manifest_matches_the_project_model(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    """The manifest parses with the Verify step's model and its checksums pass the Verify step's comparison."""
    sys.path.insert(0, str(ROOT / "lambdas"))
    try:
        from shared.models import Manifest
        from verify_checkpoint.logic import checksum_matches
    finally:
        sys.path.remove(str(ROOT / "lambdas"))
    ckdir = tmp_path / "ck"
    write(ckdir / "iter_0042.pt", b"weights")
    env = checkpoint_env(base_env, bucket, ckdir)
    proc, out = run(CHECKPOINT, env)
    assert proc.returncode == 0, proc.stderr
    assert out["step"] == 42
    manifest = Manifest.model_validate(read_manifest(s3, bucket, env))
    assert manifest.files[0].path == "iter_0042.pt"
    for f in manifest.files:
        head = s3.head_object(Bucket=bucket, Key=f.key, ChecksumMode="ENABLED")
        algorithm, want = f.checksum
        assert algorithm == "CRC32"
        assert checksum_matches(want, head.get("ChecksumCRC32"), f.parts)


@pytest.mark.parametrize("transfer", ["sdk", "cli"])
def test_checkpoint_multipart_file(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, transfer: str) -> None:
    """Parts in parallel, one CRC32 per part and no whole-file checksum, through botocore (sdk) or the AWS CLI, one
    process per part (cli); S3 holds the same composite checksum either way."""
    ckdir = tmp_path / "ck"
    data = write(ckdir / "model_step_0007.pt", os.urandom(12 * MIB))
    write(ckdir / "model_step_0006.pt", b"older", time.time() - 600)
    env = checkpoint_env(base_env, bucket, ckdir, PartSizeBytes=str(5 * MIB)) | {"AUTOSTOP_TRANSFER": transfer}

    proc, out = run(CHECKPOINT, env)

    assert proc.returncode == 0, proc.stderr
    assert f"transfer: {transfer}" in proc.stderr
    assert (out["checkpoint"], out["step"], out["files"], out["bytes"]) == ("model_step_0007.pt", 7, 1, len(data))
    key = f"{env['SSM_UploadPrefix']}model_step_0007.pt"
    assert keys(s3, bucket) == sorted([key, env["SSM_ManifestKey"]])
    (entry,) = read_manifest(s3, bucket, env)["files"]
    assert (entry["key"], entry["path"], entry["size"], entry["parts"]) == (key, "model_step_0007.pt", len(data), 3)
    assert entry["part_size"] == 5 * MIB  # no whole-file pass: the parts' checksums stand for it
    part_crcs = b"".join(zlib.crc32(data[i : i + 5 * MIB]).to_bytes(4, "big") for i in range(0, len(data), 5 * MIB))
    composite = base64.b64encode(zlib.crc32(part_crcs).to_bytes(4, "big")).decode()
    assert entry["checksum_crc32"] == f"{composite}-3"
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    # moto computes the composite from the bytes it received and stores it without the "-3" suffix.
    assert head["ChecksumCRC32"].split("-")[0] == composite
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")
    assert hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).digest() == hashlib.sha256(data).digest()
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert_no_temp_left(env)


def test_checkpoint_signals_trainer_once_and_uploads_its_final_checkpoint(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    ckdir = tmp_path / "ck"
    write(ckdir / "step-8" / "weights.bin", b"earlier weights", time.time() - 600)
    trainer, pid_file, counter = start_trainer(children, "exit", tmp_path, ckdir)
    env = checkpoint_env(base_env, bucket, ckdir, PidFile=str(pid_file), GraceSeconds="10")

    proc, out = run(CHECKPOINT, env)

    assert proc.returncode == 0, proc.stderr
    assert counter.read_text() == "TERM\n"
    assert trainer.wait(timeout=5) == 0
    # The trainer stays a zombie of this test until reaped: the script still saw it as exited.
    assert (out["trainer"], out["checkpoint"], out["step"]) == ("exited", "step-9", 9)
    assert s3.get_object(Bucket=bucket, Key=f"{env['SSM_UploadPrefix']}step-9/weights.bin")["Body"].read() == b"final weights"


def test_checkpoint_fails_when_trainer_ignores_the_signal(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    ckdir = tmp_path / "ck"
    write(ckdir / "step-1" / "weights.bin", b"weights")
    trainer, pid_file, counter = start_trainer(children, "ignore", tmp_path, ckdir)
    env = checkpoint_env(base_env, bucket, ckdir, PidFile=str(pid_file), GraceSeconds="1")

    proc, out = run(CHECKPOINT, env)

    assert proc.returncode == 65
    assert out["result"] == "failed" and out["error"] == "TrainerDidNotExit"
    assert str(trainer.pid) in out["message"]
    assert trainer.poll() is None
    assert counter.read_text() == "TERM\n"  # signalled exactly once
    assert keys(s3, bucket) == []
    assert_no_temp_left(env)


def test_checkpoint_interruption_with_a_cooperative_trainer_uploads_its_fresh_checkpoint(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    ckdir = tmp_path / "ck"
    write(ckdir / "step-8" / "weights.bin", b"earlier weights", time.time() - 600)
    trainer, pid_file, counter = start_trainer(children, "exit", tmp_path, ckdir)
    env = checkpoint_env(base_env, bucket, ckdir, PidFile=str(pid_file), GraceSeconds="10", Mode="interruption")

    proc, out = run(CHECKPOINT, env)

    assert proc.returncode == 0, proc.stderr
    assert counter.read_text() == "TERM\n"
    assert trainer.wait(timeout=5) == 0
    assert (out["trainer"], out["checkpoint"], out["step"], out["fresh"]) == ("exited", "step-9", 9, True)
    manifest = read_manifest(s3, bucket, env)
    assert (manifest["mode"], manifest["fresh"], manifest["checkpoint"]["name"]) == ("interruption", True, "step-9")


def test_checkpoint_interruption_uploads_the_older_checkpoint_when_the_trainer_ignores_the_signal(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    ckdir = tmp_path / "ck"
    data = write(ckdir / "step-1" / "weights.bin", b"weights", time.time() - 600)
    os.utime(ckdir / "step-1", (time.time() - 600, time.time() - 600))
    trainer, pid_file, counter = start_trainer(children, "ignore", tmp_path, ckdir)
    env = checkpoint_env(base_env, bucket, ckdir, PidFile=str(pid_file), GraceSeconds="1", Mode="interruption")

    proc, out = run(CHECKPOINT, env)

    assert proc.returncode == 0, proc.stderr
    assert (out["result"], out["trainer"], out["checkpoint"], out["fresh"]) == ("uploaded", "still_running", "step-1", False)
    assert trainer.poll() is None, "the trainer is left running: the instance is reclaimed anyway"
    assert counter.read_text() == "TERM\n"  # signalled exactly once
    assert s3.get_object(Bucket=bucket, Key=f"{env['SSM_UploadPrefix']}step-1/weights.bin")["Body"].read() == data
    manifest = read_manifest(s3, bucket, env)
    assert (manifest["mode"], manifest["fresh"]) == ("interruption", False)
    assert_no_temp_left(env)


@pytest.mark.parametrize("pid_state", ["not_running", "pid_file_missing", "pid_file_unreadable"])
def test_checkpoint_trainer_not_signalled(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, pid_state: str) -> None:
    ckdir = tmp_path / "ck"
    write(ckdir / "epoch=2-step=120.ckpt", b"weights")  # PyTorch Lightning's name: "step=" is not "step-"
    pid_file = tmp_path / "train.pid"
    if pid_state == "not_running":
        pid_file.write_text(str(exited_pid()))
    elif pid_state == "pid_file_unreadable":
        pid_file.write_text("garbage")
    env = checkpoint_env(base_env, bucket, ckdir, PidFile=str(pid_file))
    proc, out = run(CHECKPOINT, env)
    assert proc.returncode == 0, proc.stderr
    assert (out["trainer"], out["checkpoint"], out["step"], out["files"]) == (pid_state, "epoch=2-step=120.ckpt", 120, 1)
    assert f"{env['SSM_UploadPrefix']}epoch=2-step=120.ckpt" in keys(s3, bucket)


@pytest.mark.parametrize("kind", ["started-after-pid-file", "other-owner", "pid-1"])
def test_checkpoint_does_not_signal_a_process_that_is_not_the_trainer(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]], kind: str
) -> None:
    """The PID file names a live process that cannot be shown to be the trainer: never signal it, and since
    the trainer's state is unknown, upload nothing (TrainerUnverified)."""
    ckdir = tmp_path / "ck"
    write(ckdir / "step-3.pt", b"weights")
    pid_file, pid, sleeper = untrusted_pid_file(kind, tmp_path, children)
    env = checkpoint_env(base_env, bucket, ckdir, PidFile=str(pid_file), GraceSeconds="2")

    proc, out = run(CHECKPOINT, env)

    assert proc.returncode == 65, proc.stderr
    assert (out["result"], out["error"]) == ("failed", "TrainerUnverified")
    assert WHY_NOT_TRAINER[kind].format(pid=pid) in out["message"]
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    if sleeper is not None:
        assert sleeper.poll() is None, "a process that is not the trainer was signalled"


@pytest.mark.parametrize("layout", ["missing-dir", "empty-dir", "only-incomplete", "no-step-number"])
def test_checkpoint_without_a_checkpoint(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, layout: str) -> None:
    ckdir = tmp_path / "ck"
    if layout == "empty-dir":
        ckdir.mkdir()
    elif layout == "no-step-number":
        t0 = time.time() - 3600
        write(ckdir / "latest", b"global_step100", t0 + 6)  # DeepSpeed's pointer file
        write(ckdir / "runs" / "Jan01_host" / "events.out.tfevents.1700000000.host.1.0", b"x", t0 + 5)
        os.utime(ckdir / "runs", (t0 + 5, t0 + 5))
        write(ckdir / "zero_to_fp32.py", b"# DeepSpeed recovery script", t0 + 4)
        write(ckdir / "final.pt", b"x", t0 + 3)
        write(ckdir / "model.safetensors", b"x", t0 + 2)
        write(ckdir / "config.json", b"{}", t0 + 1)
    elif layout == "only-incomplete":
        write(ckdir / "model.pt.tmp", b"x")
        write(ckdir / "model.pt.part", b"x")
        write(ckdir / "notes~", b"x")
        write(ckdir / ".hidden", b"x")
        write(ckdir / "step-5" / "shard.incomplete", b"x")
        write(ckdir / "step-5" / "shard.bin", b"x")
        (ckdir / "step-6").mkdir()
        (ckdir / "link.pt").symlink_to(tmp_path / "elsewhere.pt")
        write(tmp_path / "elsewhere.pt", b"x")
    proc, out = run(CHECKPOINT, checkpoint_env(base_env, bucket, ckdir))
    assert proc.returncode == 66
    assert out["result"] == "failed" and out["error"] == "NoCheckpoint"
    assert str(ckdir) in out["message"]
    assert keys(s3, bucket) == []
    message = out["message"]
    if layout == "no-step-number":  # the newest five, newest first, so that the user can act
        listed = (
            "latest (not a checkpoint file type (.pt, .pth, .ckpt, .bin, .safetensors, ...)), runs (no step number in its name), "
            "zero_to_fp32.py (not a checkpoint file type (.pt, .pth, .ckpt, .bin, .safetensors, ...)), "
            "final.pt (no step number in its name or contents), model.safetensors (no step number in its name or contents)"
        )
        assert listed in message and "and 1 more" in message and "config.json" not in message
    elif layout == "only-incomplete":
        assert (
            message.count(" (temporary name)")
            + message.count(" (symbolic link)")
            + message.count(" (it contains ")
            + message.count(" (it holds no files)")
            == 5
        )
        assert "and 2 more" in message


@pytest.mark.parametrize("layout", ["deepspeed-latest", "hf-runs", "orbax-tmp", "inner-orbax-tmp", "tmp-checkpoint", "mkstemp"])
def test_checkpoint_ignores_newer_entries_that_are_not_checkpoints(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, layout: str
) -> None:
    """Only a name that carries a step number and does not look temporary is a checkpoint, however new the rest."""
    ckdir = tmp_path / "ck"
    t0 = time.time() - 3600
    if layout == "deepspeed-latest":
        name, step, files = "global_step100", 100, {"mp_rank_00_model_states.pt": b"weights"}
    elif layout == "hf-runs":
        name, step, files = "checkpoint-500", 500, {"model.safetensors": safetensors_bytes(b"weights!")}
    else:
        name, step, files = "step-000100", 100, {"default/d/0123abcd": b"weights"}
    for rel, data in files.items():
        write(ckdir / name / rel, data)
    set_tree_mtime(ckdir / name, t0)
    if layout == "deepspeed-latest":
        write(ckdir / "zero_to_fp32.py", b"# recovery script", t0 + 10)  # "32" is not a step number
        write(ckdir / "latest", b"global_step100", t0 + 20)
    elif layout == "hf-runs":
        write(ckdir / "runs" / "Jan01_host" / "events.out.tfevents.1700000000.host.1.0", b"tensorboard", t0 + 20)
        set_tree_mtime(ckdir / "runs", t0 + 20)
    elif layout == "orbax-tmp":
        write(ckdir / "step-000200.orbax-checkpoint-tmp-1234" / "_CHECKPOINT_METADATA", b"{}", t0 + 20)
        set_tree_mtime(ckdir / "step-000200.orbax-checkpoint-tmp-1234", t0 + 20)
    elif layout == "inner-orbax-tmp":
        write(ckdir / "step-000200" / "_CHECKPOINT_METADATA", b"{}")
        write(ckdir / "step-000200" / "default.orbax-checkpoint-tmp-1700000000" / "d" / "0123abcd", b"half")
        set_tree_mtime(ckdir / "step-000200", t0 + 20)
    elif layout == "tmp-checkpoint":
        write(ckdir / "tmp-checkpoint-300" / "model.safetensors", b"half written")
        set_tree_mtime(ckdir / "tmp-checkpoint-300", t0 + 20)
    elif layout == "mkstemp":
        write(ckdir / "tmpk2j3_x9q", b"half written", t0 + 20)
    env = checkpoint_env(base_env, bucket, ckdir)

    proc, out = run(CHECKPOINT, env)

    assert proc.returncode == 0, proc.stderr
    assert (out["checkpoint"], out["step"], out["files"]) == (name, step, len(files))
    prefix = env["SSM_UploadPrefix"]
    assert keys(s3, bucket) == sorted([env["SSM_ManifestKey"]] + [f"{prefix}{name}/{rel}" for rel in files])
    assert read_manifest(s3, bucket, env)["step"] == step


@pytest.mark.parametrize("how", ["dir-is-symlink", "parent-is-symlink"])
def test_checkpoint_refuses_a_symlinked_checkpoint_dir(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, how: str) -> None:
    """A checkpoint-dir that leads elsewhere through a symbolic link would upload whatever is there (as root)."""
    secrets = tmp_path / "root" / "secrets"
    write(secrets / "key-1" / "id_ed25519", b"PRIVATE KEY")
    write(secrets / "token-2.txt", b"TOKEN")
    if how == "dir-is-symlink":
        ckdir = tmp_path / "ck"
        ckdir.symlink_to(secrets)
    else:
        (tmp_path / "data").symlink_to(tmp_path / "root")
        ckdir = tmp_path / "data" / "secrets"

    proc, out = run(CHECKPOINT, checkpoint_env(base_env, bucket, ckdir))

    assert proc.returncode == 66, proc.stderr
    assert out["result"] == "failed" and out["error"] == "NoCheckpoint"
    assert out["message"].startswith(f"checkpoint-dir {ckdir} is or passes through a symbolic link (to {secrets})")
    assert keys(s3, bucket) == []


AFTER_CHOOSE = """import os, subprocess, sys
program = {"__name__": "autostop_program"}
exec(compile(sys.argv[3], "<document>", "exec"), program)  # python3 -I -c CODE SUBCOMMAND: CODE, without running it
choose = program["choose"]
def choose_then_act(*args):
    chosen = choose(*args)
    subprocess.run(["bash", "-c", os.environ.pop("AUTOSTOP_TEST_AFTER_CHOOSE")], check=True)
    return chosen
program["choose"] = choose_then_act
sys.exit(program["run"](sys.argv[4], sys.argv[5:], program))
"""


def after_choose_shim(fake_bin: Path, action: str) -> dict[str, str]:
    """A python3 on PATH that runs the checkpoint document's program with ACTION (bash) run right after its
    selection (``choose``) has written the plan, once; the environment to add."""
    fake_bin.mkdir(exist_ok=True)
    (fake_bin / "after_choose.py").write_text(AFTER_CHOOSE)
    shim = fake_bin / "python3"
    shim.write_text(f'#!/usr/bin/env bash\nexec "{VENV_BIN / "python3"}" "{fake_bin / "after_choose.py"}" "$@"\n')
    shim.chmod(0o755)
    return {"AUTOSTOP_TEST_AFTER_CHOOSE": action}


def write_shim(fake_bin: Path, name: str, real: str, condition: str, action: str) -> None:
    """An executable NAME on PATH that runs REAL with its arguments, then ACTION (bash) when CONDITION holds."""
    fake_bin.mkdir(exist_ok=True)
    shim = fake_bin / name
    shim.write_text(f'#!/usr/bin/env bash\n"{real}" "$@"\nrc=$?\nif {condition}; then {action}; fi\nexit $rc\n')
    shim.chmod(0o755)


@pytest.mark.parametrize("transfer", ["sdk", "cli"])
@pytest.mark.parametrize(
    "swap", ["file-to-symlink", "dir-to-symlink", "file-replaced", "multipart-file-to-symlink", "replaced-during-upload"]
)
def test_checkpoint_refuses_files_swapped_after_selection(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, swap: str, transfer: str
) -> None:
    """A file (or directory) of the chosen checkpoint replaced after the choice is not uploaded through the swap.

    Swapped right after the selection (descriptors are opened and checked when a file's upload starts, and every
    file is checked again after its last call), or, through the AWS CLI, right after the put-object."""
    ckdir = tmp_path / "ck"
    step = ckdir / "step-100"
    write(step / "model.bin", b"weights")  # uploaded first: "model.bin" < "sub/extra.bin"
    write(step / "sub" / "extra.bin", b"extra")
    secrets = tmp_path / "secrets"
    write(secrets / "model.bin", b"SECRETS")  # same size as model.bin
    write(secrets / "extra.bin", b"SECRET")
    fake_bin = tmp_path / "bin"
    extra: dict[str, str] = {}
    if swap == "file-to-symlink":
        extra = after_choose_shim(fake_bin, f'mv "{step}/model.bin" "{tmp_path}/aside" && ln -s "{secrets}/model.bin" "{step}/model.bin"')
    elif swap == "multipart-file-to-symlink":  # before the first part is read, before its descriptor is opened
        write(step / "model.bin", os.urandom(6 * MIB))
        write(secrets / "model.bin", b"SECRET" * MIB)
        extra = after_choose_shim(fake_bin, f'mv "{step}/model.bin" "{tmp_path}/aside" && ln -s "{secrets}/model.bin" "{step}/model.bin"')
    elif swap == "dir-to-symlink":
        extra = after_choose_shim(fake_bin, f'mv "{step}/sub" "{tmp_path}/aside" && ln -s "{secrets}" "{step}/sub"')
    elif swap == "file-replaced":
        extra = after_choose_shim(fake_bin, f'cp "{secrets}/model.bin" "{step}/w.new" && mv -f "{step}/w.new" "{step}/model.bin"')
    else:  # after its upload (cli) or its selection (sdk), model.bin is a different file with the same size and mtime
        put_weights = '[[ " $* " == *" put-object "* && " $* " == *"/model.bin "* ]]'
        same_size_and_mtime = f'cp "{secrets}/model.bin" "{step}/w.new" && touch -r "{step}/model.bin" "{step}/w.new"'
        action = f'{same_size_and_mtime} && mv -f "{step}/w.new" "{step}/model.bin"'
        if transfer == "cli":
            write_shim(fake_bin, "aws", str(VENV_BIN / "aws"), put_weights, action)
        else:
            extra = after_choose_shim(fake_bin, action)
    env = checkpoint_env(base_env, bucket, ckdir, PartSizeBytes=str(5 * MIB)) | {"AUTOSTOP_TRANSFER": transfer} | extra
    env["PATH"] = os.pathsep.join([str(fake_bin), env["PATH"]])

    proc, out = run(CHECKPOINT, env)

    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    for key in keys(s3, bucket):
        assert b"SECRET" not in s3.get_object(Bucket=bucket, Key=key)["Body"].read(), f"{key} holds the secret"
    assert proc.returncode == 67, proc.stderr
    assert out["result"] == "failed" and out["error"] == "UploadFailed"
    assert "changed during the checkpoint" in out["message"]
    assert env["SSM_ManifestKey"] not in keys(s3, bucket)
    assert_no_temp_left(env)


@pytest.mark.parametrize(
    "override",
    [
        {"CheckpointDir": "/tmp/x;rm -rf /"},
        {"CheckpointDir": "relative/checkpoints"},
        {"CheckpointDir": "/data/../etc"},
        {"CheckpointDir": "/data//ckpt"},
        {"PidFile": "/run/train $(id).pid"},
        {"RunId": "-run"},
        {"InstanceId": "i-XYZ"},
        {"ExecutionName": "a" * 81},
        {"Bucket": "Not_A_Bucket"},
        {"UploadPrefix": "runs/no-trailing-slash"},
        {"UploadPrefix": "runs/../other/"},
        {"ManifestKey": "runs/manifest.txt"},
        {"Signal": "KILL"},
        {"GraceSeconds": "-1"},
        {"PartSizeBytes": "1048576"},
        {"PartSizeBytes": "99999999999"},
        {"DecisionTime": "2026-01-02 03:04:05"},
        {"Mode": "spot"},
        {"Mode": ""},
    ],
)
def test_checkpoint_rejects_invalid_parameters(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]], override: dict[str, str]
) -> None:
    ckdir = tmp_path / "ck"
    write(ckdir / "step-1.pt", b"weights")
    sleeper = subprocess.Popen(["sleep", "30"])
    children.append(sleeper)
    (tmp_path / "train.pid").write_text(str(sleeper.pid))
    env = checkpoint_env(base_env, bucket, ckdir, PidFile=str(tmp_path / "train.pid"))
    env.update({f"SSM_{k}": v for k, v in override.items()})

    proc, out = run(CHECKPOINT, env)

    assert proc.returncode == 64
    assert out["result"] == "failed" and out["error"] == "InvalidParameter"
    assert next(iter(override)) in out["message"]
    assert sleeper.poll() is None, "the trainer must not be signalled when the parameters are invalid"
    assert keys(s3, bucket) == []


def test_checkpoint_without_env_var_support(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    env = checkpoint_env(base_env, bucket, tmp_path)
    del env["SSM_RunId"]
    proc, out = run(CHECKPOINT, env)
    assert proc.returncode == 64
    assert out["result"] == "failed" and out["error"] == "InvalidParameter"
    assert "SSM_RunId" in out["message"] and "SSM Agent 3.3.2746.0 or later is required" in out["message"]


def test_checkpoint_bucket_does_not_exist(base_env: dict[str, str], tmp_path: Path) -> None:
    ckdir = tmp_path / "ck"
    write(ckdir / "step-1.pt", b"weights")
    env = checkpoint_env(base_env, "no-such-bucket-" + uuid.uuid4().hex[:8], ckdir)
    proc, out = run(CHECKPOINT, env)
    assert proc.returncode == 67
    assert out["result"] == "failed" and out["error"] == "UploadFailed"
    assert "NoSuchBucket" in out["message"]
    assert_no_temp_left(env)


@pytest.mark.parametrize("transfer", ["sdk", "cli"])
def test_checkpoint_aborts_a_failed_multipart_upload(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, transfer: str) -> None:
    """A part that fails to upload aborts the multipart upload, and no manifest is written."""
    ckdir = tmp_path / "ck"
    write(ckdir / "step-3.bin", os.urandom(6 * MIB))
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    real_aws = VENV_BIN / "aws"
    (fake_bin / "aws").write_text(
        "#!/usr/bin/env bash\n"
        'for a in "$@"; do if [[ $a == upload-part ]]; then '
        'echo "An error occurred (InternalError) when calling the UploadPart operation: boom" >&2; exit 254; fi; done\n'
        f'exec "{real_aws}" "$@"\n'
    )
    (fake_bin / "aws").chmod(0o755)
    sdk_python_shim(fake_bin)  # the one-process path: botocore's UploadPart fails the same way
    env = checkpoint_env(base_env, bucket, ckdir, PartSizeBytes=str(5 * MIB)) | {"AUTOSTOP_TRANSFER": transfer}
    env["PATH"] = os.pathsep.join([str(fake_bin), env["PATH"]])
    env["AUTOSTOP_SDK_FAULT"] = "UploadPart=InternalError"

    proc, out = run(CHECKPOINT, env)

    assert proc.returncode == 67
    assert out["error"] == "UploadFailed"
    assert "InternalError" in out["message"] and re.search(r"part [12] of 2 of ", out["message"])
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert keys(s3, bucket) == []
    assert_no_temp_left(env)


@pytest.mark.parametrize("signals", [1, 3])
def test_checkpoint_stopped_by_sigterm_aborts_its_multipart_upload(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, signals: int
) -> None:
    """SIGTERM to the uploading python3 (an SSM timeout, an operator) while a part is on its way: the multipart upload
    it started is aborted, no manifest is written, the command fails; further SIGTERMs while it aborts (here each
    part's hook sends SIGNALS of them) do not cut the abort short."""
    ckdir = tmp_path / "ck"
    write(ckdir / "step-3.bin", os.urandom(12 * MIB))
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    sdk_python_shim(fake_bin)
    env = checkpoint_env(base_env, bucket, ckdir, PartSizeBytes=str(5 * MIB))
    env["PATH"] = os.pathsep.join([str(fake_bin), env["PATH"]])
    # $PPID: the python3 uploading; the part waits until the signal has surely been handled.
    kills = "; sleep 0.2; ".join(["kill -TERM $PPID"] * signals)
    env["AUTOSTOP_SDK_HOOK"] = f"/step-3.bin\t{kills}; sleep 3\tUploadPart"

    proc, out = run(CHECKPOINT, env)

    assert proc.returncode != 0
    assert out["result"] == "failed", out
    assert "stopped by signal 15 during the upload" in proc.stderr
    assert "aborting multipart upload of" in proc.stderr  # it had been started: the hook ran before a part
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert env["SSM_ManifestKey"] not in keys(s3, bucket)


def test_checkpoint_without_a_temp_dir(base_env: dict[str, str], tmp_path: Path, bucket: str) -> None:
    """No usable TMPDIR: one ScriptFailed line, before the trainer is touched."""
    ckdir = tmp_path / "ck"
    write(ckdir / "step-1.pt", b"weights")
    env = checkpoint_env(base_env, bucket, ckdir)
    env["TMPDIR"] = str(tmp_path / "does-not-exist")
    proc, out = run(CHECKPOINT, env)
    assert proc.returncode == 70
    assert out["result"] == "failed" and out["error"] == "ScriptFailed"


def test_scripts_are_plain_bash(tmp_path: Path) -> None:
    sources = sorted((ROOT / "infra" / "documents").rglob("*.sh"))
    assert all("{{" not in f.read_text() for f in sources), "SSM would treat {{ ... }} as a document parameter placeholder"
    for script in (PROBE, CHECKPOINT):
        text = script.read_text()
        assert not re.search(r"^# @include ", text, re.M), "every include must be expanded"
        assert "{{" not in text, "SSM would treat {{ ... }} as a document parameter placeholder"
        assert re.search(r"^set -euo pipefail$", text, re.M)
        subprocess.run(["bash", "-n", str(script)], check=True)
