# autostop: shared by the probe and checkpoint scripts; infra/constructs/documents.py pastes this file
# in place of their include line when it builds the SSM documents (a document is one script).
readonly PID_MAX=4194304 # PID_MAX_LIMIT on 64-bit Linux

# Alive = signal 0 can be delivered (or /proc/<pid> exists when we may not signal it) and, where
# /proc is mounted, the process is not a zombie (a zombie has exited; only its parent has not reaped it).
pid_alive() {
  local pid="$1" stat rest
  if ! kill -0 "$pid" 2>/dev/null && [[ ! -d /proc/$pid ]]; then
    return 1
  fi
  if [[ -d /proc/self ]]; then
    { read -r stat <"/proc/$pid/stat"; } 2>/dev/null || return 1
    rest=${stat##*) } # the command name may contain spaces and parentheses
    case "${rest%% *}" in
      Z | X | x) return 1 ;;
    esac
  fi
  return 0
}

# Prints a pid (decimal, no leading zeros) read from file $1, or fails when it holds no valid pid.
read_pid() {
  local file="$1" content
  [[ -f $file ]] || return 1
  content=$(head -c 65 -- "$file" 2>/dev/null) || return 1
  ((${#content} <= 64)) || return 1
  content="${content#"${content%%[![:space:]]*}"}"
  content="${content%"${content##*[![:space:]]}"}"
  [[ $content =~ ^[0-9]{1,10}$ ]] || return 1
  content=$((10#$content))
  ((content > 0 && content <= PID_MAX)) || return 1
  printf '%s\n' "$content"
}
