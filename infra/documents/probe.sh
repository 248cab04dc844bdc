#!/usr/bin/env bash
# autostop completion probe: run by the probe SSM Command document (aws:runShellScript).
#
# Contract
#   Input   SSM_PidFile, SSM_LogFile, SSM_LogPattern, SSM_CheckpointDir, SSM_RunIds: the document's parameters,
#           passed by the SSM agent as environment variables (interpolationType ENV_VAR, agent 3.3.2746.0 or later).
#           Each may be the empty string, meaning "not configured". Re-validated here with the
#           document's regexes; this script never contains document placeholders. LogFile and CheckpointDir may
#           not name a system location (the deny list in lib/params.sh). From the environment, not from the
#           document: AUTOSTOP_STATE_DIR (default /var/lib/autostop), AUTOSTOP_BOOT_TIME (epoch seconds, default
#           btime of /proc/stat) and AUTOSTOP_BOOT_ID (default /proc/sys/kernel/random/boot_id; see lib/logoffset.sh).
#   Effect  No network, no signals. Writes only its own state: the log's baseline for this boot
#           (${AUTOSTOP_STATE_DIR}/log-baselines/<hex SHA-256 of the LogFile path>, see lib/logoffset.sh).
#           The log is read (through one descriptor, at most its last 10 MiB) only when it is a regular file
#           reached without a symbolic link and owned by the owner of CheckpointDir (the trainer's user; not
#           checked when CheckpointDir is empty), and only what follows this boot's baseline: the size the
#           restore recorded before it resumed the trainer, else the size the first probe of this boot saw.
#           At that first probe a log that holds lines of an earlier session (a baseline of another boot
#           exists, or the log was last written before this boot) is reported unreadable (inconclusive, never
#           complete) and its current size becomes the baseline; a log without such lines is read from its
#           start. A log replaced (other inode) or truncated after the baseline is read from its start.
#   Output  Diagnostics on stderr. The LAST stdout line is exactly one JSON object:
#             {"probe":1,"pid":{"state":S,"pid":N|null},"log":{"state":L}}
#           S: not_configured | missing | unreadable | running | exited | unverified | stale
#              running = the pid is alive (not a zombie) and can be the trainer that wrote the PID file: not
#              PID 1, this script or its parent; where /proc is mounted, also running as the PID file's owner
#              (real uid; any uid if root owns the file) and started no later than 2 s after the file's
#              mtime. unverified = alive but failing that (a reused pid, or the trainer seen through a
#              clock stepped forward): unknown, never read as exited (the reason goes to stderr).
#              stale = the PID file was last written before this boot (its trainer was stopped with the
#              instance): never read as exited, whatever has that pid now.
#           L: not_configured | missing | unreadable | matched | not_matched
#              unreadable (the reason goes to stderr) also when the log is not the trainer's (owner, symbolic
#              link, not a regular file), when the state directory is unusable, and at the first probe of a
#              boot when the log holds an earlier session's lines: never scan an old session's lines.
#           or, for invalid parameters, {"probe":1,"error":"InvalidParameter","message":"..."}.
#   Exit    0 for every probe result; 64 for invalid or missing parameters.
#   Needs   bash >= 4.2, coreutils (head, tail, timeout, stat, sha256sum, mktemp, mv, readlink, realpath), grep,
#           getconf (else CLK_TCK 100), /proc. No python, no AWS CLI.
[ -n "${BASH_VERSION:-}" ] || { printf '%s\n' '{"probe":1,"error":"InvalidParameter","message":"probe.sh must be run by bash"}'; exit 64; }
set -euo pipefail
export LC_ALL=C

readonly EX_INVALID=64
readonly LOG_TAIL_BYTES=10485760
readonly GREP_TIMEOUT_SECONDS=20
readonly PATH_RE='^(|/[A-Za-z0-9._/-]{0,254})$'
readonly PATTERN_RE='^[ -~]{0,200}$'

# Only fixed, script-controlled text reaches stdout, so printf builds valid JSON.
invalid() {
  printf '%s\n' "$1" >&2
  printf '{"probe":1,"error":"InvalidParameter","message":"%s"}\n' "$1"
  exit "$EX_INVALID"
}

for name in SSM_PidFile SSM_LogFile SSM_LogPattern; do
  if [[ ! -v $name ]]; then
    invalid "${name} is not set: SSM Agent 3.3.2746.0 or later is required (it passes document parameters as SSM_ environment variables)"
  fi
done

# $1 parameter name, $2 value: empty, or an absolute path without '.', '..' or empty segments.
check_path() {
  local name="$1" value="$2"
  if [[ ! $value =~ $PATH_RE ]]; then
    invalid "${name} must be empty or an absolute path of letters, digits and . _ / - (at most 255 characters)"
  fi
  if [[ -n $value && ($value/ == *//* || $value/ == */./* || $value/ == */../*) ]]; then
    invalid "${name} may not contain '.', '..' or empty path segments"
  fi
}

SSM_CheckpointDir=${SSM_CheckpointDir-} # a document without the parameter (older stack): owner not checked

# RunIds (batched probe of a fleet whose paths hold each run's id): "i-<id>=<run-id>" pairs separated by single
# spaces, one per instance of the command; "{run-id}" in PidFile, LogFile or CheckpointDir is this instance's run
# id (AWS_SSM_INSTANCE_ID, set by the agent, picks the pair). Substituted before every check below.
readonly RUN_IDS_RE='^(|i-[0-9a-f]{8,17}=[A-Za-z0-9][A-Za-z0-9._-]{0,62}( i-[0-9a-f]{8,17}=[A-Za-z0-9][A-Za-z0-9._-]{0,62}){0,49})$'
SSM_RunIds=${SSM_RunIds-}
[[ $SSM_RunIds =~ $RUN_IDS_RE ]] || invalid "RunIds must be up to 50 i-<id>=<run-id> pairs separated by single spaces"
if [[ -n $SSM_RunIds ]]; then
  own_run=""
  for pair in $SSM_RunIds; do # word splitting only: RUN_IDS_RE admits no glob character
    if [[ ${pair%%=*} == "${AWS_SSM_INSTANCE_ID:-}" ]]; then
      [[ -z $own_run ]] || invalid "RunIds names this instance twice"
      own_run=${pair#*=}
    fi
  done
  [[ -n $own_run ]] || invalid "RunIds names no run id for this instance (AWS_SSM_INSTANCE_ID)"
  SSM_PidFile=${SSM_PidFile//"{run-id}"/"$own_run"}
  SSM_LogFile=${SSM_LogFile//"{run-id}"/"$own_run"}
  SSM_CheckpointDir=${SSM_CheckpointDir//"{run-id}"/"$own_run"}
fi
for name in SSM_PidFile SSM_LogFile SSM_CheckpointDir; do
  [[ ${!name} != *"{"* ]] || invalid "${name#SSM_} still holds '{' after the {run-id} substitution (RunIds names no run id for this instance)"
done

check_path PidFile "$SSM_PidFile"
check_path LogFile "$SSM_LogFile"
check_path CheckpointDir "$SSM_CheckpointDir"
if [[ ! $SSM_LogPattern =~ $PATTERN_RE ]]; then
  invalid "LogPattern must be at most 200 printable ASCII characters"
fi
if [[ -n $SSM_LogFile && -z $SSM_LogPattern ]]; then
  # An empty pattern matches every line and would report completion as soon as the log has any line.
  invalid "LogPattern is required when LogFile is set"
fi

# @include lib/params.sh
# @include lib/pid.sh
# @include lib/logoffset.sh

for name in LogFile CheckpointDir; do
  var="SSM_${name}"
  if [[ -n ${!var} ]] && system_location "${!var}"; then
    invalid "${name} names a system location: autostop never reads system locations; use a directory owned by the trainer's user"
  fi
done

pid_state=not_configured
pid_json=null
if [[ -n $SSM_PidFile ]]; then
  if [[ ! -e $SSM_PidFile && ! -L $SSM_PidFile ]]; then
    pid_state=missing
  elif ! pid=$(read_pid "$SSM_PidFile"); then
    pid_state=unreadable
    echo "probe: ${SSM_PidFile} is not readable or does not hold a process id" >&2
  else
    pid_json=$pid
    trainer_rc=0
    if pid_file_stale "$SSM_PidFile"; then
      trainer_rc=3
    else
      pid_is_trainer "$pid" "$SSM_PidFile" || trainer_rc=$?
    fi
    if ((trainer_rc == 3)); then
      pid_state=stale
      echo "probe: ${SSM_PidFile} was last written before this boot; pid ${pid} is not its trainer" >&2
    elif ((trainer_rc == 0)); then
      pid_state=running
    elif ((trainer_rc == 2)); then
      # Alive but not provably the trainer (a reused pid, or a stepped clock): unknown, never "exited".
      pid_state=unverified
      echo "probe: pid ${pid} from ${SSM_PidFile} is alive but cannot be shown to be the trainer (${PID_WHY})" >&2
    else
      pid_state=exited
    fi
  fi
fi

# Owner of CheckpointDir: the trainer's user, whose log alone autostop (root) reads.
trainer_uid=""
if [[ -n $SSM_CheckpointDir ]] && [[ -d $SSM_CheckpointDir && $(realpath -e -- "$SSM_CheckpointDir" 2>/dev/null) == "$SSM_CheckpointDir" ]]; then
  trainer_uid=$(stat -c %u -- "$SSM_CheckpointDir" 2>/dev/null) || trainer_uid=""
fi

log_state=not_configured
# scan_log: sets log_state; a reason for unreadable goes to stderr.
scan_log() {
  local fd="" info real uid dev ino size mtime kind boot bfile offset=0 earlier="" btime from statuses
  unreadable() {
    log_state=unreadable
    echo "probe: ${SSM_LogFile}: $1" >&2
  }
  if ! boot=$(boot_key) || ! bfile=$(log_baseline_file "$SSM_LogFile"); then
    unreadable "the state directory ${AUTOSTOP_STATE_DIR:-/var/lib/autostop} is unusable (it must be a directory owned by root, not writable by group or others) or this boot cannot be identified"
    return
  fi
  if [[ ! -e $SSM_LogFile && ! -L $SSM_LogFile ]]; then
    log_state=missing
    if ! read_log_baseline "$bfile" || [[ $BASE_BOOT != "$boot" ]]; then
      write_log_baseline "$bfile" "$boot" 0 0 0 || echo "probe: cannot record the log baseline in ${bfile}" >&2
    fi
    return
  fi
  if [[ -n $SSM_CheckpointDir && -z $trainer_uid ]]; then
    unreadable "CheckpointDir ${SSM_CheckpointDir} is not a directory reached without a symbolic link, so the log's owner cannot be checked"
    return
  fi
  if [[ -L $SSM_LogFile || ! -f $SSM_LogFile ]]; then
    unreadable "not a regular file (or a symbolic link)" # a directory, FIFO or device: never block on it
    return
  fi
  # One descriptor for every check and the read: what is checked is what is read.
  if ! exec {fd}<"$SSM_LogFile"; then
    unreadable "cannot be opened"
    return
  fi
  real=$(readlink -- "/proc/self/fd/${fd}" 2>/dev/null) || real=""
  info=$(stat -L -c '%u %d %i %s %Y %F' -- "/proc/self/fd/${fd}" 2>/dev/null) || info=""
  read -r uid dev ino size mtime kind <<<"$info"
  if [[ $real != "$SSM_LogFile" ]]; then
    unreadable "its path passes through a symbolic link (it is ${real:-unknown})"
  elif [[ $kind != "regular file" || ! $size =~ ^[0-9]+$ || ! $mtime =~ ^-?[0-9]+$ ]]; then
    unreadable "not a regular file, or its size cannot be read"
  elif [[ -n $trainer_uid && $uid != "$trainer_uid" ]]; then
    unreadable "owned by uid ${uid}, not by the owner of CheckpointDir (uid ${trainer_uid}): autostop reads only the trainer's own log"
  elif read_log_baseline "$bfile" && [[ $BASE_BOOT == "$boot" ]]; then
    if [[ $BASE_DEV == "$dev" && $BASE_INO == "$ino" ]] && ((BASE_OFFSET <= size)); then
      offset=$BASE_OFFSET
    fi # else replaced or truncated after this boot's baseline: all of it is this boot's
  else
    if ((size > 0)); then
      if [[ -e $bfile || -L $bfile ]]; then
        earlier="a baseline of an earlier boot exists"
      elif [[ -e ${bfile%/log-baselines/*}/log-offsets/${bfile##*/} ]]; then
        earlier="an earlier restore recorded its offset"
      elif btime=$(boot_time) && ((mtime < btime)); then
        earlier="it was last written before this boot"
      fi
    fi
    if ! write_log_baseline "$bfile" "$boot" "$dev" "$ino" "$([[ -n $earlier ]] && echo "$size" || echo 0)"; then
      unreadable "cannot record its baseline in ${bfile}"
    elif [[ -n $earlier ]]; then
      unreadable "it holds an earlier session's lines (${earlier}) and this boot had no baseline yet: recorded ${size} bytes as this boot's baseline, only lines written from now on count"
    fi
  fi
  if [[ $log_state == not_configured ]]; then
    ((offset == 0)) || echo "probe: scanning ${SSM_LogFile} after this boot's baseline ${offset}" >&2
    # From the baseline when less than LOG_TAIL_BYTES follow it, else the last LOG_TAIL_BYTES.
    if ((size - offset < LOG_TAIL_BYTES)); then from="+$((offset + 1))"; else from=$LOG_TAIL_BYTES; fi
    set +e
    tail -c "$from" <&"$fd" | timeout "$GREP_TIMEOUT_SECONDS" grep -E -q -e "$SSM_LogPattern"
    statuses=("${PIPESTATUS[@]}")
    set -e
    # grep -q stops at the first match, so tail may then die of SIGPIPE (141): only grep's status counts.
    if ((statuses[1] == 0)); then
      log_state=matched
    elif ((statuses[1] == 1 && statuses[0] == 0)); then
      log_state=not_matched
    else
      unreadable "reading failed (tail ${statuses[0]}, grep ${statuses[1]})" # invalid ERE (grep 2) or timeout (124)
    fi
  fi
  exec {fd}<&-
}
if [[ -n $SSM_LogFile ]]; then
  scan_log
fi

printf '{"probe":1,"pid":{"state":"%s","pid":%s},"log":{"state":"%s"}}\n' "$pid_state" "$pid_json" "$log_state"
exit 0
