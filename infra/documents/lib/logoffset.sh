# autostop: the log baseline of a boot, shared by the probe (which reads it, and records it at its first run in a
# boot) and the restore (which records it before a resumed trainer writes: the Python port of boot_key, state_dir
# and log_baseline_file is in lib/restore_helper.py, keep them the same). Log lines count as completion
# evidence only when written after this boot's baseline: an earlier session's "training complete" never ends a
# new session. Pasted in at the scripts' include line; needs boot_time (lib/pid.sh).
#
# The baseline of log file L is ${AUTOSTOP_STATE_DIR:-/var/lib/autostop}/log-baselines/<hex SHA-256 of the path L>,
# one line {"boot":B,"dev":D,"ino":I,"offset":O}: boot B (boot_key), the log's st_dev and st_ino (0 0 when it did
# not exist) and its size O then. The state directory must be owned by this script's user and not writable by
# group or others (it is root's /var/lib/autostop on an instance).
readonly BASELINE_RE='^\{"boot":"([A-Za-z0-9-]{1,64})","dev":([0-9]{1,20}),"ino":([0-9]{1,20}),"offset":([0-9]{1,18})\}$'
BASE_BOOT="" BASE_DEV="" BASE_INO="" BASE_OFFSET=""

# Prints this boot's identity: AUTOSTOP_BOOT_ID (tests), else boot-time-<AUTOSTOP_BOOT_TIME> (the local simulation,
# whose machines share one kernel), else /proc/sys/kernel/random/boot_id, else btime-<btime of /proc/stat>.
boot_key() {
  local id=""
  if [[ ${AUTOSTOP_BOOT_ID:-} =~ ^[A-Za-z0-9-]{1,64}$ ]]; then
    printf '%s\n' "$AUTOSTOP_BOOT_ID"
  elif [[ ${AUTOSTOP_BOOT_TIME:-} =~ ^[0-9]{1,12}$ ]]; then
    printf 'boot-time-%s\n' "$((10#$AUTOSTOP_BOOT_TIME))"
  else
    { read -r id </proc/sys/kernel/random/boot_id; } 2>/dev/null || id=""
    if [[ ! $id =~ ^[0-9a-f-]{36}$ ]]; then
      id=$(boot_time) || return 1
      id="btime-${id}"
    fi
    printf '%s\n' "$id"
  fi
}

# Prints the state directory, creating it (0755) when missing; fails unless it is a real directory owned by this
# user and not writable by group or others.
state_dir() {
  local dir="${AUTOSTOP_STATE_DIR:-/var/lib/autostop}" info
  [[ $dir == /* ]] || return 1
  [[ -d $dir ]] || mkdir -p -m 0755 -- "$dir" 2>/dev/null || return 1
  [[ ! -L $dir ]] || return 1
  info=$(stat -c '%u %a' -- "$dir" 2>/dev/null) || return 1
  [[ ${info%% *} == "$EUID" && $((8#${info#* } & 8#022)) == 0 ]] || return 1
  printf '%s\n' "$dir"
}

# Prints the baseline file of log file $1 (see above).
log_baseline_file() {
  local digest dir
  dir=$(state_dir) || return 1
  digest=$(printf '%s' "$1" | sha256sum) || return 1
  digest=${digest%% *}
  [[ $digest =~ ^[0-9a-f]{64}$ ]] || return 1
  printf '%s/log-baselines/%s\n' "$dir" "$digest"
}

# read_log_baseline FILE: sets BASE_BOOT BASE_DEV BASE_INO BASE_OFFSET; fails when FILE holds no baseline.
read_log_baseline() {
  local content
  [[ -f $1 && ! -L $1 ]] || return 1
  content=$(head -c 300 -- "$1" 2>/dev/null) || return 1
  content="${content%"${content##*[![:space:]]}"}"
  [[ $content =~ $BASELINE_RE ]] || return 1
  BASE_BOOT=${BASH_REMATCH[1]} BASE_DEV=${BASH_REMATCH[2]} BASE_INO=${BASH_REMATCH[3]} BASE_OFFSET=$((10#${BASH_REMATCH[4]}))
}

# write_log_baseline FILE BOOT DEV INO OFFSET: records a baseline (temp file + rename in its directory).
write_log_baseline() {
  local dir tmp
  dir=${1%/*}
  [[ -d $dir && ! -L $dir ]] || mkdir -m 0755 -- "$dir" 2>/dev/null || return 1
  tmp=$(mktemp "${dir}/.baseline.XXXXXX" 2>/dev/null) || return 1
  if printf '{"boot":"%s","dev":%s,"ino":%s,"offset":%s}\n' "$2" "$3" "$4" "$5" >"$tmp" && mv -f -T -- "$tmp" "$1"; then
    return 0
  fi
  rm -f -- "$tmp"
  return 1
}
