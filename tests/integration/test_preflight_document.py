"""The preflight document's script (infra/documents/preflight.sh as the document carries it), run for real.

Run as test_instance_scripts.py runs the probe and the checkpoint: under bash, parameters as ``SSM_<Name>``, the
AWS CLI and botocore against a moto server. moto enforces no IAM; a bucket policy that denies PutObject stands in
for the instance policy's refusal where a test needs one (moto does evaluate bucket policies).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from infra.constructs.documents import PREFLIGHT_PARAMETERS, command_content, render_script
from local.agent import AgentFleet
from tests.integration import test_instance_scripts as scripts
from tests.integration.test_instance_scripts import INSTANCE_ID, REGION, run, untrusted_pid_file

endpoint = scripts.endpoint
s3 = scripts.s3
bucket = scripts.bucket
base_env = scripts.base_env
children = scripts.children

PREFLIGHT = Path(tempfile.mkdtemp(prefix="autostop-preflight-")) / "preflight.sh"
PREFLIGHT.write_text(render_script("preflight.sh"))
PREFIX = f"instances/arn:aws:ec2:{REGION}:123456789012:instance/{INSTANCE_ID}/"
OUTSIDE = PREFIX.rstrip("/") + "-preflight-isolation/"


def deny_puts(s3: Any, bucket: str, prefix: str) -> None:
    """A bucket policy refusing PutObject under ``prefix``, as the instance policy refuses keys outside its own."""
    statement = {"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{bucket}/{prefix}*"}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]}))


@pytest.fixture
def versioned(s3: Any, bucket: str) -> str:
    """The stack's bucket: versioned, and (standing in for the instance policy) refusing the isolation write."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    deny_puts(s3, bucket, OUTSIDE)
    return bucket


def ckdir_with_checkpoint(tmp_path: Path) -> Path:
    ckdir = tmp_path / "ckpt"
    (ckdir / "step-100").mkdir(parents=True)
    (ckdir / "step-100" / "model.pt").write_bytes(b"weights" * 10)
    (ckdir / "step-200.tmp").mkdir()
    return ckdir


def preflight_env(base_env: dict[str, str], bucket: str, ckdir: Path, **overrides: str) -> dict[str, str]:
    env = {
        **base_env,
        "SSM_Bucket": bucket,
        "SSM_InstancePrefix": PREFIX,
        "SSM_CheckpointDir": str(ckdir),
        "SSM_PidFile": "",
        "SSM_SaveOnSignal": "false",
    }
    env.update({f"SSM_{k}": v for k, v in overrides.items()})
    return env


def preflight(env: dict[str, str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    proc, out = run(PREFLIGHT, env)
    assert proc.returncode == 0, proc.stderr
    assert out["preflight"] == 1
    return out, {ch["name"]: ch for ch in out["checks"]}


def failing(out: dict[str, Any]) -> list[str]:
    return sorted(ch["name"] for ch in out["checks"] if ch["status"] == "fail")


def path_without(tmp_path: Path, env: dict[str, str], *hidden: str) -> str:
    """The agent's PATH with ``hidden`` commands left out (local/agent.py builds it the same way)."""
    return str(AgentFleet._path_without(SimpleNamespace(root=tmp_path, hidden_tools=hidden), env["PATH"]))  # type: ignore[arg-type]


def test_the_document_fits_and_declares_its_parameters() -> None:
    content = command_content("test", "preflight.sh", PREFLIGHT_PARAMETERS, step="preflight", timeout="120")
    assert len(json.dumps(content).encode()) <= 64 * 1024
    assert set(content["parameters"]) == {"Bucket", "InstancePrefix", "CheckpointDir", "PidFile", "SaveOnSignal"}
    assert all(p["interpolationType"] == "ENV_VAR" and p["allowedPattern"] for p in content["parameters"].values())


@pytest.mark.parametrize("transfer", ["sdk", "cli"])
def test_a_ready_instance_passes(s3: Any, versioned: str, base_env: dict[str, str], tmp_path: Path, transfer: str) -> None:
    env = preflight_env(base_env, versioned, ckdir_with_checkpoint(tmp_path))
    if transfer == "cli":
        env["AUTOSTOP_TRANSFER"] = "cli"
    out, checks = preflight(env)
    assert out["ok"] is True and out["transfer"] == transfer, failing(out)
    assert [ch["name"] for ch in out["checks"]] == ["aws_cli", "trainer", "python3", "credentials", "own_prefix", "isolation", "checkpoint"]
    assert checks["trainer"]["status"] == "skip"
    assert checks["aws_cli"]["message"].startswith("aws-cli/")
    own = checks["own_prefix"]
    assert own["key"].startswith(PREFIX + "preflight/") and own["key"].endswith(".json")
    body = json.loads(s3.get_object(Bucket=versioned, Key=own["key"], VersionId=own["version_id"])["Body"].read())
    assert body["prefix"] == PREFIX
    assert checks["isolation"]["status"] == "pass"
    assert s3.list_objects_v2(Bucket=versioned, Prefix=OUTSIDE).get("KeyCount", 0) == 0
    ck = checks["checkpoint"]
    assert ck["checkpoint"] == "step-100" and ck["step"] == 100 and ck["step_source"] == "name:step"
    assert "chose step-100 (step 100" in ck["message"]
    scripts.assert_no_temp_left(env)


def test_a_write_outside_the_prefix_that_succeeds_fails_isolation_and_is_removed(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path
) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    out, checks = preflight(preflight_env(base_env, bucket, ckdir_with_checkpoint(tmp_path)))
    assert failing(out) == ["isolation"] and out["ok"] is False
    assert "outside its prefix (deleted again)" in checks["isolation"]["message"]
    assert s3.list_object_versions(Bucket=bucket, Prefix=OUTSIDE).get("Versions", []) == []


def test_an_unversioned_bucket_fails_own_prefix(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    deny_puts(s3, bucket, OUTSIDE)
    out, checks = preflight(preflight_env(base_env, bucket, ckdir_with_checkpoint(tmp_path)))
    assert failing(out) == ["own_prefix"]
    assert "not versioned" in checks["own_prefix"]["message"] and checks["own_prefix"]["version_id"] is None


def test_a_refused_own_prefix_names_the_instance_policy(s3: Any, versioned: str, base_env: dict[str, str], tmp_path: Path) -> None:
    deny_puts(s3, versioned, "instances/")
    out, checks = preflight(preflight_env(base_env, versioned, ckdir_with_checkpoint(tmp_path)))
    assert failing(out) == ["own_prefix"]
    assert "InstancePolicyArn" in checks["own_prefix"]["message"]


@pytest.mark.parametrize("tool", ["aws", "python3"])
def test_a_missing_tool(versioned: str, base_env: dict[str, str], tmp_path: Path, tool: str) -> None:
    env = preflight_env(base_env, versioned, ckdir_with_checkpoint(tmp_path))
    env["PATH"] = path_without(tmp_path, env, tool)
    out, checks = preflight(env)
    name = "aws_cli" if tool == "aws" else "python3"
    assert failing(out) == [name]
    assert "not on the PATH" in checks[name]["message"]
    if tool == "python3":
        assert [checks[n]["status"] for n in ("credentials", "own_prefix", "isolation", "checkpoint")] == ["skip"] * 4
    else:  # botocore still reaches S3 (the checkpoint command would still stop: it needs the CLI)
        assert checks["own_prefix"]["status"] == "pass"


@pytest.mark.parametrize("layout", ["empty", "missing", "only-temporary"])
def test_no_checkpoint(versioned: str, base_env: dict[str, str], tmp_path: Path, layout: str) -> None:
    ckdir = tmp_path / "ckpt"
    if layout != "missing":
        ckdir.mkdir()
    if layout == "only-temporary":
        (ckdir / "step-300.partial").mkdir()
    out, checks = preflight(preflight_env(base_env, versioned, ckdir))
    assert failing(out) == ["checkpoint"]
    message = checks["checkpoint"]["message"]
    assert ("does not exist" in message) if layout == "missing" else ("no complete checkpoint in" in message)


def test_no_checkpoint_with_save_on_signal_passes(versioned: str, base_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    out, checks = preflight(preflight_env(base_env, versioned, tmp_path / "ckpt", SaveOnSignal="true"))
    assert out["ok"] is True and "save-on-signal" in checks["checkpoint"]["message"]


def test_a_system_location_is_refused_as_the_checkpoint_refuses_it(versioned: str, base_env: dict[str, str]) -> None:
    out, checks = preflight(preflight_env(base_env, versioned, Path("/etc")))
    assert failing(out) == ["checkpoint"] and "system location" in checks["checkpoint"]["message"]


def test_trainer_states(versioned: str, base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]]) -> None:
    ckdir = ckdir_with_checkpoint(tmp_path)
    sleeper = subprocess.Popen(["sleep", "30"])
    children.append(sleeper)
    pid_file = tmp_path / "train.pid"
    pid_file.write_text(f"{sleeper.pid}\n")
    out, checks = preflight(preflight_env(base_env, versioned, ckdir, PidFile=str(pid_file)))
    assert out["ok"] is True and checks["trainer"]["status"] == "pass", checks["trainer"]
    sleeper.kill()
    sleeper.wait()
    out, checks = preflight(preflight_env(base_env, versioned, ckdir, PidFile=str(pid_file)))
    assert failing(out) == ["trainer"] and "is not running" in checks["trainer"]["message"]
    pid_file.write_text("not a pid\n")
    out, checks = preflight(preflight_env(base_env, versioned, ckdir, PidFile=str(pid_file)))
    assert failing(out) == ["trainer"] and "holds no process id" in checks["trainer"]["message"]
    out, checks = preflight(preflight_env(base_env, versioned, ckdir, PidFile=str(tmp_path / "absent.pid")))
    assert failing(out) == ["trainer"] and "does not exist" in checks["trainer"]["message"]


def test_a_live_process_that_is_not_the_trainer(
    versioned: str, base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    pid_file, pid, _ = untrusted_pid_file("started-after-pid-file", tmp_path, children)
    out, checks = preflight(preflight_env(base_env, versioned, ckdir_with_checkpoint(tmp_path), PidFile=str(pid_file)))
    assert failing(out) == ["trainer"]
    assert f"pid {pid} from" in checks["trainer"]["message"] and "TrainerUnverified" in checks["trainer"]["message"]


def test_a_pid_file_of_an_earlier_boot(versioned: str, base_env: dict[str, str], tmp_path: Path) -> None:
    pid_file = tmp_path / "train.pid"
    pid_file.write_text("1\n")
    env = preflight_env(base_env, versioned, ckdir_with_checkpoint(tmp_path), PidFile=str(pid_file))
    env["AUTOSTOP_BOOT_TIME"] = str(int(pid_file.stat().st_mtime) + 60)
    out, checks = preflight(env)
    assert failing(out) == ["trainer"] and "earlier boot" in checks["trainer"]["message"]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"InstancePrefix": PREFIX.replace(INSTANCE_ID, "i-0fedcba987654321f")}, "does not name i-0123456789abcdef0"),
        ({"InstancePrefix": "instances/../"}, "InstancePrefix"),
        ({"Bucket": "Bad_Bucket"}, "Bucket"),
        ({"CheckpointDir": "relative"}, "CheckpointDir"),
        ({"CheckpointDir": "/data/../etc"}, "may not contain"),
        ({"PidFile": "/tmp/$(reboot)"}, "PidFile"),
        ({"SaveOnSignal": "yes"}, "SaveOnSignal"),
    ],
)
def test_invalid_parameters(base_env: dict[str, str], tmp_path: Path, overrides: dict[str, str], needle: str) -> None:
    proc, out = run(PREFLIGHT, preflight_env(base_env, "bucket-x", tmp_path, **overrides))
    assert proc.returncode == 64
    assert out["result"] == "failed" and out["error"] == "InvalidParameter" and needle in out["message"]


def test_without_env_var_support(base_env: dict[str, str]) -> None:
    proc, out = run(PREFLIGHT, base_env)
    assert proc.returncode == 64 and "3.3.2746.0" in out["message"]


def test_the_rendered_script_is_plain_bash_with_a_compiling_helper() -> None:
    text = PREFLIGHT.read_text()
    assert "{{" not in text and "# @include" not in text
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    subprocess.run(["bash", "-n", str(PREFLIGHT)], check=True)
    body = text.split("<<'PY' || true\n", 1)[1].split("\nPY\n", 1)[0]
    compile(body, "preflight.sh", "exec")
    # The checkpoint command's own code: the PID file's reading (instance.py), the selection, the S3 client choice.
    for lib in ("lib/instance.py", "lib/selection.py", "lib/transfer.py", "lib/s3cli.py", "lib/preflight.py"):
        assert f"# @include {lib}" in (Path(__file__).resolve().parents[2] / "infra" / "documents" / "preflight.sh").read_text()
