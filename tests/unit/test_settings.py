"""Function settings from the environment (shared/settings.py): defaults, parsing, and refusals that name the variable."""

from __future__ import annotations

import pytest

from shared.constants import Action
from shared.settings import Settings, SettingsError
from tests.conftest import function_env


def test_the_stack_environment_parses_with_defaults_for_the_rest() -> None:
    got = Settings.from_env(function_env(AUTOSTOP_DEFAULT_ACTION="hibernate", AUTOSTOP_RUNS_TABLE="runs", AUTOSTOP_UNKNOWN="x"))
    assert (got.tag_prefix, got.checkpoint_bucket, got.default_action) == ("autostop", "ckpt-bucket", Action.HIBERNATE)
    assert got.runs_table == "runs"
    assert (got.poll_seconds, got.probe_timeout_seconds, got.default_grace_seconds, got.state_machine_arn) == (0.05, 10, 300, None)
    assert got.require_runs_table() == "runs"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AUTOSTOP_TAG_PREFIX", "1autostop"),
        ("AUTOSTOP_CHECKPOINT_BUCKET", "ab"),
        ("AUTOSTOP_INSTANCE_ARN_PREFIX", "arn:aws:ec2:us-east-1:123:instance/"),
        ("AUTOSTOP_DEFAULT_ACTION", "reboot"),
        ("AUTOSTOP_DEFAULT_GRACE_SECONDS", "3601"),
        ("AUTOSTOP_PROBE_TIMEOUT_SECONDS", "4"),
        ("AUTOSTOP_POLL_SECONDS", "nan"),
        ("AUTOSTOP_SCHEDULE_MINUTES", "5.5"),
        ("AUTOSTOP_SCHEDULE_MINUTES", "\u0665"),  # ARABIC-INDIC DIGIT FIVE: int() reads 5, pydantic refused it
        ("AUTOSTOP_POLL_SECONDS", "\uff12"),  # FULLWIDTH DIGIT TWO
    ],
)
def test_a_malformed_variable_is_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"{name}='{value}'"):
        Settings.from_env(function_env(**{name: value}))


def test_bounds_are_inclusive_and_every_missing_variable_is_named() -> None:
    edge = Settings.from_env(function_env(AUTOSTOP_DEFAULT_GRACE_SECONDS="3600", AUTOSTOP_PROBE_TIMEOUT_SECONDS="5"))
    assert (edge.default_grace_seconds, edge.probe_timeout_seconds) == (3600, 5)
    env = {k: v for k, v in function_env().items() if k not in ("AUTOSTOP_PROBE_DOCUMENT", "AUTOSTOP_CHECKPOINT_DOCUMENT")}
    with pytest.raises(SettingsError, match="AUTOSTOP_PROBE_DOCUMENT is required; AUTOSTOP_CHECKPOINT_DOCUMENT is required"):
        Settings.from_env(env)
    with pytest.raises(SettingsError, match="AUTOSTOP_RUNS_TABLE is not set"):
        Settings.from_env(function_env()).require_runs_table()
