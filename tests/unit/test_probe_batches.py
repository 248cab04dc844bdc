"""Probe batching: instances whose paths differ only by their run id share one SendCommand per 50 (RunIds)."""

from __future__ import annotations

import re

import pytest

from infra.constructs.documents import ABS_PATH_OR_EMPTY, PROBE_PARAMETERS, RUN_IDS
from shared.probe import batches, templated


def params(log: str = "", pid: str = "", ckpt: str = "/data/ckpt", pattern: str = "done") -> dict[str, list[str]]:
    return {"PidFile": [pid], "LogFile": [log], "LogPattern": [pattern if log else ""], "CheckpointDir": [ckpt]}


@pytest.mark.parametrize(
    "run,log,template",
    [
        ("exp1", "/logs/exp1/train.log", "/logs/{run-id}/train.log"),  # a whole path component
        ("exp1", "/logs/exp1.log", "/logs/{run-id}.log"),  # delimited by '.'
        ("exp1", "/logs/job-exp1_v2/train.log", "/logs/job-{run-id}_v2/train.log"),  # delimited by '-' and '_'
        ("exp1", "/logs/exp1/exp1.log", "/logs/{run-id}/{run-id}.log"),  # every occurrence
        ("run.7", "/logs/run.7/train.log", "/logs/{run-id}/train.log"),  # '.' in the run id is literal
    ],
)
def test_the_run_id_is_templated_where_it_is_a_whole_token(run: str, log: str, template: str) -> None:
    out = templated(params(log), run)
    assert out is not None and out["LogFile"] == [template]
    assert out["LogFile"][0].replace("{run-id}", run) == log
    assert re.fullmatch(PROBE_PARAMETERS["LogFile"]["allowedPattern"], template)


@pytest.mark.parametrize(
    "run,log",
    [
        ("exp1", "/logs/exp10/train.log"),  # run on by a digit: another run's path
        ("exp1", "/logs/myexp1/train.log"),  # run on by a letter
        ("run.7", "/logs/runx7/train.log"),  # '.' must not match any character
        ("exp1", "/logs/train.log"),  # not there at all
    ],
)
def test_paths_without_the_run_id_as_a_token_keep_the_plain_parameters(run: str, log: str) -> None:
    assert templated(params(log), run) is None


def test_every_path_parameter_is_templated_and_other_parameters_are_kept() -> None:
    out = templated(params("/r/a1/train.log", pid="/run/a1.pid", ckpt="/data/a1/ckpt", pattern="a1 done"), "a1")
    assert out == {
        "PidFile": ["/run/{run-id}.pid"],
        "LogFile": ["/r/{run-id}/train.log"],
        "LogPattern": ["a1 done"],  # the pattern is not a path: never rewritten
        "CheckpointDir": ["/data/{run-id}/ckpt"],
    }


def fleet(n: int, log: str = "/data/runs/{run}/train.log") -> tuple[dict[str, dict[str, list[str]]], dict[str, str]]:
    ids = {f"i-{k:017x}": f"run-{k:05d}" for k in range(n)}
    return {iid: params(log.format(run=run)) for iid, run in ids.items()}, ids


def test_a_log_fleet_with_per_run_paths_costs_one_command_per_50() -> None:
    parameters, run_ids = fleet(120)
    sent = list(batches(parameters, run_ids))
    assert [len(b["InstanceIds"]) for b in sent] == [50, 50, 20]
    for batch in sent:
        assert batch["Parameters"]["LogFile"] == ["/data/runs/{run-id}/train.log"]
        pairs = dict(pair.split("=") for pair in batch["Parameters"]["RunIds"][0].split(" "))
        assert pairs == {iid: run_ids[iid] for iid in batch["InstanceIds"]}
        assert re.fullmatch(RUN_IDS, batch["Parameters"]["RunIds"][0])
        for name, spec in PROBE_PARAMETERS.items():
            assert re.fullmatch(spec["allowedPattern"], batch["Parameters"].get(name, [spec.get("default", "")])[0]), name


def test_longest_run_ids_fit_the_pattern_at_50_pairs_and_not_at_51() -> None:
    pairs = [f"i-{k:017x}={'r' * 63}" for k in range(51)]
    assert re.fullmatch(RUN_IDS, " ".join(pairs[:50]))
    assert not re.fullmatch(RUN_IDS, " ".join(pairs))
    for bad in ["i-0123456789abcdef0=", "i-0123456789abcdef0=r  i-0123456789abcdef1=s", "i-0123456789abcdef0=r;x", "=r", " i-0123456789=r"]:
        assert not re.fullmatch(RUN_IDS, bad), bad


def test_instances_without_their_run_id_in_a_path_keep_plain_batches_without_run_ids() -> None:
    shared, _ = fleet(3, log="/data/shared/train.log")
    per_run, run_ids = fleet(3)
    per_run = {iid.replace("i-0", "i-1"): p for iid, p in per_run.items()}
    run_ids = {**{iid.replace("i-0", "i-1"): r for iid, r in run_ids.items()}, **dict(zip(shared, ["s1", "s2", "s3"], strict=True))}
    sent = sorted(batches({**shared, **per_run}, run_ids), key=lambda b: b["InstanceIds"][0])
    assert [sorted(b["Parameters"]) for b in sent] == [sorted(params()), sorted([*params(), "RunIds"])]
    assert sent[0]["Parameters"]["LogFile"] == ["/data/shared/train.log"] and sent[0]["InstanceIds"] == sorted(shared)
    # without run ids (an older caller) every instance is sent its own plain parameters
    assert len(list(batches(per_run, {}))) == 3


def test_templates_group_only_identical_remainders() -> None:
    a, run_a = fleet(2, log="/data/runs/{run}/train.log")
    b, run_b = fleet(2, log="/data/other/{run}/train.log")
    b = {iid.replace("i-0", "i-1"): p for iid, p in b.items()}
    run_b = {iid.replace("i-0", "i-1"): r for iid, r in run_b.items()}
    sent = list(batches({**a, **b}, {**run_a, **run_b}))
    assert sorted(b["Parameters"]["LogFile"][0] for b in sent) == ["/data/other/{run-id}/train.log", "/data/runs/{run-id}/train.log"]
    assert all(len(b["InstanceIds"]) == 2 for b in sent)


def test_the_substituted_path_meets_the_plain_path_pattern() -> None:
    # probe.sh checks the substituted value against ABS_PATH_OR_EMPTY: a template never admits more than it.
    template = PROBE_PARAMETERS["LogFile"]["allowedPattern"]
    for value in ["/x/{run-id}", "/{run-id}/{run-id}.log", ""]:
        assert re.fullmatch(template, value)
        assert re.fullmatch(ABS_PATH_OR_EMPTY, value.replace("{run-id}", "r" * 63))
    for value in ["{run-id}/x", "/x/{run}", "/x/{run-id", "/x/}", "/x/{{run-id}}", "/x/{RUN-ID}"]:
        assert not re.fullmatch(template, value), value
