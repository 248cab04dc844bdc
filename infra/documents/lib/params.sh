# autostop: parameter checks of the checkpoint and restore scripts (each value re-validated with its
# document's regex). Pasted in at the scripts' include line; needs fail() (lib/fail.sh) and EX_INVALID.

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
