#!/usr/bin/env bash
# autostop checkpoint: run by the checkpoint SSM Command document (aws:runShellScript) once the
# control plane has decided that a training run is complete (Mode stop), or on a spot interruption
# notice (Mode interruption).
#
# Contract
#   Input   The document's parameters as environment variables (interpolationType ENV_VAR, SSM Agent
#           3.3.2746.0 or later): SSM_RunId SSM_InstanceId SSM_ExecutionName SSM_CheckpointDir
#           SSM_PidFile (may be empty) SSM_Bucket SSM_UploadPrefix SSM_ManifestKey SSM_Signal
#           SSM_GraceSeconds SSM_PartSizeBytes SSM_DecisionTime SSM_Mode (stop | interruption) SSM_SaveOnSignal
#           (true | false, default false). Every value is re-validated with the document's regex; this script
#           never contains document placeholders.
#           Region: AWS_DEFAULT_REGION, else AWS_SSM_REGION_NAME (set by the agent). AWS_ENDPOINT_URL is
#           honoured by the CLI.
#   Effect  1. Sends SIG<Signal> ONCE to the live trainer named by PidFile and waits up to GraceSeconds
#              for it to exit (a zombie counts as exited). A live process only counts as the trainer if it
#              is not PID 1, this script or its parent and, where /proc is mounted, runs as (real uid) the
#              PID file's owner (any uid if root owns the file) and started no later than 2 s after the
#              file's mtime; any other live process is never signalled, and the script fails with
#              TrainerUnverified (65) before uploading anything (a reused pid, or a stepped clock: unknown).
#              A PID file last written before this boot (btime of /proc/stat, or AUTOSTOP_BOOT_TIME) is stale:
#              nothing is signalled (trainer not_running).
#              Mode stop: a trainer still running after GraceSeconds fails TrainerDidNotExit (nothing uploaded).
#              Mode interruption (spot notice): it does not; the trainer is left running (still_running) and
#              the newest complete checkpoint on disk is uploaded by the same rules (it may be older).
#           2. Picks the newest checkpoint the framework can resume from among the top-level entries of
#              CheckpointDir (lib/selection.py says how): ordered by the step in the name (after step, then
#              iter, then epoch; else the name's last whole number; else, for a torch.save/Lightning archive such
#              as last.ckpt, the global_step/step/iteration/epoch stored in it), mtime only breaking ties. An
#              entry counts only when it does not look temporary, is not a symbolic link or a top-level
#              -NNNNN-of-NNNNN shard, no process holds one of its files open for writing (/proc/*/fdinfo), no
#              data file is empty, zip archives have their central directory and safetensors files a whole
#              header, shard sets and safetensors indexes are whole, and framework layouts hold their last file
#              (Hugging Face Trainer trainer_state.json, DCP .metadata, Accelerate random_states_*.pkl, orbax
#              commit_success.txt), and it holds every file its newest complete older sibling had when it was
#              started. CheckpointDir must not be or pass through a symbolic link (NoCheckpoint). With none,
#              NoCheckpoint lists the newest 5 rejected entries and why.
#              Mode stop with a live trainer and SaveOnSignal false: this is decided BEFORE the trainer is
#              signalled; with nothing complete on disk and no save in progress, NoCheckpoint, and the trainer
#              is not signalled and keeps training. SaveOnSignal true (tag save-on-signal): it is signalled.
#           3. Uploads it below UploadPrefix from one python3 process, files and parts in parallel (lib/transfer.py:
#              botocore when python3 can import it, else the AWS CLI, one process per call): PutObject up to
#              PartSizeBytes, multipart above (a failed multipart upload is aborted), each call with the SHA-256 of
#              its bytes, which S3 verifies. Each file is opened through O_NOFOLLOW and must be the very file
#              chosen (st_dev, st_ino, size, mtime from lstat at selection) when it is opened and after its last
#              call, and when a call fails; otherwise UploadFailed ("file P changed during the checkpoint").
#              Mode interruption (the trainer keeps running and may rotate checkpoints away): the choice is made
#              once more, then it fails.
#           4. Uploads the manifest LAST to ManifestKey: it adds "mode", "fresh" and "layout" (file | directory)
#              to the fields of schema 1. Nothing is deleted on the instance.
#   Output  Diagnostics on stderr. The LAST stdout line is exactly one JSON object:
#             {"result":"uploaded","manifest":"s3://B/K","manifest_version_id":V,"manifest_sha256":H,"files":N,
#              "bytes":B,"trainer":T,"checkpoint":NAME,"step":N,"fresh":F}
#             V: the manifest's S3 VersionId (null when the bucket is not versioned: Verify then refuses it); H: the
#             SHA-256 (hex) of the manifest's bytes. The manifest lists every object's VersionId ("version_id").
#             T: exited | not_running | pid_file_missing | pid_file_unreadable | not_configured | still_running
#                (still_running only in Mode interruption)
#             F: true when the trainer was signalled and the checkpoint's newest mtime is at or after that moment.
#             Also "rule" (what made it complete), "rejected" (the newest 5 entries left out: name, step, reason)
#             and "summary" (one line); the manifest's "selection" holds the same and "step_source".
#             step (also the manifest's): as chosen by (2).
#           or {"result":"failed","error":E,"message":"..."}.
#   Exit    0 uploaded; 64 InvalidParameter; 65 TrainerDidNotExit / TrainerUnverified; 66 NoCheckpoint; 67 UploadFailed;
#           68 ManifestFailed; 70 ScriptFailed (unexpected).
#   Needs   bash, python3 >= 3.7 (stdlib; botocore if it has it), AWS CLI v1 or v2. Temp files (the AWS CLI path's
#           parts) go to a temp directory under ${TMPDIR:-/tmp}, removed on exit.
#   Program These lines only start autostop's on-instance program (python3, the modules of lib/ pasted below; the
#           parameter checks, the PID file, the signal and the upload are lib/instance.py and
#           lib/checkpoint_helper.py, main_checkpoint). SIGTERM, SIGINT or SIGHUP to it: ScriptFailed, exit 128 + n.
[ -n "${BASH_VERSION:-}" ] || { printf '%s\n' '{"result":"failed","error":"ScriptFailed","message":"checkpoint.sh must be run by bash"}'; exit 70; }
set -euo pipefail
export LC_ALL=C
umask 077
if ! command -v python3 >/dev/null 2>&1; then
  printf '%s\n' '{"result":"failed","error":"ScriptFailed","message":"python3 is not installed on this instance; install it (the checkpoint document needs python3 and the AWS CLI)"}'
  exit 70
fi
IFS= read -r -d '' PYHELPER <<'PY' || true
# @include lib/instance.py
# @include lib/selection.py
# @include lib/transfer.py
# @include lib/s3cli.py
# @include lib/checkpoint_helper.py
# @include lib/dispatch.py
PY
exec python3 -I -c "$PYHELPER" checkpoint
