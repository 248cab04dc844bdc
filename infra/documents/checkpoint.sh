#!/usr/bin/env bash
# autostop checkpoint: run by the checkpoint SSM Command document (aws:runShellScript) once the
# control plane has decided that a training run is complete (Mode stop), or on a spot interruption
# notice (Mode interruption).
#
# Contract
#   Input   The document's parameters as environment variables (interpolationType ENV_VAR, SSM Agent
#           3.3.2746.0 or later): SSM_RunId SSM_InstanceId SSM_ExecutionName SSM_CheckpointDir
#           SSM_PidFile (may be empty) SSM_Bucket SSM_UploadPrefix SSM_ManifestKey SSM_Signal
#           SSM_GraceSeconds SSM_PartSizeBytes SSM_DecisionTime SSM_Mode (stop | interruption) SSM_SaveOnSignal
#           (true | false, default false). Every value is re-validated with the document's regex; this script
#           never contains document placeholders.
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
#           2. Picks the newest checkpoint the framework can resume from among the top-level entries of
#              CheckpointDir (lib/selection.py says how): ordered by the step in the name (after step, then
#              iter, then epoch; else the name's last whole number; else, for a torch.save/Lightning archive such
#              as last.ckpt, the global_step/step/iteration/epoch stored in it), mtime only breaking ties. An
#              entry counts only when it does not look temporary, is not a symbolic link or a top-level
#              -NNNNN-of-NNNNN shard, no process holds one of its files open for writing (/proc/*/fdinfo), no
#              data file is empty, zip archives have their central directory and safetensors files a whole
#              header, shard sets and safetensors indexes are whole, and framework layouts hold their last file
#              (Hugging Face Trainer trainer_state.json, DCP .metadata, Accelerate random_states_*.pkl, orbax
#              commit_success.txt), and it holds every file its newest complete older sibling had when it was
#              started. CheckpointDir must not be or pass through a symbolic link (NoCheckpoint). With none,
#              NoCheckpoint lists the newest 5 rejected entries and why.
#              Mode stop with a live trainer and SaveOnSignal false: this is decided BEFORE the trainer is
#              signalled; with nothing complete on disk and no save in progress, NoCheckpoint, and the trainer
#              is not signalled and keeps training. SaveOnSignal true (tag save-on-signal): it is signalled.
#           3. Uploads it below UploadPrefix from one python3 process, files and parts in parallel (lib/transfer.py:
#              botocore when python3 can import it, else the AWS CLI, one process per call): PutObject up to
#              PartSizeBytes, multipart above (a failed multipart upload is aborted), each call with the SHA-256 of
#              its bytes, which S3 verifies. Each file is opened through O_NOFOLLOW and must be the very file
#              chosen (st_dev, st_ino, size, mtime from lstat at selection) when it is opened and after its last
#              call, and when a call fails; otherwise UploadFailed ("file P changed during the checkpoint").
#              Mode interruption (the trainer keeps running and may rotate checkpoints away): the choice is made
#              once more, then it fails.
#           4. Uploads the manifest LAST to ManifestKey: it adds "mode", "fresh" and "layout" (file | directory)
#              to the fields of schema 1. Nothing is deleted on the instance.
#   Output  Diagnostics on stderr. The LAST stdout line is exactly one JSON object:
#             {"result":"uploaded","manifest":"s3://B/K","manifest_version_id":V,"manifest_sha256":H,"files":N,
#              "bytes":B,"trainer":T,"checkpoint":NAME,"step":N,"fresh":F}
#             V: the manifest's S3 VersionId (null when the bucket is not versioned: Verify then refuses it); H: the
#             SHA-256 (hex) of the manifest's bytes. The manifest lists every object's VersionId ("version_id").
#             T: exited | not_running | pid_file_missing | pid_file_unreadable | not_configured | still_running
#                (still_running only in Mode interruption)
#             F: true when the trainer was signalled and the checkpoint's newest mtime is at or after that moment.
#             Also "rule" (what made it complete), "rejected" (the newest 5 entries left out: name, step, reason)
#             and "summary" (one line); the manifest's "selection" holds the same and "step_source".
#             step (also the manifest's): as chosen by (2).
#           or {"result":"failed","error":E,"message":"..."}.
#   Exit    0 uploaded; 64 InvalidParameter; 65 TrainerDidNotExit / TrainerUnverified; 66 NoCheckpoint; 67 UploadFailed;
#           68 ManifestFailed; 70 ScriptFailed (unexpected).
#   Needs   bash >= 4.2, coreutils, getconf (else CLK_TCK 100), python3 (stdlib; botocore if it has it), AWS CLI v1
#           or v2. Temp files (the AWS CLI path's parts) go to a mktemp directory under ${TMPDIR:-/tmp},
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

FINAL_PRINTED=0 # set once the single final JSON line is on stdout
WORK=""         # mktemp directory
PYHELPER=""
SOFT_CHANGED=0  # 1 while uploading: py returns 6 (CHANGED_MSG) for a file changed during the checkpoint
CHANGED_MSG=""

log() { printf 'checkpoint: %s\n' "$*" >&2; }

# @include lib/fail.sh

on_err() {
  fail ScriptFailed "unexpected failure (exit status $1) at line $2 of checkpoint.sh: ${3:0:300}" "$EX_SCRIPT"
}

on_exit() {
  local rc=$?
  trap - ERR
  set +e
  [[ $BASHPID == "$$" ]] || return 0
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

# --- Python helper (stdlib only): lib/selection.py chooses the checkpoint, lib/checkpoint_helper.py runs the
# subcommands. Exit status: 0 ok, 3 NoCheckpoint, 4 UploadFailed, 5 ManifestFailed, 6 a file changed during the
# checkpoint; on 3-6 the message is its stdout. Anything else is a bug (ScriptFailed).
IFS= read -r -d '' PYHELPER <<'PY' || true
# @include lib/selection.py
# @include lib/transfer.py
# @include lib/checkpoint_helper.py
# @include lib/dispatch.py
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
    6) if ((SOFT_CHANGED)); then
      CHANGED_MSG=$__out
      return 6
    fi
    fail UploadFailed "$__out" "$EX_UPLOAD" ;;
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
check UploadPrefix '^[A-Za-z0-9._/=+:-]{1,900}/$' "expected an S3 key prefix of letters, digits and . _ / = + : - ending in /"
check ManifestKey '^[A-Za-z0-9._/=+:-]{1,1000}\.json$' "expected an S3 key of letters, digits and . _ / = + : - ending in .json"
check Signal '^(TERM|INT|HUP|USR1|USR2)$' "expected TERM, INT, HUP, USR1 or USR2"
check GraceSeconds '^[0-9]{1,5}$' "expected a whole number of seconds (0-99999)"
check PartSizeBytes '^[0-9]{7,11}$' "expected a whole number of bytes between 5242880 and 5368709120"
check DecisionTime '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$' "expected a UTC time like 2025-01-31T23:59:00Z"
check Mode '^(stop|interruption)$' "expected stop or interruption"
SSM_SaveOnSignal=${SSM_SaveOnSignal:-false}
check SaveOnSignal '^(true|false)$' "expected true or false"
check_segments CheckpointDir path
check_segments PidFile path
check_segments UploadPrefix key
check_segments ManifestKey key
check_not_system CheckpointDir  # root uploads it: never /etc, /root, /var/log, ...

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
    if [[ $SSM_Mode == stop && $SSM_SaveOnSignal != true ]]; then
      # Decide before signalling: a trainer that exits on the signal must leave something to upload. A save in
      # progress with nothing complete yet is waited for (up to the grace, at most 120 s), never signalled over.
      waited=0
      py precheck precheck "$SSM_CheckpointDir" 0
      while [[ $precheck == saving ]]; do
        last=0
        ((waited + 2 < grace && waited + 2 < 120)) || last=1
        sleep 2
        waited=$((waited + 2))
        py precheck precheck "$SSM_CheckpointDir" "$last"
      done
      log "before signalling: a complete checkpoint is on disk (waited ${waited} s for a save in progress)"
    fi
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

# --- 3, 4. Choose the checkpoint and upload it ----------------------------------------------------
# One python3 process uploads the chosen files, parts and files in parallel (lib/checkpoint_helper.py Upload):
# through botocore when this python3 can import it (lib/transfer.py), else through the AWS CLI, one process per
# call (TRANSFER=cli). Where the trainer keeps running (Mode interruption: a Spot notice or a rebalance), it may
# rotate the chosen checkpoint away while it is uploaded: choose again, once. Otherwise a changed file fails.
py TRANSFER transfer
log "transfer: ${TRANSFER}"
reselect=0
if [[ $SSM_Mode == interruption ]]; then reselect=1; fi
SOFT_CHANGED=1
for attempt in 1 2; do
  py py_out select "$SSM_CheckpointDir" "$SSM_UploadPrefix" "$SSM_ManifestKey" "$WORK"
  CHANGED_MSG=""
  nfiles=0
  py nfiles upload "$WORK" "$SSM_Bucket" "$part_size" "$TRANSFER" || nfiles=0
  [[ -n $CHANGED_MSG ]] || break
  if ((attempt == 1 && reselect)); then
    log "${CHANGED_MSG}; the trainer is still running, so choosing the newest complete checkpoint again"
    continue
  fi
  fail UploadFailed "$CHANGED_MSG" "$EX_UPLOAD"
done
SOFT_CHANGED=0
((nfiles > 0)) || fail NoCheckpoint "the chosen checkpoint holds no files" "$EX_NOCKPT"

# --- 5, 6. Manifest, uploaded last; result ---------------------------------------------------------
py result finish "$WORK" "$SSM_RunId" "$SSM_InstanceId" "$SSM_ExecutionName" "$SSM_DecisionTime" "$SSM_Bucket" \
  "$SSM_Mode" "$signal_ns" "$SSM_ManifestKey" "$trainer" "$TRANSFER"
FINAL_PRINTED=1
printf '%s\n' "$result"
exit 0
