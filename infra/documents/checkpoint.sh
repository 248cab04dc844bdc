#!/usr/bin/env bash
# autostop checkpoint: run by the checkpoint SSM Command document (aws:runShellScript) once the
# control plane has decided that a training run is complete (Mode stop), or on a spot interruption
# notice (Mode interruption).
#
# Contract
#   Input   The document's parameters as environment variables (interpolationType ENV_VAR, SSM Agent
#           3.3.2746.0 or later): SSM_RunId SSM_InstanceId SSM_ExecutionName SSM_CheckpointDir
#           SSM_PidFile (may be empty) SSM_Bucket SSM_UploadPrefix SSM_ManifestKey SSM_Signal
#           SSM_GraceSeconds SSM_PartSizeBytes SSM_DecisionTime SSM_Mode (stop | interruption). Every value
#           is re-validated with the document's regex; this script never contains document placeholders.
#           Region: AWS_DEFAULT_REGION, else AWS_SSM_REGION_NAME (set by the agent). AWS_ENDPOINT_URL is
#           honoured by the CLI.
#   Effect  1. Sends SIG<Signal> ONCE to the live trainer named by PidFile and waits up to GraceSeconds
#              for it to exit (a zombie counts as exited). A live process only counts as the trainer if it
#              is not PID 1, this script or its parent and, where /proc is mounted, runs as (real uid) the
#              PID file's owner (any uid if root owns the file) and started no later than 2 s after the
#              file's mtime; any other live process is never signalled, and the script fails with
#              TrainerUnverified (65) before uploading anything (a reused pid, or a stepped clock: unknown).
#              A PID file last written before this boot (btime of /proc/stat, or AUTOSTOP_BOOT_TIME) is stale:
#              nothing is signalled (trainer not_running).
#              Mode stop: a trainer still running after GraceSeconds fails TrainerDidNotExit (nothing uploaded).
#              Mode interruption (spot notice): it does not; the trainer is left running (still_running) and
#              the newest complete checkpoint on disk is uploaded by the same rules (it may be older).
#           2. Picks the newest checkpoint among the top-level entries of CheckpointDir. CheckpointDir must
#              not be or pass through a symbolic link (NoCheckpoint). An entry is a checkpoint when
#              - its name carries a step number: (case-insensitively) a digit run at the start, after a
#                character that is not a letter or digit, or right after step, iter, iteration, epoch,
#                checkpoint, ckpt or model (step-100, iter_0042.pt, global_step100, epoch=2-step=120.ckpt;
#                not latest, runs, zero_to_fp32.py),
#              - its name does not look temporary: it starts with '.' or ends with '~', contains
#                "orbax-checkpoint-tmp", or one of its '.', '-', '_' separated tokens starts with "tmp" or is
#                temp, partial, part, incomplete, lock, inprogress or writing,
#              - it is a regular file, or a directory (not a symlink) that holds at least one regular file
#                and nothing, at any depth, whose name looks temporary by the same rule (a leading '.' is
#                allowed below the top level: .metadata). Symlinks below it are not uploaded.
#              Newest mtime (of the file; of the directory or any file in it) wins, ties go to the greatest
#              name. With none, NoCheckpoint lists the newest 5 ignored entries and why.
#           3. Uploads it below UploadPrefix with SHA-256 checksums that S3 verifies (PutObject up to
#              PartSizeBytes, multipart above; a failed multipart upload is aborted). Each file is read
#              through O_NOFOLLOW and must still be the very file chosen (st_dev, st_ino, size, mtime from
#              lstat at selection), before it is hashed and after it is uploaded; otherwise UploadFailed
#              ("file P changed during the checkpoint"). The CLI opens the path itself for PutObject:
#              S3 rejects bytes that do not match the checksum computed from the verified file.
#           4. Uploads the manifest LAST to ManifestKey: it adds "mode", "fresh" and "layout" (file | directory)
#              to the fields of schema 1. Nothing is deleted on the instance.
#   Output  Diagnostics on stderr. The LAST stdout line is exactly one JSON object:
#             {"result":"uploaded","manifest":"s3://B/K","files":N,"bytes":B,"trainer":T,"checkpoint":NAME,"step":N,
#              "fresh":F}
#             T: exited | not_running | pid_file_missing | pid_file_unreadable | not_configured | still_running
#                (still_running only in Mode interruption)
#             F: true when the trainer was signalled and the checkpoint's newest mtime is at or after that moment.
#             step (also the manifest's): the number after step/iter/epoch in NAME, else NAME's last step number.
#           or {"result":"failed","error":E,"message":"..."}.
#   Exit    0 uploaded; 64 InvalidParameter; 65 TrainerDidNotExit / TrainerUnverified; 66 NoCheckpoint; 67 UploadFailed;
#           68 ManifestFailed; 70 ScriptFailed (unexpected).
#   Needs   bash >= 4.2, coreutils, getconf (else CLK_TCK 100), python3 (stdlib only), AWS CLI v1 or
#           v2. Temp files (one multipart part at a time) go to a mktemp directory under ${TMPDIR:-/tmp},
#           removed on exit.
# shellcheck disable=SC2154,SC2329 # SSM_* come from the agent; py() assigns via printf -v; traps call functions
[ -n "${BASH_VERSION:-}" ] || { printf '%s\n' '{"result":"failed","error":"ScriptFailed","message":"checkpoint.sh must be run by bash"}'; exit 70; }
set -euo pipefail
set -o errtrace
export LC_ALL=C
umask 077

readonly EX_INVALID=64 EX_TRAINER=65 EX_NOCKPT=66 EX_UPLOAD=67 EX_MANIFEST=68 EX_SCRIPT=70
readonly MIN_PART_SIZE=5242880         # S3 minimum part size (all parts but the last)
readonly MAX_PART_SIZE=5368709120      # S3 maximum part size and PutObject size (5 GiB)
readonly MAX_OBJECT_SIZE=5497558138880 # S3 maximum object size (5 TiB)
readonly MAX_PARTS=10000

FINAL_PRINTED=0 # set once the single final JSON line is on stdout
WORK=""         # mktemp directory
MPU_KEY=""      # multipart upload in progress (aborted by the EXIT trap)
MPU_ID=""
PYHELPER=""

log() { printf 'checkpoint: %s\n' "$*" >&2; }

# @include lib/fail.sh

on_err() {
  fail ScriptFailed "unexpected failure (exit status $1) at line $2 of checkpoint.sh: ${3:0:300}" "$EX_SCRIPT"
}

abort_multipart() {
  [[ -n $MPU_ID ]] || return 0
  log "aborting multipart upload of s3://${SSM_Bucket}/${MPU_KEY}"
  aws s3api abort-multipart-upload --bucket="$SSM_Bucket" --key="$MPU_KEY" --upload-id="$MPU_ID" \
    </dev/null >/dev/null 2>&2 || log "could not abort the multipart upload; S3 lifecycle rules will remove it"
  MPU_ID=""
}

on_exit() {
  local rc=$?
  trap - ERR
  set +e
  [[ $BASHPID == "$$" ]] || return 0
  abort_multipart
  [[ -z $WORK ]] || rm -rf -- "$WORK"
  if ((FINAL_PRINTED == 0)); then
    ((rc != 0)) || rc=$EX_SCRIPT
    fail ScriptFailed "checkpoint.sh stopped unexpectedly (exit status $rc)" "$rc"
  fi
}

trap 'on_err "$?" "$LINENO" "$BASH_COMMAND"' ERR
trap on_exit EXIT
trap 'fail ScriptFailed "checkpoint.sh was interrupted by SIGTERM" 143' TERM
trap 'fail ScriptFailed "checkpoint.sh was interrupted by SIGINT" 130' INT
trap 'fail ScriptFailed "checkpoint.sh was interrupted by SIGHUP" 129' HUP

# --- Python helper (stdlib only). Exit status: 0 ok, 3 NoCheckpoint, 4 UploadFailed, 5 ManifestFailed;
# on 3-5 the message is its stdout. Anything else is a bug (ScriptFailed).
IFS= read -r -d '' PYHELPER <<'PY' || true
import base64, datetime, errno, hashlib, json, os, re, stat, sys

CHUNK = 8 * 1024 * 1024
# A name looks temporary when it starts with '.' (top level only), ends with '~', contains
# "orbax-checkpoint-tmp", or one of its '.', '-', '_' separated tokens starts with "tmp" or is one of these.
TEMP_TOKENS = frozenset(("temp", "partial", "part", "incomplete", "lock", "inprogress", "writing"))
TOKEN_SEP_RE = re.compile(r"[._-]")
# A step number in a (lower-cased) name: a digit run at the start, after a character that is neither a letter
# nor a digit, or right after one of these words (global_step100, iter_5, epoch-3, checkpoint-500, step=7);
# not the "32" of zero_to_fp32.py nor the "2" of v2.
STEP_NUMBER_RE = re.compile(r"(?:^|[^a-z0-9])(?:step|iter|iteration|epoch|checkpoint|ckpt|global_step|model)?[-_]?0*([0-9]+)")
STEP_RE = re.compile(r"(?:step|iter|epoch)[-_]?0*([0-9]+)")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
SHOW_IGNORED = 5


class Fail(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def b64(digest):
    return base64.b64encode(digest).decode("ascii")


def iso(ns):
    return datetime.datetime.fromtimestamp(ns // 1_000_000_000, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_temp(name, top):
    low = name.lower()
    if (top and low.startswith(".")) or low.endswith("~") or "orbax-checkpoint-tmp" in low:
        return True
    return any(t.startswith("tmp") or t in TEMP_TOKENS for t in TOKEN_SEP_RE.split(low))


def step_of(name):
    """The step a checkpoint name carries: the step/iter/epoch number, else its last step number, else None."""
    low = name.lower()
    match = STEP_RE.search(low)
    if match:
        return int(match.group(1))
    numbers = STEP_NUMBER_RE.findall(low)
    return int(numbers[-1]) if numbers else None


def show(path):
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


def log(message):
    print(f"checkpoint: {message}", file=sys.stderr)


def identity(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def changed(path, detail):
    return (f"file {show(path)} changed during the checkpoint ({detail}); make sure nothing, the trainer included, "
            "writes to the checkpoint directory while autostop uploads it")


def open_dir_nofollow(path):
    """A descriptor of directory PATH, opened one component at a time without following symbolic links."""
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in path.split("/"):
            if part:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
                os.close(fd)
                fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def scan_dir(ckdir, ckfd, name):
    """(newest mtime_ns, [file]) of directory checkpoint NAME, or (None, why it is not complete).

    A file is (absolute path, path below NAME, size, mtime_ns, st_dev, st_ino), taken from lstat."""
    files, newest, walked = [], os.stat(name, dir_fd=ckfd, follow_symlinks=False).st_mtime_ns, False

    def onerror(exc):
        where = exc.filename if isinstance(exc.filename, str) else name  # a descriptor when listing failed
        raise Fail(4, f"cannot read {show(os.path.join(ckdir, where))}: {exc.strerror}; fix its permissions and retry")

    def lstat(entry, fd, path):
        try:
            return os.stat(entry, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise Fail(4, f"cannot read {show(path)}: {exc.strerror}; fix its permissions and retry")

    # fwalk opens each directory relative to its parent's descriptor and never enters a symbolic link, even
    # one swapped in while it walks.
    for root, dirs, names, rootfd in os.fwalk(name, onerror=onerror, follow_symlinks=False, dir_fd=ckfd):
        walked = True
        for entry in sorted(dirs + names):
            if is_temp(entry, top=False):
                return None, f"it contains {show(os.path.join(root, entry))}, which is temporary"
        for entry in dirs:
            full = os.path.join(ckdir, root, entry)
            if stat.S_ISLNK(lstat(entry, rootfd, full).st_mode):
                log(f"not uploading {show(full)} (symlink)")
        for entry in names:
            full = os.path.join(ckdir, root, entry)
            st = lstat(entry, rootfd, full)
            if not stat.S_ISREG(st.st_mode):
                log(f"not uploading {show(full)} (not a regular file)")
                continue
            files.append((full, os.path.relpath(os.path.join(root, entry), name), st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino))
            newest = max(newest, st.st_mtime_ns)
    if not walked:
        return None, "it was replaced while it was being scanned"
    if not files:
        return None, "it holds no files"
    files.sort(key=lambda f: f[1])
    return (newest, files), None


def refuse_symlinked(ckdir):
    real = os.path.realpath(ckdir)
    if real != os.path.normpath(ckdir):
        raise Fail(3, f"checkpoint-dir {ckdir} is or passes through a symbolic link (to {real}); tag the real path")


def cmd_select(ckdir, prefix, manifest_key, work):
    refuse_symlinked(ckdir)
    try:
        ckfd = open_dir_nofollow(ckdir)  # and should a link have been swapped in since the check: ELOOP or ENOTDIR
        names = sorted(os.listdir(ckfd))
    except FileNotFoundError:
        raise Fail(3, f"the checkpoint directory {ckdir} does not exist on this instance; check the checkpoint-dir tag")
    except OSError as exc:
        refuse_symlinked(ckdir)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Fail(3, f"the checkpoint directory {ckdir} is not a directory; check the checkpoint-dir tag")
        raise Fail(3, f"cannot list the checkpoint directory {ckdir}: {exc.strerror}")
    candidates, ignored = [], []
    for name in names:
        try:
            st = os.stat(name, dir_fd=ckfd, follow_symlinks=False)
            if is_temp(name, top=True):
                why = "temporary name"
            elif stat.S_ISLNK(st.st_mode):
                why = "symbolic link"
            elif not STEP_NUMBER_RE.search(name.lower()):
                why = "no step number in the name"
            elif stat.S_ISREG(st.st_mode):
                candidates.append((st.st_mtime_ns, name, False, [(os.path.join(ckdir, name), name, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)]))
                continue
            elif not stat.S_ISDIR(st.st_mode):
                why = "not a regular file or directory"
            else:
                found, why = scan_dir(ckdir, ckfd, name)
                if found is not None:
                    candidates.append((found[0], name, True, found[1]))
                    continue
        except FileNotFoundError:
            log(f"{show(os.path.join(ckdir, name))} disappeared while it was being scanned; ignoring it")
            continue
        except OSError as exc:
            raise Fail(4, f"cannot read {show(os.path.join(ckdir, exc.filename or name))}: {exc.strerror}; fix its permissions and retry")
        ignored.append((st.st_mtime_ns, name, why))
    os.close(ckfd)
    ignored.sort(key=lambda i: (i[0], i[1]), reverse=True)  # newest first: what the user most likely expected
    listing = ", ".join(f"{show(name)[:100]} ({why})" for _, name, why in ignored[:SHOW_IGNORED])
    if len(ignored) > SHOW_IGNORED:
        listing += f", and {len(ignored) - SHOW_IGNORED} more"
    if not candidates:
        found = f"ignored {listing}" if ignored else "it is empty"
        raise Fail(3, f"no complete checkpoint in {ckdir}: {found}. A checkpoint is a file or a directory of files whose name "
                      "carries its step number (step-100, iter_100, checkpoint-100, global_step100) and does not look "
                      "temporary; save one there before the run ends")
    mtime, name, is_dir, files = max(candidates, key=lambda c: (c[0], c[1]))
    log(f"chose {show(name)} ({len(files)} file(s)) among {len(candidates)} candidate(s)")
    if ignored:
        log(f"ignored {listing}")
    plan = bytearray()
    for full, rel, size, file_mtime, dev, ino in files:
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            raise Fail(4, f"the file name {show(full)} is not valid UTF-8 and cannot be an S3 key; rename it")
        if CONTROL_RE.search(rel):
            raise Fail(4, f"the file name {show(full)!r} contains control characters and cannot be an S3 key; rename it")
        key = prefix + name + ("/" + rel if is_dir else "")
        if len(key.encode("utf-8")) > 1024:
            raise Fail(4, f"the S3 key for {show(full)} would be longer than 1024 bytes; use shorter file names")
        if key == manifest_key:
            raise Fail(4, f"the checkpoint file {show(full)} would overwrite the manifest key {manifest_key}")
        for field in (full, rel, key, str(size), str(file_mtime), str(dev), str(ino)):
            plan += os.fsencode(field) + b"\0"
    choice = {
        "name": name,
        "path": os.path.join(ckdir, name),
        "mtime": iso(mtime),
        "mtime_ns": mtime,
        "layout": "directory" if is_dir else "file",
        "step": step_of(name),
    }
    with open(os.path.join(work, "plan"), "wb") as f:
        f.write(plan)
    with open(os.path.join(work, "choice.json"), "w", encoding="utf-8") as f:
        json.dump(choice, f)


def open_chosen(path, size, mtime_ns, dev, ino):
    """Open the file chosen at PATH, without following a symbolic link, and make sure that it is still the very
    file that was chosen: same device, inode, size and mtime."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR):
            raise Fail(4, changed(path, "it is gone or is now a symbolic link"))
        raise Fail(4, f"cannot read {show(path)}: {exc.strerror}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or identity(st) != (int(dev), int(ino), int(size), int(mtime_ns)):
            raise Fail(4, changed(path, "it is no longer the file that was chosen"))
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def cmd_hash(path, size, mtime_ns, dev, ino):
    h = hashlib.sha256()
    with open_chosen(path, size, mtime_ns, dev, ino) as f:
        try:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
        except OSError as exc:
            raise Fail(4, f"cannot read {show(path)}: {exc.strerror}")
    print(h.hexdigest(), b64(h.digest()))


def cmd_part(path, size, mtime_ns, dev, ino, offset, length, out):
    offset, length = int(offset), int(length)
    h = hashlib.sha256()
    with open_chosen(path, size, mtime_ns, dev, ino) as src:
        src.seek(offset)
        try:
            with open(out, "wb") as dst:
                left = length
                while left:
                    chunk = src.read(min(CHUNK, left))
                    if not chunk:
                        raise Fail(4, changed(path, "it shrank while it was being uploaded"))
                    h.update(chunk)
                    dst.write(chunk)
                    left -= len(chunk)
        except OSError as exc:
            raise Fail(4, f"cannot write a {length}-byte upload part to {out}: {exc.strerror}; free space in the temp directory (TMPDIR) or lower the part size")
    print(h.hexdigest(), b64(h.digest()))


def response(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise Fail(4, f"the AWS CLI printed an unreadable response ({exc})")


def same_checksum(resp, expected, what):
    got = resp.get("ChecksumSHA256")
    if got and got.split("-")[0] != expected.split("-")[0]:
        raise Fail(4, f"S3 reported SHA-256 checksum {got} for {what}, but the instance computed {expected}; retry the upload")


def cmd_field(path, name):
    value = response(path).get(name)
    if not isinstance(value, str) or not value or "\n" in value:
        raise Fail(4, f"the AWS CLI response has no {name}")
    print(value)


def cmd_addpart(resp_path, parts_path, number, checksum, hexdigest):
    resp = response(resp_path)
    etag = resp.get("ETag")
    if not isinstance(etag, str) or not etag:
        raise Fail(4, f"UploadPart returned no ETag for part {number}")
    same_checksum(resp, checksum, f"part {number}")
    with open(parts_path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"PartNumber": int(number), "ETag": etag, "ChecksumSHA256": checksum, "hex": hexdigest}) + "\n")


def cmd_complete(parts_path, out):
    with open(parts_path, encoding="utf-8") as f:
        parts = [json.loads(line) for line in f if line.strip()]
    composite = hashlib.sha256(b"".join(bytes.fromhex(p.pop("hex")) for p in parts)).digest()
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"Parts": parts}, f)
    print(f"{b64(composite)}-{len(parts)}")


def cmd_record(files_path, resp_path, full, rel, key, size, mtime_ns, dev, ino, hexdigest, checksum, parts):
    same_checksum(response(resp_path), checksum, key)
    try:
        st = os.lstat(full)
    except OSError as exc:
        raise Fail(4, changed(full, f"it disappeared while it was being uploaded: {exc.strerror}"))
    if identity(st) != (int(dev), int(ino), int(size), int(mtime_ns)):
        raise Fail(4, changed(full, "it was modified or replaced while it was being uploaded"))
    record = {"key": key, "path": rel, "size": int(size), "sha256": hexdigest, "checksum_sha256": checksum, "parts": int(parts)}
    try:
        with open(files_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise Fail(5, f"cannot record {key} for the manifest: {exc.strerror}")


def load(work):
    with open(os.path.join(work, "choice.json"), encoding="utf-8") as f:
        choice = json.load(f)
    with open(os.path.join(work, "files.jsonl"), encoding="utf-8") as f:
        files = [json.loads(line) for line in f if line.strip()]
    return choice, files


def is_fresh(choice, signal_ns):
    """Was the chosen checkpoint written (its newest mtime) at or after the trainer was signalled?"""
    return bool(signal_ns) and choice["mtime_ns"] >= int(signal_ns)


def cmd_manifest(work, run_id, instance_id, execution_name, decision_time, bucket, mode, signal_ns):
    try:
        choice, files = load(work)
        manifest = {
            "schema_version": 1,
            "run_id": run_id,
            "instance_id": instance_id,
            "execution_name": execution_name,
            "decision_time": decision_time,
            "created_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "checkpoint": {"name": choice["name"], "path": choice["path"], "mtime": choice["mtime"]},
            "layout": choice["layout"],
            "step": choice["step"],
            "mode": mode,
            "fresh": is_fresh(choice, signal_ns),
            "bucket": bucket,
            "files": files,
            "total_bytes": sum(f["size"] for f in files),
        }
        data = (json.dumps(manifest, indent=1) + "\n").encode("utf-8")
        path = os.path.join(work, "manifest.json")
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if os.path.getsize(path) != len(data):
            raise OSError(0, "short write")
    except (OSError, ValueError, KeyError) as exc:
        raise Fail(5, f"cannot write the manifest in {work}: {getattr(exc, 'strerror', None) or exc}; free disk space in the temp directory and retry")
    print(b64(hashlib.sha256(data).digest()))


def cmd_success(work, bucket, manifest_key, trainer, signal_ns):
    choice, files = load(work)
    print(json.dumps({
        "result": "uploaded",
        "manifest": f"s3://{bucket}/{manifest_key}",
        "files": len(files),
        "bytes": sum(f["size"] for f in files),
        "trainer": trainer,
        "checkpoint": choice["name"],
        "step": choice["step"],
        "fresh": is_fresh(choice, signal_ns),
    }))


def cmd_failline(error, message):
    print(json.dumps({"result": "failed", "error": error, "message": message}))


COMMANDS = {name[4:]: fn for name, fn in globals().items() if name.startswith("cmd_")}

if __name__ == "__main__":
    try:
        COMMANDS[sys.argv[1]](*sys.argv[2:])
    except Fail as exc:
        print(str(exc))
        sys.exit(exc.code)
PY

# py VAR SUBCOMMAND ARGS...: run a helper subcommand, store its stdout in VAR, map its failures.
py() {
  local __var="$1" __out __rc=0
  shift
  __out=$(python3 -I -c "$PYHELPER" "$@") || __rc=$?
  case $__rc in
    0) printf -v "$__var" '%s' "$__out" ;;
    3) fail NoCheckpoint "$__out" "$EX_NOCKPT" ;;
    4) fail UploadFailed "$__out" "$EX_UPLOAD" ;;
    5) fail ManifestFailed "$__out" "$EX_MANIFEST" ;;
    *) fail ScriptFailed "the python3 helper '$1' failed (exit status ${__rc})${__out:+: ${__out}}; see stderr" "$EX_SCRIPT" ;;
  esac
}

# --- 1. Parameters --------------------------------------------------------------------------------
for name in SSM_RunId SSM_InstanceId SSM_ExecutionName SSM_CheckpointDir SSM_PidFile SSM_Bucket \
  SSM_UploadPrefix SSM_ManifestKey SSM_Signal SSM_GraceSeconds SSM_PartSizeBytes SSM_DecisionTime SSM_Mode; do
  if [[ ! -v $name ]]; then
    fail InvalidParameter "${name} is not set: SSM Agent 3.3.2746.0 or later is required (it passes document parameters as SSM_ environment variables); update the agent on this instance" "$EX_INVALID"
  fi
done

# @include lib/params.sh

check RunId '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$' "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
check InstanceId '^i-[0-9a-f]{8,17}$' "expected an EC2 instance id like i-0123456789abcdef0"
check ExecutionName '^[A-Za-z0-9_-]{1,80}$' "1-80 letters, digits, '_' or '-'"
check CheckpointDir '^/[A-Za-z0-9._/-]{0,254}$' "expected an absolute path of letters, digits and . _ / - (at most 255 characters)"
check PidFile '^(|/[A-Za-z0-9._/-]{0,254})$' "expected empty or an absolute path of letters, digits and . _ / - (at most 255 characters)"
check Bucket '^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$' "expected an S3 bucket name"
check UploadPrefix '^[A-Za-z0-9._/=+-]{1,900}/$' "expected an S3 key prefix of letters, digits and . _ / = + - ending in /"
check ManifestKey '^[A-Za-z0-9._/=+-]{1,1000}\.json$' "expected an S3 key of letters, digits and . _ / = + - ending in .json"
check Signal '^(TERM|INT|HUP|USR1|USR2)$' "expected TERM, INT, HUP, USR1 or USR2"
check GraceSeconds '^[0-9]{1,5}$' "expected a whole number of seconds (0-99999)"
check PartSizeBytes '^[0-9]{7,11}$' "expected a whole number of bytes between 5242880 and 5368709120"
check DecisionTime '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$' "expected a UTC time like 2025-01-31T23:59:00Z"
check Mode '^(stop|interruption)$' "expected stop or interruption"
check_segments CheckpointDir path
check_segments PidFile path
check_segments UploadPrefix key
check_segments ManifestKey key

grace=$((10#$SSM_GraceSeconds))
part_size=$((10#$SSM_PartSizeBytes))
if ((part_size < MIN_PART_SIZE || part_size > MAX_PART_SIZE)); then
  fail InvalidParameter "parameter PartSizeBytes (${part_size}) must be between ${MIN_PART_SIZE} and ${MAX_PART_SIZE} bytes" "$EX_INVALID"
fi

AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-${AWS_SSM_REGION_NAME:-}}"
if [[ -n $AWS_DEFAULT_REGION ]]; then export AWS_DEFAULT_REGION; else unset AWS_DEFAULT_REGION; fi
export AWS_PAGER=""

command -v python3 >/dev/null 2>&1 ||
  fail ScriptFailed "python3 is not installed on this instance; install it (the checkpoint document needs python3 and the AWS CLI)" "$EX_SCRIPT"
command -v aws >/dev/null 2>&1 ||
  fail UploadFailed "the AWS CLI (aws) is not installed or not on PATH; install it on the instance (the trainer was not signalled)" "$EX_UPLOAD"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/autostop-checkpoint.XXXXXX" 2>/dev/null) ||
  fail ScriptFailed "cannot create a temporary directory under ${TMPDIR:-/tmp}; free disk space (the trainer was not signalled)" "$EX_SCRIPT"

# --- 2. Trainer -----------------------------------------------------------------------------------
# @include lib/pid.sh

trainer=not_configured
signal_ns="" # when the trainer was signalled (ns since the epoch); empty when nothing was
if [[ -n $SSM_PidFile ]]; then
  if [[ ! -e $SSM_PidFile && ! -L $SSM_PidFile ]]; then
    trainer=pid_file_missing
    log "pid file ${SSM_PidFile} does not exist; not signalling anything"
  elif ! pid=$(read_pid "$SSM_PidFile"); then
    trainer=pid_file_unreadable
    log "pid file ${SSM_PidFile} is unreadable or holds no process id; not signalling anything"
  elif pid_file_stale "$SSM_PidFile"; then
    # Written before this boot: whatever now has that pid is not the trainer that wrote it.
    trainer=not_running
    log "pid file ${SSM_PidFile} is stale (last written before this boot); not signalling anything"
  elif ! pid_is_trainer "$pid" "$SSM_PidFile"; then
    if [[ -n $PID_WHY ]]; then
      # Alive, but it cannot be shown to be the trainer: a reused pid, or the trainer seen through a stepped
      # clock. Unknown is not "exited": signal nothing, upload nothing, stop nothing.
      fail TrainerUnverified "pid ${pid} from ${SSM_PidFile} is a live process that cannot be shown to be the trainer (${PID_WHY}); nothing was signalled or uploaded. If the trainer has exited, remove the stale PID file; if it runs, rewrite the PID file from the trainer" "$EX_TRAINER"
    fi
    trainer=not_running
    log "trainer pid ${pid} from ${SSM_PidFile} is not running"
  else
    trainer_start=$PID_START
    log "sending SIG${SSM_Signal} to trainer pid ${pid}; waiting up to ${grace} s for it to exit"
    signal_ns=$(date +%s%N 2>/dev/null) || signal_ns=""
    [[ $signal_ns =~ ^[0-9]{10,20}$ ]] || signal_ns="$(date +%s)000000000"
    if ! kill -s "$SSM_Signal" "$pid" 2>"$WORK/kill.err"; then
      if [[ $SSM_Mode == interruption ]] && pid_same "$pid" "$trainer_start"; then
        trainer=still_running
        log "could not send SIG${SSM_Signal} to the trainer (pid ${pid}): $(tail -n 1 "$WORK/kill.err" 2>/dev/null || true); uploading the newest checkpoint on disk"
      elif pid_same "$pid" "$trainer_start"; then
        fail TrainerDidNotExit "could not send SIG${SSM_Signal} to the trainer (pid ${pid} from ${SSM_PidFile}): $(tail -n 1 "$WORK/kill.err" 2>/dev/null || true); the checkpoint command must run as root" "$EX_TRAINER"
      else
        trainer=not_running # it exited just before the signal
        signal_ns=""
      fi
    else
      waited=0
      trainer=exited
      while pid_same "$pid" "$trainer_start"; do
        if ((waited >= grace)); then
          if [[ $SSM_Mode == stop ]]; then
            fail TrainerDidNotExit "the trainer (pid ${pid} from ${SSM_PidFile}) was sent SIG${SSM_Signal} but was still running after ${grace} s; nothing was uploaded. Make the trainer save and exit on SIG${SSM_Signal}, or raise the grace-seconds tag" "$EX_TRAINER"
          fi
          # Interruption: the instance is about to be reclaimed; save what is on disk rather than nothing.
          trainer=still_running
          log "the trainer (pid ${pid}) was still running ${grace} s after SIG${SSM_Signal}; uploading the newest complete checkpoint on disk"
          break
        fi
        sleep 1
        waited=$((waited + 1))
      done
      [[ $trainer != exited ]] || log "trainer pid ${pid} exited after about ${waited} s"
    fi
  fi
fi

# --- 3. Choose the checkpoint ---------------------------------------------------------------------
py py_out select "$SSM_CheckpointDir" "$SSM_UploadPrefix" "$SSM_ManifestKey" "$WORK"

# --- 4. Upload ------------------------------------------------------------------------------------
# aws_s3 OUTFILE DESCRIPTION S3API_ARGS...: run one s3api call; on failure report the CLI's last stderr line.
aws_s3() {
  local out="$1" what="$2" last="" line
  shift 2
  if ! aws --output json s3api "$@" </dev/null >"$out" 2>"$WORK/aws.err"; then
    cat "$WORK/aws.err" >&2 || true
    while IFS= read -r line || [[ -n $line ]]; do
      if [[ -n ${line//[[:space:]]/} ]]; then last=$line; fi
    done <"$WORK/aws.err"
    fail UploadFailed "${what} failed: ${last:-the AWS CLI exited with an error}. Check that the bucket exists and that the instance profile may write to it" "$EX_UPLOAD"
  fi
}

put_object() { # put_object FILE KEY BASE64_SHA256 DESCRIPTION [EXTRA ARGS...]
  local file="$1" key="$2" checksum="$3" what="$4"
  shift 4
  aws_s3 "$WORK/resp.json" "$what" put-object --bucket="$SSM_Bucket" --key="$key" --body="$file" \
    --checksum-algorithm=SHA256 --checksum-sha256="$checksum" "$@"
}

: >"$WORK/files.jsonl" || fail ManifestFailed "cannot write in ${WORK}; free disk space in the temp directory" "$EX_MANIFEST"
nfiles=0
while IFS= read -r -d '' -u 3 abs && IFS= read -r -d '' -u 3 rel && IFS= read -r -d '' -u 3 key &&
  IFS= read -r -d '' -u 3 size && IFS= read -r -d '' -u 3 mtime_ns && IFS= read -r -d '' -u 3 dev &&
  IFS= read -r -d '' -u 3 ino; do
  target="s3://${SSM_Bucket}/${key}"
  chosen=("$abs" "$size" "$mtime_ns" "$dev" "$ino") # the file as selection saw it (lstat)
  py sums hash "${chosen[@]}"
  sha256_hex=${sums%% *}
  if ((size <= part_size)); then
    log "uploading ${rel} (${size} bytes) to ${target}"
    put_object "$abs" "$key" "${sums#* }" "uploading ${abs} to ${target}"
    checksum=${sums#* }
    parts=0
  else
    if ((size > MAX_OBJECT_SIZE)); then
      fail UploadFailed "${abs} is ${size} bytes, more than the 5 TiB S3 object limit" "$EX_UPLOAD"
    fi
    this_part=$(((size + MAX_PARTS - 1) / MAX_PARTS))
    this_part=$(((this_part + 1048575) / 1048576 * 1048576))
    ((this_part >= part_size)) || this_part=$part_size
    nparts=$(((size + this_part - 1) / this_part))
    log "uploading ${rel} (${size} bytes) to ${target} in ${nparts} parts of ${this_part} bytes"
    aws_s3 "$WORK/resp.json" "starting the multipart upload of ${abs} to ${target}" \
      create-multipart-upload --bucket="$SSM_Bucket" --key="$key" --checksum-algorithm=SHA256
    py upload_id field "$WORK/resp.json" UploadId
    MPU_KEY=$key
    MPU_ID=$upload_id
    : >"$WORK/parts.jsonl"
    part_number=1
    offset=0
    while ((offset < size)); do
      length=$((size - offset))
      ((length <= this_part)) || length=$this_part
      py part_sums part "${chosen[@]}" "$offset" "$length" "$WORK/part"
      aws_s3 "$WORK/resp.json" "uploading part ${part_number} of ${nparts} of ${abs} to ${target}" \
        upload-part --bucket="$SSM_Bucket" --key="$key" --upload-id="$MPU_ID" --part-number="$part_number" \
        --body="$WORK/part" --checksum-algorithm=SHA256 --checksum-sha256="${part_sums#* }"
      rm -f -- "$WORK/part"
      py py_out addpart "$WORK/resp.json" "$WORK/parts.jsonl" "$part_number" "${part_sums#* }" "${part_sums%% *}"
      offset=$((offset + length))
      part_number=$((part_number + 1))
    done
    py checksum complete "$WORK/parts.jsonl" "$WORK/complete.json"
    aws_s3 "$WORK/resp.json" "completing the multipart upload of ${abs} to ${target}" \
      complete-multipart-upload --bucket="$SSM_Bucket" --key="$key" --upload-id="$MPU_ID" \
      --multipart-upload="file://${WORK}/complete.json"
    MPU_ID=""
    parts=$nparts
  fi
  py py_out record "$WORK/files.jsonl" "$WORK/resp.json" "$abs" "$rel" "$key" "$size" "$mtime_ns" "$dev" "$ino" "$sha256_hex" "$checksum" "$parts"
  nfiles=$((nfiles + 1))
done 3<"$WORK/plan"
((nfiles > 0)) || fail NoCheckpoint "the chosen checkpoint holds no files" "$EX_NOCKPT"

# --- 5. Manifest, uploaded last -------------------------------------------------------------------
py manifest_b64 manifest "$WORK" "$SSM_RunId" "$SSM_InstanceId" "$SSM_ExecutionName" "$SSM_DecisionTime" "$SSM_Bucket" "$SSM_Mode" "$signal_ns"
log "uploading the manifest to s3://${SSM_Bucket}/${SSM_ManifestKey}"
put_object "$WORK/manifest.json" "$SSM_ManifestKey" "$manifest_b64" \
  "uploading the manifest to s3://${SSM_Bucket}/${SSM_ManifestKey}" --content-type=application/json

# --- 6. Result ------------------------------------------------------------------------------------
py result success "$WORK" "$SSM_Bucket" "$SSM_ManifestKey" "$trainer" "$signal_ns"
FINAL_PRINTED=1
printf '%s\n' "$result"
exit 0
