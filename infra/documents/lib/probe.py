"""autostop's on-instance program, subcommand ``probe`` (``main_probe``; stdlib only): has the trainer exited, has its
log printed the completion line?

``infra/documents/probe.sh`` carries this file after ``lib/instance.py`` and ``lib/baseline.py`` (and before
``lib/dispatch.py``), nothing else; its header is the contract (parameters, result line, exit codes). Read-only
apart from its own state, this boot's log baseline (``write_baseline``); no network, no signals. Its messages are the bash probe's.

The log pattern is an extended regular expression matched by ``grep -E`` in the C locale, as the bash probe matched
it: Python's ``re`` reads some of the same text otherwise (``[[:digit:]]``, ``\\<``, ``a{,3}``), and a tagged
pattern must keep its meaning. grep reads the log from the probe's own descriptor, from the byte where this boot's
lines start (no second open of the path).
"""

import json
import os
import re
import stat
import subprocess

if "write_baseline" not in globals():  # run on its own (tests, linters); the document pastes these modules above
    from baseline import boot_key, log_baseline_file, open_baselines_dir, state_dir, write_baseline
    from instance import (
        Fail,
        boot_time,
        note,
        open_dir_nofollow,
        param,
        pid_file_stale,
        pid_is_trainer,
        read_pid,
        require,
        system_location,
    )

LOG_TAIL_BYTES = 10485760  # at most the last 10 MiB of the log are read
GREP_TIMEOUT_SECONDS = 20
PROBE_PATH_RE = r"(|/[A-Za-z0-9._/-]{0,254})"
LOG_PATTERN_RE = r"[ -~]{0,200}"
RUN_IDS_RE = r"(|i-[0-9a-f]{8,17}=[A-Za-z0-9][A-Za-z0-9._-]{0,62}( i-[0-9a-f]{8,17}=[A-Za-z0-9][A-Za-z0-9._-]{0,62}){0,49})"
"""The documents' patterns (infra/constructs/documents.py) without ``^...$``: RunIds, LogPattern, and the paths once
``{run-id}`` is substituted (ABS_PATH_OR_EMPTY)."""
PROBE_VARIABLES = ["SSM_PidFile", "SSM_LogFile", "SSM_LogPattern"]
"""Set by every agent that passes parameters as environment variables; SSM_CheckpointDir and SSM_RunIds may be unset
(a document of an older stack): empty."""
BASELINE_RE = re.compile(r'\{"boot":"([A-Za-z0-9-]{1,64})","dev":([0-9]{1,20}),"ino":([0-9]{1,20}),"offset":([0-9]{1,18})\}')
"""A baseline line as ``write_baseline`` (lib/baseline.py) writes it."""
PROBE_PATHS = {"PidFile": "SSM_PidFile", "LogFile": "SSM_LogFile", "CheckpointDir": "SSM_CheckpointDir"}


class Unreadable(Exception):
    """The log cannot be read as the trainer's log of this boot (the message says why): state ``unreadable``."""


def main_probe():
    """The result line ``{"probe":1,"pid":{"state":S,"pid":N|null},"log":{"state":L}}`` (probe.sh's header)."""
    paths = probe_parameters()
    pid_state, pid = probe_pid(paths["PidFile"])
    log_state = probe_log(paths["LogFile"], param("LogPattern"), paths["CheckpointDir"]) if paths["LogFile"] else "not_configured"
    return json.dumps({"probe": 1, "pid": {"state": pid_state, "pid": pid}, "log": {"state": log_state}}, separators=(",", ":"))


# --- parameters ----------------------------------------------------------------------------------------------------


def invalid(message):
    raise Fail("InvalidParameter", message)


def probe_parameters():
    """PidFile, LogFile and CheckpointDir (empty: not configured) with this instance's run id put in for ``{run-id}``,
    each re-checked after that; LogPattern checked. InvalidParameter otherwise."""
    require(PROBE_VARIABLES)
    run_ids = os.environ.get("SSM_RunIds", "")  # noqa: SIM112 - the agent's name
    if not re.fullmatch(RUN_IDS_RE, run_ids):
        invalid("RunIds must be up to 50 i-<id>=<run-id> pairs separated by single spaces")
    paths = {name: os.environ.get(variable, "") for name, variable in PROBE_PATHS.items()}
    if run_ids:
        own = own_run_id(run_ids)
        paths = {name: value.replace("{run-id}", own) for name, value in paths.items()}
    for name in PROBE_PATHS:
        if "{" in paths[name]:
            invalid(name + " still holds '{' after the {run-id} substitution (RunIds names no run id for this instance)")
    for name in PROBE_PATHS:
        check_probe_path(name, paths[name])
    pattern = param("LogPattern")
    if not re.fullmatch(LOG_PATTERN_RE, pattern):
        invalid("LogPattern must be at most 200 printable ASCII characters")
    if paths["LogFile"] and not pattern:  # an empty pattern matches every line: any line would be completion
        invalid("LogPattern is required when LogFile is set")
    for name in ("LogFile", "CheckpointDir"):
        if paths[name] and system_location(paths[name]):
            invalid(f"{name} names a system location: autostop never reads system locations; use a directory owned by the trainer's user")
    return paths


def own_run_id(run_ids):
    """The run id RUN_IDS (``i-<id>=<run-id>`` pairs) gives this instance (AWS_SSM_INSTANCE_ID, set by the agent)."""
    me = os.environ.get("AWS_SSM_INSTANCE_ID", "")
    own = [pair.split("=", 1)[1] for pair in run_ids.split(" ") if pair.split("=", 1)[0] == me]
    if len(own) > 1:
        invalid("RunIds names this instance twice")
    if not own:
        invalid("RunIds names no run id for this instance (AWS_SSM_INSTANCE_ID)")
    return own[0]


def check_probe_path(name, value):
    """VALUE is empty or an absolute path without '.', '..' or empty segments."""
    if not re.fullmatch(PROBE_PATH_RE, value):
        invalid(f"{name} must be empty or an absolute path of letters, digits and . _ / - (at most 255 characters)")
    probe = value + "/"
    if value and ("//" in probe or "/./" in probe or "/../" in probe):
        invalid(f"{name} may not contain '.', '..' or empty path segments")


# --- the PID file --------------------------------------------------------------------------------------------------


def probe_pid(path):
    """``(state, pid or None)`` of the PID file PATH: not_configured, missing, unreadable, stale (written before this
    boot), running (``pid_is_trainer``), unverified (alive, not provably the trainer) or exited."""
    if not path:
        return "not_configured", None
    if not os.path.lexists(path):
        return "missing", None
    pid = read_pid(path)
    if pid is None:
        note(f"{path} is not readable or does not hold a process id")
        return "unreadable", None
    if pid_file_stale(path):
        note(f"{path} was last written before this boot; pid {pid} is not its trainer")
        return "stale", pid
    status, why, _ = pid_is_trainer(pid, path)
    if status == 2:  # alive but not provably the trainer (a reused pid, a stepped clock): unknown, never "exited"
        note(f"pid {pid} from {path} is alive but cannot be shown to be the trainer ({why})")
        return "unverified", pid
    return ("running" if status == 0 else "exited"), pid


# --- the log -------------------------------------------------------------------------------------------------------


def probe_log(path, pattern, ckdir):
    """The state of the log PATH: missing, matched or not_matched (PATTERN in the lines of this boot), or unreadable
    (the reason goes to stderr)."""
    try:
        return scan_log(path, pattern, ckdir)
    except Unreadable as exc:
        note(f"{path}: {exc}")
        return "unreadable"


def scan_log(path, pattern, ckdir):
    """``probe_log``; Unreadable when the state directory is unusable, the log is not the trainer's (CKDIR's owner
    must own it; no CKDIR, no log), not a regular file reached without a symbolic link, holds an earlier
    session's lines at this boot's first probe, or grep fails."""
    state, boot = state_dir(), boot_key()
    if state is None or boot is None:
        raise Unreadable(
            f"the state directory {os.environ.get('AUTOSTOP_STATE_DIR') or '/var/lib/autostop'} is unusable (it must be a "
            "directory owned by root, not writable by group or others) or this boot cannot be identified"
        )
    baseline_file = log_baseline_file(state, path)
    if not os.path.lexists(path):
        record_missing(baseline_file, boot)
        return "missing"
    owner = trainer_uid(ckdir)
    fd = open_log(path)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unreadable("not a regular file, or its size cannot be read")
        if st.st_uid != owner:
            raise Unreadable(
                f"owned by uid {st.st_uid}, not by the owner of CheckpointDir (uid {owner}): autostop reads only the trainer's own log"
            )
        offset = log_offset(baseline_file, boot, st)
        if offset:
            note(f"scanning {path} after this boot's baseline {offset}")
        return grep_log(fd, pattern, offset if st.st_size - offset < LOG_TAIL_BYTES else st.st_size - LOG_TAIL_BYTES)
    finally:
        os.close(fd)


def record_missing(baseline_file, boot):
    """A missing log: this boot's baseline is the empty log (nothing of an earlier session), unless one is recorded."""
    base = read_baseline(baseline_file)
    if base is None or base[0] != boot:
        try:
            write_baseline(baseline_file, boot, 0, 0, 0)
        except OSError:
            note(f"cannot record the log baseline in {baseline_file}")


def trainer_uid(ckdir):
    """The owner of the checkpoint directory CKDIR (the trainer's user). Unreadable without CKDIR (the probe runs as
    root: without the trainer's user it would read any file's lines for whoever may send it a LogFile) and when CKDIR
    is not a directory reached without a symbolic link."""
    if not ckdir:
        raise Unreadable("LogFile needs CheckpointDir: autostop reads only a log owned by the checkpoint directory's owner")
    try:
        fd = open_dir_nofollow(ckdir)
    except OSError:
        raise Unreadable(
            f"CheckpointDir {ckdir} is not a directory reached without a symbolic link, so the log's owner cannot be checked"
        ) from None
    try:
        return os.fstat(fd).st_uid
    finally:
        os.close(fd)


def open_log(path):
    """A read descriptor of the log PATH, a regular file (by lstat), opened without following a symbolic link in PATH
    (its directories are walked by ``open_dir_nofollow``, the file opened O_NOFOLLOW) and without blocking (O_NONBLOCK:
    never wait on a FIFO swapped in). One descriptor for every check and the read: what is checked is what is read."""
    try:
        regular = stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        regular = False
    if not regular:  # a directory, FIFO, device or symbolic link: never opened
        raise Unreadable("not a regular file (or a symbolic link)")
    directory, name = os.path.split(path)
    try:
        dfd = open_dir_nofollow(directory)
    except OSError:
        raise Unreadable(f"its path passes through a symbolic link (it is {os.path.realpath(path)})") from None
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dfd)
    except OSError:
        raise Unreadable("cannot be opened") from None
    finally:
        os.close(dfd)


def log_offset(baseline_file, boot, st):
    """Where this boot's lines start in the log ST (its fstat): this boot's baseline, or 0 when the log was replaced
    (another inode) or truncated after it. Without one (this boot's first probe, no restore), records it: the
    log's size when the log holds an earlier session's lines (then Unreadable: never scan them), else 0."""
    base = read_baseline(baseline_file)
    if base is not None and base[0] == boot:
        return base[3] if base[1:3] == (st.st_dev, st.st_ino) and base[3] <= st.st_size else 0
    earlier = earlier_session(baseline_file, st) if st.st_size > 0 else ""
    try:
        write_baseline(baseline_file, boot, st.st_dev, st.st_ino, st.st_size if earlier else 0)
    except OSError:
        raise Unreadable(f"cannot record its baseline in {baseline_file}") from None
    if earlier:
        raise Unreadable(
            f"it holds an earlier session's lines ({earlier}) and this boot had no baseline yet: recorded {st.st_size} bytes "
            "as this boot's baseline, only lines written from now on count"
        )
    return 0


def read_baseline(path):
    """The baseline the file PATH holds, ``(boot, dev, ino, offset)``, or None: PATH must be a regular file, opened
    O_NOFOLLOW in log-baselines/ (``open_baselines_dir``), holding one baseline line."""
    directory, name = os.path.split(path)
    try:
        dfd = open_baselines_dir(directory)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dfd)
        finally:
            os.close(dfd)
        try:
            data = os.read(fd, 300) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
        finally:
            os.close(fd)
    except OSError:
        return None
    found = BASELINE_RE.fullmatch(data.rstrip().decode("ascii", "replace"))
    return None if found is None else (found.group(1), int(found.group(2)), int(found.group(3)), int(found.group(4)))


def earlier_session(baseline_file, st):
    """Why the log ST holds an earlier session's lines, or "": a baseline of another boot exists (BASELINE_FILE holds
    no baseline of this one), an earlier restore recorded its offset (log-offsets/, before log-baselines/), or the
    log was last written before this boot."""
    if os.path.lexists(baseline_file):
        return "a baseline of an earlier boot exists"
    directory, name = os.path.split(baseline_file)
    if os.path.exists(os.path.join(os.path.dirname(directory), "log-offsets", name)):
        return "an earlier restore recorded its offset"
    btime = boot_time()
    if btime is not None and st.st_mtime_ns // 1000000000 < btime:
        return "it was last written before this boot"
    return ""


def grep_log(fd, pattern, start):
    """matched or not_matched: does a line of the log FD from byte START on match PATTERN (``grep -E -q``, C locale,
    at most GREP_TIMEOUT_SECONDS)? Unreadable when grep fails (an invalid pattern: exit 2), is missing or times out."""
    os.lseek(fd, start, os.SEEK_SET)
    env = dict(os.environ, LC_ALL="C")
    try:
        proc = subprocess.run(
            ["grep", "-E", "-q", "-e", pattern], stdin=fd, stdout=subprocess.DEVNULL, env=env, timeout=GREP_TIMEOUT_SECONDS
        )
    except subprocess.TimeoutExpired:
        raise Unreadable(f"reading failed (grep did not finish within {GREP_TIMEOUT_SECONDS} s)") from None
    except OSError as exc:
        raise Unreadable(f"reading failed (grep: {exc.strerror})") from None
    if proc.returncode not in (0, 1):
        raise Unreadable(f"reading failed (grep {proc.returncode})")
    return "matched" if proc.returncode == 0 else "not_matched"
