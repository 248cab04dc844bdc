"""The standard-library core: what every cooperating trainer needs, whatever its framework.

autostop stops a training instance only after the run's newest checkpoint is uploaded to S3 and verified.
To get there it signals the trainer (the PID in ``autostop:pid-file``, ``autostop:signal``, SIGTERM by
default), waits up to ``autostop:grace-seconds`` for it to save and exit, then uploads the newest
*complete* checkpoint in ``autostop:checkpoint-dir``. This module provides the trainer's side of that
contract:

- ``SignalFlag``: a handler that only records the signal; the training loop checks ``.received`` between
  steps, saves a final checkpoint and exits 0.
- ``write_pid_file``: the PID file autostop signals, written atomically and kept after exit.
- ``atomic_save`` / ``atomic_directory``: checkpoints that appear under their final name only when
  complete (temporary dot-prefixed sibling, fsync, rename, fsync of the parent).
- ``checkpoint_name``: names that carry the step (``step-00000100.pt``); autostop orders by that number.
- ``resume_checkpoint``: the restored checkpoint's path that autostop's restore hands to the resume command.
- ``put_completion_marker`` / ``log_completion``: tell autostop the run is finished.
"""

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone

# Every signal autostop:signal may name.
AUTOSTOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2")
RESUME_ENV = "AUTOSTOP_RESUME_CHECKPOINT"
CHECKPOINT_DIR_ENV = "AUTOSTOP_CHECKPOINT_DIR"
RUN_ID_ENV = "AUTOSTOP_RUN_ID"
PID_FILE_MODE = 0o644
UTC = timezone.utc  # noqa: UP017 - datetime.UTC needs Python 3.11; this package supports 3.10


# --------------------------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------------------------


def parse_signal(value: "str | int | signal.Signals") -> signal.Signals:
    """The signal for ``value``: a number, ``signal.SIGTERM``, ``"SIGTERM"`` or ``"TERM"`` (any case).

    Raises ValueError for anything that is not one of autostop's signals (TERM, INT, HUP, USR1, USR2)."""
    if isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        if name not in AUTOSTOP_SIGNALS:
            raise ValueError(f"{value!r} is not a signal autostop sends (one of {', '.join(AUTOSTOP_SIGNALS)})")
        return signal.Signals[name]
    sig = signal.Signals(value)
    if sig.name not in AUTOSTOP_SIGNALS:
        raise ValueError(f"{sig.name} is not a signal autostop sends (one of {', '.join(AUTOSTOP_SIGNALS)})")
    return sig


class SignalFlag:
    """Records that autostop's signal arrived; the training loop decides what to do about it.

    The handler only sets the flag (and remembers which signal came first), so a signal that lands in the
    middle of a checkpoint write can never tear it: the loop checks ``received`` between steps, saves a final
    checkpoint atomically and exits 0. Handlers are installed from the main thread (Python's rule) when the
    flag is created, and the previous handlers are restored by ``close()`` or at the end of a ``with``::

        with SignalFlag() as stop:            # SIGTERM; SignalFlag(["SIGTERM", "SIGUSR1"]) for more
            for step in range(start, steps):
                train_one_step()
                if stop.received:
                    save_final_checkpoint(step)
                    break

    Args:
        signals: names (``"SIGTERM"``, ``"TERM"``), numbers or ``signal.Signals``; default ``("SIGTERM",)``.
        install: install the handlers now (default); otherwise call ``install()`` later.

    Raises:
        ValueError: a signal autostop never sends, or installing from a thread other than the main one.
    """

    def __init__(self, signals: Iterable["str | int | signal.Signals"] = ("SIGTERM",), install: bool = True):
        self.signals = tuple(dict.fromkeys(parse_signal(s) for s in signals))
        if not self.signals:
            raise ValueError("SignalFlag needs at least one signal")
        self.signum: signal.Signals | None = None  # the first signal received
        self.count = 0  # how many of our signals arrived
        self._previous: dict[signal.Signals, object] = {}
        if install:
            self.install()

    @property
    def received(self) -> bool:
        """True once any of the signals arrived (stays True until ``clear()``)."""
        return self.signum is not None

    @property
    def name(self) -> str | None:
        """``"SIGTERM"`` etc. for the first signal received, else None."""
        return self.signum.name if self.signum is not None else None

    def set(self, signum: "int | signal.Signals" = signal.SIGTERM) -> None:
        """Mark the flag as if ``signum`` had arrived (e.g. a framework's own handler saw it first)."""
        self.count += 1
        if self.signum is None:
            self.signum = signal.Signals(signum)

    def clear(self) -> None:
        """Forget any signal received so far."""
        self.signum, self.count = None, 0

    def _handle(self, signum: int, frame: object) -> None:
        self.set(signum)  # nothing else: no I/O, no locks, no exceptions in a signal handler

    def install(self) -> "SignalFlag":
        """Install (or re-install, e.g. after a framework replaced it) the handler for every signal.

        The handler that was in place the first time is what ``close()`` restores."""
        if threading.current_thread() is not threading.main_thread():
            raise ValueError("signal handlers can only be installed from the main thread")
        for sig in self.signals:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)
        return self

    def installed(self) -> bool:
        """True while our handler is the one in place for every signal."""
        return all(signal.getsignal(sig) == self._handle for sig in self.signals)

    def close(self) -> None:
        """Restore the handlers that were in place before ``install()``; safe to call twice."""
        if threading.current_thread() is not threading.main_thread():
            return  # cannot touch handlers here; the process is ending anyway
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def __enter__(self) -> "SignalFlag":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------------
# Files: fsync and atomic renames
# --------------------------------------------------------------------------------------------------------


def fsync_path(path: "str | os.PathLike[str]") -> None:
    """fsync a file or a directory (for a directory: makes the entries created or renamed in it durable)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: "str | os.PathLike[str]") -> None:
    """fsync every file and directory under ``path`` (a file: just it), directories after their contents."""
    if not os.path.isdir(path) or os.path.islink(path):
        fsync_path(path)
        return
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                fsync_path(full)
        fsync_path(root)


def _temp_sibling(final_path: str, tag: "str | int | None" = None) -> str:
    """``<dir>/.<name>.tmp-<tag>``: autostop ignores names that start with '.' (and any with a 'tmp' part)."""
    parent, name = os.path.split(os.path.abspath(final_path))
    return os.path.join(parent, f".{name}.tmp-{os.getpid() if tag is None else tag}")


def _refuse_existing(final_path: str) -> None:
    if os.path.lexists(final_path):
        raise FileExistsError(errno.EEXIST, "checkpoint already exists (refusing to overwrite it)", final_path)


def remove_path(path: str) -> None:
    """Delete a file, symlink or directory tree at ``path``; nothing there is fine."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def publish(temp_path: str, final_path: str) -> str:
    """Make a finished temporary file or directory visible under ``final_path``, never replacing anything.

    fsyncs the temporary entry (recursively for a directory), renames it within its directory (atomic)
    and fsyncs the parent so the rename survives a crash. A file is published with ``link`` + ``unlink``,
    which fails atomically if ``final_path`` appeared meanwhile; where hard links are not supported, and for
    directories, the name is checked just before the rename.

    Returns the final path. Raises FileExistsError if ``final_path`` exists (``temp_path`` is left as is)."""
    fsync_tree(temp_path)
    _refuse_existing(final_path)
    if os.path.isdir(temp_path):
        os.rename(temp_path, final_path)
    else:
        try:
            os.link(temp_path, final_path)  # EEXIST if someone else won the race
            os.unlink(temp_path)
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            _refuse_existing(final_path)
            os.rename(temp_path, final_path)
    fsync_path(os.path.dirname(os.path.abspath(final_path)))
    return final_path


def atomic_save(final_path: "str | os.PathLike[str]", write_fn: Callable[[str], object]) -> str:
    """Write one checkpoint file so that it only ever appears under ``final_path`` complete.

    ``write_fn(temp_path)`` must write the whole file at exactly ``temp_path``, a dot-prefixed sibling
    (``.step-00000100.pt.tmp-<pid>``) that autostop ignores, e.g. ``lambda p: torch.save(state, p)``. The
    file is then fsynced, renamed to ``final_path`` and the directory fsynced. If ``write_fn`` raises, the
    temporary file is removed and the exception propagates; no final file appears.

    Returns the final path (a ``str``). Raises FileExistsError if ``final_path`` already exists (before
    anything is written), FileNotFoundError if ``write_fn`` wrote nothing at ``temp_path``."""
    final_path = os.fspath(final_path)
    _refuse_existing(final_path)
    os.makedirs(os.path.dirname(os.path.abspath(final_path)), exist_ok=True)
    temp_path = _temp_sibling(final_path)
    remove_path(temp_path)  # a leftover of an earlier process with our PID
    try:
        write_fn(temp_path)
        if not os.path.lexists(temp_path):
            raise FileNotFoundError(errno.ENOENT, "write_fn did not write the checkpoint it was given", temp_path)
        return publish(temp_path, final_path)
    except BaseException:
        remove_path(temp_path)
        raise


@contextlib.contextmanager
def atomic_directory(final_dir: "str | os.PathLike[str]", tag: "str | int | None" = None) -> Iterator[str]:
    """A directory checkpoint that appears under ``final_dir`` only once everything in it is written.

    Yields a fresh temporary sibling (``.<name>.tmp-<pid>``, ignored by autostop) to write into; when the
    ``with`` body finishes, every file and directory in it is fsynced, it is renamed to ``final_dir`` and
    the parent fsynced. If the body raises, the temporary directory is deleted and no final directory
    appears::

        with atomic_directory(os.path.join(ckpt_dir, checkpoint_name(step))) as tmp:
            torch.save(model.state_dict(), os.path.join(tmp, "model.pt"))
            torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))

    Args:
        final_dir: the directory's final path; its parent is created if missing.
        tag: replaces the PID in the temporary name (when several processes must agree on it).

    Raises:
        FileExistsError: ``final_dir`` already exists (checked on entry and before the rename).
    """
    final_dir = os.fspath(final_dir)
    _refuse_existing(final_dir)
    os.makedirs(os.path.dirname(os.path.abspath(final_dir)), exist_ok=True)
    temp_dir = _temp_sibling(final_dir, tag)
    remove_path(temp_dir)
    os.mkdir(temp_dir)
    try:
        yield temp_dir
        publish(temp_dir, final_dir)
    except BaseException:
        remove_path(temp_dir)
        raise


# --------------------------------------------------------------------------------------------------------
# PID file
# --------------------------------------------------------------------------------------------------------


def write_pid_file(path: "str | os.PathLike[str]", pid: int | None = None) -> str:
    """Write the trainer's PID (first line, then a newline) to ``path``, atomically, mode 0644.

    Call it as early as possible, from the process autostop must signal, running as the trainer's own user:
    autostop only signals a live process owned by the file's owner that started before the file was written.
    The file is written to a temporary sibling, fsynced, renamed over ``path`` and the directory fsynced, so
    a reader sees the old content or the new PID, never a partial number. Leave it in place at exit: autostop
    tells "the trainer exited" from "it never started" by it.

    Under torchrun the process to signal is torchrun itself (it forwards the signal to every worker, then
    SIGKILLs them after ``--shutdown-timeout``): pass ``pid=autostop_trainer.distributed.launcher_pid()``
    from local rank 0, or use ``write_launcher_pid_file``.

    Args:
        path: where the PID goes; parent directories are created.
        pid: the PID to write; default ``os.getpid()``.

    Returns the path written. Raises ValueError if ``path`` is a symbolic link (never written through) or a
    directory, or if ``pid`` is not a positive integer.
    """
    path = os.fspath(path)
    pid = os.getpid() if pid is None else pid
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 1:
        raise ValueError(f"pid must be a positive integer, got {pid!r}")
    if os.path.islink(path):
        raise ValueError(f"refusing to write the PID file through a symbolic link: {path}")
    if os.path.isdir(path):
        raise ValueError(f"the PID file path is a directory: {path}")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, temp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            os.fchmod(f.fileno(), PID_FILE_MODE)  # not subject to the umask
            f.write(f"{pid}\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(temp_path, path)  # replaces a regular file; never follows a link
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        raise
    fsync_path(parent)
    return path


def read_pid_file(path: "str | os.PathLike[str]") -> int:
    """The PID on the first line of a PID file. Raises ValueError if it holds no positive integer."""
    with open(path, encoding="ascii") as f:
        first = f.readline().strip()
    if not first.isdigit() or int(first) < 1:
        raise ValueError(f"{os.fspath(path)} holds no PID on its first line: {first!r}")
    return int(first)


def is_regular_file(path: "str | os.PathLike[str]") -> bool:
    """True if ``path`` is a regular file and not a symbolic link."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


# --------------------------------------------------------------------------------------------------------
# Names and resume
# --------------------------------------------------------------------------------------------------------


def checkpoint_name(step: int, prefix: str = "step-", width: int = 8, suffix: str = "") -> str:
    """A checkpoint name that carries its step, e.g. ``checkpoint_name(100, suffix=".pt")`` -> ``step-00000100.pt``.

    autostop orders checkpoints by the number after ``step`` (then ``iter``, then ``epoch``; Lightning's
    ``epoch=2-step=260.ckpt`` counts as step 260), never by modification time when a step is there. Zero
    padding keeps ``ls`` in step order too.

    Args:
        step: the number of completed optimizer steps, >= 0.
        prefix: text before the number; must not start with '.' (autostop would ignore the checkpoint).
        width: zero-pad the number to this many digits (0 for none).
        suffix: text after the number, e.g. ``".pt"`` or ``".ckpt"``.

    Raises ValueError for a negative or non-integer step, a '/' in prefix or suffix, or a dot-prefixed name.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    if "/" in prefix + suffix or "\0" in prefix + suffix:
        raise ValueError("prefix and suffix must not contain '/'")
    if prefix.startswith("."):
        raise ValueError(f"a name starting with '.' is a temporary name that autostop ignores: {prefix!r}")
    return f"{prefix}{step:0{width}d}{suffix}"


def resume_checkpoint() -> str | None:
    """The checkpoint to resume from: ``$AUTOSTOP_RESUME_CHECKPOINT``, or None when there is none.

    autostop's restore sets it when it starts ``autostop:resume-command`` after downloading and checking the
    run's last verified checkpoint (a file or a directory inside ``autostop:checkpoint-dir``). Resume from
    exactly this path; with Lightning never use ``ckpt_path="last"``: when no ``last.ckpt`` exists it only
    warns and silently trains from step 0."""
    return os.environ.get(RESUME_ENV) or None


# --------------------------------------------------------------------------------------------------------
# Completion
# --------------------------------------------------------------------------------------------------------


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``("bucket", "key")`` for ``s3://bucket/key``. Raises ValueError for anything else."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ValueError(f"marker URI must look like s3://bucket/key, got {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ValueError(f"marker URI must look like s3://bucket/key, got {uri!r}")
    return bucket, key


def _endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _marker_body(payload: dict | None) -> bytes:
    body = {"run": os.environ.get(RUN_ID_ENV), "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    body.update(payload or {})
    return (json.dumps(body, sort_keys=True) + "\n").encode()


def _put_with_boto3(bucket: str, key: str, body: bytes) -> None:
    import boto3  # optional: only when installed

    client = boto3.client("s3", endpoint_url=_endpoint_url())
    client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")


def _put_with_cli(bucket: str, key: str, body: bytes, aws: str = "aws") -> None:
    with tempfile.NamedTemporaryFile(prefix="autostop-marker-", suffix=".json") as f:
        f.write(body)
        f.flush()
        argv = [aws, "s3api", "put-object", "--bucket", bucket, "--key", key, "--body", f.name, "--content-type", "application/json"]
        if _endpoint_url():
            argv += ["--endpoint-url", _endpoint_url()]
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"aws s3api put-object s3://{bucket}/{key} failed ({done.returncode}): {why}")


IMDS = "http://169.254.169.254"


def instance_identity(timeout: float = 2.0) -> dict:
    """This EC2 instance's identity document from the instance metadata service (IMDSv2: a session token first).

    Returns its JSON (``instanceId``, ``region``, ``accountId``, ...). Raises OSError when there is no IMDS
    (not on EC2, or metadata turned off). Units: ``timeout`` in seconds per request."""
    import urllib.request

    token_request = urllib.request.Request(f"{IMDS}/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    with urllib.request.urlopen(token_request, timeout=timeout) as resp:
        token = resp.read().decode()
    document = urllib.request.Request(f"{IMDS}/latest/dynamic/instance-identity/document", headers={"X-aws-ec2-metadata-token": token})
    with urllib.request.urlopen(document, timeout=timeout) as resp:
        return json.loads(resp.read())


def instance_prefix(identity: dict | None = None) -> str:
    """``instances/<instance ARN>/``: the only keys this instance may write in autostop's bucket (the stack's
    instance policy grants ``instances/${ec2:SourceInstanceARN}/*``). IDENTITY defaults to the instance's
    identity document (:func:`instance_identity`)."""
    doc = identity if identity is not None else instance_identity()
    region = doc["region"]
    partition = "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"
    return f"instances/arn:{partition}:ec2:{region}:{doc['accountId']}:instance/{doc['instanceId']}/"


def default_marker_uri(bucket: str, run_id: str | None = None, identity: dict | None = None) -> str:
    """The run's default completion marker, ``s3://<bucket>/instances/<instance ARN>/runs/<run-id>/_SUCCESS``.
    RUN_ID defaults to ``$AUTOSTOP_RUN_ID``; raises ValueError when there is none."""
    run = run_id or os.environ.get("AUTOSTOP_RUN_ID")
    if not run:
        raise ValueError("no run id: pass run_id or set AUTOSTOP_RUN_ID")
    return f"s3://{bucket}/{instance_prefix(identity)}runs/{run}/_SUCCESS"


def put_completion_marker(uri: str, payload: dict | None = None, client: str = "auto") -> str:
    """Put the run's completion marker: a small JSON object at ``uri`` (by default
    :func:`default_marker_uri`: ``s3://<bucket>/instances/<instance ARN>/runs/<run-id>/_SUCCESS``).

    Put it as the very last thing, from one process only (rank 0), after the final checkpoint is written,
    and never after a stop requested by autostop's signal: a marker says "the run is finished". autostop
    counts it only if it is newer than the instance's launch and its key contains the run id.

    Args:
        uri: ``s3://bucket/key``.
        payload: extra JSON fields; ``run`` ($AUTOSTOP_RUN_ID) and ``time`` (UTC) are always there.
        client: ``"auto"`` (boto3 if importable, else the AWS CLI), ``"boto3"`` or ``"cli"``. The CLI is run
            with an argument list (no shell). Both honour ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``.

    Returns the URI. Raises ValueError for a bad URI or client, RuntimeError when the CLI fails, and
    boto3's errors as they are.
    """
    bucket, key = split_s3_uri(uri)
    if client not in ("auto", "boto3", "cli"):
        raise ValueError(f"client must be 'auto', 'boto3' or 'cli', got {client!r}")
    body = _marker_body(payload)
    if client == "auto":
        try:
            import boto3  # noqa: F401
        except ImportError:
            client = "cli"
    if client == "cli":
        _put_with_cli(bucket, key, body)
    else:
        _put_with_boto3(bucket, key, body)
    return uri


def log_completion(line: str = "Training complete", path: "str | os.PathLike[str] | None" = None) -> str:
    """Log the completion line that ``autostop:log-pattern`` matches, prefixed with an ISO-8601 UTC time.

    Appends to ``path`` (created if missing, fsynced) or, without one, writes to stdout and flushes. Log it
    once, at the very end, and not after a stop requested by autostop's signal. Returns the full line."""
    full = f"{datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')} {line}"
    if path is None:
        sys.stdout.write(full + "\n")
        sys.stdout.flush()
        return full
    with open(path, "a", encoding="utf-8") as f:
        f.write(full + "\n")
        f.flush()
        os.fsync(f.fileno())
    return full
