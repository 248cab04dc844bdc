"""autostop's on-instance program: S3 calls through the AWS CLI, one process per call (``CliS3``), the fallback when
python3 cannot import botocore; used by the checkpoint (``Upload``) and the preflight (the test write)."""

import json
import os
import subprocess
import sys
import tempfile


class CliError(Exception):
    """An AWS CLI call that failed; the message is the CLI's last stderr line."""


class CliS3:
    """The S3 calls ``Upload`` makes, through the AWS CLI, one process per call: the fallback when python3
    cannot import botocore. Same keyword arguments as botocore's client; ``Body`` is a file path."""

    BotoCoreError = ClientError = CliError  # what Upload catches
    FLAGS = {
        "Bucket": "bucket",
        "Key": "key",
        "UploadId": "upload-id",
        "PartNumber": "part-number",
        "Body": "body",
        "ChecksumAlgorithm": "checksum-algorithm",
        "ChecksumSHA256": "checksum-sha256",
        "ChecksumCRC32": "checksum-crc32",
        "MultipartUpload": "multipart-upload",
        "ContentType": "content-type",
    }

    def __init__(self, work):
        self.work = work

    def __getattr__(self, op):
        return lambda **params: self.run(op, params)

    def run(self, op, params):
        """``aws s3api OP --flag=value ...``: its JSON output, or CliError."""
        if isinstance(params.get("MultipartUpload"), dict):  # the CLI reads the part list from a file
            fd, path = tempfile.mkstemp(prefix="complete-", suffix=".json", dir=self.work)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(params["MultipartUpload"], f)
            try:
                return self.run(op, dict(params, MultipartUpload=f"file://{path}"))
            finally:
                os.unlink(path)
        args = ["aws", "--output", "json", "s3api", op.replace("_", "-")] + [f"--{self.FLAGS[k]}={v}" for k, v in params.items()]
        proc = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        err = proc.stderr.decode("utf-8", "replace")
        if proc.returncode != 0:
            sys.stderr.write(err)
            lines = [line for line in err.splitlines() if line.strip()]
            raise CliError(lines[-1] if lines else "the AWS CLI exited with an error")
        try:
            out = json.loads(proc.stdout.decode("utf-8") or "{}")
        except ValueError:
            raise CliError("the AWS CLI printed an unreadable response")
        return out if isinstance(out, dict) else {}


def version_id(resp):
    """The S3 VersionId PutObject/CompleteMultipartUpload returned (None when the bucket is not versioned)."""
    value = resp.get("VersionId")
    return value if isinstance(value, str) and value and value != "null" else None
