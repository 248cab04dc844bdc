#!/usr/bin/env bash
# autostop restore: run by the restore SSM Command document (aws:runShellScript) when an instance that
# autostop stopped with a verified checkpoint has started again.
#
# Contract
#   Input   The document's parameters as environment variables (interpolationType ENV_VAR, SSM Agent
#           3.3.2746.0 or later): SSM_RunId SSM_InstanceId SSM_ExecutionName SSM_CheckpointDir SSM_Bucket
#           SSM_ManifestKey SSM_ManifestVersionId SSM_ManifestSha256 SSM_UploadPrefix (the verified manifest's S3
#           VersionId and SHA-256, and the verified upload's key prefix, as the run record holds them) SSM_PidFile
#           (may be empty) SSM_LogFile (may be empty) SSM_ResumeCommand (may be empty). Every value is re-validated
#           with the document's regex; CheckpointDir, PidFile and LogFile may not name a system location (the deny
#           list in lib/params.sh). This script never contains document placeholders. Region: AWS_DEFAULT_REGION,
#           else AWS_SSM_REGION_NAME (set by the agent). AWS_ENDPOINT_URL is honoured by the CLI. From the
#           environment, not the document: AUTOSTOP_STATE_DIR (default /var/lib/autostop), AUTOSTOP_BOOT_TIME and
#           AUTOSTOP_BOOT_ID (see lib/pid.sh, lib/logoffset.sh), AUTOSTOP_RESUME_ALLOWLIST (default
#           /etc/autostop/resume-commands).
#   Effect  1. Downloads the manifest's version ManifestVersionId only (GetObject with VersionId, ChecksumMode
#              ENABLED); its SHA-256 must be ManifestSha256 before anything in it is trusted (ChecksumMismatch).
#              It must be schema 1, name RunId, InstanceId and Bucket, and list for every file a key starting
#              with UploadPrefix and its S3 version_id, else ManifestInvalid.
#           2. CheckpointDir must not be or pass through a symbolic link. When missing it is created only in a
#              directory owned by root (root owns it then); in another user's directory the restore refuses
#              (RestoreConflict): the trainer's user must create it. Its owner is the trainer's user.
#           3. ResumeCommand set: refused (ResumeCommandRefused) before anything is downloaded unless its program
#              is a regular file owned by the trainer's user or root, not writable by group or others, not
#              set-user-ID; and, when the trainer's user is root, its exact line is in the allowlist (a file
#              owned by root, not writable by group or others, in a directory likewise; one command per line,
#              surrounding whitespace ignored, lines starting with # are comments). PidFile's directory must be
#              the trainer's user's, PidFile absent or a regular file of that user holding nothing, a dead
#              process's pid or a pid of that user; LogFile absent or a regular file of that user; neither
#              reached through a symbolic link.
#           4. Checks every target CheckpointDir/<checkpoint name>[/<file path>] first: one that exists with
#              the manifest's size and SHA-256 is kept (not downloaded again); one that exists and differs
#              (or is a symlink or directory) fails RestoreConflict before anything is downloaded.
#           5. Downloads each missing file's listed version into the root-only staging directory
#              CheckpointDir/.autostop-restore-<ExecutionName> (through a descriptor): with botocore (lib/transfer.py,
#              lib/download.py) ranged GetObject calls with VersionId in parallel, hashed as they are written; else
#              the AWS CLI, one GetObject per file (ChecksumMode ENABLED). Then, on the instance, the size and the
#              SHA-256 (or, for a multipart object with part_size, the composite of its parts' SHA-256) of the bytes
#              must be the manifest's (ChecksumMismatch), before anything is placed.
#           6. Moves each file into place with link(2), which never replaces an existing name (a file that
#              appeared meanwhile: RestoreConflict, both kept), owned by CheckpointDir's owner, mode from
#              CheckpointDir's, mtime the download time (never the manifest's: nothing reads it, and a future
#              one would outrank later saves). Nothing is ever deleted or overwritten on the instance; only the
#              staging directory (autostop's own) is removed.
#           LogFile set, before 1: records this boot's log baseline (its size, st_dev, st_ino and the boot id) in
#              ${AUTOSTOP_STATE_DIR}/log-baselines/<hex SHA-256 of the LogFile path> (temp + rename); the probe
#              scans only what follows it.
#           7. ResumeCommand set: unless PidFile names a live trainer of this boot (ResumeCommandFailed), starts
#              it detached: new session, stdin /dev/null, stdout and stderr appended to LogFile (opened as the
#              trainer's user, without following symbolic links) or else ${AUTOSTOP_STATE_DIR}/resume-<RunId>.log,
#              as the owner of CheckpointDir (uid, gid and groups; with no_new_privs unless root, so nothing it
#              starts gains privileges), in that user's home directory (/ if none), with AUTOSTOP_RUN_ID,
#              AUTOSTOP_RESUME_CHECKPOINT (the restored checkpoint's path) and AUTOSTOP_CHECKPOINT_DIR added to the
#              environment (SSM_* removed). ResumeCommand is split at its single spaces and executed directly
#              (execve): no shell, no globbing, no variable expansion. Its pid goes to PidFile (O_EXCL temp +
#              rename in PidFile's directory, owned by the trainer's user); it must still be alive 2 s later.
#   Output  Diagnostics on stderr. The LAST stdout line is exactly one JSON object:
#             {"result":"restored","checkpoint":NAME,"files":N,"bytes":B,"step":S|null,
#              "present":"downloaded"|"already_present","trainer":"started"|"not_configured","pid":P|null}
#           present: already_present when every file was already in place, else downloaded.
#           or {"result":"failed","error":E,"message":"..."}.
#   Exit    0 restored; 64 InvalidParameter; 66 ManifestInvalid; 67 DownloadFailed / ChecksumMismatch;
#           68 RestoreConflict; 69 ResumeCommandFailed / ResumeCommandRefused; 70 ScriptFailed (unexpected).
#   Needs   bash >= 4.2, coreutils, getconf (else CLK_TCK 100), python3 >= 3.6 (stdlib; botocore if it has it), AWS CLI v1 or
#           v2 with --checksum-mode. The manifest goes to a mktemp directory under ${TMPDIR:-/tmp}, removed
#           on exit; checkpoint files are staged inside CheckpointDir (same file system, no second copy).
# shellcheck disable=SC2154,SC2329 # SSM_* come from the agent; py() assigns via printf -v; traps call functions
[ -n "${BASH_VERSION:-}" ] || { printf '%s\n' '{"result":"failed","error":"ScriptFailed","message":"restore.sh must be run by bash"}'; exit 70; }
set -euo pipefail
set -o errtrace
export LC_ALL=C
umask 077

readonly EX_INVALID=64 EX_MANIFEST=66 EX_DOWNLOAD=67 EX_CONFLICT=68 EX_RESUME=69 EX_SCRIPT=70
readonly RESUME_RE='^(|/[A-Za-z0-9._/-]{1,254}( [A-Za-z0-9._/=:,+@%-]{1,255}){0,31})$'

FINAL_PRINTED=0 # set once the single final JSON line is on stdout
WORK=""         # mktemp directory
PYHELPER=""

log() { printf 'restore: %s\n' "$*" >&2; }

# @include lib/fail.sh

on_err() {
  fail ScriptFailed "unexpected failure (exit status $1) at line $2 of restore.sh: ${3:0:300}" "$EX_SCRIPT"
}

on_exit() {
  local rc=$?
  trap - ERR
  set +e
  [[ $BASHPID == "$$" ]] || return 0
  [[ -z $WORK ]] || rm -rf -- "$WORK"
  if ((FINAL_PRINTED == 0)); then
    ((rc != 0)) || rc=$EX_SCRIPT
    fail ScriptFailed "restore.sh stopped unexpectedly (exit status $rc)" "$rc"
  fi
}

trap 'on_err "$?" "$LINENO" "$BASH_COMMAND"' ERR
trap on_exit EXIT
trap 'fail ScriptFailed "restore.sh was interrupted by SIGTERM" 143' TERM
trap 'fail ScriptFailed "restore.sh was interrupted by SIGINT" 130' INT
trap 'fail ScriptFailed "restore.sh was interrupted by SIGHUP" 129' HUP

# --- Python helper (stdlib only). Exit status: 0 ok, 3 ManifestInvalid, 4 DownloadFailed, 5 ChecksumMismatch,
# 6 RestoreConflict, 7 ResumeCommandFailed, 8 ScriptFailed; on 3-8 the message is its stdout.
IFS= read -r -d '' PYHELPER <<'PY' || true
# @include lib/transfer.py
# @include lib/download.py
# @include lib/restore_helper.py
# @include lib/dispatch.py
PY

# py VAR SUBCOMMAND ARGS...: run a helper subcommand, store its stdout in VAR, map its failures.
py() {
  local __var="$1" __out __rc=0
  shift
  __out=$(python3 -I -c "$PYHELPER" "$@") || __rc=$?
  case $__rc in
    0) printf -v "$__var" '%s' "$__out" ;;
    3) fail ManifestInvalid "$__out" "$EX_MANIFEST" ;;
    4) fail DownloadFailed "$__out" "$EX_DOWNLOAD" ;;
    5) fail ChecksumMismatch "$__out" "$EX_DOWNLOAD" ;;
    6) fail RestoreConflict "$__out" "$EX_CONFLICT" ;;
    7) fail ResumeCommandFailed "$__out" "$EX_RESUME" ;;
    9) fail ResumeCommandRefused "$__out" "$EX_RESUME" ;;
    8) fail ScriptFailed "$__out" "$EX_SCRIPT" ;;
    *) fail ScriptFailed "the python3 helper '$1' failed (exit status ${__rc})${__out:+: ${__out}}; see stderr" "$EX_SCRIPT" ;;
  esac
}

# --- 1. Parameters --------------------------------------------------------------------------------
for name in SSM_RunId SSM_InstanceId SSM_ExecutionName SSM_CheckpointDir SSM_Bucket SSM_ManifestKey \
  SSM_ManifestVersionId SSM_ManifestSha256 SSM_UploadPrefix SSM_PidFile SSM_LogFile SSM_ResumeCommand; do
  if [[ ! -v $name ]]; then
    fail InvalidParameter "${name} is not set: SSM Agent 3.3.2746.0 or later is required (it passes document parameters as SSM_ environment variables); update the agent on this instance" "$EX_INVALID"
  fi
done

# @include lib/params.sh

check RunId '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$' "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
check InstanceId '^i-[0-9a-f]{8,17}$' "expected an EC2 instance id like i-0123456789abcdef0"
check ExecutionName '^[A-Za-z0-9_-]{1,80}$' "1-80 letters, digits, '_' or '-'"
check CheckpointDir '^/[A-Za-z0-9._/-]{0,254}$' "expected an absolute path of letters, digits and . _ / - (at most 255 characters)"
check Bucket '^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$' "expected an S3 bucket name"
check ManifestKey '^[A-Za-z0-9._/=+:-]{1,1000}\.json$' "expected an S3 key of letters, digits and . _ / = + : - ending in .json"
check ManifestVersionId '^[A-Za-z0-9._+/=-]{1,1024}$' "expected the S3 VersionId of the verified manifest"
check ManifestSha256 '^[0-9a-f]{64}$' "expected the SHA-256 (64 lowercase hex digits) of the verified manifest"
check UploadPrefix '^[A-Za-z0-9._/=+:-]{1,900}/$' "expected the verified upload's S3 key prefix, ending with /"
check PidFile '^(|/[A-Za-z0-9._/-]{0,254})$' "expected empty or an absolute path of letters, digits and . _ / - (at most 255 characters)"
check LogFile '^(|/[A-Za-z0-9._/-]{0,254})$' "expected empty or an absolute path of letters, digits and . _ / - (at most 255 characters)"
check ResumeCommand "$RESUME_RE" "expected empty or an absolute program path followed by up to 31 arguments, separated by single spaces, of letters, digits and . _ / = : , + @ % - (no quotes, no shell syntax)"
check_segments CheckpointDir path
check_segments PidFile path
check_segments LogFile path
check_segments ManifestKey key
check_segments UploadPrefix key
check_not_system CheckpointDir
check_not_system PidFile
check_not_system LogFile
program=${SSM_ResumeCommand%% *}
if [[ -n $program && ($program/ == *//* || $program/ == */./* || $program/ == */../*) ]]; then
  fail InvalidParameter "parameter ResumeCommand: the program path ${program} may not contain '.', '..' or empty segments" "$EX_INVALID"
fi
if [[ -n $SSM_PidFile && $SSM_PidFile/ == "$SSM_CheckpointDir"/* ]]; then
  fail InvalidParameter "parameter PidFile may not be inside CheckpointDir" "$EX_INVALID"
fi

AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-${AWS_SSM_REGION_NAME:-}}"
if [[ -n $AWS_DEFAULT_REGION ]]; then export AWS_DEFAULT_REGION; else unset AWS_DEFAULT_REGION; fi
export AWS_PAGER=""

command -v python3 >/dev/null 2>&1 ||
  fail ScriptFailed "python3 is not installed on this instance; install it (the restore document needs python3 and the AWS CLI)" "$EX_SCRIPT"
command -v aws >/dev/null 2>&1 ||
  fail DownloadFailed "the AWS CLI (aws) is not installed or not on PATH; install it on the instance" "$EX_DOWNLOAD"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/autostop-restore.XXXXXX" 2>/dev/null) ||
  fail ScriptFailed "cannot create a temporary directory under ${TMPDIR:-/tmp}; free disk space" "$EX_SCRIPT"

# --- 2. Is a trainer of this boot already running? ------------------------------------------------
# @include lib/pid.sh

# Fails ResumeCommandFailed when PidFile names a live trainer of this boot: a second one must not start.
refuse_second_trainer() {
  local pid
  [[ -n $SSM_ResumeCommand && -n $SSM_PidFile ]] || return 0
  pid=$(read_pid "$SSM_PidFile") || return 0
  ! pid_file_stale "$SSM_PidFile" || return 0
  if pid_is_trainer "$pid" "$SSM_PidFile"; then
    fail ResumeCommandFailed "a trainer is already running (pid ${pid} from ${SSM_PidFile}); the resume command was not started" "$EX_RESUME"
  elif [[ -n $PID_WHY ]]; then
    log "pid ${pid} from ${SSM_PidFile} is alive but not the trainer that wrote it (${PID_WHY})"
  fi
  return 0
}
refuse_second_trainer

# --- 3. Log baseline, first: whatever happens next, the previous session's lines never count ------------
# @include lib/logoffset.sh

state=""
[[ -z $SSM_LogFile && -z $SSM_ResumeCommand ]] || state=$(state_dir) ||
  fail ScriptFailed "the state directory ${AUTOSTOP_STATE_DIR:-/var/lib/autostop} is unusable: it must be an absolute path to a directory owned by root and not writable by group or others" "$EX_SCRIPT"
if [[ -n $SSM_LogFile ]]; then
  boot=$(boot_key) || fail ScriptFailed "cannot identify this boot (/proc/sys/kernel/random/boot_id)" "$EX_SCRIPT"
  baseline_file=$(log_baseline_file "$SSM_LogFile") || fail ScriptFailed "cannot compute the log baseline file name (sha256sum)" "$EX_SCRIPT"
  py offset baseline "$SSM_LogFile" "$baseline_file" "$boot"
  log "recorded log baseline ${offset} of ${SSM_LogFile} in ${baseline_file}"
fi

# --- 4. Manifest, files, verification, placement --------------------------------------------------
py restored restore "$SSM_CheckpointDir" "$SSM_Bucket" "$SSM_ManifestKey" "$SSM_ManifestVersionId" "$SSM_ManifestSha256" \
  "$SSM_UploadPrefix" "$SSM_RunId" "$SSM_InstanceId" "$SSM_ExecutionName" "$WORK" "$SSM_PidFile" "$SSM_LogFile" "$SSM_ResumeCommand"
py ckpt_path field "$restored" path
py owner field "$restored" owner
log "restored ${ckpt_path}"

# --- 5. Resume ------------------------------------------------------------------------------------
trainer=not_configured
pid=""
if [[ -n $SSM_ResumeCommand ]]; then
  refuse_second_trainer
  py pid launch "$SSM_RunId" "$ckpt_path" "$SSM_CheckpointDir" "${owner% *}" "${owner#* }" "$SSM_LogFile" \
    "${state}/resume-${SSM_RunId}.log" "$SSM_PidFile" "$SSM_ResumeCommand"
  trainer=started
fi

# --- 6. Result ------------------------------------------------------------------------------------
py result success "$restored" "$trainer" "$pid"
FINAL_PRINTED=1
printf '%s\n' "$result"
exit 0
