#!/usr/bin/env bash
# autostop completion probe: run by the probe SSM Command document (aws:runShellScript).
#
# Contract
#   Input   SSM_PidFile, SSM_LogFile, SSM_LogPattern, SSM_CheckpointDir, SSM_RunIds: the document's parameters,
#           passed by the SSM agent as environment variables (interpolationType ENV_VAR, agent 3.3.2746.0 or later).
#           Each may be the empty string, meaning "not configured". Re-validated by the program with the
#           document's regexes; this script never contains document placeholders. LogFile and CheckpointDir may
#           not name a system location (the deny list in lib/instance.py). From the environment, not from the
#           document: AUTOSTOP_STATE_DIR (default /var/lib/autostop), AUTOSTOP_BOOT_TIME (epoch seconds, default
#           btime of /proc/stat) and AUTOSTOP_BOOT_ID (default /proc/sys/kernel/random/boot_id; see boot_key in
#           lib/instance.py).
#   Effect  No network, no signals. Writes only its own state: the log's baseline for this boot
#           (${AUTOSTOP_STATE_DIR}/log-baselines/<hex SHA-256 of the LogFile path>, 0600, written to a new file and
#           renamed, never through a symbolic link: write_baseline in lib/instance.py).
#           The log is read (through one descriptor, at most its last 10 MiB, by grep -E) only when it is a regular file
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
#           or, for invalid parameters, {"probe":1,"error":"InvalidParameter","message":"..."}; without python3
#           (or on an unexpected failure) {"probe":1,"error":"ScriptFailed","message":"..."}: no probe result, so
#           Evaluate reads every on-instance signal as inconclusive, never complete.
#   Exit    0 for every probe result; 64 for invalid or missing parameters; 70 ScriptFailed (no python3, a bug);
#           128 + n when stopped by signal n.
#   Needs   bash, python3 >= 3.7 (stdlib), grep (the log pattern is a grep -E pattern), /proc. No AWS CLI.
#   Program These lines only start autostop's on-instance program (python3 -I, lib/instance.py and lib/probe.py
#           pasted below, nothing else: main_probe).
[ -n "${BASH_VERSION:-}" ] || { printf '%s\n' '{"probe":1,"error":"InvalidParameter","message":"probe.sh must be run by bash"}'; exit 64; }
set -euo pipefail
export LC_ALL=C
if ! command -v python3 >/dev/null 2>&1; then
  printf '%s\n' '{"probe":1,"error":"ScriptFailed","message":"python3 is not installed on this instance: the probe runs the autostop program in python3 (the checkpoint needs it too); install python3. Until then the trainer and its log are not probed (inconclusive)"}'
  exit 70
fi
IFS= read -r -d '' PYHELPER <<'PY' || true
# @include lib/instance.py
# @include lib/baseline.py
# @include lib/probe.py
# @include lib/dispatch.py
PY
exec python3 -I -c "$PYHELPER" probe
