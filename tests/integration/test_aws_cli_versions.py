"""The checkpoint and restore documents with AWS CLI v1 and v2, in one process (sdk) and one call per process (cli).

v1: the AWS CLI and botocore installed by pip (requirements-dev.txt), python3 the virtual environment's.
v2: Debian's ``awscli`` package (``/usr/bin/aws``, 2.x), python3 the system's ``/usr/bin/python3``, which has no
``botocore`` but the CLI's own ``awscli.botocore``: the one-process path uses that. ``.ci/run`` installs the
package; without it the v2 cases are skipped. The v2 CLI older than 2.13 does not read AWS_ENDPOINT_URL, so its
``aws`` here is a wrapper that passes ``--endpoint-url`` (the only difference from an instance).

Each case checkpoints a directory with a multipart file and small files, then restores it into an empty
directory from the pinned manifest: the bytes on disk are the originals, and S3 holds the CRC32 the instance
computed for every object.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shared.models import Manifest
from tests.integration.test_instance_scripts import (  # noqa: F401  (fixtures among them)
    CHECKPOINT,
    MIB,
    VENV_BIN,
    base_env,
    checkpoint_env,
    endpoint,
    keys,
    read_manifest,
    run,
    s3,
    safetensors_bytes,
    write,
)
from tests.integration.test_restore_script import RESTORE, restore_env
from tests.integration.test_restore_script import bucket as versioned_bucket  # noqa: F401  (fixture)

SYSTEM_AWS = Path("/usr/bin/aws")
SYSTEM_PYTHON = Path("/usr/bin/python3")


def cli_v2_problem() -> str | None:
    """Why the v2 cases cannot run here, or None."""
    if not SYSTEM_AWS.exists() or not SYSTEM_PYTHON.exists():
        return "Debian's awscli package (AWS CLI v2) is not installed: apt-get install awscli (.ci/run does)"
    version = subprocess.run([str(SYSTEM_AWS), "--version"], capture_output=True, text=True).stdout
    if not version.startswith("aws-cli/2."):
        return f"/usr/bin/aws is not AWS CLI v2 ({version.strip()})"
    probe = subprocess.run([str(SYSTEM_PYTHON), "-I", "-c", "import awscli.botocore.session"], capture_output=True)
    return None if probe.returncode == 0 else "/usr/bin/python3 cannot import awscli.botocore"


def cli_bin(tmp_path: Path, version: str, url: str) -> Path:
    """A directory to put first on PATH: ``aws`` and ``python3`` of CLI VERSION."""
    bin_dir = tmp_path / f"cli-{version}"
    bin_dir.mkdir()
    if version == "v1":
        (bin_dir / "aws").symlink_to(VENV_BIN / "aws")
        (bin_dir / "python3").symlink_to(VENV_BIN / "python3")
    else:
        (bin_dir / "aws").write_text(f'#!/bin/sh\nexec {SYSTEM_AWS} --endpoint-url "{url}" "$@"\n')
        (bin_dir / "aws").chmod(0o755)
        (bin_dir / "python3").symlink_to(SYSTEM_PYTHON)
    return bin_dir


@pytest.mark.parametrize(
    ("version", "transfer", "checksum"),
    [
        ("v1", "sdk", "CRC32"),
        ("v1", "cli", "CRC32"),
        ("v2", "sdk", "CRC32"),
        ("v2", "cli", "CRC32"),
        ("v1", "sdk", "SHA256"),  # what an instance with an older zlib and SHA instructions sends
        ("v2", "cli", "SHA256"),
    ],
)
def test_checkpoint_and_restore_round_trip(
    s3: Any,  # noqa: F811
    versioned_bucket: str,  # noqa: F811
    base_env: dict[str, str],  # noqa: F811
    endpoint: str,  # noqa: F811
    tmp_path: Path,
    version: str,
    transfer: str,
    checksum: str,
) -> None:
    if version == "v2" and (why := cli_v2_problem()):
        pytest.skip(why)
    bucket = versioned_bucket
    ckdir = tmp_path / "ck"
    files = {
        "model.safetensors": write(ckdir / "step-300" / "model.safetensors", safetensors_bytes(os.urandom(11 * MIB))),
        "optimizer.pt": write(ckdir / "step-300" / "optimizer.pt", os.urandom(3 * MIB)),
        "rng/state.bin": write(ckdir / "step-300" / "rng" / "state.bin", os.urandom(1000)),
    }
    env = checkpoint_env(base_env, bucket, ckdir, PartSizeBytes=str(5 * MIB), Mode="interruption")
    env["PATH"] = os.pathsep.join([str(cli_bin(tmp_path, version, endpoint)), "/usr/bin", "/bin"])
    env["AUTOSTOP_TRANSFER"] = transfer
    env["AUTOSTOP_CHECKSUM"] = checksum

    proc, out = run(CHECKPOINT, env)

    assert proc.returncode == 0, proc.stderr
    assert f"transfer: {transfer}" in proc.stderr
    assert (out["checkpoint"], out["files"], out["bytes"]) == ("step-300", 3, sum(map(len, files.values())))
    manifest = read_manifest(s3, bucket, env)
    by_path = {f["path"]: f for f in manifest["files"]}
    assert by_path["model.safetensors"]["parts"] == 3
    for f in manifest["files"]:
        head = s3.head_object(Bucket=bucket, Key=f["key"], VersionId=f["version_id"], ChecksumMode="ENABLED")
        assert head[f"Checksum{checksum}"].split("-")[0] == f[f"checksum_{checksum.lower()}"].split("-")[0]
    assert f"{checksum} checksums" in proc.stderr
    assert Manifest.model_validate(manifest).files  # the form Verify reads
    assert set(keys(s3, bucket)) == {f["key"] for f in manifest["files"]} | {env["SSM_ManifestKey"]}

    up = {**env, "SSM_ManifestVersionId": out["manifest_version_id"], "SSM_ManifestSha256": out["manifest_sha256"]}
    target = tmp_path / "restored"
    target.mkdir()
    renv = restore_env(base_env, bucket, target, up, tmp_path) | {"PATH": env["PATH"], "AUTOSTOP_TRANSFER": transfer}

    proc, out = run(RESTORE, renv)

    assert proc.returncode == 0, proc.stderr
    assert (out["result"], out["present"], out["files"]) == ("restored", "downloaded", 3), out
    for rel, data in files.items():
        assert hashlib.sha256((target / "step-300" / rel).read_bytes()).digest() == hashlib.sha256(data).digest(), rel
