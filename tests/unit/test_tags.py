"""Tag parsing: what opts an instance in, defaults, and the clear errors for bad values."""

from __future__ import annotations

import pytest

from shared.models import Action, S3Uri
from shared.tags import InvalidTags, TagPolicy, is_opted_in, parse_instance_config

POLICY = TagPolicy(prefix="autostop", checkpoint_bucket="ckpt-bucket")
IID = "i-0123456789abcdef0"


def tags(**kv: str) -> dict[str, str]:
    base = {"autostop:enabled": "true", "autostop:run-id": "run-1", "autostop:checkpoint-dir": "/data/ckpt"}
    base.update({f"autostop:{k.replace('_', '-')}": v for k, v in kv.items()})
    return base


def problems(t: dict[str, str]) -> str:
    with pytest.raises(InvalidTags) as err:
        parse_instance_config(IID, t, POLICY)
    return "; ".join(err.value.problems)


@pytest.mark.parametrize(
    "value,expected",
    [("true", True), ("TRUE", True), ("True", True), (" true", False), ("true ", False), ("yes", False), ("1", False), ("", False)],
)
def test_opt_in_is_true_ignoring_case_but_not_whitespace(value: str, expected: bool) -> None:
    # Same rule as the IAM condition StringEqualsIgnoreCase aws:ResourceTag/autostop:enabled = "true".
    assert is_opted_in({"autostop:enabled": value}, "autostop") is expected


def test_opt_in_key_is_exact() -> None:
    assert not is_opted_in({"Autostop:enabled": "true"}, "autostop")
    assert not is_opted_in({"autostop:Enabled": "true"}, "autostop")


def test_defaults_stop_default_marker_and_bucket_prefix() -> None:
    config = parse_instance_config(IID, tags(), POLICY)
    assert config.action is Action.STOP
    own = f"instances/arn:aws:ec2:us-east-1:123456789012:instance/{IID}/"  # the only keys the instance may write
    assert config.checkpoint_prefix == S3Uri(bucket="ckpt-bucket", key=f"{own}runs/run-1/")
    assert str(config.completion_marker) == f"s3://ckpt-bucket/{own}runs/run-1/_SUCCESS"
    assert (config.signal, config.grace_seconds, config.dry_run) == ("TERM", 300, False)
    assert not config.probe_needed


def test_explicit_on_instance_signals_replace_the_default_marker() -> None:
    config = parse_instance_config(
        IID, tags(pid_file="/run/train.pid", log_file="/var/log/run-1/t.log", log_pattern="done|finished"), POLICY
    )
    assert config.completion_marker is None
    assert config.probe_needed
    assert config.probe_parameters() == {
        "PidFile": [""],
        "LogFile": ["/var/log/run-1/t.log"],
        "LogPattern": ["done|finished"],
        "CheckpointDir": ["/data/ckpt"],  # the probe reads the log only when the trainer (this dir's owner) owns it
    }
    alone = parse_instance_config(IID, tags(pid_file="/run/train.pid"), POLICY)
    assert alone.pid_is_completion_signal
    assert alone.probe_parameters()["PidFile"] == ["/run/train.pid"]


def test_terminate_only_when_explicitly_tagged() -> None:
    assert parse_instance_config(IID, tags(action="terminate"), POLICY).action is Action.TERMINATE
    policy = TagPolicy(prefix="autostop", checkpoint_bucket="ckpt-bucket", default_action=Action.TERMINATE)
    assert parse_instance_config(IID, tags(), policy).action is Action.STOP


@pytest.mark.parametrize(
    "bad,fragment",
    [
        ({"checkpoint_dir": "relative/ckpt"}, "absolute path"),
        ({"checkpoint_dir": "/data/../etc"}, "'..'"),
        ({"checkpoint_dir": "/data/ckpt; rm -rf /"}, "absolute path"),
        ({"checkpoint_dir": "/data/$(reboot)"}, "absolute path"),
        ({"checkpoint_dir": "/"}, "may not be '/'"),
        ({"pid_file": "/tmp/`id`"}, "absolute path"),
        ({"action": "shutdown"}, "must be one of stop, terminate, hibernate"),
        ({"run_id": "has space"}, "run-id"),
        ({"run_id": "x" * 64}, "run-id"),
        ({"grace_seconds": "-5"}, "whole number"),
        ({"grace_seconds": "99999"}, "outside 0..1800"),
        ({"signal": "SIGKILL"}, "must be one of SIGTERM"),
        ({"dry_run": "maybe"}, "true or false"),
        ({"log_file": "/var/log/run-1/t.log"}, "must be set together"),
        ({"log_pattern": "done", "log_file": "/l/run-1.log"}, ""),
        ({"log_file": "/var/log/run-1/t.log", "log_pattern": "(unclosed"}, "not a valid regular expression"),
        ({"log_file": "/var/log/run-1/t.log", "log_pattern": "caf\u00e9"}, "printable ASCII"),
        ({"checkpoint_s3_uri": "s3://other-bucket/runs/x/"}, "stack's checkpoint bucket"),
        ({"checkpoint_s3_uri": "https://example.com/x"}, "not an s3:// URI"),
        ({"checkpoint_s3_uri": "s3://ckpt-bucket/"}, "needs a key prefix"),
        ({"completion_marker": "s3://ckpt-bucket/a/../b"}, "'..'"),
        ({"completion_marker": "s3://ckpt-bucket/runs/"}, "must name an object"),
        ({"dryrun": "true"}, "did you mean autostop:dry-run"),
    ],
)
def test_bad_values_are_rejected_with_an_actionable_message(bad: dict[str, str], fragment: str) -> None:
    t = tags(**bad)
    if not fragment:  # a valid pair: the control for the row above it
        assert parse_instance_config(IID, t, POLICY).log_pattern == "done"
        return
    assert fragment in problems(t)


def test_missing_required_tags_are_all_reported_at_once() -> None:
    message = problems({"autostop:enabled": "true"})
    assert "autostop:run-id is required" in message
    assert "autostop:checkpoint-dir is required" in message


def test_huge_values_are_rejected() -> None:
    assert "absolute path" in problems(tags(checkpoint_dir="/" + "a" * 300))


def test_signal_names_are_normalised() -> None:
    assert parse_instance_config(IID, tags(signal="sigusr1"), POLICY).signal == "USR1"
    assert parse_instance_config(IID, tags(signal="INT"), POLICY).signal == "INT"


def test_custom_prefix_and_trailing_slash_on_dir() -> None:
    policy = TagPolicy(prefix="ml", checkpoint_bucket="ckpt-bucket")
    t = {"ml:enabled": "true", "ml:run-id": "r", "ml:checkpoint-dir": "/ckpt/", "autostop:enabled": "false"}
    config = parse_instance_config(IID, t, policy)
    assert config.checkpoint_dir == "/ckpt"


def test_completion_evidence_must_name_the_run() -> None:
    # An earlier run's completion line or marker must never end a new run.
    assert "must contain the run id 'run-1'" in problems(tags(log_file="/var/log/train.log", log_pattern="done"))
    assert "must contain the run id 'run-1'" in problems(tags(completion_marker="s3://ckpt-bucket/markers/_SUCCESS"))
    ok = parse_instance_config(IID, tags(completion_marker="s3://ckpt-bucket/markers/run-1.done"), POLICY)
    assert str(ok.completion_marker) == "s3://ckpt-bucket/markers/run-1.done"


@pytest.mark.parametrize("key", ["Autostop:dry-run", "AUTOSTOP:enabled", " autostop:dry-run", "autostop :dry-run"])
def test_case_or_space_variants_of_our_keys_are_errors_not_ignored(key: str) -> None:
    # Silently ignoring "Autostop:dry-run=true" would turn a dry run into a real stop.
    t = tags()
    t[key] = "true"
    assert "not spelled exactly autostop:<name>" in problems(t)


@pytest.mark.parametrize("field", ["run_id", "checkpoint_dir", "pid_file"])
def test_a_trailing_newline_is_not_a_valid_value(field: str) -> None:
    value = {"run_id": "run-1\n", "checkpoint_dir": "/data/ckpt\n", "pid_file": "/run/t.pid\n"}[field]
    with pytest.raises(InvalidTags):
        parse_instance_config(IID, tags(**{field: value}), POLICY)
    with pytest.raises(InvalidTags):
        parse_instance_config(IID, tags(checkpoint_s3_uri="s3://ckpt-bucket/runs/x\n"), POLICY)


def test_a_pathological_regex_is_an_invalid_tag_not_a_crash() -> None:
    assert "not a valid regular expression" in problems(tags(log_file="/l/run-1.log", log_pattern="a{99999999999}"))


def test_a_tagged_prefix_lies_below_the_instances_own_and_names_the_run() -> None:
    own = f"instances/arn:aws:ec2:us-east-1:123456789012:instance/{IID}/"
    config = parse_instance_config(IID, tags(checkpoint_s3_uri="s3://ckpt-bucket/team/run-1/"), POLICY)
    assert config.checkpoint_prefix == S3Uri(bucket="ckpt-bucket", key=f"{own}team/run-1/")
    assert str(config.completion_marker) == f"s3://ckpt-bucket/{own}team/run-1/_SUCCESS"
    # Finding 4: two runs sharing one prefix would share its default marker; the prefix must name the run.
    assert "must contain the run id 'run-1'" in problems(tags(checkpoint_s3_uri="s3://ckpt-bucket/team/shared/"))
    assert "below the instance's own" in problems(tags(checkpoint_s3_uri=f"s3://ckpt-bucket/{own}runs/run-1/"))


def test_a_tagged_marker_is_the_instances_own_unless_a_pipeline_writes_it_under_markers() -> None:
    own = f"instances/arn:aws:ec2:us-east-1:123456789012:instance/{IID}/"
    mine = parse_instance_config(IID, tags(completion_marker="s3://ckpt-bucket/runs/run-1/DONE"), POLICY)
    assert str(mine.completion_marker) == f"s3://ckpt-bucket/{own}runs/run-1/DONE"
    pipeline = parse_instance_config(IID, tags(completion_marker="s3://ckpt-bucket/markers/run-1/_SUCCESS"), POLICY)
    assert str(pipeline.completion_marker) == "s3://ckpt-bucket/markers/run-1/_SUCCESS"
    assert "below the instance's own prefix" in problems(tags(completion_marker=f"s3://ckpt-bucket/{own}runs/run-1/DONE"))
