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
#   Checks  aws_cli (present, its version), trainer (the PID file names a live process that is the trainer, by
#           lib/instance.py exactly as the checkpoint does; skip without a PID file), python3 (present: it runs the
#           program; its version), then: credentials (sts GetCallerIdentity), own_prefix
#           (the test write, its VersionId: a versioned bucket), isolation (the outside write refused) and
#           checkpoint (the one lib/selection.py would choose now, and why; or why none).
#   Output  Diagnostics on stderr. The LAST stdout line is exactly one JSON object:
#             {"preflight":1,"ok":B,"transfer":"sdk"|"cli"|null,"checks":[{"name":N,"status":"pass"|"fail"|"skip",
#              "message":M,...}]}
#           ok: no check failed. own_prefix adds "key" and "version_id"; checkpoint adds "checkpoint" and "step".
#           or {"result":"failed","error":"InvalidParameter"|"ScriptFailed","message":"..."}.
#   Exit    0 whenever the checks ran (ok says how they went); 64 InvalidParameter; 70 ScriptFailed.
#           Without python3 only the python3 check fails (the others: skip, "not checked: needs python3").
#   Needs   bash; python3 and the AWS CLI are what it checks for.
#   Program These lines only start autostop's on-instance program (python3, the modules of lib/ pasted below;
#           lib/preflight.py main_preflight).
[ -n "${BASH_VERSION:-}" ] || { printf '%s\n' '{"result":"failed","error":"ScriptFailed","message":"preflight.sh must be run by bash"}'; exit 70; }
set -euo pipefail
export LC_ALL=C
umask 077
if ! command -v python3 >/dev/null 2>&1; then
  printf '%s\n' '{"preflight":1,"ok":false,"transfer":null,"checks":[{"name":"python3","status":"fail","message":"python3 is not on the PATH of SSM commands: install python3 (the checkpoint command needs it)"},{"name":"aws_cli","status":"skip","message":"not checked: needs python3"},{"name":"trainer","status":"skip","message":"not checked: needs python3"},{"name":"credentials","status":"skip","message":"not checked: needs python3"},{"name":"own_prefix","status":"skip","message":"not checked: needs python3"},{"name":"isolation","status":"skip","message":"not checked: needs python3"},{"name":"checkpoint","status":"skip","message":"not checked: needs python3"}]}'
  exit 0
fi
IFS= read -r -d '' PYHELPER <<'PY' || true
# @include lib/instance.py
# @include lib/selection.py
# @include lib/transfer.py
# @include lib/s3cli.py
# @include lib/preflight.py
# @include lib/dispatch.py
PY
exec python3 -I -c "$PYHELPER" preflight
