# autostop: parameter checks in bash, pasted into the probe (its system_location); the checkpoint, restore and
# preflight documents run the Python port of this file, lib/instance.py (check, check_segments, system_location,
# check_not_system: keep the two deny lists the same). check() and friends need a fail() and EX_INVALID.

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

# System locations (the deny list): "/", "/home", "/var", "/tmp", "/opt", "/mnt", "/srv" and "/media" themselves, and
# everything at or below /etc /bin /sbin /usr /lib /lib32 /lib64 /libx32 /boot /proc /sys /dev /root /snap /run
# /var/log /var/lib /var/run /var/spool /var/cache /var/mail, except below /run/user/<uid>/ (a user's runtime
# directory). A path tag (checkpoint-dir, pid-file, log-file) naming one is refused: autostop acts there as root.
readonly SYSTEM_RE='^/(etc|bin|sbin|usr|boot|proc|sys|dev|root|snap|run|lib|lib32|lib64|libx32|var/(log|lib|run|spool|cache|mail))(/|$)'
readonly SYSTEM_HINT="autostop never reads, writes or uploads system locations (/, /home, /var, /tmp, /opt, /mnt, /srv, /media themselves; /etc /bin /sbin /usr /lib* /boot /proc /sys /dev /root /snap /run /var/log /var/lib /var/run /var/spool /var/cache /var/mail and below, except /run/user/<uid>/...); use a directory owned by the trainer's user, such as /home/<user>/... or /data/..."

# system_location PATH: succeeds when PATH is a system location of the deny list.
system_location() {
  case $1 in / | /home | /var | /tmp | /opt | /mnt | /srv | /media) return 0 ;; esac
  [[ ! $1 =~ ^/run/user/[0-9]+/. ]] || return 1
  [[ $1 =~ $SYSTEM_RE ]]
}

# check_not_system NAME: fails InvalidParameter when SSM_<NAME> names a system location (empty is fine).
check_not_system() {
  local var="SSM_$1"
  local value="${!var}"
  if [[ -n $value ]] && system_location "$value"; then
    fail InvalidParameter "parameter $1 (${value:0:120}) names a system location: ${SYSTEM_HINT}" "$EX_INVALID"
  fi
}
