"""The on-instance program's shared part (infra/documents/lib/instance.py) and its entry (``run``), imported directly
as the documents' tests import selection: parameter checks, the PID file's reading, the result line and exit codes;
and the probe's own parts (lib/probe.py, lib/baseline.py)."""

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


# --- the probe (lib/probe.py), called directly -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "state"),
    [
        ("trainer", "running"),
        ("started-after-the-file", "unverified"),
        ("exited", "exited"),
        ("garbage", "unreadable"),
        ("init", "unverified"),
        ("earlier-boot", "stale"),
        ("missing", "missing"),
    ],
)
def test_the_probe_reads_a_pid_file_as_the_checkpoint_does(
    env: pytest.MonkeyPatch, tmp_path: Path, sleeper: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str], case: str, state: str
) -> None:
    """The probe's PID states come from the same reading the checkpoint signals by (read_pid, pid_file_stale,
    pid_is_trainer): a live process that is not provably the trainer is unverified, never exited."""
    import probe

    pid_file = tmp_path / "train.pid"
    pid = {"exited": None, "init": 1}.get(case, sleeper.pid)
    if pid is None:
        proc = subprocess.Popen(["true"])
        proc.wait()
        pid = proc.pid
    if case != "missing":
        pid_file.write_text("not a pid\n" if case == "garbage" else f"{pid}\n")
    if case == "started-after-the-file":
        old = time.time() - 3600
        os.utime(pid_file, (old, old))
    if case == "earlier-boot":
        env.setenv("AUTOSTOP_BOOT_TIME", str(int(pid_file.stat().st_mtime) + 60))

    got = probe.probe_pid(str(pid_file))

    assert got == (state, None if state in ("unreadable", "missing") else pid)
    err = capsys.readouterr().err
    if state == "unverified":
        assert f"pid {pid} from {pid_file} is alive but cannot be shown to be the trainer (" in err
    if state == "stale":
        assert "was last written before this boot" in err


def test_the_probe_checks_with_its_documents_patterns() -> None:
    import probe

    from infra.constructs.documents import ABS_PATH_OR_EMPTY, PROBE_PARAMETERS, RUN_IDS

    assert f"^{probe.PROBE_PATH_RE}$" == ABS_PATH_OR_EMPTY  # each path once {run-id} is substituted
    assert f"^{probe.RUN_IDS_RE}$" == RUN_IDS == PROBE_PARAMETERS["RunIds"]["allowedPattern"]
    assert f"^{probe.LOG_PATTERN_RE}$" == PROBE_PARAMETERS["LogPattern"]["allowedPattern"]
    assert {*probe.PROBE_VARIABLES, *probe.PROBE_PATHS.values(), "SSM_RunIds"} == {f"SSM_{name}" for name in PROBE_PARAMETERS}


def probe_parameters(env: pytest.MonkeyPatch, **values: str) -> None:
    for name in ("PidFile", "LogFile", "LogPattern"):
        env.setenv(f"SSM_{name}", values.pop(name, ""))
    for name, value in values.items():
        env.setenv(f"SSM_{name}", value)


def test_the_probe_result_line_is_compact_json(env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The line lambdas/shared/probe.py parses, byte for byte what the bash probe printed."""
    import probe

    probe_parameters(env)
    code = instance.run("probe", [], {"main_probe": probe.main_probe})
    assert code == 0
    assert capsys.readouterr().out == '{"probe":1,"pid":{"state":"not_configured","pid":null},"log":{"state":"not_configured"}}\n'


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"PidFile": "relative"}, "PidFile must be empty or an absolute path of letters, digits and . _ / - (at most 255 characters)"),
        ({"LogFile": "/data/../x", "LogPattern": "x"}, "LogFile may not contain '.', '..' or empty path segments"),
        ({"LogFile": "/data/x.log"}, "LogPattern is required when LogFile is set"),
        ({"LogPattern": "caf\u00e9"}, "LogPattern must be at most 200 printable ASCII characters"),
        ({"CheckpointDir": "/etc/x"}, "CheckpointDir names a system location: autostop never reads system locations"),
        ({"RunIds": "i-0123456789abcdef0=r1 i-0123456789abcdef0=r2"}, "RunIds names this instance twice"),
        ({"LogFile": "/d/{run-id}.log", "LogPattern": "x"}, "LogFile still holds '{' after the {run-id} substitution"),
    ],
)
def test_an_invalid_probe_parameter_is_the_probes_failure_line_and_exit_64(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], values: dict[str, str], message: str
) -> None:
    import probe

    env.setenv("AWS_SSM_INSTANCE_ID", "i-0123456789abcdef0")
    probe_parameters(env, **values)

    code = instance.run("probe", [], {"main_probe": probe.main_probe})

    out = capsys.readouterr().out
    assert code == 64
    assert out.startswith('{"probe":1,"error":"InvalidParameter","message":"')
    assert json.loads(out)["message"].startswith(message)


def test_the_probe_substitutes_its_own_run_id(env: pytest.MonkeyPatch) -> None:
    import probe

    env.setenv("AWS_SSM_INSTANCE_ID", "i-0123456789abcdef0")
    probe_parameters(env, PidFile="/data/{run-id}/pid", CheckpointDir="/data/{run-id}", RunIds="i-0aaaaaaaa=r0 i-0123456789abcdef0=r-7")
    assert probe.probe_parameters() == {"PidFile": "/data/r-7/pid", "LogFile": "", "CheckpointDir": "/data/r-7"}


def test_the_baseline_is_written_privately_and_read_back(tmp_path: Path) -> None:
    import baseline
    import probe

    path = tmp_path / "log-baselines" / "abc"
    baseline.write_baseline(str(path), "boot-1", 7, 8, 9)

    assert probe.read_baseline(str(path)) == ("boot-1", 7, 8, 9)
    assert path.read_text() == '{"boot":"boot-1","dev":7,"ino":8,"offset":9}\n'
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in path.parent.iterdir()) == ["abc"]  # no temp file left


def test_a_baseline_is_never_written_or_read_through_a_symbolic_link(tmp_path: Path) -> None:
    import baseline
    import probe

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "log-baselines").symlink_to(elsewhere)
    with pytest.raises(OSError):
        baseline.write_baseline(str(tmp_path / "state" / "log-baselines" / "abc"), "boot-1", 1, 2, 3)
    assert list(elsewhere.iterdir()) == []

    baseline.write_baseline(str(elsewhere / "real"), "boot-1", 1, 2, 3)
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "abc").symlink_to(elsewhere / "real")
    assert probe.read_baseline(str(tmp_path / "own" / "abc")) is None
    assert probe.read_baseline(str(tmp_path / "state" / "log-baselines" / "real")) is None  # a linked directory
    assert probe.read_baseline(str(elsewhere / "real")) == ("boot-1", 1, 2, 3)


def test_a_state_dir_below_a_linked_system_directory_still_holds_baselines(tmp_path: Path) -> None:
    """Only the state directory and log-baselines/ may not be symbolic links: what is above them is the system's
    (/var may be a link to another disk), as root configured it."""
    import baseline
    import probe

    (tmp_path / "disk" / "lib" / "autostop").mkdir(parents=True)
    (tmp_path / "var").symlink_to(tmp_path / "disk")
    path = tmp_path / "var" / "lib" / "autostop" / "log-baselines" / "abc"
    baseline.write_baseline(str(path), "boot-1", 1, 2, 3)
    assert probe.read_baseline(str(path)) == ("boot-1", 1, 2, 3)
    (tmp_path / "linked-state").symlink_to(tmp_path / "disk" / "lib" / "autostop")
    with pytest.raises(OSError):
        baseline.write_baseline(str(tmp_path / "linked-state" / "log-baselines" / "abc"), "boot-2", 1, 2, 3)
    assert probe.read_baseline(str(tmp_path / "linked-state" / "log-baselines" / "abc")) is None


@pytest.mark.parametrize(
    ("pattern", "state"),
    [
        ("^step [[:digit:]]+ done$", "matched"),  # POSIX classes: grep -E's meaning, not Python's
        (r"\<done\>", "matched"),
        ("^done", "not_matched"),  # lines anchor at their own start
        ("(unclosed", "unreadable"),
    ],
)
def test_the_log_pattern_keeps_its_grep_meaning(tmp_path: Path, capsys: pytest.CaptureFixture[str], pattern: str, state: str) -> None:
    import probe

    log = tmp_path / "train.log"
    log.write_bytes(b"step 12 done\n")
    fd = os.open(log, os.O_RDONLY)
    try:
        try:
            got = probe.grep_log(fd, pattern, 0)
        except probe.Unreadable as exc:
            got = "unreadable"
            assert "reading failed (grep 2)" in str(exc)
    finally:
        os.close(fd)
    assert got == state


def test_the_log_is_read_from_the_given_byte(tmp_path: Path) -> None:
    import probe

    log = tmp_path / "train.log"
    log.write_bytes(b"training complete\nstep 2\n")
    fd = os.open(log, os.O_RDONLY)
    try:
        assert probe.grep_log(fd, "training complete", 0) == "matched"
        assert probe.grep_log(fd, "training complete", len(b"training complete\n")) == "not_matched"
        assert probe.grep_log(fd, "^raining complete$", 1) == "matched"  # mid-line, as tail -c read it
    finally:
        os.close(fd)


# --- the restore's walk below the checkpoint dir (lib/restore_helper.py make_parents, by open_dir_nofollow) ---------


def test_make_parents_creates_missing_directories_like_the_checkpoint_dir(tmp_path: Path) -> None:
    import restore_helper

    ckdir = tmp_path / "ckpt"
    ckdir.mkdir(mode=0o750)
    (ckdir / "a").mkdir()
    ckfd = os.open(ckdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = restore_helper.make_parents(ckfd, ["a", "b", "c", "weights.bin"], os.lstat(ckdir))
        try:
            assert os.path.samestat(os.fstat(fd), os.stat(ckdir / "a" / "b" / "c"))
        finally:
            os.close(fd)
        assert (ckdir / "a" / "b").stat().st_mode & 0o777 == 0o750 and (ckdir / "a" / "b" / "c").stat().st_mode & 0o777 == 0o750
        top = restore_helper.make_parents(ckfd, ["weights.bin"], os.lstat(ckdir))  # no parent to make: the checkpoint dir
        try:
            assert os.path.samestat(os.fstat(top), os.stat(ckdir))
        finally:
            os.close(top)
    finally:
        os.close(ckfd)


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_make_parents_never_passes_a_symbolic_link_or_a_file(tmp_path: Path, kind: str) -> None:
    import restore_helper

    ckdir = tmp_path / "ckpt"
    (ckdir / "a").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if kind == "symlink":
        (ckdir / "a" / "b").symlink_to(elsewhere)
    else:
        (ckdir / "a" / "b").write_bytes(b"x")
    ckfd = os.open(ckdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(Fail) as failed:
            restore_helper.make_parents(ckfd, ["a", "b", "c", "w.bin"], os.lstat(ckdir))
    finally:
        os.close(ckfd)
    assert (failed.value.code, str(failed.value)) == (6, "cannot restore a/b/c/w.bin: b is not a directory")
    assert list(elsewhere.iterdir()) == []
