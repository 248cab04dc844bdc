"""The trainer helpers' standard-library core (``trainer/src/autostop_trainer``), for real: signals delivered to a
real process, files on disk, the completion marker against a moto S3 server. No torch here (the framework
parts are tested in tests/frameworks/test_trainer_helpers.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

ROOT = Path(__file__).resolve().parents[2]
TRAINER_SRC = ROOT / "trainer" / "src"
sys.path.insert(0, str(TRAINER_SRC))  # the default suite does not pip-install ./trainer

import autostop_trainer as at  # noqa: E402
from autostop_trainer import accelerate as at_accelerate  # noqa: E402
from autostop_trainer import distributed as at_distributed  # noqa: E402
from autostop_trainer import torch as at_torch  # noqa: E402  (torch itself is imported only when saving)

VENV_BIN = Path(sys.executable).parent
REGION = "us-east-1"


def wait_for(predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def leftovers(directory: Path) -> list[str]:
    """Temporary (dot-prefixed) entries left in a directory."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# --- signals ---------------------------------------------------------------------------------------------


def test_parse_signal_accepts_autostop_signals_only() -> None:
    assert at.parse_signal("SIGTERM") is signal.SIGTERM
    assert at.parse_signal("usr1") is signal.SIGUSR1
    assert at.parse_signal(signal.SIGHUP) is signal.SIGHUP
    assert at.parse_signal(int(signal.SIGINT)) is signal.SIGINT
    for bad in ("SIGKILL", "QUIT", signal.SIGQUIT, "nonsense"):
        with pytest.raises(ValueError):
            at.parse_signal(bad)


def test_signal_flag_records_first_signal_and_restores_handlers() -> None:
    def previous(signum: int, frame: Any) -> None:  # pragma: no cover - must never run
        raise AssertionError("the previous handler was called")

    old_usr1 = signal.signal(signal.SIGUSR1, previous)
    old_usr2 = signal.getsignal(signal.SIGUSR2)
    try:
        with at.SignalFlag(["USR1", "SIGUSR2"]) as flag:
            assert flag.installed() and not flag.received and flag.signum is None
            os.kill(os.getpid(), signal.SIGUSR2)
            wait_for(lambda: flag.received, what="SIGUSR2 to be recorded")
            os.kill(os.getpid(), signal.SIGUSR1)
            wait_for(lambda: flag.count == 2, what="SIGUSR1 to be recorded")
            assert flag.signum is signal.SIGUSR2 and flag.name == "SIGUSR2"  # the first one is kept
            flag.clear()
            assert not flag.received
        assert signal.getsignal(signal.SIGUSR1) is previous
        assert signal.getsignal(signal.SIGUSR2) == old_usr2
        flag.close()  # twice is fine
    finally:
        signal.signal(signal.SIGUSR1, old_usr1)


def test_signal_flag_reinstall_keeps_the_original_previous_handler() -> None:
    old = signal.getsignal(signal.SIGUSR1)
    flag = at.SignalFlag(["SIGUSR1"])
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # a framework replaces ours
    assert not flag.installed()
    flag.install()  # take precedence again
    assert flag.installed()
    flag.close()
    assert signal.getsignal(signal.SIGUSR1) == old


def test_signal_flag_refuses_other_threads_and_unknown_signals() -> None:
    import threading

    errors: list[BaseException] = []

    def install() -> None:
        try:
            at.SignalFlag()
        except ValueError as error:
            errors.append(error)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join()
    assert len(errors) == 1
    with pytest.raises(ValueError):
        at.SignalFlag(["SIGKILL"])
    with pytest.raises(ValueError):
        at.SignalFlag([])


TRAINER_SCRIPT = """
import os, sys, time
sys.path.insert(0, {src!r})
from autostop_trainer import SignalFlag, atomic_save, checkpoint_name, write_pid_file

ckpt_dir, pid_file = sys.argv[1], sys.argv[2]
write_pid_file(pid_file)
with SignalFlag() as stop:
    for step in range(1, 100000):
        time.sleep(0.01)  # "train" one step
        if step == 5:
            print("ready", flush=True)
        if stop.received:
            def write(path, step=step):
                with open(path, "wb") as f:
                    f.write(b"state of step %d" % step)
            atomic_save(os.path.join(ckpt_dir, checkpoint_name(step, suffix=".pt")), write)
            print(f"received {{stop.name}} at step {{step}}; saved checkpoint; exiting", flush=True)
            sys.exit(0)
sys.exit(3)
"""


def test_trainer_saves_and_exits_0_on_a_real_sigterm(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAINER_SCRIPT.format(src=str(TRAINER_SRC)))
    ckpt_dir, pid_file = tmp_path / "ckpt", tmp_path / "run" / "train.pid"
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt_dir), str(pid_file)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        pid = at.read_pid_file(pid_file)
        assert pid == proc.pid
        os.kill(pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "received SIGTERM at step" in out
    step = int(out.split("at step ")[1].split(";")[0])
    saved = ckpt_dir / at.checkpoint_name(step, suffix=".pt")
    assert saved.read_bytes() == b"state of step %d" % step
    assert leftovers(ckpt_dir) == []
    assert pid_file.read_text() == f"{proc.pid}\n"  # kept after exit


# --- PID file ----------------------------------------------------------------------------------------------


def test_pid_file_is_written_atomically_with_mode_0644(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "train.pid"
    old_umask = os.umask(0o077)
    try:
        assert at.write_pid_file(path) == str(path)
    finally:
        os.umask(old_umask)
    assert path.read_text() == f"{os.getpid()}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.stat().st_uid == os.getuid()
    at.write_pid_file(path, pid=12345)  # replaces the old content
    assert at.read_pid_file(path) == 12345
    assert leftovers(path.parent) == []


def test_pid_file_failure_leaves_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "train.pid"
    path.write_text("777\n")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "simulated I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        at.write_pid_file(path)
    assert path.read_text() == "777\n"
    assert leftovers(tmp_path) == []


def test_pid_file_refuses_symlinks_directories_and_bad_pids(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("precious\n")
    link = tmp_path / "train.pid"
    link.symlink_to(target)
    with pytest.raises(ValueError, match="symbolic link"):
        at.write_pid_file(link)
    assert target.read_text() == "precious\n" and link.is_symlink()
    dangling = tmp_path / "dangling.pid"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="symbolic link"):
        at.write_pid_file(dangling)
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(ValueError, match="directory"):
        at.write_pid_file(tmp_path)
    for bad in (0, -1, True, "12"):
        with pytest.raises(ValueError):
            at.write_pid_file(tmp_path / "x.pid", pid=bad)  # type: ignore[arg-type]
    (tmp_path / "empty.pid").write_text("\n")
    with pytest.raises(ValueError):
        at.read_pid_file(tmp_path / "empty.pid")


# --- atomic checkpoints ----------------------------------------------------------------------------------


def test_atomic_save_writes_through_a_hidden_temp_name(tmp_path: Path) -> None:
    seen: list[str] = []

    def write(path: str) -> None:
        seen.append(path)
        assert not (tmp_path / "ckpt" / "step-00000007.pt").exists()  # nothing final yet
        Path(path).write_bytes(b"x" * 100)

    final = tmp_path / "ckpt" / at.checkpoint_name(7, suffix=".pt")
    assert at.atomic_save(final, write) == str(final)
    assert final.read_bytes() == b"x" * 100
    assert Path(seen[0]).parent == final.parent and Path(seen[0]).name.startswith(".step-00000007.pt.tmp-")
    assert leftovers(final.parent) == []


def test_atomic_save_refuses_to_overwrite_and_cleans_up_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "step-00000001.pt"
    final.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        at.atomic_save(final, lambda p: pytest.fail("write_fn must not run"))
    assert final.read_bytes() == b"old"

    def fails(path: str) -> None:
        Path(path).write_bytes(b"half")
        raise RuntimeError("disk full")

    other = tmp_path / "step-00000002.pt"
    with pytest.raises(RuntimeError, match="disk full"):
        at.atomic_save(other, fails)
    assert not other.exists() and leftovers(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        at.atomic_save(other, lambda p: None)
    assert not other.exists()


def test_publish_refuses_a_name_that_appeared_meanwhile(tmp_path: Path) -> None:
    temp, final = tmp_path / ".x.tmp-1", tmp_path / "step-1.pt"
    temp.write_bytes(b"new")
    final.write_bytes(b"someone else")
    with pytest.raises(FileExistsError):
        at.publish(str(temp), str(final))
    assert final.read_bytes() == b"someone else" and temp.read_bytes() == b"new"


def test_atomic_directory_publishes_only_complete_directories(tmp_path: Path) -> None:
    final = tmp_path / "ckpt" / at.checkpoint_name(100)
    with at.atomic_directory(final) as temp:
        assert Path(temp).name.startswith(".step-00000100.tmp-") and not final.exists()
        (Path(temp) / "model.bin").write_bytes(b"m")
        (Path(temp) / "sub").mkdir()
        (Path(temp) / "sub" / "meta.json").write_text("{}")
    assert sorted(p.relative_to(final).as_posix() for p in final.rglob("*")) == ["model.bin", "sub", "sub/meta.json"]
    assert leftovers(final.parent) == []
    with pytest.raises(FileExistsError), at.atomic_directory(final):
        pytest.fail("must refuse before the body runs")


def test_atomic_directory_leaves_no_final_dir_when_the_body_raises(tmp_path: Path) -> None:
    final = tmp_path / "step-00000200"
    with pytest.raises(KeyboardInterrupt), at.atomic_directory(final, tag="rank-agreed") as temp:
        assert Path(temp).name == ".step-00000200.tmp-rank-agreed"
        (Path(temp) / "model.bin").write_bytes(b"half")
        raise KeyboardInterrupt
    assert not final.exists() and list(tmp_path.iterdir()) == []


# --- names, as autostop's checkpoint selection reads them ------------------------------------------------


def _selection() -> Any:
    path = ROOT / "infra" / "documents" / "lib" / "selection.py"
    if not path.exists():
        pytest.skip(f"{path} not found")
    spec = importlib.util.spec_from_file_location("autostop_selection_under_test", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_checkpoint_names_carry_the_step() -> None:
    assert at.checkpoint_name(100, suffix=".pt") == "step-00000100.pt"
    assert at.checkpoint_name(5, prefix="iter_", width=0) == "iter_5"
    assert at.checkpoint_name(123456789) == "step-123456789"
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError):
            at.checkpoint_name(bad)  # type: ignore[arg-type]
    for prefix, suffix in ((".step-", ""), ("a/", ""), ("step-", "/x")):
        with pytest.raises(ValueError):
            at.checkpoint_name(1, prefix=prefix, suffix=suffix)


def test_autostop_selection_orders_our_names_and_ignores_our_temp_names() -> None:
    selection = _selection()
    for step in (0, 7, 100, 123456789):
        for name in (at.checkpoint_name(step), at.checkpoint_name(step, suffix=".pt"), f"epoch=3-step={step}.ckpt"):
            assert selection.step_of(name)[0] == step, name
            assert not selection.is_temp(name, top=True), name
    for temp in (".step-00000001.pt.tmp-123", ".step-00000100.tmp-autostop", ".epoch=0-step=5.ckpt.tmp-autostop"):
        assert selection.is_temp(temp, top=True), temp
    assert selection.is_temp(".train.pid.abc123.tmp", top=True)


def test_resume_checkpoint_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(at.RESUME_ENV, raising=False)
    assert at.resume_checkpoint() is None
    monkeypatch.setenv(at.RESUME_ENV, "")
    assert at.resume_checkpoint() is None
    monkeypatch.setenv(at.RESUME_ENV, "/data/ckpt/step-00000100.pt")
    assert at.resume_checkpoint() == "/data/ckpt/step-00000100.pt"


# --- completion ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Any, str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
    name = f"runs-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv(at.RUN_ID_ENV, "run-7")
    monkeypatch.setenv("PATH", os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "/usr/bin:/bin")]))
    return s3, name


@pytest.mark.parametrize("client", ["boto3", "cli", "auto"])
def test_completion_marker_is_put_in_s3(bucket: tuple[Any, str], client: str) -> None:
    s3, name = bucket
    uri = f"s3://{name}/runs/run-7/_SUCCESS"
    assert at.put_completion_marker(uri, {"step": 20}, client=client) == uri
    obj = s3.get_object(Bucket=name, Key="runs/run-7/_SUCCESS")
    body = json.loads(obj["Body"].read())
    assert body["run"] == "run-7" and body["step"] == 20 and body["time"].endswith("Z")
    assert obj["ContentType"] == "application/json"


def test_completion_marker_failures_are_reported(bucket: tuple[Any, str]) -> None:
    for uri in ("s3://bucket", "s3:///key", "https://x/y", "s3://b/dir/"):
        with pytest.raises(ValueError):
            at.put_completion_marker(uri)
    with pytest.raises(ValueError):
        at.put_completion_marker("s3://b/k", client="curl")
    with pytest.raises(RuntimeError, match="NoSuchBucket"):
        at.put_completion_marker("s3://no-such-bucket-here/runs/run-7/_SUCCESS", client="cli")


def test_log_completion_appends_a_timestamped_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "train.log"
    at.log_completion("Training complete (20 steps)", log)
    at.log_completion("again", log)
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and lines[0].endswith("Z Training complete (20 steps)")
    assert at.log_completion("to stdout").endswith(" to stdout")
    assert capsys.readouterr().out.endswith(" to stdout\n")


# --- framework modules, the parts that need no framework ---------------------------------------------------


def test_framework_modules_import_their_framework_lazily() -> None:
    code = "import sys, autostop_trainer.torch, autostop_trainer.distributed, autostop_trainer.accelerate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(TRAINER_SRC)}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_torch_listing_and_rotation_keep_the_newest(tmp_path: Path) -> None:
    for step in (1, 2, 10, 30):
        (tmp_path / at.checkpoint_name(step, suffix=".pt")).write_bytes(b"x")
    (tmp_path / ".step-00000040.pt.tmp-9").write_bytes(b"x")  # in progress: never listed
    (tmp_path / "notes.txt").write_text("")
    assert [s for s, _ in at_torch.list_checkpoints(tmp_path)] == [1, 2, 10, 30]
    assert at_torch.latest(tmp_path) == str(tmp_path / "step-00000030.pt")
    protect = str(tmp_path / "step-00000002.pt")
    deleted = at_torch.rotate(tmp_path, keep=1, protect=protect)
    assert deleted == [str(tmp_path / "step-00000001.pt"), str(tmp_path / "step-00000010.pt")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".step-00000040.pt.tmp-9", "notes.txt", "step-00000002.pt", "step-00000030.pt"]
    with pytest.raises(ValueError):
        at_torch.rotate(tmp_path, keep=0)
    assert at_torch.latest(tmp_path / "missing") is None


def test_torch_resume_path_prefers_autostop_restore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(at.RESUME_ENV, raising=False)
    assert at_torch.resume_path(tmp_path) is None
    (tmp_path / "step-00000005.pt").write_bytes(b"x")
    assert at_torch.resume_path(tmp_path) == str(tmp_path / "step-00000005.pt")
    monkeypatch.setenv(at.RESUME_ENV, "/restored/step-00000004.pt")
    assert at_torch.resume_path(tmp_path) == "/restored/step-00000004.pt"


def test_distributed_pid_and_agreement_without_a_process_group(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert at_distributed.launcher_pid() == os.getpid() and at_distributed.is_local_leader()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    assert at_distributed.launcher_pid() == os.getppid()
    assert at_distributed.write_launcher_pid_file(tmp_path / "a.pid") == str(tmp_path / "a.pid")
    assert at.read_pid_file(tmp_path / "a.pid") == os.getppid()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not at_distributed.is_local_leader()
    assert at_distributed.write_launcher_pid_file(tmp_path / "b.pid") is None and not (tmp_path / "b.pid").exists()
    assert at_distributed.agree(True) is True and at_distributed.agree(False) is False


class FakeAccelerator:
    """Just what resume_state touches."""

    def __init__(self, automatic: bool) -> None:
        self.project_dir = "/runs/r1"
        self.project_configuration = type("Config", (), {"automatic_checkpoint_naming": automatic, "iteration": 0})()
        self.loaded: list[str] = []

    def load_state(self, path: str) -> None:
        self.loaded.append(path)


def test_accelerate_resume_continues_the_save_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    assert at_accelerate.next_iteration("/runs/r1/checkpoints/checkpoint_4/") == 5
    with pytest.raises(ValueError):
        at_accelerate.next_iteration("/runs/r1/checkpoints/step-4")
    monkeypatch.delenv(at.RESUME_ENV, raising=False)
    accelerator = FakeAccelerator(automatic=True)
    assert at_accelerate.resume_state(accelerator) is None and accelerator.loaded == []
    assert at_accelerate.checkpoints_dir(accelerator) == "/runs/r1/checkpoints"
    monkeypatch.setenv(at.RESUME_ENV, "/runs/r1/checkpoints/checkpoint_2")
    assert at_accelerate.resume_state(accelerator) == "/runs/r1/checkpoints/checkpoint_2"
    assert accelerator.loaded == ["/runs/r1/checkpoints/checkpoint_2"]
    assert accelerator.project_configuration.iteration == 3
    manual = FakeAccelerator(automatic=False)
    at_accelerate.resume_state(manual, "/elsewhere/checkpoint_9")
    assert manual.project_configuration.iteration == 0


def test_the_default_marker_is_under_the_instances_own_prefix() -> None:
    from autostop_trainer import default_marker_uri, instance_prefix

    doc = {"instanceId": "i-0123456789abcdef0", "region": "eu-west-1", "accountId": "111122223333"}
    assert instance_prefix(doc) == "instances/arn:aws:ec2:eu-west-1:111122223333:instance/i-0123456789abcdef0/"
    assert instance_prefix({**doc, "region": "cn-north-1"}).startswith("instances/arn:aws-cn:ec2:cn-north-1:")
    uri = default_marker_uri("ckpt", "run-7", identity=doc)
    assert uri == "s3://ckpt/instances/arn:aws:ec2:eu-west-1:111122223333:instance/i-0123456789abcdef0/runs/run-7/_SUCCESS"
    # the very key the control plane expects (shared.tags, the stack's default region and account aside)
    from shared.tags import TagPolicy

    policy = TagPolicy(prefix="autostop", checkpoint_bucket="ckpt", instance_arn_prefix="arn:aws:ec2:eu-west-1:111122223333:instance/")
    assert uri == f"s3://ckpt/{policy.instance_prefix('i-0123456789abcdef0')}runs/run-7/_SUCCESS"
