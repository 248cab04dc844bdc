"""Plain PyTorch with torch.save: one file per checkpoint, ``<ckdir>/step-<N>.pt``.

    torch_save.py train CKDIR --steps 100,200,300 [--kill-at 300]
    torch_save.py resume PATH

``--kill-at N``: the save of step N SIGKILLs the process once torch.save's zip writer has written half of the
file's bytes (flushed to disk), so that step-N.pt is a zip with local headers but no central directory.
Last stdout line: {"saved": [...], "killed_at": N|null} or, on resume, {"resumed_step": S, "step": S + 2, ...}.
"""

from __future__ import annotations

import argparse
import io
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
from _common import die, emit, seed  # noqa: E402


def build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> float:
    x, y = torch.randn(8, 32), torch.randn(8, 4)
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


class HalfThenDie(io.RawIOBase):
    """A file torch.save writes through: once half of ``total`` bytes are on disk, SIGKILL."""

    def __init__(self, path: str, total: int) -> None:
        self.f = open(path, "wb")  # noqa: SIM115 - never closed: the process dies
        self.half = total // 2
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        data = bytes(b)
        room = self.half - self.written
        if len(data) >= room:
            self.f.write(data[:room])
            self.f.flush()
            os.fsync(self.f.fileno())
            die(f"torch.save after {self.half} of {2 * self.half} bytes")
        self.f.write(data)
        self.written += len(data)
        return len(data)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["train", "resume"])
    p.add_argument("path")
    p.add_argument("--steps", default="100,200")
    p.add_argument("--kill-at", type=int)
    a = p.parse_args()
    seed()
    model, opt = build()
    if a.cmd == "train":
        os.makedirs(a.path, exist_ok=True)
        saved, step = [], 0
        for target in [int(s) for s in a.steps.split(",")]:
            for _ in range(3):  # a few real optimizer steps stand in for the many between two saves
                train_step(model, opt)
            step = target
            state = {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict()}
            path = os.path.join(a.path, f"step-{step}.pt")
            if step == a.kill_at:
                buf = io.BytesIO()
                torch.save(state, buf)
                torch.save(state, HalfThenDie(path, len(buf.getvalue())))
                raise AssertionError("not killed")
            torch.save(state, path)
            saved.append(os.path.basename(path))
        emit(saved=saved, killed_at=None)
    else:
        state = torch.load(a.path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
        resumed = step
        for _ in range(2):
            train_step(model, opt)
            step += 1
        emit(resumed_step=resumed, step=step)


if __name__ == "__main__":
    main()
