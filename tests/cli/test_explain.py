"""``autostop explain``: the sweep's decision for one instance, each signal and each reason to skip it."""

from __future__ import annotations

from local.runtime import LocalControlPlane
from shared.naming import execution_name
from tests.cli.conftest import Cli
from tests.workflow.conftest import base_tags, session_of, write_checkpoint


def done_marker_tags(run: str) -> dict[str, str]:
    """Tags with a completion marker whose key does not end in _SUCCESS: putting it triggers nothing, so the
    instance stays as the test left it (the marker rule would start an execution)."""
    return base_tags(run, completion_marker=f"s3://{{bucket}}/runs/{run}/DONE")


def put_done(cp: LocalControlPlane, run: str) -> None:
    cp.put_object(cp.run_uri(run, f"runs/{run}/DONE"), "done")


def test_complete_run_names_the_execution_a_sweep_would_start(cp: LocalControlPlane, autostop: Cli) -> None:
    iid = cp.launch_instance("ex-done", tags=done_marker_tags("ex-done"))
    write_checkpoint(cp.by_name["ex-done"].root, 3)
    put_done(cp, "ex-done")
    ex = autostop.json("explain", iid)
    assert (ex["decision"], ex["state"], ex["run_id"], ex["opted_in"]) == ("complete", "running", "ex-done", True)
    assert {s["signal"]: s["verdict"] for s in ex["signals"]} == {"marker": "complete", "agent": "complete"}
    assert ex["tag_problems"] == [] and ex["notes"] == []
    assert execution_name(iid, "ex-done", "complete", 1, session_of(cp, iid)) in ex["next_step"]
    text = autostop("explain", iid).stdout
    assert "decision: complete" in text and "marker" in text and "PingStatus=Online" in text
    assert cp.instance_state("ex-done") == "running"  # nothing acted


def test_missing_marker_is_not_complete(cp: LocalControlPlane, autostop: Cli) -> None:
    iid = cp.launch_instance("ex-notyet", tags=done_marker_tags("ex-notyet"))
    ex = autostop.json("explain", iid)
    assert ex["decision"] == "not_complete" and "no completion marker" in ex["reason"]
    assert "waits" in ex["next_step"]


def test_log_signal_is_read_by_the_probe(cp: LocalControlPlane, autostop: Cli) -> None:
    tags = base_tags("ex-log", log_file="{root}/ex-log.log", log_pattern="Training complete")
    iid = cp.launch_instance("ex-log", tags=tags)
    ex = autostop.json("explain", iid)
    assert ex["decision"] == "inconclusive"
    [log] = [s for s in ex["signals"] if s["signal"] == "log"]
    assert log["verdict"] == "inconclusive" and "missing" in log["reason"]


def test_not_running_is_skipped(cp: LocalControlPlane, autostop: Cli) -> None:
    iid = cp.launch_instance("ex-stopped", tags=done_marker_tags("ex-stopped"))
    cp.stop_instance("ex-stopped")
    ex = autostop.json("explain", iid)
    assert ex["decision"] == "skipped" and ex["state"] == "stopped"
    assert any("the instance is stopped" in n for n in ex["notes"])


def test_not_opted_in_is_skipped(cp: LocalControlPlane, autostop: Cli) -> None:
    tags = {**done_marker_tags("ex-off"), "autostop:enabled": "false"}
    iid = cp.launch_instance("ex-off", tags=tags)
    ex = autostop.json("explain", iid)
    assert (ex["decision"], ex["opted_in"]) == ("skipped", False)
    assert any("not opted in" in n and "'false'" in n for n in ex["notes"])
    assert "autostop:enabled is not 'true'" in ex["tag_problems"]


def test_invalid_tags_are_listed(cp: LocalControlPlane, autostop: Cli) -> None:
    tags = {**base_tags("ex-bad"), "autostop:grace-seconds": "forever", "autostop:dryrun": "true"}
    iid = cp.launch_instance("ex-bad", tags=tags)
    ex = autostop.json("explain", iid)
    assert ex["decision"] == "skipped" and ex["reason"].startswith("invalid tags:")
    assert any("grace-seconds='forever'" in p for p in ex["tag_problems"])
    assert any("did you mean autostop:dry-run" in p for p in ex["tag_problems"])
    text = autostop("explain", iid).stdout
    assert "tag problems:" in text and "- unknown tag autostop:dryrun" in text


def test_case_variant_opt_in_key(cp: LocalControlPlane, autostop: Cli) -> None:
    tags = {k: v for k, v in base_tags("ex-case").items() if k != "autostop:enabled"}
    iid = cp.launch_instance("ex-case", tags={**tags, "Autostop:Enabled": "true"})
    ex = autostop.json("explain", iid)
    assert (ex["decision"], ex["opted_in"]) == ("skipped", False)
    assert any("'Autostop:Enabled' is a case/space variant" in n for n in ex["notes"])
    assert any("'Autostop:Enabled' looks like an autostop tag" in p for p in ex["tag_problems"])


def test_agent_offline_makes_a_complete_run_inconclusive(cp: LocalControlPlane, autostop: Cli) -> None:
    iid = cp.launch_instance("ex-offline", tags=done_marker_tags("ex-offline"), agent="offline")
    put_done(cp, "ex-offline")
    ex = autostop.json("explain", iid)
    assert ex["decision"] == "inconclusive" and "SSM agent is not online" in ex["reason"]
    assert any("SSM agent is not online" in n for n in ex["notes"])
    assert {s["signal"]: s["verdict"] for s in ex["signals"]} == {"marker": "complete", "agent": "inconclusive"}


def test_impossible_action_is_refused(cp: LocalControlPlane, autostop: Cli) -> None:
    iid = cp.launch_instance("ex-hib", tags={**done_marker_tags("ex-hib"), "autostop:action": "hibernate"})
    put_done(cp, "ex-hib")
    ex = autostop.json("explain", iid)
    assert ex["decision"] == "refused" and "hibernation" in ex["reason"]


def test_unknown_instance_exits_1(autostop: Cli) -> None:
    assert "not found" in autostop("explain", "i-0123456789abcdef0", code=1).stderr
