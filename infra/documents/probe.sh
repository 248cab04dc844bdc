#!/usr/bin/env bash
# autostop completion probe: run by the probe SSM Command document (aws:runShellScript).
#
# Contract
#   Input   SSM_PidFile, SSM_LogFile, SSM_LogPattern: the document's parameters, passed by the SSM
#           agent as environment variables (interpolationType ENV_VAR, agent 3.3.2746.0 or later).
#           Each may be the empty string, meaning "not configured". Re-validated here with the
#           document's regexes; this script never contains document placeholders.
#           AUTOSTOP_STATE_DIR (default /var/lib/autostop) and AUTOSTOP_BOOT_TIME (epoch seconds, default
#           btime of /proc/stat) come from the environment, not from the document (the local simulation sets them).
#   Effect  None: read-only, no network, no signals. Reads at most the last 10 MiB of the log, and only what
#           follows its log offset: when the restore document resumed a run it recorded the log's size in
#           ${AUTOSTOP_STATE_DIR}/log-offsets/<hex SHA-256 of the LogFile path>; lines before that offset
#           belong to an earlier run and are not scanned (all of the log is, if it is now shorter than the
#           offset: rotated or truncated).
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
#              (unreadable also when the offset file exists but holds no offset: never scan an old run's lines)
#           or, for invalid parameters, {"probe":1,"error":"InvalidParameter","message":"..."}.
#   Exit    0 for every probe result; 64 for invalid or missing parameters.
#   Needs   bash >= 4.2, coreutils (head, tail, timeout, stat, sha256sum), grep, getconf (else CLK_TCK 100). No python,
#           no AWS CLI.
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

check_path PidFile "$SSM_PidFile"
check_path LogFile "$SSM_LogFile"
if [[ ! $SSM_LogPattern =~ $PATTERN_RE ]]; then
  invalid "LogPattern must be at most 200 printable ASCII characters"
fi
if [[ -n $SSM_LogFile && -z $SSM_LogPattern ]]; then
  # An empty pattern matches every line and would report completion as soon as the log has any line.
  invalid "LogPattern is required when LogFile is set"
fi

# @include lib/pid.sh
# @include lib/logoffset.sh

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

log_state=not_configured
if [[ -n $SSM_LogFile ]]; then
  if [[ ! -e $SSM_LogFile && ! -L $SSM_LogFile ]]; then
    log_state=missing
  elif [[ ! -f $SSM_LogFile ]]; then
    log_state=unreadable # a directory, FIFO or device: never block on it
    echo "probe: ${SSM_LogFile} is not a regular file" >&2
  elif ! offset_file=$(log_offset_file "$SSM_LogFile"); then
    log_state=unreadable
    echo "probe: cannot compute the log offset file of ${SSM_LogFile} (sha256sum)" >&2
  elif [[ (-e $offset_file || -L $offset_file) ]] && ! offset=$(read_log_offset "$offset_file"); then
    log_state=unreadable # never fall back to scanning lines an earlier run wrote
    echo "probe: the log offset file ${offset_file} holds no offset" >&2
  elif ! size=$(stat -L -c %s -- "$SSM_LogFile" 2>/dev/null) || [[ ! $size =~ ^[0-9]+$ ]]; then
    log_state=unreadable
    echo "probe: cannot read the size of ${SSM_LogFile}" >&2
  else
    offset=${offset:-0}
    if ((offset > size)); then
      echo "probe: ${SSM_LogFile} (${size} bytes) is shorter than its log offset ${offset}: scanning all of it" >&2
      offset=0
    fi
    ((offset == 0)) || echo "probe: scanning ${SSM_LogFile} after its log offset ${offset}" >&2
    # From the offset when less than LOG_TAIL_BYTES follow it, else the last LOG_TAIL_BYTES.
    if ((size - offset < LOG_TAIL_BYTES)); then from="+$((offset + 1))"; else from=$LOG_TAIL_BYTES; fi
    set +e
    tail -c "$from" -- "$SSM_LogFile" | timeout "$GREP_TIMEOUT_SECONDS" grep -E -q -e "$SSM_LogPattern"
    statuses=("${PIPESTATUS[@]}")
    set -e
    # grep -q stops at the first match, so tail may then die of SIGPIPE (141): only grep's status counts.
    if ((statuses[1] == 0)); then
      log_state=matched
    elif ((statuses[1] == 1 && statuses[0] == 0)); then
      log_state=not_matched
    else
      log_state=unreadable # unreadable file, invalid ERE (grep 2) or grep timed out (124)
      echo "probe: reading ${SSM_LogFile} failed (tail ${statuses[0]}, grep ${statuses[1]})" >&2
    fi
  fi
fi

printf '{"probe":1,"pid":{"state":"%s","pid":%s},"log":{"state":"%s"}}\n' "$pid_state" "$pid_json" "$log_state"
exit 0
