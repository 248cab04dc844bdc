"""``autostop preflight``: exit 0 on a good instance; for each missing prerequisite, exit 1 with that check named.

The instance's half runs the stack's real preflight document on a simulated instance (local/agent.py): its tools
can be hidden from the document's PATH (``hidden_tools``), its agent version changed (``agent_version``), and its
S3 requests held to the stack's instance policy (``instance_policy``; moto enforces no IAM by itself).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from autostop_cli.preflight import agent_version_ok
from local.agent import SimulatedInstance
from local.runtime import LocalControlPlane
from tests.cli.conftest import Cli

PROFILE = "autostop-preflight-test"


@pytest.fixture(scope="module")
def profile(cp: LocalControlPlane) -> str:
    iam = cp.aws.client("iam")
    iam.create_role(RoleName=PROFILE, AssumeRolePolicyDocument="{}")
    iam.create_instance_profile(InstanceProfileName=PROFILE)
    iam.add_role_to_instance_profile(InstanceProfileName=PROFILE, RoleName=PROFILE)
    return PROFILE


def instance(
    cp: LocalControlPlane,
    name: str,
    profile: str | None,
    *,
    tags: dict[str, str] | None = None,
    checkpoint: bool = True,
    trainer: bool = True,
    agent: str = "online",
    policy: bool = True,
    **switches: Any,
) -> tuple[str, SimulatedInstance]:
    """A running, opted-in instance with a complete checkpoint (step-100) and a live trainer writing its PID file,
    its S3 requests held to the instance policy; ``tags`` replace or add tags, ``switches`` set SimulatedInstance
    fields (hidden_tools, agent_version)."""
    base = {
        "autostop:enabled": "true",
        "autostop:run-id": name,
        "autostop:checkpoint-dir": "{root}/ckpt",
        "autostop:pid-file": "{root}/train.pid",
    }
    base.update(tags or {})
    iid = cp.launch_instance(name, tags={k: v for k, v in base.items() if v is not None}, agent=agent)
    inst = cp.fleet.instances[iid]
    inst.instance_policy = policy
    for key, value in switches.items():
        setattr(inst, key, value)
    ckdir = inst.root / "ckpt"
    ckdir.mkdir(parents=True, exist_ok=True)
    if checkpoint:
        (ckdir / "step-100").mkdir()
        (ckdir / "step-100" / "model.pt").write_bytes(b"weights" * 10)
    if trainer:
        pid_file = inst.root / "train.pid"
        inst.start_process(["sh", "-c", f'echo $$ > "{pid_file}"; exec sleep 120'], cp.aws.subprocess_env(), "trainer.out")
        deadline = time.monotonic() + 10
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline, "the trainer never wrote its PID file"
            time.sleep(0.05)
    if profile:
        cp.aws.client("ec2").associate_iam_instance_profile(IamInstanceProfile={"Name": profile}, InstanceId=iid)
    return iid, inst


def checks(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {ch["name"]: ch for ch in out["checks"]}


def failed(autostop: Cli, iid: str) -> tuple[list[str], dict[str, dict[str, Any]]]:
    out = autostop.json("preflight", iid, code=1)
    assert out["ok"] is False
    return out["failed"], checks(out)


def test_agent_versions_compare_number_by_number() -> None:
    assert agent_version_ok("3.3.2746.0") and agent_version_ok("3.3.10000.1") and agent_version_ok("3.10.0.0")
    assert agent_version_ok("10.0") is True
    assert agent_version_ok("3.3.999.0") is False and agent_version_ok("3.2.2746.0") is False
    assert agent_version_ok("unknown") is None and agent_version_ok("") is None


def test_a_good_instance_passes_every_check(cp: LocalControlPlane, autostop: Cli, profile: str) -> None:
    iid, inst = instance(cp, "pf-good", profile)
    out = autostop.json("preflight", iid)
    assert out["ok"] is True and out["failed"] == []
    got = checks(out)
    expected = {
        "instance",
        "running",
        "opted_in",
        "tags",
        "action",
        "ssm_agent",
        "agent_version",
        "instance_profile",
        "document",
        "aws_cli",
        "python3",
        "credentials",
        "own_prefix",
        "isolation",
        "checkpoint",
        "trainer",
    }
    assert set(got) == expected
    assert all(ch["status"] == "pass" for ch in got.values()), {k: v["message"] for k, v in got.items() if v["status"] != "pass"}
    own = got["own_prefix"]["details"]
    prefix = cp.instance_prefix(iid)
    assert own["key"].startswith(prefix + "preflight/")
    head = cp.aws.client("s3").head_object(Bucket=cp.deployment.bucket, Key=own["key"], VersionId=own["version_id"])
    assert head["ContentLength"] > 0
    assert "refused" in got["isolation"]["message"]
    outside = cp.aws.client("s3").list_objects_v2(Bucket=cp.deployment.bucket, Prefix=prefix.rstrip("/") + "-")
    assert outside.get("KeyCount", 0) == 0, "the refused write left an object"
    assert got["checkpoint"]["details"]["checkpoint"] == "step-100" and "chose step-100" in got["checkpoint"]["message"]
    assert "is the trainer" in got["trainer"]["message"]
    assert "3.3.2746.0" in got["agent_version"]["message"]
    # The human form: one line per check, and the verdict.
    text = autostop("preflight", iid).stdout
    assert "PASS  isolation" in text and "would not succeed" not in text and "would succeed now" in text
    assert inst.processes[0].poll() is None, "the trainer still runs: nothing was signalled"
    sent = [s for s in cp.fleet.sent if s["instance_ids"] == [iid]]
    assert sent and all("Preflight" in s["document"] for s in sent)


@pytest.mark.parametrize(
    ("tags", "named"),
    [
        ({"autostop:enabled": "false"}, ["opted_in", "tags"]),
        ({"autostop:grace-seconds": "soon"}, ["tags"]),
        ({"Autostop:dry-run": "true"}, ["tags"]),
    ],
    ids=["not-opted-in", "bad-value", "case-variant-key"],
)
def test_tags_that_do_not_parse_fail_and_the_instance_is_not_visited(
    cp: LocalControlPlane, autostop: Cli, profile: str, tags: dict[str, str], named: list[str]
) -> None:
    iid, _ = instance(cp, f"pf-tags-{len(cp.by_name)}", profile, tags=tags, trainer=False)
    names, got = failed(autostop, iid)
    assert names == named
    assert got["document"]["status"] == "skip" and "fix tags first" in got["document"]["message"]
    assert not [s for s in cp.fleet.sent if s["instance_ids"] == [iid]], "no document is sent for an instance with bad tags"


def test_agent_offline(cp: LocalControlPlane, autostop: Cli, profile: str) -> None:
    iid, _ = instance(cp, "pf-offline", profile, agent="offline", trainer=False)
    names, got = failed(autostop, iid)
    assert names == ["ssm_agent"]
    assert "not online" in got["ssm_agent"]["message"] and got["checkpoint"]["status"] == "skip"


def test_agent_too_old(cp: LocalControlPlane, autostop: Cli, profile: str) -> None:
    iid, _ = instance(cp, "pf-old-agent", profile, agent_version="3.3.999.0", trainer=False)
    names, got = failed(autostop, iid)
    assert names == ["agent_version"]
    assert "3.3.999.0 is older than 3.3.2746.0" in got["agent_version"]["message"]


def test_no_instance_profile(cp: LocalControlPlane, autostop: Cli) -> None:
    iid, _ = instance(cp, "pf-no-profile", None)
    names, got = failed(autostop, iid)
    assert names == ["instance_profile"]
    assert "no instance profile is associated" in got["instance_profile"]["message"]


def test_no_aws_cli(cp: LocalControlPlane, autostop: Cli, profile: str) -> None:
    iid, _ = instance(cp, "pf-no-aws", profile, hidden_tools=("aws",))
    names, got = failed(autostop, iid)
    assert names == ["aws_cli"]
    assert "install the AWS CLI" in got["aws_cli"]["message"]


def test_no_python3(cp: LocalControlPlane, autostop: Cli, profile: str) -> None:
    iid, _ = instance(cp, "pf-no-python", profile, hidden_tools=("python3",))
    names, got = failed(autostop, iid)
    assert names == ["python3"]
    assert "install python3" in got["python3"]["message"]
    # The PID file is read by the on-instance program too (as the checkpoint command reads it): without python3 every
    # instance check but python3's own is skipped, the AWS CLI's and the trainer's included.
    assert all(got[n]["status"] == "skip" for n in ("credentials", "own_prefix", "isolation", "checkpoint", "trainer", "aws_cli"))


def test_no_checkpoint_in_the_checkpoint_dir(cp: LocalControlPlane, autostop: Cli, profile: str) -> None:
    iid, inst = instance(cp, "pf-no-ckpt", profile, checkpoint=False)
    (inst.root / "ckpt" / "step-200.tmp").mkdir()  # temporary-looking: never chosen
    names, got = failed(autostop, iid)
    assert names == ["checkpoint"]
    assert "no complete checkpoint in" in got["checkpoint"]["message"]


def test_pid_file_naming_no_process(cp: LocalControlPlane, autostop: Cli, profile: str) -> None:
    iid, inst = instance(cp, "pf-dead-pid", profile, trainer=False)
    gone = subprocess.Popen(["true"])
    gone.wait()
    (inst.root / "train.pid").write_text(f"{gone.pid}\n")
    names, got = failed(autostop, iid)
    assert names == ["trainer"]
    assert f"pid {gone.pid}" in got["trainer"]["message"] and "not running" in got["trainer"]["message"]


def test_missing_pid_file(cp: LocalControlPlane, autostop: Cli, profile: str) -> None:
    iid, _ = instance(cp, "pf-no-pid-file", profile, trainer=False)
    names, got = failed(autostop, iid)
    assert names == ["trainer"] and "does not exist" in got["trainer"]["message"]


def test_an_instance_whose_writes_are_not_confined_fails_isolation(cp: LocalControlPlane, autostop: Cli, profile: str) -> None:
    iid, _ = instance(cp, "pf-wide-role", profile, policy=False)
    names, got = failed(autostop, iid)
    assert names == ["isolation"]
    assert "outside its prefix" in got["isolation"]["message"] and "deleted again" in got["isolation"]["message"]


def test_stopped_and_unknown_instances(cp: LocalControlPlane, autostop: Cli, profile: str) -> None:
    iid, _ = instance(cp, "pf-stopped", profile, trainer=False)
    cp.stop_instance("pf-stopped")
    names, _ = failed(autostop, iid)
    assert "running" in names and "ssm_agent" in names
    names, got = failed(autostop, "i-0000000000000dead")
    assert names == ["instance"] and "does not exist" in got["instance"]["message"]


def test_old_stack_without_the_output(cp: LocalControlPlane, autostop: Cli, profile: str, tmp_path: Path) -> None:
    import json

    data = json.loads(autostop.outputs.read_text())
    for outputs in data.values():
        outputs.pop("PreflightDocument", None)
    old = tmp_path / "old-outputs.json"
    old.write_text(json.dumps(data))
    iid, _ = instance(cp, "pf-old-stack", profile, trainer=False)
    result = Cli(cp, old)("preflight", iid, code=1)
    assert "no output PreflightDocument" in result.stderr
