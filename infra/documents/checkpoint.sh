#!/usr/bin/env bash
# autostop checkpoint: run by the checkpoint SSM Command document (aws:runShellScript) once the
# control plane has decided that a training run is complete.
#
# Contract
#   Input   The document's parameters as environment variables (interpolationType ENV_VAR, SSM Agent
#           3.3.2746.0 or later): SSM_RunId SSM_InstanceId SSM_ExecutionName SSM_CheckpointDir
#           SSM_PidFile (may be empty) SSM_Bucket SSM_UploadPrefix SSM_ManifestKey SSM_Signal
#           SSM_GraceSeconds SSM_PartSizeBytes SSM_DecisionTime. Every value is re-validated with the
#           document's regex; this script never contains document placeholders. Region: AWS_DEFAULT_REGION,
#           else AWS_SSM_REGION_NAME (set by the agent). AWS_ENDPOINT_URL is honoured by the CLI.
#   Effect  1. Sends SIG<Signal> ONCE to the live trainer named by PidFile and waits up to GraceSeconds
#              for it to exit (a zombie counts as exited).
#           2. Picks the newest complete checkpoint among the top-level entries of CheckpointDir (skips
#              dotfiles, *.tmp *.temp *.partial *.part *.incomplete *.lock *~, symlinks, directories
#              holding such files, empty directories; newest mtime wins, ties go to the greatest name).
#           3. Uploads it below UploadPrefix with SHA-256 checksums that S3 verifies (PutObject up to
#              PartSizeBytes, multipart above; a failed multipart upload is aborted).
#           4. Uploads the manifest LAST to ManifestKey. Nothing is deleted on the instance.
#   Output  Diagnostics on stderr. The LAST stdout line is exactly one JSON object:
#             {"result":"uploaded","manifest":"s3://B/K","files":N,"bytes":B,"trainer":T,"checkpoint":NAME,"step":N|null}
#             T: exited | not_running | pid_file_missing | pid_file_unreadable | not_configured
#           or {"result":"failed","error":E,"message":"..."}.
#   Exit    0 uploaded; 64 InvalidParameter; 65 TrainerDidNotExit; 66 NoCheckpoint; 67 UploadFailed;
#           68 ManifestFailed; 70 ScriptFailed (unexpected).
#   Needs   bash >= 4.2, coreutils, python3 (stdlib only), AWS CLI v1 or v2. Temp files (one multipart
#           part at a time) go to a mktemp directory under ${TMPDIR:-/tmp}, removed on exit.
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

# JSON string body from printable ASCII only; used when python3 cannot format the failure line.
json_fallback() {
  local s
  s=$(printf '%s' "$1" | tr -cd '\040-\176') || s="(message unavailable)"
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  printf '%s' "$s"
}

# fail ERROR MESSAGE EXIT_CODE: print the one final failure line and exit. In a subshell (command
# substitution) only exit: the parent sees the failure and reports it.
fail() {
  local error="$1" message="$2" code="$3" line=""
  if [[ $BASHPID != "$$" ]]; then exit "$code"; fi
  trap - ERR
  message=${message:0:2000}
  log "${error}: ${message}"
  if ((FINAL_PRINTED == 0)); then
    FINAL_PRINTED=1
    if [[ -n $PYHELPER ]]; then
      line=$(python3 -I -c "$PYHELPER" failline "$error" "$message" 2>/dev/null) || line=""
    fi
    if [[ $line != "{"*"}" ]]; then
      line=$(printf '{"result":"failed","error":"%s","message":"%s"}' "$error" "$(json_fallback "$message")")
    fi
    printf '%s\n' "$line"
  fi
  exit "$code"
}

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
import base64, datetime, hashlib, json, os, re, stat, sys

CHUNK = 8 * 1024 * 1024
TEMP_SUFFIXES = (".tmp", ".temp", ".partial", ".part", ".incomplete", ".lock", "~")
STEP_RE = re.compile(r"(?:step|iter|epoch)[-_]?0*([0-9]+)")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class Fail(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def b64(digest):
    return base64.b64encode(digest).decode("ascii")


def iso(ns):
    return datetime.datetime.fromtimestamp(ns // 1_000_000_000, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_temp(name):
    return name.lower().endswith(TEMP_SUFFIXES)


def show(path):
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


def scan_dir(top):
    """(newest mtime_ns, [(abs, rel, size, mtime_ns)]) of a directory checkpoint, or a reason to skip it."""
    files, newest = [], os.lstat(top).st_mtime_ns

    def onerror(exc):
        raise Fail(4, f"cannot read {show(exc.filename or top)}: {exc.strerror}; fix its permissions and retry")

    for root, dirs, names in os.walk(top, onerror=onerror):
        for name in dirs + names:
            if is_temp(name):
                return None, f"it contains {show(os.path.join(root, name))}, which is still being written"
        for name in dirs:
            if os.path.islink(os.path.join(root, name)):
                print(f"checkpoint: not uploading {show(os.path.join(root, name))} (symlink)", file=sys.stderr)
        for name in names:
            full = os.path.join(root, name)
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):
                print(f"checkpoint: not uploading {show(full)} (not a regular file)", file=sys.stderr)
                continue
            files.append((full, os.path.relpath(full, top), st.st_size, st.st_mtime_ns))
            newest = max(newest, st.st_mtime_ns)
    if not files:
        return None, "it holds no files"
    files.sort(key=lambda f: f[1])
    return (newest, files), None


def cmd_select(ckdir, prefix, manifest_key, work):
    try:
        entries = sorted(os.scandir(ckdir), key=lambda e: e.name)
    except FileNotFoundError:
        raise Fail(3, f"the checkpoint directory {ckdir} does not exist on this instance; check the checkpoint-dir tag")
    except NotADirectoryError:
        raise Fail(3, f"the checkpoint directory {ckdir} is not a directory; check the checkpoint-dir tag")
    except OSError as exc:
        raise Fail(3, f"cannot list the checkpoint directory {ckdir}: {exc.strerror}")
    candidates = []
    for entry in entries:
        name = entry.name
        if name.startswith(".") or is_temp(name):
            continue
        if entry.is_symlink():
            print(f"checkpoint: ignoring symlink {show(entry.path)}", file=sys.stderr)
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                candidates.append((st.st_mtime_ns, name, False, [(entry.path, name, st.st_size, st.st_mtime_ns)]))
                continue
            if not stat.S_ISDIR(st.st_mode):
                continue
            found, why = scan_dir(entry.path)
        except FileNotFoundError:
            print(f"checkpoint: {show(entry.path)} disappeared while it was being scanned; ignoring it", file=sys.stderr)
            continue
        except OSError as exc:
            raise Fail(4, f"cannot read {show(exc.filename or entry.path)}: {exc.strerror}; fix its permissions and retry")
        if found is None:
            print(f"checkpoint: skipping {show(entry.path)}: {why}", file=sys.stderr)
            continue
        candidates.append((found[0], name, True, found[1]))
    if not candidates:
        raise Fail(3, f"no complete checkpoint in {ckdir} (temporary, hidden, symlinked and empty entries do not count); "
                      "save a checkpoint there before the run ends")
    mtime, name, is_dir, files = max(candidates, key=lambda c: (c[0], c[1]))
    print(f"checkpoint: chose {show(name)} ({len(files)} file(s)) among {len(candidates)} candidate(s)", file=sys.stderr)
    plan = bytearray()
    for full, rel, size, file_mtime in files:
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
        for field in (full, rel, key, str(size), str(file_mtime)):
            plan += os.fsencode(field) + b"\0"
    step_match = STEP_RE.search(name)
    choice = {
        "name": name,
        "path": os.path.join(ckdir, name),
        "mtime": iso(mtime),
        "step": int(step_match.group(1)) if step_match else None,
    }
    with open(os.path.join(work, "plan"), "wb") as f:
        f.write(plan)
    with open(os.path.join(work, "choice.json"), "w", encoding="utf-8") as f:
        json.dump(choice, f)


def cmd_hash(path):
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
    except OSError as exc:
        raise Fail(4, f"cannot read {show(path)}: {exc.strerror}")
    print(h.hexdigest(), b64(h.digest()))


def cmd_part(path, offset, length, out):
    offset, length = int(offset), int(length)
    h = hashlib.sha256()
    try:
        src = open(path, "rb")
    except OSError as exc:
        raise Fail(4, f"cannot read {show(path)}: {exc.strerror}")
    with src:
        src.seek(offset)
        try:
            with open(out, "wb") as dst:
                left = length
                while left:
                    chunk = src.read(min(CHUNK, left))
                    if not chunk:
                        raise Fail(4, f"{show(path)} shrank while it was being uploaded; make sure the trainer has stopped writing")
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


def cmd_record(files_path, resp_path, full, rel, key, size, mtime_ns, hexdigest, checksum, parts):
    same_checksum(response(resp_path), checksum, key)
    try:
        st = os.lstat(full)
    except OSError as exc:
        raise Fail(4, f"{show(full)} disappeared while it was being uploaded ({exc.strerror})")
    if st.st_size != int(size) or st.st_mtime_ns != int(mtime_ns):
        raise Fail(4, f"{show(full)} changed while it was being uploaded; make sure the trainer has stopped writing checkpoints")
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


def cmd_manifest(work, run_id, instance_id, execution_name, decision_time, bucket):
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
            "step": choice["step"],
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


def cmd_success(work, bucket, manifest_key, trainer):
    choice, files = load(work)
    print(json.dumps({
        "result": "uploaded",
        "manifest": f"s3://{bucket}/{manifest_key}",
        "files": len(files),
        "bytes": sum(f["size"] for f in files),
        "trainer": trainer,
        "checkpoint": choice["name"],
        "step": choice["step"],
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
  SSM_UploadPrefix SSM_ManifestKey SSM_Signal SSM_GraceSeconds SSM_PartSizeBytes SSM_DecisionTime; do
  if [[ ! -v $name ]]; then
    fail InvalidParameter "${name} is not set: SSM Agent 3.3.2746.0 or later is required (it passes document parameters as SSM_ environment variables); update the agent on this instance" "$EX_INVALID"
  fi
done

# check NAME REGEX HINT: SSM_<NAME> must match REGEX.
check() {
  local var="SSM_$1"
  local value="${!var}"
  if [[ ! $value =~ $2 ]]; then
    fail InvalidParameter "parameter $1 ('${value:0:120}') is invalid: $3" "$EX_INVALID"
  fi
}

# Paths and keys may not contain '.', '..' or empty segments.
check_segments() {
  local var="SSM_$1"
  local value="${!var}" probe
  [[ -n $value ]] || return 0
  if [[ $2 == path ]]; then probe="${value}/"; else probe="/${value%/}/"; fi
  if [[ $probe == *//* || $probe == */./* || $probe == */../* ]]; then
    fail InvalidParameter "parameter $1 ('${value:0:120}') may not contain '.', '..' or empty segments" "$EX_INVALID"
  fi
}

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
if [[ -n $SSM_PidFile ]]; then
  if [[ ! -e $SSM_PidFile && ! -L $SSM_PidFile ]]; then
    trainer=pid_file_missing
    log "pid file ${SSM_PidFile} does not exist; not signalling anything"
  elif ! pid=$(read_pid "$SSM_PidFile"); then
    trainer=pid_file_unreadable
    log "pid file ${SSM_PidFile} is unreadable or holds no process id; not signalling anything"
  elif ! pid_alive "$pid"; then
    trainer=not_running
    log "trainer pid ${pid} from ${SSM_PidFile} is not running"
  else
    log "sending SIG${SSM_Signal} to trainer pid ${pid}; waiting up to ${grace} s for it to exit"
    if ! kill -s "$SSM_Signal" "$pid" 2>"$WORK/kill.err"; then
      if pid_alive "$pid"; then
        fail TrainerDidNotExit "could not send SIG${SSM_Signal} to the trainer (pid ${pid} from ${SSM_PidFile}): $(tail -n 1 "$WORK/kill.err" 2>/dev/null || true); the checkpoint command must run as root" "$EX_TRAINER"
      fi
      trainer=not_running
    else
      waited=0
      while pid_alive "$pid"; do
        if ((waited >= grace)); then
          fail TrainerDidNotExit "the trainer (pid ${pid} from ${SSM_PidFile}) was sent SIG${SSM_Signal} but was still running after ${grace} s; nothing was uploaded. Make the trainer save and exit on SIG${SSM_Signal}, or raise the grace-seconds tag" "$EX_TRAINER"
        fi
        sleep 1
        waited=$((waited + 1))
      done
      trainer=exited
      log "trainer pid ${pid} exited after about ${waited} s"
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
  IFS= read -r -d '' -u 3 size && IFS= read -r -d '' -u 3 mtime_ns; do
  target="s3://${SSM_Bucket}/${key}"
  py sums hash "$abs"
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
      py part_sums part "$abs" "$offset" "$length" "$WORK/part"
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
  py py_out record "$WORK/files.jsonl" "$WORK/resp.json" "$abs" "$rel" "$key" "$size" "$mtime_ns" "$sha256_hex" "$checksum" "$parts"
  nfiles=$((nfiles + 1))
done 3<"$WORK/plan"
((nfiles > 0)) || fail NoCheckpoint "the chosen checkpoint holds no files" "$EX_NOCKPT"

# --- 5. Manifest, uploaded last -------------------------------------------------------------------
py manifest_b64 manifest "$WORK" "$SSM_RunId" "$SSM_InstanceId" "$SSM_ExecutionName" "$SSM_DecisionTime" "$SSM_Bucket"
log "uploading the manifest to s3://${SSM_Bucket}/${SSM_ManifestKey}"
put_object "$WORK/manifest.json" "$SSM_ManifestKey" "$manifest_b64" \
  "uploading the manifest to s3://${SSM_Bucket}/${SSM_ManifestKey}" --content-type=application/json

# --- 6. Result ------------------------------------------------------------------------------------
py result success "$WORK" "$SSM_Bucket" "$SSM_ManifestKey" "$trainer"
FINAL_PRINTED=1
printf '%s\n' "$result"
exit 0
