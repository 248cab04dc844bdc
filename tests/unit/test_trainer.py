"""Tests for local/trainer.py, run as a real subprocess like the local runtime does."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

REPO = Path(__file__).resolve().parents[2]
TRAINER = REPO / "local" / "trainer.py"

pytestmark = pytest.mark.timeout(10)


def trainer_cmd(tmp_path, *extra):
    return [
        sys.executable,
        str(TRAINER),
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--pid-file",
        str(tmp_path / "run" / "trainer.pid"),
        "--log-file",
        str(tmp_path / "logs" / "trainer.log"),
        *[str(arg) for arg in extra],
    ]


def run_trainer(tmp_path, *extra, env=None):
    return subprocess.run(trainer_cmd(tmp_path, *extra), env=env, capture_output=True, text=True, timeout=8)


def log_text(tmp_path):
    path = tmp_path / "logs" / "trainer.log"
    return path.read_text() if path.exists() else ""


def wait_for_log(tmp_path, pattern, timeout=3.0):
    """Poll the log until `pattern` (a regex) appears; return the match."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, log_text(tmp_path))
        if match:
            return match
        time.sleep(0.01)
    raise AssertionError(f"{pattern!r} not in log:\n{log_text(tmp_path)}")


def entries(tmp_path):
    return sorted(os.listdir(tmp_path / "ckpt"))


def test_completes_with_final_checkpoint_completion_line_and_pid_file(tmp_path):
    result = run_trainer(tmp_path, "--steps", 7, "--step-seconds", 0.001, "--checkpoint-every", 5, "--keep", 5)
    assert result.returncode == 0, result.stderr

    # Periodic checkpoint at 5, final checkpoint at 7.
    assert entries(tmp_path) == ["step-000005", "step-000007"]
    final = tmp_path / "ckpt" / "step-000007"
    assert (final / "model.bin").stat().st_size == 4096
    meta = json.loads((final / "meta.json").read_text())
    assert meta["step"] == 7 and isinstance(meta["time"], float)

    log = log_text(tmp_path)
    assert "Training complete (7 steps)" in log
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ step 5/7 loss=\d", log, re.M)

    # The PID file is written first and kept after exit.
    pid = int((tmp_path / "run" / "trainer.pid").read_text())
    assert f"pid={pid}" in log


def test_logs_to_stdout_without_log_file(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(TRAINER),
            "--checkpoint-dir",
            str(tmp_path / "c"),
            "--steps",
            "2",
            "--step-seconds",
            "0",
            "--completion-line",
            "All done",
        ],
        capture_output=True,
        text=True,
        timeout=8,
    )
    assert result.returncode == 0, result.stderr
    assert "step 2/2" in result.stdout
    assert "All done (2 steps)" in result.stdout


def test_runs_as_module_from_repo_root(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "local.trainer", "--checkpoint-dir", str(tmp_path / "c"), "--steps", "1", "--step-seconds", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=8,
    )
    assert result.returncode == 0, result.stderr
    assert "Training complete (1 steps)" in result.stdout


def test_rotation_keeps_newest_n(tmp_path):
    result = run_trainer(tmp_path, "--steps", 12, "--step-seconds", 0, "--checkpoint-every", 2, "--keep", 2)
    assert result.returncode == 0, result.stderr
    assert entries(tmp_path) == ["step-000010", "step-000012"]
    assert "deleted old checkpoint step-000002" in log_text(tmp_path)


def test_file_layout(tmp_path):
    size = 2 * 1024 * 1024 + 5  # more than one 1 MiB chunk, not a multiple of it
    result = run_trainer(
        tmp_path, "--steps", 4, "--step-seconds", 0, "--checkpoint-every", 2, "--layout", "file", "--checkpoint-bytes", size
    )
    assert result.returncode == 0, result.stderr
    assert entries(tmp_path) == ["step-000002.ckpt", "step-000004.ckpt"]
    assert (tmp_path / "ckpt" / "step-000004.ckpt").stat().st_size == size


def test_payload_is_deterministic_per_step(tmp_path):
    for run in ("a", "b"):
        result = run_trainer(tmp_path / run, "--steps", 4, "--step-seconds", 0, "--checkpoint-every", 2)
        assert result.returncode == 0, result.stderr
    a = tmp_path / "a" / "ckpt"
    b = tmp_path / "b" / "ckpt"
    assert (a / "step-000004" / "model.bin").read_bytes() == (b / "step-000004" / "model.bin").read_bytes()
    assert (a / "step-000002" / "model.bin").read_bytes() != (a / "step-000004" / "model.bin").read_bytes()


@pytest.mark.parametrize("layout", ["dir", "file"])
def test_no_temp_names_remain(tmp_path, layout):
    result = run_trainer(tmp_path, "--steps", 9, "--step-seconds", 0, "--checkpoint-every", 1, "--keep", 3, "--layout", layout)
    assert result.returncode == 0, result.stderr
    names = entries(tmp_path)
    assert len(names) == 3
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")]
    assert os.listdir(tmp_path / "run") == ["trainer.pid"]


def test_sigterm_save_and_exit(tmp_path):
    # Periodic checkpoints effectively off, so the saved one must come from the signal.
    proc = subprocess.Popen(trainer_cmd(tmp_path, "--steps", 100000, "--step-seconds", 0.01, "--checkpoint-every", 100000))
    try:
        wait_for_log(tmp_path, r"step 5/")
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=3) == 0
        assert time.monotonic() - sent < 1.0
    finally:
        proc.kill()

    step = int(wait_for_log(tmp_path, r"received SIGTERM at step (\d+); saved checkpoint; exiting").group(1))
    assert step >= 5
    assert entries(tmp_path) == [f"step-{step:06d}"]
    meta = json.loads((tmp_path / "ckpt" / f"step-{step:06d}" / "meta.json").read_text())
    assert meta["step"] == step
    assert "Training complete" not in log_text(tmp_path)


def test_sigterm_during_long_step_is_noticed_promptly(tmp_path):
    proc = subprocess.Popen(trainer_cmd(tmp_path, "--steps", 3, "--step-seconds", 30))
    try:
        wait_for_log(tmp_path, r"starting: pid=")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=2) == 0
    finally:
        proc.kill()
    assert "received SIGTERM at step 0; saved checkpoint" in log_text(tmp_path)
    assert entries(tmp_path) == ["step-000000"]


def test_exit_without_save(tmp_path):
    proc = subprocess.Popen(
        trainer_cmd(tmp_path, "--steps", 100000, "--step-seconds", 0.01, "--checkpoint-every", 100000, "--on-signal", "exit-without-save")
    )
    try:
        wait_for_log(tmp_path, r"step 3/")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=3) == 143
    finally:
        proc.kill()
    assert entries(tmp_path) == []
    assert "exiting without saving" in log_text(tmp_path)


def test_ignore_keeps_running(tmp_path):
    proc = subprocess.Popen(trainer_cmd(tmp_path, "--steps", 100000, "--step-seconds", 0.01, "--on-signal", "ignore"))
    try:
        wait_for_log(tmp_path, r"step 3/")
        proc.send_signal(signal.SIGTERM)
        step = int(wait_for_log(tmp_path, r"ignoring SIGTERM at step (\d+)").group(1))
        wait_for_log(tmp_path, rf"step {step + 5}/")  # still training
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=3)
    assert proc.returncode == -signal.SIGKILL


def test_fail_at_step(tmp_path):
    result = run_trainer(tmp_path, "--steps", 10, "--step-seconds", 0, "--checkpoint-every", 2, "--fail-at-step", 6)
    assert result.returncode == 1
    log = log_text(tmp_path)
    assert "simulated crash at step 6" in log
    assert "Training complete" not in log
    assert "step 6/" not in log
    assert entries(tmp_path) == ["step-000002", "step-000004"]


def test_hold_seconds_keeps_process_alive_after_completion(tmp_path):
    proc = subprocess.Popen(trainer_cmd(tmp_path, "--steps", 2, "--step-seconds", 0, "--hold-seconds", 0.5))
    try:
        wait_for_log(tmp_path, r"Training complete \(2 steps\)")
        time.sleep(0.2)
        assert proc.poll() is None
        assert proc.wait(timeout=3) == 0
    finally:
        proc.kill()


@pytest.fixture
def moto_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def trainer_env(endpoint):
    """The trainer's environment: boto3 pointed at the moto server with fake credentials."""
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    env.pop("AWS_PROFILE", None)
    return env


def test_marker_upload(tmp_path, moto_endpoint):
    env = trainer_env(moto_endpoint)
    s3 = boto3.client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    s3.create_bucket(Bucket="markers")

    result = run_trainer(tmp_path, "--steps", 3, "--step-seconds", 0, "--marker-uri", "s3://markers/runs/r1/DONE.json", env=env)
    assert result.returncode == 0, result.stderr + log_text(tmp_path)

    body = json.loads(s3.get_object(Bucket="markers", Key="runs/r1/DONE.json")["Body"].read())
    assert body == {"run": "ckpt", "step": 3}
    log = log_text(tmp_path)
    assert log.index("Training complete") < log.index("put completion marker")


def test_marker_upload_failure_exits_nonzero(tmp_path, moto_endpoint):
    env = trainer_env(moto_endpoint)
    result = run_trainer(tmp_path, "--steps", 1, "--step-seconds", 0, "--marker-uri", "s3://no-such-bucket/DONE", env=env)
    assert result.returncode == 1
    assert "failed to put completion marker" in log_text(tmp_path)
