"""A toy training loop that cooperates with autostop.

The local runtime starts this as a subprocess on a simulated instance, and it
is also the reference example of a *cooperative* trainer. It trains nothing:
each "step" just sleeps. What matters is how it behaves towards the control
plane, which may only stop an instance once its latest checkpoint has been
uploaded to S3 and verified. The contract is:

1. PID file. The very first thing the trainer does is write its PID to
   --pid-file, atomically (temp file + rename), so the control plane never
   reads a half-written number. The file is deliberately left in place when
   the process exits: "PID file exists but the process is gone" means the
   trainer ran and exited, while "no PID file" means it never started. The
   two cases are handled differently, so deleting the file would lose that
   information.

2. Periodic, atomic checkpoints. Every --checkpoint-every steps, and once
   more at the end, the trainer writes a checkpoint under a temporary name in
   the same directory, fsyncs it, and then renames it to its final name
   (``step-000010/`` or ``step-000010.ckpt``) and fsyncs the directory. A
   rename within one directory is atomic, so anything visible under a final
   name is complete and safe to upload. Names starting with "." or ending
   in ".tmp" are work in progress and must be ignored. Only the newest
   --keep checkpoints are kept.

3. Signals. SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 (every signal autostop:signal allows) mean "the instance is about
   to be stopped". The signal handler only records which signal arrived; the
   main loop notices it between slices of work. That way a signal that
   arrives while a checkpoint is being written never leaves a torn
   checkpoint. With the default --on-signal save-and-exit, the trainer saves
   a checkpoint of the last completed step, logs
   "received SIGTERM at step N; saved checkpoint; exiting" and exits 0.
   (exit-without-save and ignore exist to test trainers that don't
   cooperate.)

4. Completion. After the last step and the final checkpoint, the trainer
   logs the --completion-line with the step count, e.g.
   "Training complete (20 steps)".

5. Optional completion marker. With --marker-uri s3://bucket/key the
   trainer then puts a small JSON object there. This is the last thing it
   does, so once the marker exists all the work before it is finished.
   boto3 is imported only in that case; everything else uses the standard
   library.

Every log line starts with an ISO-8601 UTC timestamp and is flushed at once,
e.g. "2026-11-30T01:02:03Z step 5/20 loss=0.6667".

Exit codes: 0 on completion or after saving on a signal; 1 for a simulated
crash (--fail-at-step) or a failed marker upload; 128 + signal number
(143 for SIGTERM) for --on-signal exit-without-save.

Usage (from the repository root):

    python -m local.trainer --checkpoint-dir /tmp/ckpt --pid-file /tmp/trainer.pid
    python local/trainer.py --checkpoint-dir /tmp/ckpt --steps 100 --layout file
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import sys
import time
from datetime import UTC, datetime

CHUNK_BYTES = 1024 * 1024  # checkpoint payloads are written 1 MiB at a time
SLICE_SECONDS = 0.05  # how often a sleeping step checks for a signal
HANDLED_SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2]

# Matches complete checkpoints only: "step-000010" (dir) or "step-000010.ckpt" (file).
CHECKPOINT_NAME = re.compile(r"^step-(\d+)(\.ckpt)?$")


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def non_negative_float(text):
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def build_parser():
    """The trainer's command line (the local runtime's scenario files use these option names too)."""
    parser = argparse.ArgumentParser(description="Toy trainer that cooperates with autostop.")
    parser.add_argument("--checkpoint-dir", required=True, help="directory that receives the checkpoints")
    parser.add_argument("--pid-file", help="write our PID here first (kept after exit)")
    parser.add_argument("--log-file", help="append log lines here (default: stdout)")
    parser.add_argument("--steps", type=positive_int, default=20, help="number of training steps (default: 20)")
    parser.add_argument("--step-seconds", type=non_negative_float, default=0.1, help="simulated duration of one step (default: 0.1)")
    parser.add_argument("--checkpoint-every", type=positive_int, default=5, help="save a checkpoint every K steps (default: 5)")
    parser.add_argument("--checkpoint-bytes", type=non_negative_int, default=4096, help="payload size of each checkpoint (default: 4096)")
    parser.add_argument("--layout", choices=["file", "dir"], default="dir", help="dir: step-N/{model.bin,meta.json}; file: step-N.ckpt")
    parser.add_argument("--keep", type=positive_int, default=3, help="keep only the newest N checkpoints (default: 3)")
    parser.add_argument(
        "--on-signal",
        default="save-and-exit",
        choices=["save-and-exit", "exit-without-save", "ignore"],
        help="reaction to SIGTERM/SIGINT/SIGHUP/SIGUSR1/SIGUSR2",
    )
    parser.add_argument("--marker-uri", help="s3://bucket/key to put a completion marker at")
    parser.add_argument("--completion-line", default="Training complete", help="text logged when all steps are done")
    parser.add_argument("--fail-at-step", type=positive_int, help="simulate a crash: exit 1 at this step")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue after the newest complete checkpoint in --checkpoint-dir (what autostop's restore put there)",
    )
    parser.add_argument("--hold-seconds", type=non_negative_float, default=0.0, help="stay alive this long after finishing (default: 0)")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


# --------------------------------------------------------------------------
# Logging and small file helpers
# --------------------------------------------------------------------------


class Log:
    """Writes timestamped lines to a file (appending) or to stdout."""

    def __init__(self, path):
        if path:
            make_parent_dir(path)
            self.stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the whole run; closed at exit
        else:
            self.stream = sys.stdout

    def __call__(self, message):
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.stream.write(f"{now} {message}\n")
        self.stream.flush()  # someone may be tailing this file right now


def make_parent_dir(path):
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


def fsync_dir(path):
    """Make a rename inside `path` durable (a crash can't undo it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_pid_file(path):
    """Write our PID atomically: a reader sees either nothing or the full PID."""
    make_parent_dir(path)
    temp_path = path + ".tmp"
    with open(temp_path, "w", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(temp_path, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------


def checkpoint_name(step, layout):
    if layout == "dir":
        return f"step-{step:06d}"
    return f"step-{step:06d}.ckpt"


def temp_name(step, layout):
    # Clearly not a final name: a hidden dir, or a ".tmp" suffix.
    if layout == "dir":
        return f".step-{step:06d}.tmp"
    return f"step-{step:06d}.ckpt.tmp"


def write_payload(path, step, size):
    """Write `size` deterministic pseudo-random bytes derived from `step`.

    The bytes are produced and written one chunk at a time, so a multi-GiB
    checkpoint needs no more than 1 MiB of memory.
    """
    rng = random.Random(step)
    with open(path, "wb") as f:
        remaining = size
        while remaining > 0:
            chunk = rng.randbytes(min(CHUNK_BYTES, remaining))
            f.write(chunk)
            remaining -= len(chunk)
        f.flush()
        os.fsync(f.fileno())


def write_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def remove_path(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def save_checkpoint(args, step, log):
    """Save a checkpoint of `step` atomically: write a temp name, then rename."""
    final_path = os.path.join(args.checkpoint_dir, checkpoint_name(step, args.layout))
    if os.path.exists(final_path):
        return  # already saved (e.g. a periodic checkpoint at this very step)

    temp_path = os.path.join(args.checkpoint_dir, temp_name(step, args.layout))
    remove_path(temp_path)  # leftover from an earlier crash, if any

    if args.layout == "dir":
        os.mkdir(temp_path)
        write_payload(os.path.join(temp_path, "model.bin"), step, args.checkpoint_bytes)
        write_json(os.path.join(temp_path, "meta.json"), {"step": step, "time": time.time()})
        fsync_dir(temp_path)  # make the two new entries durable
    else:
        write_payload(temp_path, step, args.checkpoint_bytes)

    os.rename(temp_path, final_path)  # the atomic moment
    fsync_dir(args.checkpoint_dir)
    log(f"saved checkpoint {os.path.basename(final_path)}")
    delete_old_checkpoints(args, log)


def newest_step(checkpoint_dir):
    """The step of the newest complete checkpoint in `checkpoint_dir`, or 0."""
    steps = [int(m.group(1)) for name in os.listdir(checkpoint_dir) if (m := CHECKPOINT_NAME.match(name))]
    return max(steps, default=0)


def delete_old_checkpoints(args, log):
    """Keep only the newest --keep complete checkpoints."""
    checkpoints = []  # (step, name)
    for name in os.listdir(args.checkpoint_dir):
        match = CHECKPOINT_NAME.match(name)
        if match:
            checkpoints.append((int(match.group(1)), name))
    checkpoints.sort()

    for _step, name in checkpoints[: -args.keep]:
        # Rename to a temp name first, so a half-deleted checkpoint is never
        # visible under a final name.
        doomed = os.path.join(args.checkpoint_dir, f".{name}.deleting")
        os.rename(os.path.join(args.checkpoint_dir, name), doomed)
        remove_path(doomed)
        log(f"deleted old checkpoint {name}")


# --------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------

# The handler only records the signal; the main loop acts on it.
pending_signal = None


def on_signal(signum, frame):
    global pending_signal
    pending_signal = signum


def react_to_signal(args, step, log):
    """Called from the main loop between slices of work.

    `step` is the last completed step. Returns normally if training should go
    on, otherwise exits the process.
    """
    global pending_signal
    if pending_signal is None:
        return
    name = signal.Signals(pending_signal).name
    signum = pending_signal
    pending_signal = None

    if args.on_signal == "ignore":
        log(f"ignoring {name} at step {step}")
        return
    if args.on_signal == "exit-without-save":
        log(f"received {name} at step {step}; exiting without saving")
        sys.exit(128 + signum)  # 143 for SIGTERM, like a default-killed process

    # save-and-exit: the cooperative behaviour.
    save_checkpoint(args, step, log)
    log(f"received {name} at step {step}; saved checkpoint; exiting")
    sys.exit(0)


def sleep_watching_signals(seconds, args, step, log):
    """Sleep for `seconds`, reacting to signals every SLICE_SECONDS.

    A real trainer would check between micro-batches; here the "work" is a
    sleep, cut into short slices so a signal is noticed promptly even when
    steps are long.
    """
    deadline = time.monotonic() + seconds
    while True:
        react_to_signal(args, step, log)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(remaining, SLICE_SECONDS))


# --------------------------------------------------------------------------
# Completion marker
# --------------------------------------------------------------------------


def put_marker(uri, body):
    """PUT a small JSON object at s3://bucket/key."""
    import boto3  # only needed here; the rest of the trainer is stdlib-only

    if not uri.startswith("s3://") or "/" not in uri[len("s3://") :]:
        raise ValueError(f"marker URI must look like s3://bucket/key, got {uri!r}")
    bucket, key = uri[len("s3://") :].split("/", 1)
    # boto3 picks up AWS_ENDPOINT_URL (e.g. a local moto server) by itself.
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=json.dumps(body).encode(), ContentType="application/json")


# --------------------------------------------------------------------------
# Main loop
# --------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    if args.pid_file:
        write_pid_file(args.pid_file)  # first, so the control plane sees us
    log = Log(args.log_file)
    os.makedirs(args.checkpoint_dir, exist_ok=True)
    for sig in HANDLED_SIGNALS:
        signal.signal(sig, on_signal)

    log(f"starting: pid={os.getpid()} steps={args.steps} checkpoint_dir={args.checkpoint_dir}")
    first = 1
    if args.resume:
        done = newest_step(args.checkpoint_dir)
        if done:
            log(f"resumed from checkpoint {checkpoint_name(done, args.layout)} (step {done})")
            first = done + 1

    for step in range(first, args.steps + 1):
        if step == args.fail_at_step:
            log(f"simulated crash at step {step}")
            return 1

        # "Train" one step. Until it finishes, step - 1 is the last completed one.
        sleep_watching_signals(args.step_seconds, args, step - 1, log)
        loss = 2.0 / (1 + 0.1 * step)
        log(f"step {step}/{args.steps} loss={loss:.4f}")

        if step % args.checkpoint_every == 0:
            save_checkpoint(args, step, log)
        react_to_signal(args, step, log)  # a signal during the save lands here

    save_checkpoint(args, args.steps, log)  # final one (skipped if already saved)
    react_to_signal(args, args.steps, log)
    log(f"{args.completion_line} ({args.steps} steps)")

    if args.marker_uri:
        run = os.path.basename(os.path.abspath(args.checkpoint_dir))
        try:
            put_marker(args.marker_uri, {"run": run, "step": args.steps})
        except Exception as error:  # report any failure, then exit non-zero
            log(f"failed to put completion marker {args.marker_uri}: {error}")
            return 1
        log(f"put completion marker {args.marker_uri}")

    if args.hold_seconds > 0:
        log(f"holding for {args.hold_seconds}s before exiting")
        sleep_watching_signals(args.hold_seconds, args, args.steps, log)
    log("exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
