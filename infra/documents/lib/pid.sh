# autostop: the PID file's reading in bash, pasted into the probe (infra/constructs/documents.py pastes this file
# in place of its include line). The checkpoint, restore and preflight documents run the Python port of this file,
# lib/instance.py (read_pid, pid_is_trainer, pid_same, pid_file_stale): a change here belongs there too.
readonly PID_MAX=4194304 # PID_MAX_LIMIT on 64-bit Linux
readonly PID_FILE_SLACK=2 # seconds a trainer may seem to have started after writing its PID file (clock rounding)
PID_WHY=""   # why pid_is_trainer rejected a live process
PID_START="" # start time (field 22 of /proc/<pid>/stat) of the process pid_is_trainer accepted; empty without /proc

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

# Prints the start time of process $1 in clock ticks after boot (field 22 of /proc/<pid>/stat).
pid_start_ticks() {
  local stat rest i
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
  rest=${stat##*) } # fields 3 ... after the command name, which may contain spaces and parentheses
  for ((i = 3; i < 22; i++)); do rest=${rest#* }; done
  rest=${rest%% *}
  [[ $rest =~ ^[0-9]{1,20}$ ]] || return 1
  printf '%s\n' "$rest"
}

# pid_is_trainer PID FILE: can live process PID be the trainer that wrote PID FILE? A pid is reused once its
# process has exited, so a live process only counts when it
#   - is not PID 1, this script ($$) or its parent ($PPID),
#   and, where /proc is mounted,
#   - runs as (real uid) the owner of FILE (of FILE itself if it is a symbolic link), unless root owns FILE
#     (only root can have written it: a root launcher that starts the trainer as another user), and
#   - started no later than PID_FILE_SLACK s after FILE was last modified (a trainer writes its pid once it runs;
#     start = btime of /proc/stat + field 22 of /proc/<pid>/stat / CLK_TCK).
# Returns 0 (and sets PID_START) if so, 1 if PID is not alive, 2 (and sets PID_WHY) if it is alive but
# cannot be the trainer. Must not run in a subshell (it sets globals).
pid_is_trainer() {
  local pid="$1" file="$2" owner mtime status uid procstat btime clk ticks started
  local uid_re=$'(^|\n)Uid:[[:space:]]+([0-9]+)' btime_re=$'(^|\n)btime ([0-9]+)'
  PID_WHY="" PID_START=""
  pid_alive "$pid" || return 1
  if ((pid == 1)); then
    PID_WHY="pid 1 is init"
    return 2
  elif ((pid == $$ || pid == PPID)); then
    PID_WHY="pid ${pid} is this script or its parent"
    return 2
  fi
  [[ -d /proc/self ]] || return 0
  if ! owner=$(stat -c %u -- "$file" 2>/dev/null) || ! mtime=$(stat -L -c %Y -- "$file" 2>/dev/null) ||
    [[ ! $owner =~ ^[0-9]+$ || ! $mtime =~ ^-?[0-9]+$ ]]; then
    PID_WHY="cannot read the owner and modification time of ${file}"
    return 2
  fi
  ticks=$(pid_start_ticks "$pid") || return 1
  { status=$(<"/proc/$pid/status"); } 2>/dev/null || return 1
  # Still the same live process (same start time), so status described it and not a successor.
  pid_same "$pid" "$ticks" || return 1
  if [[ $status =~ $uid_re ]]; then uid=${BASH_REMATCH[2]}; else uid=""; fi
  if [[ $uid != "$owner" && $owner != 0 ]]; then
    PID_WHY="pid ${pid} runs as uid ${uid:-unknown}, but ${file} is owned by uid ${owner}"
    return 2
  fi
  { procstat=$(</proc/stat); } 2>/dev/null || procstat=""
  if [[ $procstat =~ $btime_re ]]; then btime=${BASH_REMATCH[2]}; else btime=""; fi
  clk=$(getconf CLK_TCK 2>/dev/null) || clk=""
  [[ $clk =~ ^[1-9][0-9]{0,5}$ ]] || clk=100 # USER_HZ is 100 on every Linux architecture autostop runs on
  if [[ -z $btime ]]; then
    PID_WHY="cannot read the boot time from /proc/stat"
    return 2
  fi
  started=$((btime + ticks / clk))
  if ((started > mtime + PID_FILE_SLACK)); then
    PID_WHY="pid ${pid} started $((started - mtime)) s after ${file} was last written"
    return 2
  fi
  # shellcheck disable=SC2034 # read by checkpoint.sh (pid_same), not by probe.sh
  PID_START=$ticks
  return 0
}

# pid_same PID START: is the process that had pid PID and start time START (PID_START; empty without /proc)
# still alive? False once it has exited, even if a new process got its pid.
pid_same() {
  local ticks
  pid_alive "$1" || return 1
  [[ -n $2 ]] || return 0
  ticks=$(pid_start_ticks "$1") || return 1
  [[ $ticks == "$2" ]]
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

# Prints this boot's time in seconds since the epoch: AUTOSTOP_BOOT_TIME when it holds one (the local
# simulation, whose "instances" share one kernel), else btime of /proc/stat. Fails when neither is known.
boot_time() {
  local procstat btime_re=$'(^|\n)btime ([0-9]+)'
  if [[ ${AUTOSTOP_BOOT_TIME:-} =~ ^[0-9]{1,12}$ ]]; then
    printf '%s\n' "$((10#$AUTOSTOP_BOOT_TIME))"
    return 0
  fi
  { procstat=$(</proc/stat); } 2>/dev/null || return 1
  [[ $procstat =~ $btime_re ]] || return 1
  printf '%s\n' "${BASH_REMATCH[2]}"
}

# pid_file_stale FILE: was FILE (followed if it is a symbolic link) last written before this boot? Then it
# was left by a trainer of an earlier boot, and whatever process has its pid now is not that trainer.
# False when the boot time or the file's mtime cannot be read.
pid_file_stale() {
  local boot mtime
  boot=$(boot_time) || return 1
  mtime=$(stat -L -c %Y -- "$1" 2>/dev/null) || return 1
  [[ $mtime =~ ^-?[0-9]{1,20}$ ]] || return 1
  ((mtime < boot))
}
