#!/usr/bin/env bash
# autostop preflight: run by the preflight SSM Command document (aws:runShellScript) when an operator runs
# `autostop preflight INSTANCE`. It answers one question: would a stop of this instance succeed now?
#
# Contract
#   Input   SSM_Bucket SSM_InstancePrefix (instances/<this instance's ARN>/) SSM_CheckpointDir SSM_PidFile (may be
#           empty) SSM_SaveOnSignal (true | false): the document's parameters as environment variables
#           (interpolationType ENV_VAR, SSM Agent 3.3.2746.0 or later), re-validated here with the document's regexes.
#           InstancePrefix must name this instance (AWS_SSM_INSTANCE_ID, set by the agent, when present).
#   Effect  Read-only on the instance. In S3: one small object written under the instance's own prefix
#           (InstancePrefix + preflight/<UTC time>-<random>.json; the instance policy grants no delete, so it stays,
#           a few hundred bytes) and one write attempted just OUTSIDE it (instances/<ARN>-preflight-isolation/...),
#           which the instance policy must refuse (if it is accepted, it is deleted again where the role allows).
#   Checks  aws_cli (present, its version), python3 (present, its version, and able to run the documents' helper),
#           trainer (the PID file names a live process that is the trainer, by lib/pid.sh exactly as the checkpoint
#           does; skip without a PID file), then in lib/preflight.py: credentials (sts GetCallerIdentity), own_prefix
#           (the test write, its VersionId: a versioned bucket), isolation (the outside write refused) and
#           checkpoint (the one lib/selection.py would choose now, and why; or why none).
#   Output  Diagnostics on stderr. The LAST stdout line is exactly one JSON object:
#             {"preflight":1,"ok":B,"transfer":"sdk"|"cli"|null,"checks":[{"name":N,"status":"pass"|"fail"|"skip",
#              "message":M,...}]}
#           ok: no check failed. own_prefix adds "key" and "version_id"; checkpoint adds "checkpoint" and "step".
#           or {"result":"failed","error":"InvalidParameter"|"ScriptFailed","message":"..."}.
#   Exit    0 whenever the checks ran (ok says how they went); 64 InvalidParameter; 70 ScriptFailed.
#   Needs   bash >= 4.2, coreutils; python3 and the AWS CLI are what it checks for.
# shellcheck disable=SC2154,SC2329 # SSM_* come from the agent; traps call functions
[ -n "${BASH_VERSION:-}" ] || { printf '%s\n' '{"result":"failed","error":"ScriptFailed","message":"preflight.sh must be run by bash"}'; exit 70; }
set -euo pipefail
set -o errtrace
export LC_ALL=C
umask 077

readonly EX_INVALID=64 EX_SCRIPT=70
FINAL_PRINTED=0
PYHELPER=""
log() { printf 'preflight: %s\n' "$*" >&2; }

# @include lib/fail.sh

trap 'fail ScriptFailed "unexpected failure (exit status $?) at line $LINENO of preflight.sh: ${BASH_COMMAND:0:300}" "$EX_SCRIPT"' ERR
trap 'rc=$?; ((FINAL_PRINTED)) || fail ScriptFailed "preflight.sh stopped unexpectedly (exit status $rc)" "$EX_SCRIPT"' EXIT

for name in SSM_Bucket SSM_InstancePrefix SSM_CheckpointDir SSM_PidFile; do
  if [[ ! -v $name ]]; then
    fail InvalidParameter "${name} is not set: update the SSM Agent to 3.3.2746.0 or later" "$EX_INVALID"
  fi
done

# @include lib/params.sh

check Bucket '^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$' "expected an S3 bucket name"
check InstancePrefix '^instances/arn:[a-z-]+:ec2:[a-z0-9-]+:[0-9]{12}:instance/i-[0-9a-f]{8,17}/$' "expected instances/<ARN>/"
check CheckpointDir '^/[A-Za-z0-9._/-]{0,254}$' "expected an absolute path"
check PidFile '^(|/[A-Za-z0-9._/-]{0,254})$' "expected empty or an absolute path"
SSM_SaveOnSignal=${SSM_SaveOnSignal:-false}
check SaveOnSignal '^(true|false)$' "expected true or false"
check_segments CheckpointDir path
check_segments PidFile path
if [[ -n ${AWS_SSM_INSTANCE_ID:-} && $SSM_InstancePrefix != */"$AWS_SSM_INSTANCE_ID"/ ]]; then
  fail InvalidParameter "InstancePrefix does not name ${AWS_SSM_INSTANCE_ID}" "$EX_INVALID"
fi

AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-${AWS_SSM_REGION_NAME:-}}"
if [[ -n $AWS_DEFAULT_REGION ]]; then export AWS_DEFAULT_REGION; else unset AWS_DEFAULT_REGION; fi
export AWS_PAGER=""

CHECKS=()
# add_check NAME STATUS MESSAGE: one entry of the result's "checks" (message reduced to printable ASCII).
add_check() { CHECKS+=("$(printf '{"name":"%s","status":"%s","message":"%s"}' "$1" "$2" "$(json_fallback "$3")")"); }
checks_json() { local IFS=,; printf '[%s]' "${CHECKS[*]}"; }

# --- tools ---------------------------------------------------------------------------------------
if aws_path=$(command -v aws 2>/dev/null); then
  aws_version=$(timeout 60 aws --version 2>&1 </dev/null | head -n 1) || aws_version=""
  if [[ $aws_version == aws-cli/* ]]; then
    add_check aws_cli pass "${aws_version%% *} at ${aws_path}"
  else
    add_check aws_cli fail "${aws_path} reports no AWS CLI version (${aws_version:0:200}): reinstall the AWS CLI v2"
  fi
else
  add_check aws_cli fail "the AWS CLI (aws) is not on the PATH of SSM commands: install the AWS CLI v2 (the checkpoint command needs it)"
fi
python_ok=0
if py_path=$(command -v python3 2>/dev/null); then
  if py_version=$(timeout 60 python3 -I -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null </dev/null); then
    python_ok=1
  else
    add_check python3 fail "${py_path} does not run: reinstall python3 (the checkpoint command needs it)"
  fi
else
  add_check python3 fail "python3 is not on the PATH of SSM commands: install python3 (the checkpoint command needs it)"
fi

# --- trainer (exactly the checkpoint command's reading of the PID file) -----------------------------
# @include lib/pid.sh

if [[ -z $SSM_PidFile ]]; then
  add_check trainer skip "no autostop:pid-file tag: nothing is signalled, what is on disk is uploaded"
elif [[ ! -e $SSM_PidFile && ! -L $SSM_PidFile ]]; then
  add_check trainer fail "PID file ${SSM_PidFile} does not exist: make the trainer write its pid there, or fix the autostop:pid-file tag"
elif ! pid=$(read_pid "$SSM_PidFile"); then
  add_check trainer fail "PID file ${SSM_PidFile} holds no process id: make the trainer write only its pid there"
elif pid_file_stale "$SSM_PidFile"; then
  add_check trainer fail "PID file ${SSM_PidFile} is from an earlier boot: start the trainer so that it rewrites it"
else
  trainer_rc=0
  pid_is_trainer "$pid" "$SSM_PidFile" || trainer_rc=$?
  if ((trainer_rc == 0)); then
    add_check trainer pass "pid ${pid} from ${SSM_PidFile} is the trainer (alive, the file's owner, started before the file was written)"
  elif ((trainer_rc == 2)); then
    add_check trainer fail "pid ${pid} from ${SSM_PidFile} is not provably the trainer (${PID_WHY}): the checkpoint would fail TrainerUnverified; rewrite the PID file from the trainer"
  else
    add_check trainer fail "pid ${pid} from ${SSM_PidFile} is not running: the trainer has exited or the file is stale; start the trainer or fix the tag"
  fi
fi

# --- S3 and the checkpoint: lib/preflight.py, with the checkpoint command's own helper code -----------
ckpt_block=""
if system_location "$SSM_CheckpointDir"; then
  ckpt_block="checkpoint-dir ${SSM_CheckpointDir} is a system location, which the checkpoint refuses: ${SYSTEM_HINT}"
fi
IFS= read -r -d '' PYHELPER <<'PY' || true
# @include lib/selection.py
# @include lib/transfer.py
# @include lib/checkpoint_helper.py
# @include lib/preflight.py
# @include lib/dispatch.py
PY

result=""
if ((python_ok)); then
  rc=0
  result=$(python3 -I -c "$PYHELPER" preflight "$(checks_json)" "$py_version at $py_path" "$SSM_Bucket" "$SSM_InstancePrefix" \
    "$SSM_CheckpointDir" "$SSM_SaveOnSignal" "$ckpt_block" </dev/null) || rc=$?
  result=$(printf '%s\n' "$result" | tail -n 1)
  if ((rc != 0)) || [[ $result != '{"preflight":1,'*'}' ]]; then
    add_check python3 fail "python3 ${py_version} at ${py_path} cannot run the checkpoint helper (exit ${rc}, see stderr): install a current python3"
    result=""
  fi
fi
if [[ -z $result ]]; then
  for name in credentials own_prefix isolation checkpoint; do add_check "$name" skip "not checked: needs python3"; done
  result=$(printf '{"preflight":1,"ok":false,"transfer":null,"checks":%s}' "$(checks_json)")
fi
FINAL_PRINTED=1
printf '%s\n' "$result"
exit 0
