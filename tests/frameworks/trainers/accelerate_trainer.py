"""Accelerate (1.x) save_state with automatic checkpoint naming: PROJECT/checkpoints/checkpoint_<i>.

    accelerate_trainer.py train PROJECT --saves 3 --every 2 [--kill-at-save N]
    accelerate_trainer.py resume PATH [--more 2]

A step counter is registered with register_for_checkpointing, so each checkpoint holds model.safetensors,
optimizer.bin, scheduler.bin, random_states_0.pkl and, written last, custom_checkpoint_0.pkl.
``--kill-at-save N``: the Nth save_state SIGKILLs the process just before the random states are saved (the kill
point is random.getstate, which save_accelerator_state calls first for them): model, optimizer and scheduler
are on disk, random_states_0.pkl and custom_checkpoint_0.pkl are not.
Last stdout line: {"saved": [...], "steps": {name: training step}} (train), {"resumed_step": S, "step": T} (resume).
"""

from __future__ import annotations

import argparse
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import die, emit, quiet, seed  # noqa: E402

quiet()

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import ProjectConfiguration  # noqa: E402


class Counter:
    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, sd: dict[str, int]) -> None:
        self.step = sd["step"]


def setup(project: str | None) -> tuple[Accelerator, torch.nn.Module, torch.optim.Optimizer, Counter]:
    config = ProjectConfiguration(project_dir=project, automatic_checkpoint_naming=True) if project else None
    acc = Accelerator(cpu=True, project_config=config)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.99)
    model, opt, sched = acc.prepare(model, opt, sched)
    counter = Counter()
    acc.register_for_checkpointing(counter)
    return acc, model, opt, counter


def train_step(acc: Accelerator, model: torch.nn.Module, opt: torch.optim.Optimizer, counter: Counter) -> None:
    x, y = torch.randn(8, 32), torch.randn(8, 4)
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    acc.backward(loss)
    opt.step()
    counter.step += 1


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["train", "resume"])
    p.add_argument("path")
    p.add_argument("--saves", type=int, default=3)
    p.add_argument("--every", type=int, default=2)
    p.add_argument("--kill-at-save", type=int, default=0)
    p.add_argument("--more", type=int, default=2)
    a = p.parse_args()
    seed()
    if a.cmd == "train":
        acc, model, opt, counter = setup(a.path)
        saved, steps = [], {}
        for n in range(1, a.saves + 1):
            for _ in range(a.every):
                train_step(acc, model, opt, counter)
            if n == a.kill_at_save:
                getstate = random.getstate

                def kill_before_random_states(getstate=getstate):  # noqa: ANN001, ANN202
                    die("save_accelerator_state before random_states_0.pkl")
                    return getstate()

                random.getstate = kill_before_random_states
            where = acc.save_state()
            saved.append(os.path.basename(where))
            steps[os.path.basename(where)] = counter.step
        emit(saved=saved, steps=steps)
        return
    acc, model, opt, counter = setup(None)
    acc.load_state(a.path)
    resumed = counter.step
    for _ in range(a.more):
        train_step(acc, model, opt, counter)
    emit(resumed_step=resumed, step=counter.step)


if __name__ == "__main__":
    main()
