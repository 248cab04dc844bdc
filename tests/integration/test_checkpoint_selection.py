# ruff: noqa: F811  (pytest fixtures imported from the script tests, then named as test arguments)
"""Which checkpoint the checkpoint document uploads: the newest one the framework can resume from.

Each test lays out a checkpoint directory in a real framework's format (tests/checkpoint_layouts.py; the
frameworks themselves write them in tests/frameworks), runs the real checkpoint script against a moto S3
server, and checks the result line, the manifest and the objects in S3. The numbered findings are those of the
checkpoint-selection issue: each chose the wrong checkpoint, or signalled a trainer with nothing to save, before.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from local.agent import sdk_python_shim
from tests.checkpoint_layouts import accelerate_checkpoint, dcp_checkpoint, hf_checkpoint, lightning_ckpt, safetensors, torch_zip, write
from tests.integration.test_instance_scripts import (  # noqa: F401  (fixtures among them)
    CHECKPOINT,
    VENV_BIN,
    base_env,
    bucket,
    checkpoint_env,
    children,
    endpoint,
    keys,
    read_manifest,
    run,
    s3,
    start_trainer,
    write_shim,
)

T0 = time.time() - 3600


def uploaded(s3: Any, bucket: str, env: dict[str, str], name: str) -> list[str]:
    """Keys of the checkpoint NAME's files in S3 (relative to the upload prefix)."""
    prefix = env["SSM_UploadPrefix"]
    return [k[len(prefix) :] for k in keys(s3, bucket) if k.startswith(f"{prefix}{name}")]


def chose(s3: Any, bucket: str, env: dict[str, str]) -> tuple[str, int, dict[str, Any]]:
    proc, out = run(CHECKPOINT, env)
    assert proc.returncode == 0, proc.stderr
    manifest = read_manifest(s3, bucket, env)
    assert (manifest["checkpoint"]["name"], manifest["step"]) == (out["checkpoint"], out["step"])
    assert manifest["selection"]["summary"] == out["summary"]
    return out["checkpoint"], out["step"], out


def reasons(out: dict[str, Any]) -> dict[str, str]:
    return {r["name"]: r["reason"] for r in out["rejected"]}


# --- 1. directories written in place ----------------------------------------------------------------------


def test_hf_checkpoint_cut_before_trainer_state_is_passed_over(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    ckdir = tmp_path / "out"
    hf_checkpoint(ckdir, 100, T0)
    hf_checkpoint(ckdir, 200, T0 + 60, finished=False)
    env = checkpoint_env(base_env, bucket, ckdir)

    name, step, out = chose(s3, bucket, env)

    assert (name, step) == ("checkpoint-100", 100)
    assert out["rule"].startswith("hf-trainer: trainer_state.json present")
    assert "no trainer_state.json" in reasons(out)["checkpoint-200"]
    assert "checkpoint-100/trainer_state.json" in uploaded(s3, bucket, env, "checkpoint-100")
    assert uploaded(s3, bucket, env, "checkpoint-200") == []


def test_dcp_step_without_metadata_is_passed_over(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    ckdir = tmp_path / "dcp"
    dcp_checkpoint(ckdir, 100, T0)
    dcp_checkpoint(ckdir, 200, T0 + 60, finished=False)
    env = checkpoint_env(base_env, bucket, ckdir)

    name, step, out = chose(s3, bucket, env)

    assert (name, step) == ("step-100", 100)
    assert sorted(uploaded(s3, bucket, env, "step-100")) == ["step-100/.metadata", "step-100/__0_0.distcp", "step-100/__1_0.distcp"]
    assert "no .metadata" in reasons(out)["step-200"]


def test_accelerate_state_without_random_states_is_passed_over(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    ckdir = tmp_path / "checkpoints"
    accelerate_checkpoint(ckdir, 0, T0)
    accelerate_checkpoint(ckdir, 1, T0 + 60, finished=False)
    env = checkpoint_env(base_env, bucket, ckdir)

    name, step, out = chose(s3, bucket, env)

    assert (name, step) == ("checkpoint_0", 0)
    assert "no random_states_*.pkl" in reasons(out)["checkpoint_1"]


# --- 2. a truncated torch.save file -----------------------------------------------------------------------


def test_truncated_torch_save_file_is_passed_over(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    ckdir = tmp_path / "ck"
    write(ckdir / "step-100.pt", torch_zip({"step": 100}), T0)
    write(ckdir / "step-200.pt", torch_zip({"step": 200}), T0 + 10)
    whole = torch_zip({"step": 300}, payload=os.urandom(64 * 1024))
    write(ckdir / "step-300.pt", whole[: len(whole) // 2], T0 + 20)  # the central directory never came
    env = checkpoint_env(base_env, bucket, ckdir)

    name, step, out = chose(s3, bucket, env)

    assert (name, step, out["rule"]) == ("step-200.pt", 200, "zip central directory intact")
    assert "no intact central directory" in reasons(out)["step-300.pt"]


# --- 3. shards at the top level ----------------------------------------------------------------------------


def test_top_level_shards_are_never_a_checkpoint(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    ckdir = tmp_path / "ck"
    write(ckdir / "step-100.pt", torch_zip({"step": 100}), T0)
    for i in (1, 2, 3, 4):  # save_pretrained(ckdir) after the last step checkpoint
        write(ckdir / f"model-0000{i}-of-00004.safetensors", safetensors(), T0 + 50)
    env = checkpoint_env(base_env, bucket, ckdir)

    name, _, out = chose(s3, bucket, env)

    assert name == "step-100.pt"
    assert "one shard of a sharded save" in reasons(out)["model-00004-of-00004.safetensors"]


def test_a_step_directory_missing_a_shard_is_incomplete(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    ckdir = tmp_path / "ck"
    for step, shards in ((100, (1, 2)), (200, (1,))):
        for i in shards:
            write(ckdir / f"step-{step}" / f"model-0000{i}-of-00002.safetensors", safetensors(), T0 + step)
    env = checkpoint_env(base_env, bucket, ckdir)

    name, _, out = chose(s3, bucket, env)

    assert name == "step-100"
    assert "shard 2 of 2" in reasons(out)["step-200"]


# --- 4. Lightning's recovery files --------------------------------------------------------------------------


@pytest.mark.parametrize("recovery", ["last.ckpt", "on_exception.ckpt"])
def test_lightning_recovery_file_holding_the_newest_step_is_chosen(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, recovery: str
) -> None:
    ckdir = tmp_path / "lightning"
    write(ckdir / "epoch=2-step=260-train_loss=0.0036.ckpt", lightning_ckpt(260, 2), T0)
    write(ckdir / "epoch=3-step=300-train_loss=0.0030.ckpt", lightning_ckpt(300, 3), T0 + 10)
    write(ckdir / recovery, lightning_ckpt(434, 4), T0 + 5)  # newest state, though not the newest mtime
    env = checkpoint_env(base_env, bucket, ckdir)

    name, step, _ = chose(s3, bucket, env)

    assert (name, step) == (recovery, 434)
    assert read_manifest(s3, bucket, env)["selection"]["step_source"] == "contents:global_step"


def test_last_ckpt_older_than_a_top_k_file_loses(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    ckdir = tmp_path / "lightning"
    write(ckdir / "last.ckpt", lightning_ckpt(200), T0 + 30)
    write(ckdir / "epoch=3-step=300.ckpt", lightning_ckpt(300, 3), T0)
    env = checkpoint_env(base_env, bucket, ckdir)

    assert chose(s3, bucket, env)[:2] == ("epoch=3-step=300.ckpt", 300)


# --- 5. the step in a name -----------------------------------------------------------------------------------


def test_step_is_read_after_step_then_iter_then_epoch(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    ckdir = tmp_path / "lightning"
    write(ckdir / "epoch=2-step=260-train_loss=0.0036.ckpt", lightning_ckpt(260, 2), T0)
    write(ckdir / "epoch=1-step=150-val_loss=0.12.ckpt", lightning_ckpt(150, 1), T0 + 30)  # newer mtime
    env = checkpoint_env(base_env, bucket, ckdir)

    name, step, _ = chose(s3, bucket, env)

    assert (name, step) == ("epoch=2-step=260-train_loss=0.0036.ckpt", 260)
    assert read_manifest(s3, bucket, env)["selection"]["step_source"] == "name:step"


# --- 6. newest by step, not by modification time ----------------------------------------------------------------


def test_files_added_to_an_older_checkpoint_do_not_make_it_newest(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    ckdir = tmp_path / "ck"
    for step in (100, 200):
        write(ckdir / f"step-{step:06d}" / "model.safetensors", safetensors(), T0 + step)
        write(ckdir / f"step-{step:06d}" / "optimizer.pt", torch_zip({"step": step}), T0 + step)
    write(ckdir / "step-000100" / "eval_results.json", b'{"loss": 0.1}', T0 + 900)  # an evaluation job, later
    env = checkpoint_env(base_env, bucket, ckdir)

    name, step, out = chose(s3, bucket, env)

    assert (name, step) == ("step-000200", 200)
    assert out["rejected"] == []


def test_a_clock_stepped_back_does_not_reorder_checkpoints(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    ckdir = tmp_path / "ck"
    write(ckdir / "step-100" / "model.safetensors", safetensors(), T0 + 500)
    write(ckdir / "step-200" / "model.safetensors", safetensors(), T0)  # saved after the clock went back
    env = checkpoint_env(base_env, bucket, ckdir)

    assert chose(s3, bucket, env)[:2] == ("step-200", 200)


# --- 7. rotation during the upload -------------------------------------------------------------------------------


def during_upload(tmp_path: Path, env: dict[str, str], transfer: str, key_suffix: str, command: str) -> dict[str, str]:
    """ENV that runs COMMAND once during the upload of the object whose key ends with KEY_SUFFIX: before the AWS
    CLI call on it (cli), or before botocore's first call on it, its bytes read (sdk: local/sdk_faults.py)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    if transfer == "cli":
        write_shim(fake_bin, "aws", str(VENV_BIN / "aws"), f'[[ " $* " == *"{key_suffix} "* ]]', command)
    else:
        sdk_python_shim(fake_bin)
        env = env | {"AUTOSTOP_SDK_HOOK": f"{key_suffix}\t{command}"}
    return env | {"AUTOSTOP_TRANSFER": transfer, "PATH": os.pathsep.join([str(fake_bin), env["PATH"]])}


@pytest.mark.parametrize("transfer", ["sdk", "cli"])
def test_rotated_away_during_a_stop_upload_says_changed(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, transfer: str
) -> None:
    ckdir = tmp_path / "ck"
    write(ckdir / "step-100" / "a.bin", b"a" * 100, T0)
    write(ckdir / "step-100" / "b.bin", b"b" * 100, T0)
    # b.bin was chosen; during its upload, the trainer's save_total_limit removes the whole checkpoint.
    env = during_upload(tmp_path, checkpoint_env(base_env, bucket, ckdir), transfer, "/b.bin", f'rm -rf "{ckdir}/step-100"')

    proc, out = run(CHECKPOINT, env)

    assert proc.returncode == 67, proc.stderr
    assert out["error"] == "UploadFailed"
    # In one process a.bin, uploaded beside b.bin, may be the first found gone.
    assert re.search(
        r"step-100/[ab]\.bin changed during the checkpoint \(it (disappeared while it was being uploaded|is gone)", out["message"]
    )
    assert "Blob values" not in out["message"]
    assert env["SSM_ManifestKey"] not in keys(s3, bucket)


@pytest.mark.parametrize("transfer", ["sdk", "cli"])
def test_rotated_away_during_an_interruption_upload_chooses_again(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, transfer: str
) -> None:
    ckdir = tmp_path / "ck"
    write(ckdir / "step-200" / "a.bin", b"a" * 100, T0)
    write(ckdir / "step-200" / "b.bin", b"b" * 100, T0)
    # The trainer keeps training: it saves step-300 and rotates step-200 away while step-200 is uploaded.
    rotate = f'mkdir -p "{ckdir}/step-300" && printf new > "{ckdir}/step-300/a.bin" && rm -rf "{ckdir}/step-200"'
    env = during_upload(tmp_path, checkpoint_env(base_env, bucket, ckdir, Mode="interruption"), transfer, "step-200/a.bin", rotate)

    proc, out = run(CHECKPOINT, env)

    assert proc.returncode == 0, proc.stderr
    assert (out["checkpoint"], out["step"], out["files"]) == ("step-300", 300, 1)
    assert "choosing the newest complete checkpoint again" in proc.stderr
    manifest = read_manifest(s3, bucket, env)
    assert [f["key"] for f in manifest["files"]] == [f"{env['SSM_UploadPrefix']}step-300/a.bin"]


# --- 8. a save in progress ----------------------------------------------------------------------------------------


WRITER = r"""
import sys, time
with open(sys.argv[1], "wb") as f:
    f.write(b"PK\x03\x04" + b"\0" * 1000)
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def test_a_checkpoint_still_being_written_is_passed_over(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    ckdir = tmp_path / "out"
    hf_checkpoint(ckdir, 100, T0)
    hf_checkpoint(ckdir, 200, T0 + 60)  # complete, yet its optimizer is rewritten in place right now (JIT save)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(ckdir / "checkpoint-200" / "optimizer.pt")], stdout=subprocess.PIPE)
    children.append(writer)
    assert writer.stdout is not None and writer.stdout.readline() == b"writing\n"
    env = checkpoint_env(base_env, bucket, ckdir, Mode="interruption")

    name, _, out = chose(s3, bucket, env)

    assert name == "checkpoint-100"
    assert reasons(out)["checkpoint-200"] == f"optimizer.pt is open for writing by pid {writer.pid}: a save is in progress"


# --- 9. decide before signalling ----------------------------------------------------------------------------------


def test_nothing_that_could_qualify_ends_before_the_trainer_is_signalled(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    ckdir = tmp_path / "ck"
    write(ckdir / "checkpoint.pt", b"pickled by an old torch, no step anywhere", T0)
    trainer, pid_file, counter = start_trainer(children, "exit", tmp_path, ckdir)
    env = checkpoint_env(base_env, bucket, ckdir, PidFile=str(pid_file))

    proc, out = run(CHECKPOINT, env)

    assert proc.returncode == 66, proc.stderr
    assert out["error"] == "NoCheckpoint"
    assert "checkpoint.pt (no step number in its name or contents)" in out["message"]
    assert "Nothing was signalled" in out["message"] and "autostop:save-on-signal" in out["message"]
    assert trainer.poll() is None and not counter.exists(), "the trainer was signalled with nothing to save"
    assert keys(s3, bucket) == []


def test_save_on_signal_lets_a_trainer_with_nothing_on_disk_save_first(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    trainer, pid_file, counter = start_trainer(children, "exit", tmp_path, ckdir)
    env = checkpoint_env(base_env, bucket, ckdir, PidFile=str(pid_file), SaveOnSignal="true")

    proc, out = run(CHECKPOINT, env)

    assert proc.returncode == 0, proc.stderr
    assert (out["trainer"], out["checkpoint"], out["fresh"]) == ("exited", "step-9", True)
    assert counter.read_text() == "TERM\n"


def test_a_complete_checkpoint_on_disk_lets_the_trainer_be_signalled(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    ckdir = tmp_path / "ck"
    write(ckdir / "step-5" / "weights.bin", b"older weights", T0)
    trainer, pid_file, counter = start_trainer(children, "exit", tmp_path, ckdir)
    env = checkpoint_env(base_env, bucket, ckdir, PidFile=str(pid_file))

    proc, out = run(CHECKPOINT, env)

    assert proc.returncode == 0, proc.stderr
    assert (out["trainer"], out["checkpoint"]) == ("exited", "step-9")  # the final save, made after the signal
    assert "before signalling: a complete checkpoint is on disk" in proc.stderr


# --- 10. empty files -----------------------------------------------------------------------------------------


def test_a_step_directory_of_empty_files_is_passed_over(s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path) -> None:
    ckdir = tmp_path / "ck"
    write(ckdir / "step-100" / "model.safetensors", safetensors(), T0)
    write(ckdir / "step-100" / "state", b"trainer state", T0)
    write(ckdir / "step-200" / "model.safetensors", b"", T0 + 10)  # the trainer crashed mid-save
    write(ckdir / "step-200" / "state", b"", T0 + 10)
    write(ckdir / "step-300" / "state", b"", T0 + 20)
    write(ckdir / "step-300" / "notes", b"", T0 + 20)
    env = checkpoint_env(base_env, bucket, ckdir)

    name, _, out = chose(s3, bucket, env)

    assert name == "step-100"
    assert out["bytes"] > 0
    assert reasons(out)["step-200"] == "model.safetensors: it is empty (0 bytes)"
    assert reasons(out)["step-300"] == "it holds only empty files"


def test_an_empty_file_where_the_previous_checkpoint_had_data_is_incomplete(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path
) -> None:
    ckdir = tmp_path / "ck"
    write(ckdir / "step-100" / "weights.npy", b"w" * 50, T0)
    write(ckdir / "step-100" / "state.msgpack", b"s" * 50, T0)
    write(ckdir / "step-200" / "weights.npy", b"w" * 50, T0 + 10)
    write(ckdir / "step-200" / "state.msgpack", b"", T0 + 10)
    write(ckdir / "step-300" / "weights.npy", b"w" * 50, T0 + 20)  # no state at all
    env = checkpoint_env(base_env, bucket, ckdir)

    name, _, out = chose(s3, bucket, env)

    assert name == "step-100"
    assert reasons(out)["step-200"] == "state.msgpack: it is empty (0 bytes)"
    assert reasons(out)["step-300"] == "it lacks state.msgpack, which step-100 has: the save did not finish"


def test_a_save_in_progress_with_nothing_complete_is_waited_for_never_signalled_over(
    s3: Any, bucket: str, base_env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(ckdir / "step-100.pt")], stdout=subprocess.PIPE)
    children.append(writer)
    assert writer.stdout is not None and writer.stdout.readline() == b"writing\n"
    trainer, pid_file, counter = start_trainer(children, "exit", tmp_path, ckdir)
    env = checkpoint_env(base_env, bucket, ckdir, PidFile=str(pid_file), GraceSeconds="4")

    proc, out = run(CHECKPOINT, env)

    assert proc.returncode == 66, proc.stderr
    assert out["error"] == "NoCheckpoint" and out["message"].startswith("Nothing was signalled: the trainer keeps training")
    assert "step-100.pt is open for writing by pid" in out["message"]
    assert trainer.poll() is None and not counter.exists()
    assert keys(s3, bucket) == []
