"""The on-instance program's shared part (infra/documents/lib/instance.py) and its entry (``run``), imported directly
as the documents' tests import selection: parameter checks, the PID file's reading, the result line and exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

LIB = Path(__file__).resolve().parents[2] / "infra" / "documents" / "lib"
sys.path.insert(0, str(LIB))

import instance  # noqa: E402
from instance import Fail  # noqa: E402


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in [k for k in os.environ if k.startswith(("SSM_", "AUTOSTOP_BOOT"))]:
        monkeypatch.delenv(name)
    yield monkeypatch


def run(command: str, mains: dict[str, Any], capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    code = instance.run(command, list(args), mains)
    out, err = capsys.readouterr()
    (line,) = out.splitlines()
    return code, json.loads(line), err


# --- parameters ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["run-1", "a", "A.b_c-9"])
def test_a_valid_value_passes(env: pytest.MonkeyPatch, value: str) -> None:
    env.setenv("SSM_RunId", value)
    instance.check_all(["SSM_RunId"])


@pytest.mark.parametrize("value", ["", "-run", "run\n", "run 1", "ü", "x" * 64])
def test_an_invalid_value_fails_with_the_parameter_and_its_hint(env: pytest.MonkeyPatch, value: str) -> None:
    env.setenv("SSM_RunId", value)
    with pytest.raises(Fail) as failed:
        instance.check_all(["SSM_RunId"])
    assert failed.value.code == "InvalidParameter"
    assert str(failed.value).startswith("parameter RunId (") and "starting with a letter or digit" in str(failed.value)


def test_an_own_pattern_wins_and_save_on_signal_defaults_to_false(env: pytest.MonkeyPatch) -> None:
    env.setenv("SSM_Bucket", "Bad_Bucket")
    with pytest.raises(Fail, match="nope"):
        instance.check_all(["SSM_Bucket"], {"Bucket": (r"^x$", "nope")})
    env.setenv("SSM_SaveOnSignal", "")
    instance.check_all(["SSM_SaveOnSignal"])
    assert os.environ["SSM_SaveOnSignal"] == "false"  # noqa: SIM112 - the agent's name


def test_an_unset_parameter_names_the_agent_version(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(Fail, match=r"SSM_RunId is not set: SSM Agent 3\.3\.2746\.0 or later"):
        instance.require(["SSM_RunId"])


@pytest.mark.parametrize(
    ("name", "kind", "value", "ok"),
    [
        ("CheckpointDir", "path", "/data/ckpt", True),
        ("CheckpointDir", "path", "/data//ckpt", False),
        ("CheckpointDir", "path", "/data/./ckpt", False),
        ("CheckpointDir", "path", "/data/..", False),
        ("PidFile", "path", "", True),
        ("UploadPrefix", "key", "runs/a/", True),
        ("UploadPrefix", "key", "runs/../a/", False),
        ("ManifestKey", "key", "/runs/m.json", False),
    ],
)
def test_segments(env: pytest.MonkeyPatch, name: str, kind: str, value: str, ok: bool) -> None:
    env.setenv(f"SSM_{name}", value)
    if ok:
        instance.check_segments(name, kind)
    else:
        with pytest.raises(Fail, match="may not contain '.', '..' or empty segments"):
            instance.check_segments(name, kind)


@pytest.mark.parametrize(
    ("path", "system"),
    [
        ("/", True),
        ("/home", True),
        ("/var", True),
        ("/etc", True),
        ("/etc/x", True),
        ("/var/log/train.log", True),
        ("/run/user/1000", True),
        ("/run/user/1000/ckpt", False),
        ("/home/alice/ckpt", False),
        ("/var/data", False),
        ("/etcetera", False),
        ("/data", False),
        ("/lib64/x", True),
    ],
)
def test_system_locations(path: str, system: bool) -> None:
    assert instance.system_location(path) is system


def test_a_system_checkpoint_dir_is_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("SSM_CheckpointDir", "/var/log")
    with pytest.raises(Fail, match="names a system location: autostop never reads"):
        instance.check_not_system("CheckpointDir")


def test_the_program_checks_each_parameter_with_its_documents_pattern() -> None:
    """SendCommand checks the document's allowedPattern first; the program re-checks the very same one."""
    import checkpoint_helper
    import preflight
    import restore_helper

    from infra.constructs.documents import CHECKPOINT_PARAMETERS, PREFLIGHT_PARAMETERS, RESTORE_PARAMETERS

    for declared, own, variables in (
        (CHECKPOINT_PARAMETERS, checkpoint_helper.CHECKPOINT_PARAMETERS, checkpoint_helper.CHECKPOINT_VARIABLES + ["SSM_SaveOnSignal"]),
        (RESTORE_PARAMETERS, restore_helper.RESTORE_PARAMETERS, restore_helper.RESTORE_VARIABLES),
        (PREFLIGHT_PARAMETERS, {"InstancePrefix": preflight.INSTANCE_PREFIX}, None),
    ):
        for name, spec in declared.items():
            assert (own.get(name) or instance.PARAMETERS[name])[0] == spec["allowedPattern"], name
        if variables is not None:
            assert sorted(v[4:] for v in variables) == sorted(declared)


# --- the PID file --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "pid"),
    [(b"123\n", 123), (b"  42 \t\n", 42), (b"0", None), (b"4194305", None), (b"12a", None), (b"", None), (b"1" * 65, None)],
)
def test_read_pid(tmp_path: Path, content: bytes, pid: int | None) -> None:
    path = tmp_path / "pid"
    path.write_bytes(content)
    assert instance.read_pid(str(path)) == pid


def test_read_pid_of_a_directory_or_a_missing_file(tmp_path: Path) -> None:
    assert instance.read_pid(str(tmp_path)) is None
    assert instance.read_pid(str(tmp_path / "absent")) is None


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "30"])
    yield proc
    proc.kill()
    proc.wait()


def test_the_trainer_is_the_live_process_of_the_files_owner_started_before_it(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    pid_file = tmp_path / "pid"
    pid_file.write_text(f"{sleeper.pid}\n")

    status, why, start = instance.pid_is_trainer(sleeper.pid, str(pid_file))

    assert (status, why) == (0, "") and start == instance.start_ticks(sleeper.pid)
    assert instance.pid_same(sleeper.pid, start)


def test_a_process_started_after_its_pid_file_was_written_is_not_the_trainer(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    pid_file = tmp_path / "pid"
    pid_file.write_text(f"{sleeper.pid}\n")
    old = time.time() - 3600
    os.utime(pid_file, (old, old))

    status, why, _ = instance.pid_is_trainer(sleeper.pid, str(pid_file))

    assert status == 2 and f"pid {sleeper.pid} started" in why and "after" in why


def test_this_program_its_parent_and_init_are_never_the_trainer(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    pid_file.write_text("1")
    assert instance.pid_is_trainer(os.getpid(), str(pid_file))[:2] == (2, f"pid {os.getpid()} is this script or its parent")
    assert instance.pid_is_trainer(os.getppid(), str(pid_file))[0] == 2
    assert instance.pid_is_trainer(1, str(pid_file))[:2] == (2, "pid 1 is init")


def test_an_exited_process_is_not_alive(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    pid_file = tmp_path / "pid"
    pid_file.write_text(str(proc.pid))
    assert not instance.pid_alive(proc.pid)
    assert instance.pid_is_trainer(proc.pid, str(pid_file))[0] == 1
    assert not instance.pid_same(proc.pid, None)


def test_a_zombie_has_exited(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while instance.stat_fields(proc.pid)[0] != "Z" and time.monotonic() < deadline:  # type: ignore[index]
        time.sleep(0.01)
    try:
        assert not instance.pid_alive(proc.pid)
    finally:
        proc.wait()


def test_a_pid_file_of_an_earlier_boot_is_stale(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    pid_file.write_text("123")
    mtime = int(pid_file.stat().st_mtime)
    env.setenv("AUTOSTOP_BOOT_TIME", str(mtime + 60))
    assert instance.pid_file_stale(str(pid_file))
    env.setenv("AUTOSTOP_BOOT_TIME", str(mtime - 60))
    assert not instance.pid_file_stale(str(pid_file))
    assert not instance.pid_file_stale(str(tmp_path / "absent"))


# --- run: the result line and the exit code ------------------------------------------------------------------------


def test_a_result_line_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, line, _ = run("checkpoint", {"main_checkpoint": lambda: json.dumps({"result": "uploaded"})}, capsys)
    assert (code, line) == (0, {"result": "uploaded"})


@pytest.mark.parametrize(
    ("command", "code", "error", "exit_code"),
    [
        ("checkpoint", "InvalidParameter", "InvalidParameter", 64),
        ("checkpoint", "TrainerUnverified", "TrainerUnverified", 65),
        ("checkpoint", 3, "NoCheckpoint", 66),
        ("checkpoint", 4, "UploadFailed", 67),
        ("checkpoint", 5, "ManifestFailed", 68),
        ("checkpoint", 6, "UploadFailed", 67),
        ("select", 3, "NoCheckpoint", 66),
    ],
)
def test_a_failure_is_one_line_with_its_exit_code(
    capsys: pytest.CaptureFixture[str], command: str, code: int | str, error: str, exit_code: int
) -> None:
    def main() -> str:
        raise Fail(code, "what happened")

    got, line, err = run(command, {f"main_{command}": main}, capsys)

    assert got == exit_code
    assert line == {"result": "failed", "error": error, "message": "what happened"}
    assert f"{command}: {error}: what happened" in err


def test_the_restore_numbers_its_own_failures(capsys: pytest.CaptureFixture[str]) -> None:
    import restore_helper  # noqa: F401 - registers HELPER_ERRORS["restore"]

    for number, error, exit_code in [(3, "ManifestInvalid", 66), (6, "RestoreConflict", 68), (9, "ResumeCommandRefused", 69)]:

        def main(number: int = number) -> str:
            raise Fail(number, "m")

        assert run("restore", {"main_restore": main}, capsys)[:2] == (exit_code, {"result": "failed", "error": error, "message": "m"})


def test_a_bug_is_script_failed_with_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    def main() -> str:
        return {}["missing"]  # type: ignore[no-any-return]

    code, line, err = run("restore", {"main_restore": main}, capsys)

    assert code == 70 and line["error"] == "ScriptFailed"
    assert line["message"] == "unexpected failure in restore.sh: KeyError: 'missing'"
    assert "Traceback" in err


def test_a_signal_is_script_failed_with_128_plus_its_number(capsys: pytest.CaptureFixture[str]) -> None:
    previous = signal.getsignal(signal.SIGTERM)

    def main() -> str:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        return "not reached"

    try:
        code, line, _ = run("checkpoint", {"main_checkpoint": main}, capsys)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(
                signum, previous if signum == signal.SIGTERM else signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
            )
    assert code == 143
    assert line == {"result": "failed", "error": "ScriptFailed", "message": "checkpoint.sh was interrupted by SIGTERM"}


def test_the_program_runs_from_the_repository(tmp_path: Path) -> None:
    """``python3 lib/dispatch.py select DIR``: the operator's question, the same program the documents carry."""
    (tmp_path / "step-100").mkdir()
    (tmp_path / "step-100" / "model.pt").write_bytes(b"weights")
    (tmp_path / "step-200.tmp").mkdir()
    proc = subprocess.run([sys.executable, str(LIB / "dispatch.py"), "select", str(tmp_path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout)
    assert line["result"] == "selected" and line["checkpoint"] == "step-100" and line["step"] == 100
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, str(LIB / "dispatch.py"), "select", str(empty)], capture_output=True, text=True, check=False)
    assert proc.returncode == 66 and json.loads(proc.stdout)["error"] == "NoCheckpoint"


# --- the checkpoint's trainer phase, called directly ---------------------------------------------------------------


def trainer_env(env: pytest.MonkeyPatch, pid_file: Path | str, ckdir: Path, mode: str) -> None:
    for name, value in {
        "PidFile": str(pid_file),
        "CheckpointDir": str(ckdir),
        "Mode": mode,
        "Signal": "TERM",
        "SaveOnSignal": "false",
    }.items():
        env.setenv(f"SSM_{name}", value)


def test_without_a_pid_file_nothing_is_signalled(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import checkpoint_helper

    trainer_env(env, "", tmp_path, "stop")
    assert checkpoint_helper.stop_trainer(5) == ("not_configured", 0)
    trainer_env(env, tmp_path / "absent.pid", tmp_path, "stop")
    assert checkpoint_helper.stop_trainer(5) == ("pid_file_missing", 0)


def test_the_trainer_is_signalled_once_and_its_exit_awaited(
    env: pytest.MonkeyPatch, tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    import checkpoint_helper

    pid_file = tmp_path / "train.pid"
    pid_file.write_text(f"{sleeper.pid}\n")
    trainer_env(env, pid_file, tmp_path, "interruption")
    before = time.time_ns()

    state, signal_ns = checkpoint_helper.stop_trainer(5)

    assert state == "exited" and signal_ns >= before
    assert sleeper.wait(timeout=5) == -signal.SIGTERM


def test_mode_stop_signals_nothing_without_a_complete_checkpoint(
    env: pytest.MonkeyPatch, tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    import checkpoint_helper

    pid_file = tmp_path / "train.pid"
    pid_file.write_text(f"{sleeper.pid}\n")
    ckdir = tmp_path / "ckpt"
    ckdir.mkdir()
    trainer_env(env, pid_file, ckdir, "stop")

    with pytest.raises(Fail) as failed:
        checkpoint_helper.stop_trainer(5)

    assert failed.value.code == 3 and str(failed.value).startswith("Nothing was signalled: the trainer keeps training.")
    assert sleeper.poll() is None


def test_a_live_process_that_is_not_the_trainer_is_never_signalled(
    env: pytest.MonkeyPatch, tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    import checkpoint_helper

    pid_file = tmp_path / "train.pid"
    pid_file.write_text(f"{sleeper.pid}\n")
    old = time.time() - 3600
    os.utime(pid_file, (old, old))
    trainer_env(env, pid_file, tmp_path, "interruption")

    with pytest.raises(Fail) as failed:
        checkpoint_helper.stop_trainer(5)

    assert failed.value.code == "TrainerUnverified" and "nothing was signalled or uploaded" in str(failed.value)
    assert sleeper.poll() is None


# --- the probe still reads the PID file in bash (lib/pid.sh): both readings agree ---------------------------------


def bash_reading(pid_file: Path, env: dict[str, str]) -> tuple[int | None, int, str, bool]:
    """lib/pid.sh's answers for PID_FILE: (read_pid, pid_is_trainer's status, PID_WHY, pid_file_stale)."""
    script = (
        f"source {LIB / 'pid.sh'}\n"
        'if ! pid=$(read_pid "$1"); then echo "|1||1"; exit 0; fi\n'
        'rc=0; pid_is_trainer "$pid" "$1" || rc=$?\n'
        'stale=1; pid_file_stale "$1" && stale=0\n'
        'echo "$pid|$rc|$PID_WHY|$stale"\n'
    )
    proc = subprocess.run(["bash", "-c", script, "bash", str(pid_file)], capture_output=True, text=True, check=True, env=env)
    pid, rc, why, stale = proc.stdout.strip().split("|")
    return (int(pid) if pid else None), int(rc), why, stale == "0"


@pytest.mark.parametrize("case", ["trainer", "started-after-the-file", "exited", "garbage", "init", "earlier-boot"])
def test_the_bash_and_the_python_reading_of_a_pid_file_agree(
    env: pytest.MonkeyPatch, tmp_path: Path, sleeper: subprocess.Popen[bytes], case: str
) -> None:
    pid_file = tmp_path / "train.pid"
    pid = {"exited": None, "init": 1}.get(case, sleeper.pid)
    if pid is None:
        proc = subprocess.Popen(["true"])
        proc.wait()
        pid = proc.pid
    pid_file.write_text("not a pid\n" if case == "garbage" else f"{pid}\n")
    if case == "started-after-the-file":
        old = time.time() - 3600
        os.utime(pid_file, (old, old))
    if case == "earlier-boot":
        env.setenv("AUTOSTOP_BOOT_TIME", str(int(pid_file.stat().st_mtime) + 60))

    read = instance.read_pid(str(pid_file))
    python = (
        (read, *instance.pid_is_trainer(read, str(pid_file))[:2], instance.pid_file_stale(str(pid_file))) if read else (None, 1, "", False)
    )

    assert bash_reading(pid_file, dict(os.environ)) == python
