"""Lightning 2.x with ModelCheckpoint (top-k on train_loss, optional last.ckpt) and OnExceptionCheckpoint.

    lightning_trainer.py train CKDIR --max-steps 12 --every-n 2 [--top-k 2] [--no-last] [--trend up|down]
                                     [--crash-at-step S] [--step-seconds X]
    lightning_trainer.py resume PATH [--more 2]
    lightning_trainer.py inspect PATH...

The data makes train_loss move one way, so which checkpoints are the top k is known: ``--trend up`` (targets
grow batch after batch): the top k are the OLDEST saves and last.ckpt holds a newer state than any of them;
``--trend down``: the newest save is always in the top k. ``--crash-at-step S`` raises in training_step at
global step S: OnExceptionCheckpoint writes on_exception.ckpt and the program exits non-zero.
Last stdout line: {"files": [...], "global_steps": {name: global_step}} (train), {"resumed_step": S, "step": T}
(resume), {"global_steps": {...}} (inspect).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, quiet, seed  # noqa: E402

quiet()

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

BATCH = 4
STEPS_OF_DATA = 64  # one epoch: enough batches that every run here stays in epoch 0


class Tiny(L.LightningModule):
    def __init__(self, crash_at_step: int = -1, step_seconds: float = 0.0, width: int = 16) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.Tanh(), torch.nn.Linear(width, 1))
        torch.nn.init.zeros_(self.net[2].weight)  # output ~0: train_loss is ~mean(y^2), the trend exactly
        torch.nn.init.zeros_(self.net[2].bias)
        self.crash_at_step = crash_at_step
        self.step_seconds = step_seconds
        self.resumed_step: int | None = None

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.global_step == self.crash_at_step:
            raise RuntimeError(f"crash at global step {self.global_step}")
        if self.step_seconds:
            time.sleep(self.step_seconds)
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True, prog_bar=False)
        return loss

    def on_train_start(self) -> None:
        self.resumed_step = self.trainer.global_step

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-4)


def data(trend: str) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS_OF_DATA * BATCH, 8, generator=g)
    idx = torch.arange(STEPS_OF_DATA * BATCH) // BATCH  # the batch a sample falls in
    scale = (idx + 1) if trend == "up" else (STEPS_OF_DATA - idx)
    y = (scale.float() * 0.02).unsqueeze(1)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def trainer(ckdir: str | None, max_steps: int, callbacks: list) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        enable_checkpointing=bool(callbacks),
        default_root_dir=ckdir,
        num_sanity_val_steps=0,
    )


def global_steps(paths: list[str]) -> dict[str, int]:
    return {os.path.basename(p): torch.load(p, weights_only=False, map_location="cpu")["global_step"] for p in paths}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["train", "resume", "inspect"])
    p.add_argument("paths", nargs="+")
    p.add_argument("--max-steps", type=int, default=12)
    p.add_argument("--every-n", type=int, default=2)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--no-last", action="store_true")
    p.add_argument("--trend", choices=["up", "down"], default="up")
    p.add_argument("--crash-at-step", type=int, default=-1)
    p.add_argument("--step-seconds", type=float, default=0.0)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--more", type=int, default=2)
    a = p.parse_args()
    seed()
    if a.cmd == "inspect":
        emit(global_steps=global_steps(a.paths))
        return
    if a.cmd == "train":
        (ckdir,) = a.paths
        callbacks = [
            ModelCheckpoint(
                dirpath=ckdir,
                filename="{epoch}-{step}-{train_loss:.4f}",
                save_top_k=a.top_k,
                monitor="train_loss",
                mode="min",
                save_last=not a.no_last,
                every_n_train_steps=a.every_n,
            ),
            OnExceptionCheckpoint(dirpath=ckdir),
        ]
        model = Tiny(crash_at_step=a.crash_at_step, step_seconds=a.step_seconds, width=a.width)
        crashed = None
        try:
            trainer(ckdir, a.max_steps, callbacks).fit(model, data(a.trend))
        except RuntimeError as exc:
            crashed = str(exc)
        files = sorted(f for f in os.listdir(ckdir) if f.endswith(".ckpt"))
        emit(files=files, global_steps=global_steps([os.path.join(ckdir, f) for f in files]), crashed=crashed)
        if crashed:
            sys.exit(3)
        return
    (path,) = a.paths
    resumed = torch.load(path, weights_only=False, map_location="cpu")["global_step"]
    model = Tiny(width=a.width)
    t = trainer(None, resumed + a.more, [])
    t.fit(model, data(a.trend), ckpt_path=path)
    emit(resumed_step=model.resumed_step, step=t.global_step)


if __name__ == "__main__":
    main()
