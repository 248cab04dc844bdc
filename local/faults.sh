#!/usr/bin/env bash
# Local runtime only: a stand-in for `aws` on a simulated instance that has faults switched on
# (scenario field "faults"). It wraps the real AWS CLI; AUTOSTOP_SIM_FAULTS lists the faults:
#   corrupt_upload  s3api put-object of a checkpoint file sends the file minus its last byte, with the
#                   checksum of the whole file. Real S3 rejects that with BadDigest (the checkpoint
#                   command fails: CheckpointFailed); moto accepts it without storing a checksum, so the
#                   verifier must catch it (UploadUnverified).
#   lose_object     right after the manifest is uploaded, every version of the first checkpoint object it
#                   lists is deleted, as a lifecycle rule or an administrator would (UploadUnverified).
# More (local/faults.py documents them): kill_midway and interrupt_upload act on the second checkpoint
# object's put-object (SIGKILL of the whole command; a lost connection, exit 255); wrong_size,
# checksum_mismatch, old_checkpoint and manifest_not_json are a second writer putting other bytes at the same
# keys right after the manifest upload: new versions, which Verify never reads (it reads the instance's).
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
if [[ "$key" != *manifests/* ]]; then
  count_file="$self_dir/.puts-${SSM_ExecutionName:-none}"
  n=$(($(cat "$count_file" 2>/dev/null || echo 0) + 1))
  echo "$n" > "$count_file"
  if ((n >= 2)) && [[ "$faults" == *,kill_midway,* ]]; then
    kill -KILL 0
  fi
  if ((n >= 2)) && [[ "$faults" == *,interrupt_upload,* ]]; then
    echo "Connection was closed before we received a valid response from endpoint URL: \"${AWS_ENDPOINT_URL:-https://s3.amazonaws.com}/$bucket/$key\"." >&2
    exit 255
  fi
fi
if [[ "$faults" == *,corrupt_upload,* && "$key" != *manifests/* && $body_index -ge 0 ]]; then
  truncated=$(mktemp)
  trap 'rm -f "$truncated"' EXIT
  head -c -1 -- "$body" > "$truncated"
  if [[ ${args[$body_index]} == --body=* ]]; then args[$body_index]="--body=$truncated"; else args[$body_index]="$truncated"; fi
fi
aws "${args[@]}"
if [[ "$faults" == *,lose_object,* && "$key" == *manifests/* ]]; then
  # Every version of it, as a lifecycle rule or an administrator would (a plain delete only adds a delete marker,
  # and Verify reads the version the instance wrote).
  first=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["files"][0]["key"])' "$body")
  aws s3api list-object-versions --bucket "$bucket" --prefix "$first" --query 'Versions[].VersionId' --output text |
    tr '\t' '\n' | while read -r version; do
      [[ -z $version || $version == None ]] || aws s3api delete-object --bucket "$bucket" --key "$first" --version-id "$version" > /dev/null
    done
fi
if [[ "$key" == *manifests/* && "$faults" =~ ,(wrong_size|checksum_mismatch|old_checkpoint|manifest_not_json), ]]; then
  tmp=$(mktemp)
  trap 'rm -f "$tmp"' EXIT
  first=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["files"][0]["key"])' "$body")
  case "${BASH_REMATCH[1]}" in
    wrong_size)  # a second writer replaced the object with one byte more
      aws s3api get-object --bucket "$bucket" --key "$first" "$tmp" > /dev/null
      printf 'x' >> "$tmp"
      aws s3api put-object --bucket "$bucket" --key "$first" --body "$tmp" > /dev/null ;;
    checksum_mismatch)  # same size, other bytes, with S3's SHA-256 of what it holds
      aws s3api get-object --bucket "$bucket" --key "$first" "$tmp" > /dev/null
      python3 -c 'import sys; p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[-1] ^= 0xFF; open(p, "wb").write(b)' "$tmp"
      aws s3api put-object --bucket "$bucket" --key "$first" --body "$tmp" --checksum-algorithm CRC32 > /dev/null ;;
    old_checkpoint)  # the manifest at the key answers an earlier decision (an older checkpoint)
      python3 -c 'import datetime, json, sys
m = json.load(open(sys.argv[1]))
t = datetime.datetime.strptime(m["decision_time"], "%Y-%m-%dT%H:%M:%SZ") - datetime.timedelta(hours=1)
m["decision_time"] = t.strftime("%Y-%m-%dT%H:%M:%SZ")
json.dump(m, open(sys.argv[2], "w"))' "$body" "$tmp"
      aws s3api put-object --bucket "$bucket" --key "$key" --body "$tmp" --content-type application/json > /dev/null ;;
    manifest_not_json)  # truncated: not valid JSON
      head -c 40 -- "$body" > "$tmp"
      aws s3api put-object --bucket "$bucket" --key "$key" --body "$tmp" --content-type application/json > /dev/null ;;
  esac
fi
