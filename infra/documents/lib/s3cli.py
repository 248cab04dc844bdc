"""autostop's on-instance program, the writing side shared by the checkpoint (``Upload``) and the preflight (the test
write): S3 calls through the AWS CLI, one process per call (``CliS3``), the fallback when python3 cannot import
botocore; and the checksum the instance sends (``checksum_algorithm``). The restore document does not carry it."""

import json
import os
import re
import subprocess
import sys
import tempfile
import zlib


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


def checksum_algorithm(zlib_version=None, cpu_flags=None):
    """The S3 checksum the checkpoint sends from this instance: ``"CRC32"`` where Python's zlib computes CRC32
    several words at a time (zlib 1.2.12 and later, zlib-ng) or the CPU has no SHA instructions, ``"SHA256"`` for
    an older zlib on a CPU with them. Measured on one CPU (SHA-NI, AVX-512): CRC32 0.18-0.20 CPU-s/GB with zlib
    1.2.13, 3.8x that with 1.2.11's slicing-by-4 (Ubuntu 22.04's zlib); SHA-256 0.51 with SHA-NI. Verify and the
    restore read either from the manifest. ``AUTOSTOP_CHECKSUM`` (CRC32 or SHA256) in the instance's environment
    decides instead. ZLIB_VERSION: default the running zlib's; CPU_FLAGS: default /proc/cpuinfo's."""
    forced = os.environ.get("AUTOSTOP_CHECKSUM", "")
    if forced in ("CRC32", "SHA256"):
        return forced
    version = zlib_version or zlib.ZLIB_RUNTIME_VERSION
    numbers = tuple(int(n) for n in re.findall(r"[0-9]+", version)[:3])
    if numbers >= (1, 2, 12) or "zlib-ng" in version:  # zlib-ng 2.0 calls itself 1.2.11.zlib-ng
        return "CRC32"
    flags = cpu_flags if cpu_flags is not None else proc_cpu_flags()
    return "SHA256" if flags & {"sha_ni", "sha2"} else "CRC32"


def proc_cpu_flags():
    """The first CPU's feature flags in /proc/cpuinfo (x86 ``flags``, Arm ``Features``); empty when unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()
