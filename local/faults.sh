#!/usr/bin/env bash
# Local runtime only: a stand-in for `aws` on a simulated instance that has faults switched on
# (scenario field "faults"). It wraps the real AWS CLI; AUTOSTOP_SIM_FAULTS lists the faults:
#   corrupt_upload  s3api put-object of a checkpoint file sends the file minus its last byte, with the
#                   checksum of the whole file. Real S3 rejects that with BadDigest (the checkpoint
#                   command fails: CheckpointFailed); moto accepts it without storing a checksum, so the
#                   verifier must catch it (UploadUnverified).
#   lose_object     right after the manifest is uploaded, the first checkpoint object it lists is
#                   deleted, as a cleanup job or lifecycle rule racing the upload would (UploadUnverified).
set -euo pipefail
self_dir=$(cd "$(dirname "$0")" && pwd)
PATH=$(printf '%s' "$PATH" | tr ':' '\n' | grep -vxF "$self_dir" | paste -sd: -)
export PATH
faults=",${AUTOSTOP_SIM_FAULTS:-},"
args=("$@")
put_object=0 key="" body="" bucket="" body_index=-1
for ((i = 0; i < ${#args[@]}; i++)); do
  arg=${args[$i]}
  next=${args[$((i + 1))]:-}
  case "$arg" in
    put-object) [[ " ${args[*]:0:i} " == *" s3api "* ]] && put_object=1 ;;
    --key) key=$next ;;
    --key=*) key=${arg#--key=} ;;
    --bucket) bucket=$next ;;
    --bucket=*) bucket=${arg#--bucket=} ;;
    --body) body=$next; body_index=$((i + 1)) ;;
    --body=*) body=${arg#--body=}; body_index=$i ;;
  esac
done
if [[ $put_object == 0 ]]; then
  exec aws "$@"
fi
if [[ "$faults" == *,corrupt_upload,* && "$key" != *manifests/* && $body_index -ge 0 ]]; then
  truncated=$(mktemp)
  trap 'rm -f "$truncated"' EXIT
  head -c -1 -- "$body" > "$truncated"
  if [[ ${args[$body_index]} == --body=* ]]; then args[$body_index]="--body=$truncated"; else args[$body_index]="$truncated"; fi
fi
aws "${args[@]}"
if [[ "$faults" == *,lose_object,* && "$key" == *manifests/* ]]; then
  first=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["files"][0]["key"])' "$body")
  aws s3api delete-object --bucket "$bucket" --key "$first" > /dev/null
fi
