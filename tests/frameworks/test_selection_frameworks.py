"""Which checkpoint checkpoint.sh picks from directories that real frameworks wrote, and whether the framework
resumes from what restore.sh brings back.

Each scenario: a program in trainers/ trains a tiny model on CPU and saves checkpoints the framework's own way
(and, where told, SIGKILLs itself at a precise point of the framework's real save sequence) -> the real
checkpoint.sh uploads (Mode stop unless said otherwise, no PID file) -> the result line must name the newest
USABLE checkpoint and its step -> the real restore.sh downloads it into a fresh instance directory -> the
framework's own loader resumes from the restored path at that step and trains on.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.frameworks.conftest import Framework, Result
from tests.integration.test_instance_scripts import keys

RunCheckpoint = Callable[..., Result]
RunRestore = Callable[..., Result]
RunFramework = Callable[..., Framework]
InstanceDirs = Callable[[str], Path]

# The files of one complete HF Trainer checkpoint-N (transformers 5.x, save_only_model=False, one CPU process).
HF_CHECKPOINT_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "training_args.bin",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
}
BLOB_ERROR = "Blob values must be a path to a file"


def uploaded(run_checkpoint: RunCheckpoint, ckdir: Path, name: str, step: int, **params: str) -> dict[str, Any]:
    """checkpoint.sh uploads; its result line must name checkpoint NAME at STEP."""
    rc, out, err = run_checkpoint(ckdir, **params)
    assert BLOB_ERROR not in json.dumps(out)
    assert rc == 0 and out["result"] == "uploaded", f"{out}\n--- checkpoint.sh stderr ---\n{err[-4000:]}"
    assert (out["checkpoint"], out["step"]) == (name, step), f"{out}\n--- checkpoint.sh stderr ---\n{err[-4000:]}"
    return out


def restored(run_restore: RunRestore, ckdir: Path, name: str, **params: str) -> Path:
    """restore.sh brings checkpoint NAME back into ckdir (a fresh instance directory). Returns its path there."""
    rc, out, err = run_restore(ckdir, **params)
    assert rc == 0 and out["result"] == "restored", f"{out}\n--- restore.sh stderr ---\n{err[-4000:]}"
    assert out["checkpoint"] == name and out["present"] == "downloaded", out
    assert (ckdir / name).exists()
    return ckdir / name


def manifest(s3: Any, bucket: str, key: str = "runs/run-42/manifests/run-42-complete-1.json") -> dict[str, Any]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    result = json.loads(body)
    assert isinstance(result, dict)
    return result


# --- 1. torch.save: one file per checkpoint ------------------------------------------------------------


@pytest.mark.parametrize("case", ["clean", "killed-mid-save"])
def test_torch_save_files(
    case: str, run_framework: RunFramework, run_checkpoint: RunCheckpoint, run_restore: RunRestore, instance_dirs: InstanceDirs
) -> None:
    """step-100.pt and step-200.pt saved cleanly (-> step-200.pt); plus, killed, a step-300.pt that torch.save was
    writing when the process was SIGKILLed half way: a zip with no central directory (-> still step-200.pt)."""
    ckdir = instance_dirs("a") / "ckpt"
    if case == "clean":
        run_framework("torch_save", "train", ckdir, "--steps", "100,200").ok()
    else:
        run_framework("torch_save", "train", ckdir, "--steps", "100,200,300", "--kill-at", 300).killed()
        torn = ckdir / "step-300.pt"
        assert torn.stat().st_size > 0 and torn.stat().st_mtime_ns >= (ckdir / "step-200.pt").stat().st_mtime_ns
        with pytest.raises(zipfile.BadZipFile):
            zipfile.ZipFile(torn)

    uploaded(run_checkpoint, ckdir, "step-200.pt", 200)
    path = restored(run_restore, instance_dirs("b") / "ckpt", "step-200.pt")
    assert run_framework("torch_save", "resume", path).ok() == {"resumed_step": 200, "step": 202}


# --- 2. PyTorch Lightning 2.6: ModelCheckpoint top-k + last.ckpt, OnExceptionCheckpoint ---------------------


def test_lightning_last_ckpt_holds_the_newest_state(
    run_framework: RunFramework, run_checkpoint: RunCheckpoint, run_restore: RunRestore, instance_dirs: InstanceDirs
) -> None:
    """train_loss rises batch after batch: the top-2 are the two oldest saves (steps 2 and 4) and last.ckpt, a
    name without a step number, holds step 12. Its step comes from its contents."""
    ckdir = instance_dirs("a") / "lightning"
    out = run_framework("lightning_trainer", "train", ckdir, "--max-steps", 12, "--every-n", 2, "--trend", "up").ok()
    steps = out["global_steps"]
    assert steps.pop("last.ckpt") == 12 and sorted(steps.values()) == [2, 4], out
    assert all(name.startswith("epoch=0-step=") for name in steps)

    uploaded(run_checkpoint, ckdir, "last.ckpt", 12)
    path = restored(run_restore, instance_dirs("b") / "lightning", "last.ckpt")
    assert run_framework("lightning_trainer", "resume", path, "--trend", "up").ok() == {"resumed_step": 12, "step": 14}


def test_lightning_step_of_a_metric_formatted_name(
    run_framework: RunFramework, run_checkpoint: RunCheckpoint, run_restore: RunRestore, instance_dirs: InstanceDirs
) -> None:
    """filename="{epoch}-{step}-{train_loss:.4f}" without last.ckpt: "epoch=0-step=12-train_loss=1.1161.ckpt" is at
    step 12 (the number after "step="), not 1161 (the last number in the name)."""
    ckdir = instance_dirs("a") / "lightning"
    out = run_framework("lightning_trainer", "train", ckdir, "--max-steps", 12, "--every-n", 2, "--trend", "down", "--no-last").ok()
    newest = max(out["global_steps"], key=out["global_steps"].get)
    assert out["global_steps"][newest] == 12 and newest.startswith("epoch=0-step=12-train_loss="), out
    assert not newest.removesuffix(".ckpt").endswith("12"), "the metric's digits must differ from the step"

    uploaded(run_checkpoint, ckdir, newest, 12)
    path = restored(run_restore, instance_dirs("b") / "lightning", newest)
    assert run_framework("lightning_trainer", "resume", path, "--trend", "down").ok() == {"resumed_step": 12, "step": 14}


def test_lightning_on_exception_checkpoint(
    run_framework: RunFramework, run_checkpoint: RunCheckpoint, run_restore: RunRestore, instance_dirs: InstanceDirs
) -> None:
    """training_step raises at global step 9: OnExceptionCheckpoint writes on_exception.ckpt (step 9, by its
    contents), newer than last.ckpt (step 8) and the top-2 (steps 2 and 4)."""
    ckdir = instance_dirs("a") / "lightning"
    run = run_framework("lightning_trainer", "train", ckdir, "--max-steps", 12, "--every-n", 2, "--trend", "up", "--crash-at-step", 9)
    assert run.rc == 3 and run.out is not None and run.out["crashed"], run.stderr[-3000:]
    steps = run.out["global_steps"]
    assert (steps.pop("on_exception.ckpt"), steps.pop("last.ckpt"), sorted(steps.values())) == (9, 8, [2, 4]), run.out

    uploaded(run_checkpoint, ckdir, "on_exception.ckpt", 9)
    path = restored(run_restore, instance_dirs("b") / "lightning", "on_exception.ckpt")
    assert run_framework("lightning_trainer", "resume", path, "--trend", "up").ok() == {"resumed_step": 9, "step": 11}


# --- 3. Hugging Face Trainer 5.x: checkpoint-N directories, save_total_limit --------------------------------


@pytest.mark.parametrize("case", ["clean", "killed-before-trainer-state"])
def test_hf_trainer(
    case: str, run_framework: RunFramework, run_checkpoint: RunCheckpoint, run_restore: RunRestore, instance_dirs: InstanceDirs
) -> None:
    """save_steps=2, save_total_limit=2, 6 steps: checkpoint-4 and checkpoint-6 (-> checkpoint-6). Killed in the
    3rd save after the model, optimizer, scheduler and RNG files and before trainer_state.json (so before the
    rotation too): checkpoint-2, checkpoint-4 and a checkpoint-6 without trainer_state.json (-> checkpoint-4)."""
    ckdir = instance_dirs("a") / "hf-out"
    train = ("hf_trainer", "train", ckdir, "--max-steps", 6, "--save-steps", 2, "--save-total-limit", 2)
    if case == "clean":
        assert run_framework(*train).ok()["checkpoints"] == ["checkpoint-4", "checkpoint-6"]
        name, step = "checkpoint-6", 6
    else:
        run_framework(*train, "--kill-at-save", 3).killed()
        assert {p.name for p in (ckdir / "checkpoint-6").iterdir()} == HF_CHECKPOINT_FILES - {"trainer_state.json"}
        assert sorted(p.name for p in ckdir.iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
        name, step = "checkpoint-4", 4

    uploaded(run_checkpoint, ckdir, name, step)
    path = restored(run_restore, instance_dirs("b") / "hf-out", name)
    assert {p.name for p in path.iterdir()} == HF_CHECKPOINT_FILES
    resumed = run_framework("hf_trainer", "resume", path, "--save-steps", 2, "--out", instance_dirs("b") / "resume-out").ok()
    assert resumed == {"resumed_step": step, "step": step + 2}


# --- 4. torch.distributed.checkpoint, two ranks ---------------------------------------------------------


@pytest.mark.parametrize("case", ["clean", "killed-before-metadata"])
def test_dcp_two_ranks(
    case: str, run_framework: RunFramework, run_checkpoint: RunCheckpoint, run_restore: RunRestore, instance_dirs: InstanceDirs
) -> None:
    """torchrun, 2 ranks (gloo, CPU): step-2/ and step-4/ each hold __0_0.distcp, __1_0.distcp and .metadata
    (-> step-4). Killed: rank 0 dies in FileSystemWriter.finish of step-6: both shards, no .metadata (-> step-4)."""
    ckdir = instance_dirs("a") / "dcp"
    if case == "clean":
        assert run_framework("dcp_trainer", "train", ckdir, "--saves", "2,4", nproc=2, timeout=120).ok() == {"saved": ["step-2", "step-4"]}
    else:
        run_framework("dcp_trainer", "train", ckdir, "--saves", "2,4,6", "--kill-at", 6, nproc=2, timeout=120).killed()
        assert sorted(p.name for p in (ckdir / "step-6").iterdir()) == ["__0_0.distcp", "__1_0.distcp"]
    assert sorted(p.name for p in (ckdir / "step-4").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]

    uploaded(run_checkpoint, ckdir, "step-4", 4)
    path = restored(run_restore, instance_dirs("b") / "dcp", "step-4")
    resumed = run_framework("dcp_trainer", "resume", path, nproc=2, timeout=120).ok()
    assert resumed == {"resumed_step": 4, "step": 6, "world_size": 2}


# --- 5. Accelerate 1.16: save_state with automatic checkpoint naming -------------------------------------


@pytest.mark.parametrize("case", ["clean", "killed-before-random-states"])
def test_accelerate_save_state(
    case: str, run_framework: RunFramework, run_checkpoint: RunCheckpoint, run_restore: RunRestore, instance_dirs: InstanceDirs
) -> None:
    """Three save_state calls, two training steps apart: checkpoints/checkpoint_0..2 (-> checkpoint_2, trained 6
    steps). Killed in the 3rd save before random_states_0.pkl (and the custom state, written after it):
    checkpoint_2 holds model, optimizer and scheduler only (-> checkpoint_1, trained 4 steps).

    The step: Accelerate's name carries the save index, the training step is in the registered custom state;
    either is accepted (what the lead decides the manifest's step means for Accelerate)."""
    project = instance_dirs("a") / "accelerate"
    ckdir = project / "checkpoints"
    train = ("accelerate_trainer", "train", project, "--saves", 3, "--every", 2)
    if case == "clean":
        assert run_framework(*train).ok()["steps"] == {"checkpoint_0": 2, "checkpoint_1": 4, "checkpoint_2": 6}
        name, index, trained = "checkpoint_2", 2, 6
    else:
        run_framework(*train, "--kill-at-save", 3).killed()
        assert sorted(p.name for p in (ckdir / "checkpoint_2").iterdir()) == ["model.safetensors", "optimizer.bin", "scheduler.bin"]
        name, index, trained = "checkpoint_1", 1, 4

    rc, out, err = run_checkpoint(ckdir)
    assert rc == 0 and out["result"] == "uploaded", f"{out}\n{err[-4000:]}"
    assert out["checkpoint"] == name and out["step"] in (index, trained), f"{out}\n{err[-4000:]}"
    path = restored(run_restore, instance_dirs("b") / "checkpoints", name)
    assert run_framework("accelerate_trainer", "resume", path).ok() == {"resumed_step": trained, "step": trained + 2}


# --- 6. save_pretrained shards at the top level of the checkpoint directory -------------------------------


@pytest.mark.parametrize("case", ["next-to-a-checkpoint-dir", "alone"])
def test_save_pretrained_shards_are_never_a_checkpoint(
    case: str,
    s3: Any,
    bucket: str,
    run_framework: RunFramework,
    run_checkpoint: RunCheckpoint,
    run_restore: RunRestore,
    instance_dirs: InstanceDirs,
) -> None:
    """model.save_pretrained(CKDIR, max_shard_size="8KB") after training writes model-0000i-of-0000N.safetensors,
    model.safetensors.index.json and config files at the top level, newer than anything else. A single shard is
    never "the checkpoint": with an HF checkpoint-2 next to them, that is chosen; alone, NoCheckpoint."""
    ckdir = instance_dirs("a") / "hf-out"
    save_steps = 2 if case == "next-to-a-checkpoint-dir" else 0  # 0: save_strategy="no"
    out = run_framework("hf_trainer", "train", ckdir, "--max-steps", 2, "--save-steps", save_steps, "--final-save-pretrained", "8KB").ok()
    shards = sorted(p.name for p in ckdir.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and (ckdir / "model.safetensors.index.json").exists(), sorted(p.name for p in ckdir.iterdir())

    if case == "alone":
        assert out["checkpoints"] == []
        rc, result, err = run_checkpoint(ckdir)
        assert (rc, result["result"], result.get("error")) == (66, "failed", "NoCheckpoint"), f"{result}\n{err[-4000:]}"
        assert keys(s3, bucket) == []
        return
    assert out["checkpoints"] == ["checkpoint-2"]
    uploaded(run_checkpoint, ckdir, "checkpoint-2", 2)
    assert not [k for k in keys(s3, bucket) if "-of-" in k], keys(s3, bucket)
    path = restored(run_restore, instance_dirs("b") / "hf-out", "checkpoint-2")
    resumed = run_framework("hf_trainer", "resume", path, "--save-steps", 2, "--out", instance_dirs("b") / "resume-out").ok()
    assert resumed == {"resumed_step": 2, "step": 4}


# --- 7. rotation while checkpoint.sh uploads ---------------------------------------------------------------


def test_rotation_during_the_upload(
    s3: Any,
    bucket: str,
    tmp_path: Path,
    start_framework: Callable[..., Any],
    run_framework: RunFramework,
    run_checkpoint: RunCheckpoint,
    run_restore: RunRestore,
    instance_dirs: InstanceDirs,
) -> None:
    """A spot notice while the HF Trainer keeps training, saving every step and keeping 2 checkpoints (Mode
    interruption, no PID file: nothing is signalled). Uploading a checkpoint's 8 files takes seconds; the
    trainer deletes the chosen directory well within that. Either the upload succeeds and S3 holds a complete,
    verified, resumable checkpoint, or it fails with "changed during the checkpoint"; never the AWS CLI's
    "Blob values must be a path to a file" (a file gone between the script's check and the CLI's open).

    Not deterministic by construction, so a bounded loop: up to 3 uploads, until one overlapped a rotation (it
    failed as changed, or the checkpoint it uploaded was gone by its end); every attempt must meet the rule."""
    ckdir = instance_dirs("a") / "hf-out"
    trainer = start_framework(
        "hf_trainer", "train", ckdir, "--max-steps", 100000, "--save-steps", 1, "--save-total-limit", 2,
        "--step-seconds", "0.05", "--embd", 32, log=tmp_path / "trainer.log",
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list(ckdir.glob("checkpoint-*/trainer_state.json"))) < 2:
        assert trainer.poll() is None, (tmp_path / "trainer.log").read_text()[-4000:]
        assert time.monotonic() < deadline, "the trainer saved no two checkpoints in 120 s"
        time.sleep(0.2)

    outcomes = []
    for attempt in range(3):
        execution = f"run-42-interruption-{attempt}"
        params = {
            "Mode": "interruption",
            "ExecutionName": execution,
            "UploadPrefix": f"runs/run-42/checkpoints/{execution}/",
            "ManifestKey": f"runs/run-42/manifests/{execution}.json",
        }
        rc, out, err = run_checkpoint(ckdir, **params)
        assert BLOB_ERROR not in json.dumps(out), f"{out}\n{err[-4000:]}"  # the CLI may print it on stderr: the script handled it
        assert trainer.poll() is None, "the trainer must have kept running"
        if rc != 0:
            assert (out["result"], out["error"]) == ("failed", "UploadFailed"), f"{out}\n{err[-4000:]}"
            assert "changed during the checkpoint" in out["message"], out
            outcomes.append("changed")
            break
        name = out["checkpoint"]
        gone = not (ckdir / name).exists()
        assert name.startswith("checkpoint-") and out["step"] == int(name.removeprefix("checkpoint-")), out
        files = manifest(s3, bucket, params["ManifestKey"])["files"]
        assert {f["path"] for f in files} == HF_CHECKPOINT_FILES, files
        restore_params = {"ManifestKey": params["ManifestKey"], "UploadPrefix": params["UploadPrefix"]}  # this upload's own
        path = restored(run_restore, instance_dirs(f"restore-{attempt}") / "hf-out", name, **restore_params)
        resumed = run_framework("hf_trainer", "resume", path, "--embd", 32, "--out", instance_dirs(f"restore-{attempt}") / "out").ok()
        assert resumed == {"resumed_step": out["step"], "step": out["step"] + 2}
        outcomes.append("uploaded, then rotated away" if gone else "uploaded")
        if gone:
            break
    trainer.kill()
    assert outcomes[-1] != "uploaded", f"no upload overlapped a rotation in 3 attempts: {outcomes}"
