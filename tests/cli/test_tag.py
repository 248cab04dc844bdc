"""``autostop tag``: the Lambdas' parser decides; a tag it rejects is never written."""

from __future__ import annotations

import json
import shlex

from local.runtime import LocalControlPlane
from tests.cli.conftest import Cli


def bare(cp: LocalControlPlane, name: str, tags: dict[str, str] | None = None) -> str:
    """A running instance with only a Name tag (and ``tags``)."""
    return cp.launch_instance(name, tags=tags or {})


def autostop_tags(cp: LocalControlPlane, name: str) -> dict[str, str]:
    return {k: v for k, v in cp.tags(name).items() if k.lower().startswith("autostop:")}


def test_tag_writes_the_tags_the_parser_accepts(cp: LocalControlPlane, autostop: Cli) -> None:
    iid = bare(cp, "tag-ok")
    args = ["--run-id", "exp-1", "--checkpoint-dir", "/data/exp-1/ckpt", "--action", "terminate", "--pid-file", "/data/t.pid"]
    out = autostop("tag", iid, *args)
    assert autostop_tags(cp, "tag-ok") == {
        "autostop:enabled": "true",
        "autostop:run-id": "exp-1",
        "autostop:checkpoint-dir": "/data/exp-1/ckpt",
        "autostop:action": "terminate",
        "autostop:pid-file": "/data/t.pid",
    }
    assert f"tagged {iid}" in out.stdout and "environment of function" in out.stdout


def test_dry_run_prints_tags_and_an_aws_cli_line_and_writes_nothing(cp: LocalControlPlane, autostop: Cli) -> None:
    iid = bare(cp, "tag-dry")
    marker = f"s3://{cp.deployment.bucket}/runs/exp-2/_SUCCESS"
    out = autostop("tag", iid, "--run-id", "exp-2", "--checkpoint-dir", "/ckpt", "--completion-marker", marker, "--dry-run").stdout
    assert f"autostop:completion-marker = {marker}" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("aws ec2 create-tags"))
    argv = shlex.split(line)
    assert argv[argv.index("--resources") + 1] == iid and argv[argv.index("--region") + 1] == "us-east-1"
    tags = {t["Key"]: t["Value"] for t in json.loads(argv[argv.index("--tags") + 1])}
    assert tags["autostop:run-id"] == "exp-2" and tags["autostop:completion-marker"] == marker
    assert autostop_tags(cp, "tag-dry") == {}


def test_bad_values_are_refused_with_the_parsers_problems(cp: LocalControlPlane, autostop: Cli) -> None:
    iid = bare(cp, "tag-bad")
    cases = [
        (["--run-id", "bad id!", "--checkpoint-dir", "/ckpt"], "autostop:run-id='bad id!' must be 1-63"),
        (["--run-id", "r1", "--checkpoint-dir", "relative/ckpt"], "must be an absolute path"),
        (["--run-id", "r1", "--checkpoint-dir", "/ckpt", "--action", "reboot"], "must be one of stop, terminate, hibernate"),
        (["--run-id", "r1", "--checkpoint-dir", "/ckpt", "--completion-marker", "s3://other-bucket/r1/_SUCCESS"], "checkpoint bucket"),
        (["--run-id", "r1", "--checkpoint-dir", "/ckpt", "--log-file", "/logs/r1.log"], "must be set together"),
        (["--run-id", "r1", "--checkpoint-dir", "/ckpt", "--grace-seconds", "99999"], "is outside"),
        (["--run-id", "r1", "--checkpoint-dir", "/ckpt", "--resume-command", "/bin/train; rm -rf /"], "resume-command"),
    ]
    for args, problem in cases:
        result = autostop("tag", iid, *args, code=2)
        assert problem in result.stderr, (args, result.stderr)
        assert "nothing was written" in result.stderr
    assert autostop_tags(cp, "tag-bad") == {}


def test_existing_case_variant_key_is_refused_until_replaced(cp: LocalControlPlane, autostop: Cli) -> None:
    iid = bare(cp, "tag-variant", {"Autostop:Enabled": "true", "autostop:log-file": "/logs/other.log"})
    refused = autostop("tag", iid, "--run-id", "r9", "--checkpoint-dir", "/ckpt", code=2)
    assert "'Autostop:Enabled' looks like an autostop tag" in refused.stderr
    assert "--replace deletes them" in refused.stderr
    assert autostop_tags(cp, "tag-variant") == {"Autostop:Enabled": "true", "autostop:log-file": "/logs/other.log"}

    dry = autostop("tag", iid, "--run-id", "r9", "--checkpoint-dir", "/ckpt", "--replace", "--dry-run").stdout
    assert "aws ec2 delete-tags" in dry and "Autostop:Enabled (deleted)" in dry
    autostop("tag", iid, "--run-id", "r9", "--checkpoint-dir", "/ckpt", "--replace")
    assert autostop_tags(cp, "tag-variant") == {"autostop:enabled": "true", "autostop:run-id": "r9", "autostop:checkpoint-dir": "/ckpt"}


def test_unknown_instance_exits_1(autostop: Cli) -> None:
    result = autostop("tag", "i-0123456789abcdef0", "--run-id", "r", "--checkpoint-dir", "/c", code=1)
    assert "not found" in result.stderr
