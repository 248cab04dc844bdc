"""Tags of the Spot and resume paths: spot-grace-seconds, on-rebalance, resume-command, and the
informational tags autostop writes itself (never configuration)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import constants as c
from shared.tags import RESUME_COMMAND_RE, InvalidTags, TagPolicy, parse_instance_config

POLICY = TagPolicy(prefix="autostop", checkpoint_bucket="ckpt-bucket")
IID = "i-0123456789abcdef0"
PID_FILE = "/run/train.pid"
ARG_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._/=:,+@%-")
PROGRAM_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._/-")


def tags(**kv: str) -> dict[str, str]:
    base = {"autostop:enabled": "true", "autostop:run-id": "run-1", "autostop:checkpoint-dir": "/data/ckpt"}
    base.update({f"autostop:{k.replace('_', '-')}": v for k, v in kv.items()})
    return base


def problems(t: dict[str, str]) -> str:
    with pytest.raises(InvalidTags) as err:
        parse_instance_config(IID, t, POLICY)
    return "; ".join(err.value.problems)


def test_defaults_without_the_new_tags() -> None:
    config = parse_instance_config(IID, tags(), POLICY)
    assert config.spot_grace_seconds == c.DEFAULT_SPOT_GRACE_SECONDS == 30
    assert config.checkpoint_on_rebalance is False
    assert config.resume_command is None


def test_default_spot_grace_never_exceeds_the_deployments_maximum_grace() -> None:
    tight = TagPolicy(prefix="autostop", checkpoint_bucket="ckpt-bucket", max_grace_seconds=10)
    assert parse_instance_config(IID, tags(), tight).spot_grace_seconds == 10


# --- spot-grace-seconds --------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [("0", 0), ("1", 1), ("45", 45), ("110", 110), ("007", 7)])
def test_spot_grace_within_bounds(raw: str, expected: int) -> None:
    assert parse_instance_config(IID, tags(spot_grace_seconds=raw), POLICY).spot_grace_seconds == expected


@pytest.mark.parametrize("raw", ["111", "120", "999"])
def test_spot_grace_above_110_is_refused_with_the_reason(raw: str) -> None:
    text = problems(tags(spot_grace_seconds=raw))
    assert f"autostop:spot-grace-seconds={raw} is outside 0..110 seconds" in text
    assert "120 s in all" in text


@pytest.mark.parametrize("raw", ["", "-1", "1.5", "30s", " 30", "30 ", "abc", "1000", "1e2", "٣٠"])
def test_spot_grace_that_is_not_a_small_whole_number_is_refused(raw: str) -> None:
    assert f"autostop:spot-grace-seconds={raw!r} must be a whole number of seconds" in problems(tags(spot_grace_seconds=raw))


# --- on-rebalance ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"), [("checkpoint", True), ("CHECKPOINT", True), ("Checkpoint", True), ("ignore", False), ("IGNORE", False)]
)
def test_on_rebalance_values_ignore_case(raw: str, expected: bool) -> None:
    assert parse_instance_config(IID, tags(on_rebalance=raw), POLICY).checkpoint_on_rebalance is expected


@pytest.mark.parametrize("raw", ["", "true", "yes", "stop", " checkpoint", "checkpoint ", "checkpoints"])
def test_on_rebalance_other_values_are_refused(raw: str) -> None:
    assert f"autostop:on-rebalance={raw!r} must be checkpoint or ignore" in problems(tags(on_rebalance=raw))


# --- resume-command ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        "/usr/bin/python3",
        "/opt/venv/bin/python /opt/train.py --resume",
        "/usr/bin/torchrun --nproc_per_node=8 /opt/train.py --lr=3e-4 --tags=a,b --user=me@host --pct=50% --x+y",
        "/opt/my-trainer/run.sh --from=/data/ckpt/step_000100",
        "/usr/bin/env",
        "/a " + " ".join(f"arg{n}" for n in range(31)),  # the program and 31 arguments
        "/" + "p" * 254,
    ],
)
def test_resume_command_accepted_forms(command: str) -> None:
    config = parse_instance_config(IID, tags(resume_command=command, pid_file=PID_FILE), POLICY)
    assert config.resume_command == command
    assert config.pid_file == PID_FILE


@pytest.mark.parametrize("command", ["/usr/bin/python3", "/opt/venv/bin/python /opt/train.py --resume"])
def test_resume_command_without_a_pid_file_is_refused(command: str) -> None:
    # the restore writes the resumed trainer's PID there and refuses a second trainer: no pid-file, no resume
    text = problems(tags(resume_command=command))
    assert text.startswith("autostop:resume-command needs autostop:pid-file: ")
    assert "refuses to start a second trainer" in text
    # a log file is no substitute
    assert "autostop:resume-command needs autostop:pid-file" in problems(tags(resume_command=command, log_file="/var/log/train.log"))


def test_resume_command_with_a_malformed_pid_file_reports_the_pid_file_only() -> None:
    text = problems(tags(resume_command="/usr/bin/python3", pid_file="train.pid"))
    assert "autostop:pid-file" in text
    assert "needs autostop:pid-file" not in text


def test_resume_command_needs_the_pid_file_under_the_deployments_prefix() -> None:
    policy = TagPolicy(prefix="acme", checkpoint_bucket="ckpt-bucket")
    base = {"acme:enabled": "true", "acme:run-id": "run-1", "acme:checkpoint-dir": "/data/ckpt", "acme:resume-command": "/usr/bin/python3"}
    with pytest.raises(InvalidTags) as err:
        parse_instance_config(IID, base, policy)
    assert any(p.startswith("acme:resume-command needs acme:pid-file: ") for p in err.value.problems)
    assert parse_instance_config(IID, {**base, "acme:pid-file": PID_FILE}, policy).resume_command == "/usr/bin/python3"


def test_a_pid_file_without_a_resume_command_is_still_fine() -> None:
    config = parse_instance_config(IID, tags(pid_file=PID_FILE), POLICY)
    assert (config.pid_file, config.resume_command) == (PID_FILE, None)


SHELL_CHARACTERS = list(";|&<>*?$`\\'\"(){}[]~!#^\t\n\r") + ["$(id)", "`id`", "${HOME}", "&&", "||", ">>"]


@pytest.mark.parametrize("bad", SHELL_CHARACTERS)
@pytest.mark.parametrize("where", ["program", "argument"])
def test_resume_command_with_shell_syntax_is_refused(bad: str, where: str) -> None:
    command = f"/usr/bin/python{bad}" if where == "program" else f"/usr/bin/python /opt/train.py --x=a{bad}b"
    text = problems(tags(resume_command=command))
    assert "autostop:resume-command=" in text
    assert "must be an absolute program path" in text and "never run through a shell" in text


@pytest.mark.parametrize(
    "command",
    [
        "python train.py",  # relative program
        "./train.sh",
        "train",
        "~/train.sh",
        "",
        " /usr/bin/python",  # leading space
        "/usr/bin/python  /opt/train.py",  # double space
        "/usr/bin/python /opt/train.py ",  # trailing space
        "/usr/bin/python\n",
        "/usr/bin/pythön",  # non-ASCII
        "/usr/bin/python trâin.py",
        "/usr/bin/python train.py\u00a0--x",  # no-break space
        "/a " + " ".join(f"arg{n}" for n in range(32)),  # 32 arguments
        "/" + "p" * 255,  # program path too long
        "/usr/bin/python " + "a" * 256,  # argument too long
    ],
)
def test_resume_command_malformed_forms_are_refused(command: str) -> None:
    assert "must be an absolute program path followed by arguments" in problems(tags(resume_command=command))


@pytest.mark.parametrize(
    "program", ["/opt/../bin/python", "/opt/./train", "/..", "//usr/bin/python", "/usr//bin/python", "/opt/bin/..", "/opt/bin/", "/0/"]
)
def test_resume_command_program_with_dot_segments_is_refused(program: str) -> None:
    text = problems(tags(resume_command=f"{program} --resume"))
    assert f"the program path {program!r} may not contain '.', '..' or empty segments" in text


def test_refused_resume_command_makes_the_whole_config_invalid() -> None:
    # A bad resume command must not be dropped silently: the instance is skipped (nothing trusted).
    with pytest.raises(InvalidTags):
        parse_instance_config(IID, tags(resume_command="/usr/bin/python; rm -rf /"), POLICY)


ALPHABET = st.sampled_from(sorted(ARG_CHARS | set(" ;|&<>*?$`\\'\"(){}[]~!#\t\néü\u00a0")))
CANDIDATES = st.one_of(
    st.from_regex(RESUME_COMMAND_RE, fullmatch=True),
    st.text(alphabet=ALPHABET, max_size=60),
    st.builds(lambda p, a: f"/{p} {a}", st.text(alphabet=ALPHABET, max_size=20), st.text(alphabet=ALPHABET, max_size=30)),
)


@settings(max_examples=300, deadline=None)
@given(command=CANDIDATES)
def test_any_accepted_resume_command_is_plain_words_with_an_absolute_program(command: str) -> None:
    try:
        config = parse_instance_config(IID, tags(resume_command=command, pid_file=PID_FILE), POLICY)
    except InvalidTags:
        return
    accepted = config.resume_command
    assert accepted == command
    assert set(accepted) <= ARG_CHARS | {" "}
    words = accepted.split(" ")
    assert all(words), "no empty words (no double, leading or trailing spaces)"
    assert len(words) <= 32
    program = words[0]
    assert program.startswith("/") and set(program) <= PROGRAM_CHARS
    assert not any(seg in ("", ".", "..") for seg in program.split("/")[1:])
    assert re.fullmatch(r"[\x20-\x7e]+", accepted)  # ASCII only


# --- informational tags ------------------------------------------------------------------------------


def test_informational_tags_are_not_configuration() -> None:
    plain = parse_instance_config(IID, tags(), POLICY)
    with_info = parse_instance_config(
        IID,
        tags(
            state="SpotCheckpointFailed",
            last_checkpoint="s3://ckpt-bucket/runs/run-1/manifests/x.json",
            last_error="CheckpointFailed: trainer did not exit; $(rm -rf /) 'quotes' \"and\" \u00e9",
        ),
        POLICY,
    )
    assert with_info == plain


@settings(max_examples=100, deadline=None)
@given(name=st.sampled_from(c.INFO_TAGS), value=st.text(max_size=300))
def test_no_informational_tag_value_makes_tags_invalid(name: str, value: str) -> None:
    assert parse_instance_config(IID, {**tags(), f"autostop:{name}": value}, POLICY) == parse_instance_config(IID, tags(), POLICY)


def test_informational_tag_keys_are_case_sensitive_like_every_other_key() -> None:
    assert "unknown tag autostop:State" in problems({**tags(), "autostop:State": "Stopped"})


def test_informational_tags_do_not_opt_an_instance_in() -> None:
    info_only = {"autostop:run-id": "run-1", "autostop:checkpoint-dir": "/data/ckpt", "autostop:state": "Stopped"}
    assert "autostop:enabled is not 'true'" in problems(info_only)


# --- save-on-signal --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("TRUE", True), ("false", False), ("False", False)])
def test_save_on_signal_reaches_the_checkpoint_document(raw: str, expected: bool) -> None:
    from datetime import UTC, datetime

    from evaluate_completion.logic import checkpoint_command
    from shared.settings import Settings
    from tests.conftest import function_env

    config = parse_instance_config(IID, tags(save_on_signal=raw), POLICY)
    assert config.save_on_signal is expected
    assert parse_instance_config(IID, tags(), POLICY).save_on_signal is False
    _, command = checkpoint_command(config, f"{IID}-run-1-complete", datetime(2026, 12, 1, tzinfo=UTC), Settings.from_env(function_env()))
    assert command.parameters["SaveOnSignal"] == [raw.lower()]


@pytest.mark.parametrize("raw", ["", "yes", "1", " true", "tru\u0435"])
def test_save_on_signal_other_values_are_refused(raw: str) -> None:
    assert f"autostop:save-on-signal={raw!r} must be true or false" in problems(tags(save_on_signal=raw))
