# autostop: the single final failure line of the checkpoint and restore scripts. Pasted in at the
# scripts' include line; the script defines log(), FINAL_PRINTED and PYHELPER (whose "failline" subcommand
# prints {"result":"failed","error":E,"message":M}).

# JSON string body from printable ASCII only; used when python3 cannot format the failure line.
json_fallback() {
  local s
  s=$(printf '%s' "$1" | tr -cd '\040-\176') || s="(message unavailable)"
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  printf '%s' "$s"
}

# fail ERROR MESSAGE EXIT_CODE: print the one final failure line and exit. In a subshell (command
# substitution) only exit: the parent sees the failure and reports it.
fail() {
  local error="$1" message="$2" code="$3" line=""
  if [[ $BASHPID != "$$" ]]; then exit "$code"; fi
  trap - ERR
  message=${message:0:2000}
  log "${error}: ${message}"
  if ((FINAL_PRINTED == 0)); then
    FINAL_PRINTED=1
    if [[ -n $PYHELPER ]]; then
      line=$(python3 -I -c "$PYHELPER" failline "$error" "$message" 2>/dev/null) || line=""
    fi
    if [[ $line != "{"*"}" ]]; then
      line=$(printf '{"result":"failed","error":"%s","message":"%s"}' "$error" "$(json_fallback "$message")")
    fi
    printf '%s\n' "$line"
  fi
  exit "$code"
}
