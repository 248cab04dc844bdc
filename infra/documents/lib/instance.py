"""autostop's on-instance program: what its subcommands share (stdlib only, Python 3.7 and later).

The program is the modules of ``infra/documents/lib`` pasted into one ``python3 -I -c`` text (this file first,
``lib/dispatch.py`` last) by ``render_script``; each SSM document carries the modules its subcommand needs and
its few bash lines start it as ``exec python3 -I -c "$PYHELPER" <subcommand>``. Imported directly by the tests.

Shared here, once: the failure line and exit codes (``Fail``, ``run``), the re-validation of the document's
parameters (``SSM_<Name>`` environment variables: ``require``, ``check``, ``check_segments``, ``check_not_system``),
the trainer's PID file (``read_pid``, ``pid_is_trainer``, ``pid_same``, ``pid_file_stale``) and the walk to a
directory that never follows a symbolic link (``open_dir_nofollow``).
"""

import json
import os
import re
import signal
import sys

EXIT = {
    "InvalidParameter": 64,
    "TrainerDidNotExit": 65,
    "TrainerUnverified": 65,
    "NoCheckpoint": 66,
    "ManifestInvalid": 66,
    "UploadFailed": 67,
    "DownloadFailed": 67,
    "ChecksumMismatch": 67,
    "ManifestFailed": 68,
    "RestoreConflict": 68,
    "ResumeCommandFailed": 69,
    "ResumeCommandRefused": 69,
    "ScriptFailed": 70,
}
"""Exit code of each error the last stdout line may name."""
HELPER_ERRORS = {"checkpoint": {3: "NoCheckpoint", 4: "UploadFailed", 5: "ManifestFailed", 6: "UploadFailed"}}
"""The error of a numbered ``Fail`` by subcommand (lib/restore_helper.py adds the restore's): the helpers' codes; 6
in the checkpoint: a file changed, which Mode interruption may cure by choosing again. ``select`` and ``preflight``
use the checkpoint's."""
AGENT_HINT = (
    "SSM Agent 3.3.2746.0 or later is required (it passes document parameters as SSM_ environment variables); "
    "update the agent on this instance"
)
PID_MAX = 4194304  # PID_MAX_LIMIT on 64-bit Linux
PID_FILE_SLACK = 2  # seconds a trainer may seem to have started after writing its PID file (clock rounding)
SYSTEM_RE = re.compile(
    r"/(etc|bin|sbin|usr|boot|proc|sys|dev|root|snap|run|lib|lib32|lib64|libx32|var/(log|lib|run|spool|cache|mail))(/|$)"
)
SYSTEM_ROOTS = ("/", "/home", "/var", "/tmp", "/opt", "/mnt", "/srv", "/media")
SYSTEM_HINT = (
    "autostop never reads, writes or uploads system locations (/, /home, /var, /tmp, /opt, /mnt, /srv, /media themselves; "
    "/etc /bin /sbin /usr /lib* /boot /proc /sys /dev /root /snap /run /var/log /var/lib /var/run /var/spool /var/cache "
    "/var/mail and below, except /run/user/<uid>/...); use a directory owned by the trainer's user, such as "
    "/home/<user>/... or /data/..."
)
PROGRAM = ["autostop"]  # the running subcommand, the prefix of every stderr line


class Fail(Exception):
    """A failure the result line reports. CODE: an error name of ``EXIT``, or a helper's number (``HELPER_ERRORS``)."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class Interrupted(BaseException):
    """SIGTERM, SIGINT or SIGHUP arrived (an SSM timeout or cancel, an operator): the command stops."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def note(message):
    print(f"{PROGRAM[0]}: {message}", file=sys.stderr)


def interrupted(signum, _frame):
    raise Interrupted(signum)


def failure_line(command, error, message):
    """The failed result line: ``{"result":"failed",...}``, for the probe ``{"probe":1,...}`` in the compact form of
    its result line (lambdas/shared/probe.py reads it)."""
    if command == "probe":
        return json.dumps({"probe": 1, "error": error, "message": message[:2000]}, separators=(",", ":"))
    return json.dumps({"result": "failed", "error": error, "message": message[:2000]})


def run(command, args, mains):
    """Runs ``mains["main_" + command](*args)``, which returns the result line, and prints that line; on a ``Fail``,
    a signal or a bug, prints ``{"result":"failed","error":E,"message":M}`` instead (``failure_line``). Returns the exit code:
    0, ``EXIT[E]``, 128 + the signal. Either way the result is the last (only) stdout line."""
    PROGRAM[0] = command
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, interrupted)
    code, error = 0, None
    try:
        line = mains["main_" + command](*args)
    except Fail as exc:
        error = exc.code if isinstance(exc.code, str) else HELPER_ERRORS.get(command, HELPER_ERRORS["checkpoint"]).get(exc.code)
        error, message = error or "ScriptFailed", str(exc)
        code = EXIT[error]
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        error, message, code = "ScriptFailed", f"{command}.sh was interrupted by {name}", 128 + exc.signum
    except Exception as exc:
        import traceback

        traceback.print_exc()
        error, message, code = "ScriptFailed", f"unexpected failure in {command}.sh: {type(exc).__name__}: {exc}"[:600], 70
    if error:
        note(f"{error}: {message[:2000]}")
        line = failure_line(command, error, message)
    print(line, flush=True)
    return code


# --- parameters: SSM_<Name> re-validated with the document's pattern ----------------------------------------------


PARAMETERS = {
    "RunId": (r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"),
    "InstanceId": (r"^i-[0-9a-f]{8,17}$", "expected an EC2 instance id like i-0123456789abcdef0"),
    "ExecutionName": (r"^[A-Za-z0-9_-]{1,80}$", "1-80 letters, digits, '_' or '-'"),
    "CheckpointDir": (r"^/[A-Za-z0-9._/-]{0,254}$", "expected an absolute path of letters, digits and . _ / - (at most 255 characters)"),
    "PidFile": (
        r"^(|/[A-Za-z0-9._/-]{0,254})$",
        "expected empty or an absolute path of letters, digits and . _ / - (at most 255 characters)",
    ),
    "Bucket": (r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", "expected an S3 bucket name"),
    "UploadPrefix": (r"^[A-Za-z0-9._/=+:-]{1,900}/$", "expected an S3 key prefix of letters, digits and . _ / = + : - ending in /"),
    "ManifestKey": (r"^[A-Za-z0-9._/=+:-]{1,1000}\.json$", "expected an S3 key of letters, digits and . _ / = + : - ending in .json"),
    "SaveOnSignal": (r"^(true|false)$", "expected true or false"),
}
"""The patterns (the documents' ``allowedPattern``, infra/constructs/documents.py) and hints of the parameters
several subcommands take; each subcommand adds its own."""


def param(name):
    return os.environ["SSM_" + name]


def require(variables):
    """InvalidParameter unless each of VARIABLES (SSM_<Name>) is set (an agent without ENV_VAR interpolation sets
    none)."""
    for variable in variables:
        if variable not in os.environ:
            raise Fail("InvalidParameter", f"{variable} is not set: {AGENT_HINT}")


def check_all(variables, own=None):
    """``check`` each of VARIABLES (SSM_<Name>) with the pattern and hint of its Name in OWN or ``PARAMETERS``; an
    unset or empty SSM_SaveOnSignal is false."""
    os.environ["SSM_SaveOnSignal"] = os.environ.get("SSM_SaveOnSignal") or "false"  # noqa: SIM112 - the agent's name
    for variable in variables:
        name = variable[4:]
        check(name, *((own or {}).get(name) or PARAMETERS[name]))


def check(name, pattern, hint):
    """InvalidParameter unless SSM_<NAME> matches PATTERN (``^...$``, whole value: no trailing newline slips by)."""
    value = param(name)
    if not re.fullmatch(pattern[1:-1], value):
        raise Fail("InvalidParameter", f"parameter {name} ('{value[:120]}') is invalid: {hint}")


def check_segments(name, kind):
    """Paths (KIND path) and keys (KIND key) may not contain '.', '..' or empty segments."""
    value = param(name)
    probe = value + "/" if kind == "path" else "/" + value.rstrip("/") + "/"
    if value and ("//" in probe or "/./" in probe or "/../" in probe):
        raise Fail("InvalidParameter", f"parameter {name} ('{value[:120]}') may not contain '.', '..' or empty segments")


def system_location(path):
    """Is PATH a system location of the deny list (``SYSTEM_HINT``)? autostop acts there as root, so a path tag
    (checkpoint-dir, pid-file, log-file) may not name one."""
    if path in SYSTEM_ROOTS:
        return True
    if re.match(r"/run/user/[0-9]+/.", path):
        return False
    return SYSTEM_RE.match(path) is not None


def check_not_system(name):
    value = param(name)
    if value and system_location(value):
        raise Fail("InvalidParameter", f"parameter {name} ({value[:120]}) names a system location: {SYSTEM_HINT}")


def aws_environment():
    """AWS_DEFAULT_REGION from the agent's AWS_SSM_REGION_NAME when unset; no pager for the AWS CLI."""
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_SSM_REGION_NAME") or ""
    if region:
        os.environ["AWS_DEFAULT_REGION"] = region
    else:
        os.environ.pop("AWS_DEFAULT_REGION", None)
    os.environ["AWS_PAGER"] = ""


def work_dir(command, hint):
    """A new private temp directory under TMPDIR (removed by the caller); ScriptFailed when none can be made."""
    import tempfile  # here: the probe, which never needs it, starts faster without it

    base = os.environ.get("TMPDIR") or "/tmp"
    try:
        return tempfile.mkdtemp(prefix=f"autostop-{command}.", dir=base)
    except OSError:
        raise Fail("ScriptFailed", f"cannot create a temporary directory under {base}; free disk space{hint}")


def open_dir_nofollow(path, missing=None, start=None):
    """A descriptor of directory PATH, opened one component at a time without following symbolic links (ELOOP or
    ENOTDIR where one is; the OSError's filename is the component): from "/", or from the directory descriptor START
    (left open; PATH then relative to it, "" is START itself). A missing component: FileNotFoundError, or, with
    MISSING (the parent's descriptor, the component, PATH -> the component's descriptor), what MISSING makes of it."""
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY) if start is None else os.dup(start)
    try:
        for part in path.split("/"):
            if part:
                try:
                    child = open_child_dir(part, fd)
                except FileNotFoundError:
                    if missing is None:
                        raise
                    child = missing(fd, part, path)
                os.close(fd)
                fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_child_dir(name, fd):
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)


# --- the trainer's PID file ------------------------------------------------------------------------------------


def stat_fields(pid):
    """Fields 3... of /proc/PID/stat (after the command name, which may hold spaces and parentheses), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.readline().decode("ascii", "replace")
    except OSError:
        return None
    return text.rsplit(") ", 1)[-1].split()


def pid_alive(pid):
    """Signal 0 can be delivered (or /proc/PID exists when it may not be), and, where /proc is mounted, PID is not a
    zombie (a zombie has exited; only its parent has not reaped it)."""
    try:
        os.kill(pid, 0)
    except OSError:
        if not os.path.isdir(f"/proc/{pid}"):
            return False
    if not os.path.isdir("/proc/self"):
        return True
    fields = stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X", "x")


def start_ticks(pid):
    """PID's start time in clock ticks after boot (field 22 of /proc/PID/stat), or None."""
    fields = stat_fields(pid)
    value = fields[19] if fields and len(fields) > 19 else ""
    return value if re.fullmatch(r"[0-9]{1,20}", value) else None


def pid_same(pid, start):
    """Is the process that had PID and START (``start_ticks``; None without /proc) still alive? False once it has
    exited, even if a new process got its pid."""
    return pid_alive(pid) and (start is None or start_ticks(pid) == start)


def proc_btime():
    try:
        with open("/proc/stat", encoding="ascii", errors="replace") as f:
            found = re.search(r"(?m)^btime ([0-9]+)$", f.read())
    except OSError:
        return None
    return int(found.group(1)) if found else None


def clock_ticks():
    try:
        value = os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError):
        value = 0
    return value if 0 < value < 1000000 else 100  # USER_HZ is 100 on every Linux architecture autostop runs on


def pid_is_trainer(pid, path):
    """Can live process PID be the trainer that wrote the PID file PATH? A pid is reused once its process has exited,
    so it counts only when it is not PID 1, this program or its parent, and, where /proc is mounted, runs as (real
    uid) PATH's owner (of PATH itself if it is a symbolic link; any uid if root owns it) and started no later than
    PID_FILE_SLACK s after PATH was last modified. Returns (0, "", start ticks or None) if so, (1, "", None) when
    PID is not alive, (2, why, None) when it is alive but cannot be shown to be the trainer."""
    if not pid_alive(pid):
        return 1, "", None
    if pid == 1:
        return 2, "pid 1 is init", None
    if pid in (os.getpid(), os.getppid()):
        return 2, f"pid {pid} is this script or its parent", None
    if not os.path.isdir("/proc/self"):
        return 0, "", None
    try:
        owner, mtime = os.lstat(path).st_uid, os.stat(path).st_mtime_ns // 1000000000
    except OSError:
        return 2, f"cannot read the owner and modification time of {path}", None
    ticks = start_ticks(pid)
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            status = f.read()
    except OSError:
        return 1, "", None
    if ticks is None or not pid_same(pid, ticks):  # status described this process, not a successor
        return 1, "", None
    found = re.search(r"(?m)^Uid:\s+([0-9]+)", status)
    uid = found.group(1) if found else ""
    if uid != str(owner) and owner != 0:
        return 2, f"pid {pid} runs as uid {uid or 'unknown'}, but {path} is owned by uid {owner}", None
    btime = proc_btime()
    if btime is None:
        return 2, "cannot read the boot time from /proc/stat", None
    started = btime + int(ticks) // clock_ticks()
    if started > mtime + PID_FILE_SLACK:
        return 2, f"pid {pid} started {started - mtime} s after {path} was last written", None
    return 0, "", ticks


def read_pid(path):
    """The pid (1..PID_MAX) the regular file PATH holds, surrounded by nothing but whitespace; None otherwise."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            data = f.read(65).rstrip(b"\n")
    except OSError:
        return None
    data = data.strip(b" \t\n\v\f\r")
    if len(data) > 64 or not re.fullmatch(rb"[0-9]{1,10}", data):
        return None
    pid = int(data)
    return pid if 0 < pid <= PID_MAX else None


def boot_time():
    """This boot's time (s since the epoch): AUTOSTOP_BOOT_TIME when it holds one (the local simulation, whose
    "instances" share one kernel), else btime of /proc/stat; None when neither is known."""
    value = os.environ.get("AUTOSTOP_BOOT_TIME", "")
    return int(value) if re.fullmatch(r"[0-9]{1,12}", value) else proc_btime()


def pid_file_stale(path):
    """Was PATH (followed) last written before this boot? Then whatever has its pid now is not its trainer. False
    when the boot time or the mtime cannot be read."""
    boot = boot_time()
    try:
        mtime = os.stat(path).st_mtime_ns // 1000000000
    except OSError:
        return False
    return boot is not None and mtime < boot
