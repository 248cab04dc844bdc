#!/usr/bin/env bash
# autostop restore: run by the restore SSM Command document (aws:runShellScript) when an instance that
# autostop stopped with a verified checkpoint has started again.
#
# Contract
#   Input   The document's parameters as environment variables (interpolationType ENV_VAR, SSM Agent
#           3.3.2746.0 or later): SSM_RunId SSM_InstanceId SSM_ExecutionName SSM_CheckpointDir SSM_Bucket
#           SSM_ManifestKey SSM_ManifestVersionId SSM_ManifestSha256 SSM_UploadPrefix (the verified manifest's S3
#           VersionId and SHA-256, and the verified upload's key prefix, as the run record holds them) SSM_PidFile
#           (may be empty) SSM_LogFile (may be empty) SSM_ResumeCommand (may be empty). Every value is re-validated
#           with the document's regex; CheckpointDir, PidFile and LogFile may not name a system location (the deny
#           list in lib/instance.py). This script never contains document placeholders. Region: AWS_DEFAULT_REGION,
#           else AWS_SSM_REGION_NAME (set by the agent). AWS_ENDPOINT_URL is honoured by the CLI. From the
#           environment, not the document: AUTOSTOP_STATE_DIR (default /var/lib/autostop), AUTOSTOP_BOOT_TIME and
#           AUTOSTOP_BOOT_ID (see lib/baseline.py), AUTOSTOP_RESUME_ALLOWLIST (default
#           /etc/autostop/resume-commands).
#   Effect  1. Downloads the manifest's version ManifestVersionId only (GetObject with VersionId, ChecksumMode
#              ENABLED); its SHA-256 must be ManifestSha256 before anything in it is trusted (ChecksumMismatch).
#              It must be schema 1, name RunId, InstanceId and Bucket, and list for every file a key starting
#              with UploadPrefix and its S3 version_id, else ManifestInvalid.
#           2. CheckpointDir must not be or pass through a symbolic link. When missing it is created only in a
#              directory owned by root (root owns it then); in another user's directory the restore refuses
#              (RestoreConflict): the trainer's user must create it. Its owner is the trainer's user.
#           3. ResumeCommand set: refused (ResumeCommandRefused) before anything is downloaded unless its program
#              is a regular file owned by the trainer's user or root, not writable by group or others, not
#              set-user-ID; and, when the trainer's user is root, its exact line is in the allowlist (a file
#              owned by root, not writable by group or others, in a directory likewise; one command per line,
#              surrounding whitespace ignored, lines starting with # are comments). PidFile's directory must be
#              the trainer's user's, PidFile absent or a regular file of that user holding nothing, a dead
#              process's pid or a pid of that user; LogFile absent or a regular file of that user; neither
#              reached through a symbolic link.
#           4. Checks every target CheckpointDir/<checkpoint name>[/<file path>] first: one that exists with
#              the manifest's size and SHA-256 is kept (not downloaded again); one that exists and differs
#              (or is a symlink or directory) fails RestoreConflict before anything is downloaded.
#           5. Downloads each missing file's listed version into the root-only staging directory
#              CheckpointDir/.autostop-restore-<ExecutionName> (through a descriptor): with botocore (lib/transfer.py,
#              lib/download.py) ranged GetObject calls with VersionId in parallel, hashed as they are written; else
#              the AWS CLI, one GetObject per file (ChecksumMode ENABLED). Then, on the instance, the size and the
#              SHA-256 (or, for a multipart object with part_size, the composite of its parts' SHA-256) of the bytes
#              must be the manifest's (ChecksumMismatch), before anything is placed.
#           6. Moves each file into place with link(2), which never replaces an existing name (a file that
#              appeared meanwhile: RestoreConflict, both kept), owned by CheckpointDir's owner, mode from
#              CheckpointDir's, mtime the download time (never the manifest's: nothing reads it, and a future
#              one would outrank later saves). Nothing is ever deleted or overwritten on the instance; only the
#              staging directory (autostop's own) is removed.
#           LogFile set, before 1: records this boot's log baseline (its size, st_dev, st_ino and the boot id) in
#              ${AUTOSTOP_STATE_DIR}/log-baselines/<hex SHA-256 of the LogFile path> (temp + rename); the probe
#              scans only what follows it.
#           7. ResumeCommand set: unless PidFile names a live trainer of this boot (ResumeCommandFailed), starts
#              it detached: new session, stdin /dev/null, stdout and stderr appended to LogFile (opened as the
#              trainer's user, without following symbolic links) or else ${AUTOSTOP_STATE_DIR}/resume-<RunId>.log,
#              as the owner of CheckpointDir (uid, gid and groups; with no_new_privs unless root, so nothing it
#              starts gains privileges), in that user's home directory (/ if none), with AUTOSTOP_RUN_ID,
#              AUTOSTOP_RESUME_CHECKPOINT (the restored checkpoint's path) and AUTOSTOP_CHECKPOINT_DIR added to the
#              environment (SSM_* removed). ResumeCommand is split at its single spaces and executed directly
#              (execve): no shell, no globbing, no variable expansion. Its pid goes to PidFile (O_EXCL temp +
#              rename in PidFile's directory, owned by the trainer's user); it must still be alive 2 s later.
#   Output  Diagnostics on stderr. The LAST stdout line is exactly one JSON object:
#             {"result":"restored","checkpoint":NAME,"files":N,"bytes":B,"step":S|null,
#              "present":"downloaded"|"already_present","trainer":"started"|"not_configured","pid":P|null}
#           present: already_present when every file was already in place, else downloaded.
#           or {"result":"failed","error":E,"message":"..."}.
#   Exit    0 restored; 64 InvalidParameter; 66 ManifestInvalid; 67 DownloadFailed / ChecksumMismatch;
#           68 RestoreConflict; 69 ResumeCommandFailed / ResumeCommandRefused; 70 ScriptFailed (unexpected).
#   Needs   bash, python3 >= 3.7 (stdlib; botocore if it has it), AWS CLI v1 or v2 with --checksum-mode. The
#           manifest goes to a temp directory under ${TMPDIR:-/tmp}, removed on exit; checkpoint files are staged
#           inside CheckpointDir (same file system, no second copy).
#   Program These lines only start autostop's on-instance program (python3, the modules of lib/ pasted below;
#           lib/restore_helper.py main_restore). SIGTERM, SIGINT or SIGHUP to it: ScriptFailed, exit 128 + n.
[ -n "${BASH_VERSION:-}" ] || { printf '%s\n' '{"result":"failed","error":"ScriptFailed","message":"restore.sh must be run by bash"}'; exit 70; }
set -euo pipefail
export LC_ALL=C
umask 077
if ! command -v python3 >/dev/null 2>&1; then
  printf '%s\n' '{"result":"failed","error":"ScriptFailed","message":"python3 is not installed on this instance; install it (the restore document needs python3 and the AWS CLI)"}'
  exit 70
fi
IFS= read -r -d '' PYHELPER <<'PY' || true
# @include lib/instance.py
# @include lib/baseline.py
# @include lib/transfer.py
# @include lib/download.py
# @include lib/restore_helper.py
# @include lib/dispatch.py
PY
exec python3 -I -c "$PYHELPER" restore
