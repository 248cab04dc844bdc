"""``autostop tag``: opt an instance in with tags the Lambdas' own parser accepts, or write nothing."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Mapping
from typing import Any

import click

from autostop_cli.target import AwsContext, TargetError, pass_aws, target_options
from shared import constants as c
from shared.evaluation import tag_policy
from shared.instances import describe_instance
from shared.tags import InvalidTags, parse_instance_config

OPTION_TAGS = {
    "action": c.TAG_ACTION,
    "checkpoint_s3_uri": c.TAG_CHECKPOINT_S3_URI,
    "completion_marker": c.TAG_COMPLETION_MARKER,
    "pid_file": c.TAG_PID_FILE,
    "log_file": c.TAG_LOG_FILE,
    "log_pattern": c.TAG_LOG_PATTERN,
    "signal": c.TAG_SIGNAL,
    "grace_seconds": c.TAG_GRACE_SECONDS,
    "tag_dry_run": c.TAG_DRY_RUN,
    "spot_grace_seconds": c.TAG_SPOT_GRACE_SECONDS,
    "on_rebalance": c.TAG_ON_REBALANCE,
    "resume_command": c.TAG_RESUME_COMMAND,
    "save_on_signal": c.TAG_SAVE_ON_SIGNAL,
}
"""Optional click parameter to the tag name after ``<prefix>:`` (values are checked by the parser, not by click)."""


def wanted_tags(prefix: str, run_id: str, checkpoint_dir: str, options: Mapping[str, str | None]) -> dict[str, str]:
    """``{key: value}`` of the tags to write: enabled, run-id, checkpoint-dir and every option given."""
    tags = {f"{prefix}:{c.TAG_ENABLED}": "true", f"{prefix}:{c.TAG_RUN_ID}": run_id, f"{prefix}:{c.TAG_CHECKPOINT_DIR}": checkpoint_dir}
    tags.update({f"{prefix}:{OPTION_TAGS[name]}": value for name, value in options.items() if value is not None})
    return tags


def stale_keys(prefix: str, existing: Mapping[str, str], wanted: Mapping[str, str]) -> list[str]:
    """Existing autostop configuration keys ``wanted`` does not set (case variants included; informational tags not)."""
    info = {f"{prefix}:{name}" for name in c.INFO_TAGS}
    return sorted(
        key for key in existing if "".join(key.split()).lower().startswith(f"{prefix.lower()}:") and key not in wanted and key not in info
    )


def aws_cli_lines(region: str, instance_id: str, tags: Mapping[str, str], removed: list[str]) -> list[str]:
    """Copy-paste ``aws ec2 delete-tags`` / ``create-tags`` lines doing the same writes (JSON tag lists, shell-quoted)."""
    lines = []
    if removed:
        doc = json.dumps([{"Key": k} for k in removed])
        lines.append(f"aws ec2 delete-tags --region {region} --resources {instance_id} --tags {shlex.quote(doc)}")
    doc = json.dumps([{"Key": k, "Value": v} for k, v in tags.items()])
    lines.append(f"aws ec2 create-tags --region {region} --resources {instance_id} --tags {shlex.quote(doc)}")
    return lines


def _tag_option(name: str, help_text: str) -> Any:
    return click.option(f"--{name.replace('_', '-')}", name, default=None, metavar="VALUE", help=help_text)


@click.command("tag")
@click.argument("instance_id", metavar="INSTANCE")
@click.option("--run-id", required=True, help="autostop:run-id: 1-63 of A-Z a-z 0-9 . _ -.")
@click.option("--checkpoint-dir", required=True, help="autostop:checkpoint-dir: absolute path of the checkpoints on the instance.")
@_tag_option("action", "autostop:action: stop, terminate or hibernate [stop].")
@_tag_option("checkpoint_s3_uri", "autostop:checkpoint-s3-uri: s3://<stack bucket>/<prefix containing the run id>/.")
@_tag_option("completion_marker", "autostop:completion-marker: s3://<stack bucket>/<key containing the run id>.")
@_tag_option("pid_file", "autostop:pid-file: absolute path of the trainer's PID file.")
@_tag_option("log_file", "autostop:log-file: absolute path containing the run id (with --log-pattern).")
@_tag_option("log_pattern", "autostop:log-pattern: extended regex of the completion line (with --log-file).")
@_tag_option("signal", "autostop:signal: SIGTERM, SIGINT, SIGHUP, SIGUSR1 or SIGUSR2.")
@_tag_option("grace_seconds", "autostop:grace-seconds: seconds the trainer gets to exit.")
@_tag_option("tag_dry_run", "autostop:dry-run: true = everything but the stop.")
@_tag_option("spot_grace_seconds", "autostop:spot-grace-seconds: 0-110.")
@_tag_option("on_rebalance", "autostop:on-rebalance: checkpoint or ignore.")
@_tag_option("resume_command", "autostop:resume-command: absolute program path and plain arguments (needs --pid-file).")
@_tag_option("save_on_signal", "autostop:save-on-signal: true or false.")
@click.option("--replace", is_flag=True, help="Delete the instance's other autostop configuration tags (DeleteTags).")
@click.option("--dry-run", is_flag=True, help="Validate and print the tags and an `aws ec2 create-tags` line; write nothing.")
@target_options
@pass_aws
def tag(aws: AwsContext, instance_id: str, run_id: str, checkpoint_dir: str, replace: bool, dry_run: bool, **options: str | None) -> None:
    """Opt INSTANCE in: build its autostop tags, validate them with the Lambdas' parser, then CreateTags.

    The tags are checked together with the instance's other tags (as a sweep will read them); any problem
    is printed and nothing is written (exit 2). Exit 1 when the instance does not exist.
    AWS calls: DescribeInstances, then (unless --dry-run) DeleteTags with --replace, CreateTags.
    """
    target = aws.target
    settings = target.settings
    ec2 = aws.client("ec2")
    snap = describe_instance(ec2, instance_id)
    if snap is None:
        raise TargetError(f"instance {instance_id} not found in {target.region}")
    wanted = wanted_tags(settings.tag_prefix, run_id, checkpoint_dir, options)
    stale = stale_keys(settings.tag_prefix, snap.tags, wanted)
    kept = {k: v for k, v in snap.tags.items() if not (replace and k in stale)}
    try:
        parse_instance_config(instance_id, {**kept, **wanted}, tag_policy(settings))
    except InvalidTags as exc:
        click.echo(f"refused: the autostop tags of {instance_id} would be invalid; nothing was written:", err=True)
        for problem in exc.problems:
            click.echo(f"  - {problem}", err=True)
        if stale and not replace:
            click.echo(f"  (existing tags kept: {', '.join(stale)}; --replace deletes them)", err=True)
        sys.exit(2)
    removed = stale if replace else []
    for key, value in wanted.items():
        click.echo(f"{key} = {value}")
    for key in removed:
        click.echo(f"{key} (deleted)")
    if dry_run:
        click.echo("\ndry run, nothing written; the same with the AWS CLI:")
        for line in aws_cli_lines(target.region, instance_id, wanted, removed):
            click.echo(line)
        return
    # Create first: if it fails, the old configuration stands whole (a delete first could leave half of it).
    ec2.create_tags(Resources=[instance_id], Tags=[{"Key": k, "Value": v} for k, v in wanted.items()])
    if removed:
        ec2.delete_tags(Resources=[instance_id], Tags=[{"Key": k} for k in removed])
    click.echo(f"\ntagged {instance_id} (settings: {target.settings_source})")
