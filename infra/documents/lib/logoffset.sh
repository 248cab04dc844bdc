# autostop: where the restore script records, and the probe reads, the log offset of a resumed run: the size
# the trainer's log file had when autostop restored the checkpoint. Lines before it belong to an earlier run
# (an old "training complete" must not end the resumed one). Pasted in at the scripts' include line.
readonly LOG_OFFSET_MAX_CHARS=20

# Prints the offset file of log file $1: ${AUTOSTOP_STATE_DIR:-/var/lib/autostop}/log-offsets/<hex SHA-256
# of the path $1>.
log_offset_file() {
  local digest
  digest=$(printf '%s' "$1" | sha256sum) || return 1
  digest=${digest%% *}
  [[ $digest =~ ^[0-9a-f]{64}$ ]] || return 1
  printf '%s/log-offsets/%s\n' "${AUTOSTOP_STATE_DIR:-/var/lib/autostop}" "$digest"
}

# Prints the offset (a decimal byte count) recorded in offset file $1; fails when it holds none.
read_log_offset() {
  local content
  [[ -f $1 && ! -L $1 ]] || return 1
  content=$(head -c "$((LOG_OFFSET_MAX_CHARS + 1))" -- "$1" 2>/dev/null) || return 1
  ((${#content} <= LOG_OFFSET_MAX_CHARS)) || return 1
  content="${content%"${content##*[![:space:]]}"}"
  [[ $content =~ ^[0-9]{1,18}$ ]] || return 1
  printf '%s\n' "$((10#$content))"
}
