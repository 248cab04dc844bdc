"""Bad tag values, through the real path: EC2 (moto) → the schedule sweep → the Evaluate step, one world for all.

Every case is an instance of its own in one shared world; one sweep evaluates them all (as in production, one
sweep sees the whole fleet), then the Evaluate handler is run for each. Each must be skipped (or, for the
valid spellings, left waiting) with the expected reason logged, and nothing may be done to any of them: no
checkpoint command, no StopInstances/TerminateInstances, no execution. A control instance whose run is
complete shows the same sweep does act on good input.

Then, without AWS: every value of a tag that reaches an SSM document parameter is rejected by ``shared.tags``
whenever the document's ``allowedPattern`` would reject it, and whatever is accepted contains no shell
metacharacter ("none reaches a shell unescaped"); the log pattern, the one tag that may hold them, is shown
harmless on a real probe run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from infra.constructs import documents as docs
from shared.notifications import tag_value
from tests.badinput.cases import RUN, TAG_CASES, Case, base_tags, key, scheduled
from tests.badinput.conftest import LogLines, Report, checkpoint_commands, instance_state, instance_tags, shared_world
from tests.integration.conftest import BUCKET, CTX, World

CONTROL_RUN = "ctl-run"
PROBE_PATTERNS = {
    "log-pattern $(touch) on a real probe": "$(touch {root}/pwned-1)",
    "log-pattern backticks on a real probe": "`touch {root}/pwned-2`",
    "log-pattern ; and | on a real probe": "x; touch {root}/pwned-3 | cat",
}


@dataclass
class Fleet:
    world: World
    ids: dict[str, str]
    summary: dict[str, Any]
    sweep_log: list[dict[str, Any]]
    control: str
    roots: dict[str, Path] = field(default_factory=dict)
    notices: list[dict[str, Any]] = field(default_factory=list)


def tags_of(case: Case) -> dict[str, str]:
    tags = base_tags()
    for k, v in case.value.items():
        if v is None:
            tags.pop(k, None)
        else:
            tags[k] = v
    return tags


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, logs: LogLines) -> Iterator[Fleet]:
    from on_schedule_tick.handler import lambda_handler

    with shared_world(tmp_path_factory.mktemp("bad-tags")) as world:
        control = world.instance("control", {**base_tags(), key("run-id"): CONTROL_RUN})
        world.client("s3").put_object(Bucket=BUCKET, Key=world.run_key(CONTROL_RUN, f"runs/{CONTROL_RUN}/_SUCCESS"), Body=b"done")
        ids = {case.id: world.instance(f"t{n:03d}", tags_of(case)).instance_id for n, case in enumerate(TAG_CASES)}
        roots = {}
        for n, (cid, pattern) in enumerate(PROBE_PATTERNS.items()):
            tags = {**base_tags(), key("checkpoint-dir"): "{root}/ckpt", key("log-file"): f"{{root}}/{RUN}.log"}
            tags[key("log-pattern")] = pattern
            inst = world.instance(f"probe{n}", tags)
            (inst.root / f"{RUN}.log").write_text("step 1\nstep 2\n")
            (inst.root / "ckpt").mkdir(exist_ok=True)  # the trainer's checkpoint dir: the probe reads its user's log only
            ids[cid], roots[cid] = inst.instance_id, inst.root
        mark = logs.mark()
        summary = lambda_handler(scheduled(), CTX)
        notices = world.notifications()
        yield Fleet(world, ids, summary, logs.since(mark), control.instance_id, roots, notices)


def test_the_control_run_is_acted_on_by_the_same_sweep(fleet: Fleet) -> None:
    # The sweep is not vacuous: the one complete run among them gets its execution.
    started = [e for e in fleet.summary["executions"] if e["name"].startswith(fleet.control)]
    assert [e["status"] for e in started] == ["started"], fleet.summary
    assert len(fleet.summary["executions"]) == 1, fleet.summary["executions"]


@pytest.mark.parametrize("case", TAG_CASES, ids=[c.id for c in TAG_CASES])
def test_bad_tag_is_skipped_with_its_reason_and_nothing_is_done(fleet: Fleet, case: Case, logs: LogLines, report: Report) -> None:
    from evaluate_completion.handler import lambda_handler
    from shared.naming import execution_name

    world, iid = fleet.world, fleet.ids[case.id]

    # The sweep: skipped with the reason (or, for a key spelled otherwise, not a candidate at all)
    candidate = iid in fleet.summary["skipped"] or iid in fleet.summary["waiting"]
    if case.accepted:
        assert fleet.summary["waiting"][iid].startswith("not_complete: "), fleet.summary["waiting"].get(iid)
        assert case.expect in fleet.summary["waiting"][iid]
    elif candidate:
        assert case.expect in fleet.summary["skipped"][iid], fleet.summary["skipped"].get(iid)
        logged = [line for line in fleet.sweep_log if line.get("instance_id") == iid and line["message"] == "instance skipped"]
        assert logged and case.expect in logged[0]["reason"], logged
    else:
        assert case.expect == "not opted in" and not any(k == key("enabled") for k in tags_of(case)), case

    # Visible: the last-error tag and the sweep's one notice say why; not for an instance opted out with 'false'
    last_error = instance_tags(world, iid).get(key("last-error"))
    (notice,) = fleet.notices  # one per sweep, for every instance it could not act on
    assert notice["trigger"] == "schedule" and notice["count"] == len(fleet.summary["marked"]) >= len(notice["instances"])
    if case.accepted or tags_of(case).get(key("enabled")) == "false":
        assert last_error is None and iid not in fleet.summary["marked"] and iid not in notice["instances"], last_error
    elif not candidate:  # only an opt-in key with spaces around it escapes the sweep (IAM could not tag it anyway)
        assert last_error is None and any(k != k.strip() and k.strip() == key("enabled") for k in tags_of(case)), case
    else:
        assert last_error == fleet.summary["marked"][iid] == tag_value("not evaluated: " + fleet.summary["skipped"][iid])
        assert iid not in notice["instances"] or notice["instances"][iid]["what_to_do"]

    # The Evaluate step, as an execution started by hand for this instance would run it
    mark = logs.mark()
    execution = execution_name(iid, RUN, "complete")
    out = lambda_handler({"input": {"instance_id": iid, "run_id": RUN, "reason": "complete"}, "execution_name": execution}, CTX)
    assert out["decision"] == ("not_complete" if case.accepted else "skipped"), out
    assert case.expect in out["reason"], out["reason"]
    assert out["command"] is None and out["checkpoint"] is None
    evaluated = [line for line in logs.since(mark) if line["message"] == "evaluated"]
    assert evaluated and case.expect in evaluated[-1]["reason"]

    # Nothing was done to it
    assert not [e for e in fleet.summary["executions"] if e["name"].startswith(iid)]
    assert not [c for c in checkpoint_commands(world) if iid in c["instance_ids"]]
    assert instance_state(world, iid) == "running"
    assert world.calls["StopInstances"] == world.calls["TerminateInstances"] == 0
    report.add(
        case.id,
        case.kind,
        case.value,
        out["decision"],
        out["reason"],
        acted=False,
        sweep="skipped" if iid in fleet.summary["skipped"] else "waiting" if iid in fleet.summary["waiting"] else "not a candidate",
    )


@pytest.mark.parametrize("cid", list(PROBE_PATTERNS))
def test_a_log_pattern_with_shell_syntax_is_only_ever_a_pattern(fleet: Fleet, cid: str, report: Report) -> None:
    # The log pattern may hold any printable ASCII (it is an extended regex). On a real probe run (probe.sh by the
    # simulated agent) the command substitution, backticks and ; | in it are never executed.
    iid, root = fleet.ids[cid], fleet.roots[cid]
    waiting = fleet.summary["waiting"].get(iid, "")
    assert waiting.startswith("not_complete: ") and "does not match the log pattern yet" in waiting, waiting
    assert not list(root.glob("pwned-*")), "a tag value was run by a shell"
    assert instance_state(fleet.world, iid) == "running"
    report.add(cid, "metachar", PROBE_PATTERNS[cid], "not_complete", waiting, acted=False, sweep="waiting (probe ran the pattern)")


# --- no value that could reach a document parameter gets past tags.py unless the document accepts it ---------------------

TAG_TO_PARAMETERS: dict[str, list[tuple[dict[str, dict[str, Any]], str]]] = {
    "run-id": [(docs.CHECKPOINT_PARAMETERS, "RunId"), (docs.RESTORE_PARAMETERS, "RunId")],
    "checkpoint-dir": [(docs.CHECKPOINT_PARAMETERS, "CheckpointDir"), (docs.RESTORE_PARAMETERS, "CheckpointDir")],
    "pid-file": [(docs.PROBE_PARAMETERS, "PidFile"), (docs.CHECKPOINT_PARAMETERS, "PidFile"), (docs.RESTORE_PARAMETERS, "PidFile")],
    "log-file": [(docs.PROBE_PARAMETERS, "LogFile"), (docs.RESTORE_PARAMETERS, "LogFile")],
    "log-pattern": [(docs.PROBE_PARAMETERS, "LogPattern")],
    "resume-command": [(docs.RESTORE_PARAMETERS, "ResumeCommand")],
    "signal": [(docs.CHECKPOINT_PARAMETERS, "Signal")],
    "grace-seconds": [(docs.CHECKPOINT_PARAMETERS, "GraceSeconds")],
}
SHELL_SPECIAL = set(";&|<>()$`\\\"'*?[]{}~#!\n\t\r ")


def _policy() -> Any:
    from shared.tags import TagPolicy

    return TagPolicy(prefix="autostop", checkpoint_bucket=BUCKET)


def _parse(tags: dict[str, str]) -> Any:
    from shared.tags import InvalidTags, parse_instance_config

    try:
        return parse_instance_config("i-0123456789abcdef0", tags, _policy())
    except InvalidTags:
        return None


def planned_parameters(config: Any) -> dict[tuple[str, str], str]:
    """Every document parameter the code builds from ``config``: the checkpoint command (Evaluate's own planner),
    the probe parameters, and the restore command's tag-derived values (as evaluate_completion._resume sets them)."""
    from evaluate_completion.logic import checkpoint_command
    from shared.settings import Settings
    from tests.conftest import function_env

    settings = Settings.from_env(function_env())
    _, command = checkpoint_command(config, "i-0123456789abcdef0-run-1-complete", datetime(2026, 11, 30, tzinfo=UTC), settings)
    out = {("checkpoint", k): v[0] for k, v in command.parameters.items()}
    out |= {("probe", k): v[0] for k, v in config.probe_parameters().items()}
    restore = {
        "RunId": config.run_id,
        "CheckpointDir": config.checkpoint_dir,
        "PidFile": config.pid_file or "",
        "LogFile": config.log_file or "",
        "ResumeCommand": config.resume_command or "",
        # From the run record (Verify's pins), not from tags: the planned upload prefix and a real S3 VersionId.
        "UploadPrefix": command.parameters["UploadPrefix"][0],
        "ManifestVersionId": "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY",
        "ManifestSha256": "ab" * 32,
    }
    out |= {("restore", k): v for k, v in restore.items()}
    out[("probe", "CheckpointDir")] = config.checkpoint_dir  # the probe checks the log's owner against it
    return out


DOCUMENTS = {"checkpoint": docs.CHECKPOINT_PARAMETERS, "probe": docs.PROBE_PARAMETERS, "restore": docs.RESTORE_PARAMETERS}


def assert_parameters_pass_their_patterns(config: Any) -> None:
    for (doc, name), value in planned_parameters(config).items():
        spec = DOCUMENTS[doc].get(name)
        if spec is None:  # executionTimeout: a number the code computes
            assert re.fullmatch(r"[0-9]{1,6}", value), (doc, name, value)
            continue
        assert re.fullmatch(spec["allowedPattern"], value), f"{doc} {name}={value!r} fails {spec['allowedPattern']}"
        if name != "LogPattern":  # the resume command's words are separated by single spaces (it runs without a shell)
            assert not set(value) & (SHELL_SPECIAL - {" "} if name == "ResumeCommand" else SHELL_SPECIAL), (
                f"{doc} {name}={value!r} holds a shell metacharacter"
            )


@pytest.mark.parametrize("case", TAG_CASES, ids=[c.id for c in TAG_CASES])
def test_tags_py_rejects_every_value_the_documents_would_reject(case: Case) -> None:
    config = _parse(tags_of(case))
    assert (config is not None) == (case.accepted and case.expect != "not opted in"), case.id
    if config is not None:
        assert_parameters_pass_their_patterns(config)
    for k, value in case.value.items():
        name = k.removeprefix("autostop:")
        if value is None or name not in TAG_TO_PARAMETERS:
            continue
        for params, param in TAG_TO_PARAMETERS[name]:
            document_accepts = re.fullmatch(params[param]["allowedPattern"], value) is not None
            if not document_accepts:
                assert config is None, f"{k}={value!r}: tags.py accepts what {param}'s allowedPattern rejects"


def _variants(name: str) -> Iterator[str]:
    """Values of tag ``name`` with one character of the first 0x3000 code points (and some beyond) inserted."""
    base = {
        "run-id": ("run", "1"),
        "checkpoint-dir": ("/data/ck", "pt"),
        "pid-file": ("/run/t", ".pid"),
        "log-file": (f"/var/log/{RUN}/t", ".log"),
        "resume-command": ("/opt/train --resume ", "x"),
    }[name]
    extra = [0x200B, 0x202E, 0x2060, 0xFEFF, 0xFF04, 0xFF1B, 0x1F680, 0xE0001]
    for cp in [*range(0x3000), *extra]:
        yield base[0] + chr(cp) + base[1]


@pytest.mark.parametrize("name", ["run-id", "checkpoint-dir", "pid-file", "log-file", "resume-command"])
def test_no_character_outside_the_documents_patterns_reaches_a_parameter(name: str, report: Report) -> None:
    # Exhaustive over single characters: whatever tags.py accepts passes every document pattern it reaches and
    # holds no shell metacharacter; everything else is rejected by tags.py itself (so SSM never has to).
    accepted = rejected = 0
    for value in _variants(name):
        extra = {key("log-pattern"): "done"} if name == "log-file" else {}
        if name == "resume-command":
            extra = {key("pid-file"): "/run/train.pid"}  # a resume command needs the PID file it writes
        config = _parse({**base_tags(), key(name): value, **extra})
        if config is None:
            rejected += 1
            continue
        accepted += 1
        assert value.isascii() and not set(value) & (SHELL_SPECIAL - {" "} if name == "resume-command" else SHELL_SPECIAL), value
        assert_parameters_pass_their_patterns(config)
    assert accepted and rejected
    report.add(
        f"{name}: every character of U+0000..U+2FFF (+8 more) inserted",
        "metachar",
        f"{accepted + rejected} values",
        "rejected unless the document pattern accepts it",
        f"{accepted} accepted (each passes the document's allowedPattern, no shell metacharacter), {rejected} rejected by tags.py",
        acted=False,
    )


def test_the_resume_command_pattern_is_the_documents() -> None:
    from shared.tags import RESUME_COMMAND_RE

    assert rf"^(|{RESUME_COMMAND_RE.pattern[1:-1]})$" == docs.RESUME_COMMAND
