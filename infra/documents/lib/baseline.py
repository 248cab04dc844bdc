"""autostop's on-instance program: this boot's log baseline (stdlib only), which the restore records and the probe
reads (the probe records it too, at its first run in a boot when no restore did).

Log lines count as completion evidence only when written after this boot's baseline: an earlier session's "training
complete" never ends a new session. The baseline of log file L is STATE/log-baselines/<hex SHA-256 of the path L>
(``log_baseline_file``), one line ``{"boot":B,"dev":D,"ino":I,"offset":O}``: boot B (``boot_key``), the log's st_dev
and st_ino (0 0 when it did not exist) and its size O then. STATE is ``state_dir()``, root's /var/lib/autostop on an
instance. Pasted after ``lib/instance.py`` into the probe and restore documents only (the others never need it); the
probe reads the line back (``read_baseline`` in lib/probe.py).
"""

import contextlib
import hashlib
import json
import os
import re

if "open_child_dir" not in globals():  # run on its own (tests, linters); the documents paste lib/instance.py above
    from instance import boot_time, open_child_dir


def state_dir():
    """AUTOSTOP_STATE_DIR (default /var/lib/autostop), created 0755 when missing; None unless it is an absolute path
    to a real directory owned by this user and not writable by group or others."""
    path = os.environ.get("AUTOSTOP_STATE_DIR") or "/var/lib/autostop"
    try:
        if not path.startswith("/"):
            return None
        if not os.path.isdir(path):
            os.makedirs(path, 0o755)
            os.chmod(path, 0o755)
        st = os.lstat(path)
    except OSError:
        return None
    private = st.st_uid == os.geteuid() and not st.st_mode & 0o022 and not os.path.islink(path)
    return path if private else None


def boot_key():
    """This boot's identity: AUTOSTOP_BOOT_ID (tests), else boot-time-<AUTOSTOP_BOOT_TIME> (the local simulation),
    else /proc/sys/kernel/random/boot_id, else btime-<btime of /proc/stat>; None when none is known."""
    given, simulated = os.environ.get("AUTOSTOP_BOOT_ID", ""), os.environ.get("AUTOSTOP_BOOT_TIME", "")
    if re.fullmatch(r"[A-Za-z0-9-]{1,64}", given):
        return given
    if re.fullmatch(r"[0-9]{1,12}", simulated):
        return f"boot-time-{int(simulated)}"
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            found = f.readline().strip()
    except (OSError, ValueError):
        found = ""
    if re.fullmatch(r"[0-9a-f-]{36}", found):
        return found
    btime = boot_time()
    return None if btime is None else f"btime-{btime}"


def log_baseline_file(state, log_file):
    """``STATE/log-baselines/<hex SHA-256 of the LOG_FILE path>``: where the probe finds this boot's baseline."""
    return os.path.join(state, "log-baselines", hashlib.sha256(os.fsencode(log_file)).hexdigest())


def write_baseline(path, boot, dev, ino, offset):
    """Records the baseline ``(boot, dev, ino, offset)`` in PATH (``log_baseline_file``): a new file (0600, O_EXCL)
    in log-baselines/ (``open_baselines_dir``, created 0755 when missing), synced, then renamed over PATH. OSError
    when it cannot."""
    directory, name = os.path.split(path)
    dfd = open_baselines_dir(directory, create=True)
    try:
        tmp = ".baseline.{}.{}".format(os.getpid(), os.urandom(4).hex())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NOCTTY, 0o600, dir_fd=dfd)
        try:
            line = json.dumps({"boot": boot, "dev": dev, "ino": ino, "offset": offset}, separators=(",", ":")) + "\n"
            try:
                os.write(fd, line.encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
    finally:
        os.close(dfd)


def open_baselines_dir(directory, create=False):
    """A descriptor of DIRECTORY, ``STATE/log-baselines``: STATE (``state_dir``) and log-baselines are opened
    O_NOFOLLOW, never through a symbolic link of their own; the directories above STATE are root's configuration
    (/var/lib, as the system has it: /var may be a link) and are followed, as they always were. With CREATE,
    log-baselines is created (0755) when missing. OSError when it cannot be opened."""
    state, name = os.path.split(directory)
    sfd = os.open(state, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=sfd)
        return open_child_dir(name, sfd)
    finally:
        os.close(sfd)
