"""torch.distributed.checkpoint (DCP) with two ranks (gloo, CPU, DDP), run under torchrun --nproc-per-node 2.

    torchrun --standalone --nproc-per-node 2 dcp_trainer.py train CKDIR --saves 2,4,6 [--kill-at 6]
    torchrun --standalone --nproc-per-node 2 dcp_trainer.py resume PATH [--more 2]

Each save is ``dcp.save(state, checkpoint_id=CKDIR/step-N)``: every rank writes its shard file
(__<rank>_0.distcp), then the coordinator (rank 0) writes .metadata in FileSystemWriter.finish.
``--kill-at N``: in the save of step N, rank 0 SIGKILLs itself when FileSystemWriter.finish starts: every shard
is on disk, .metadata (and .metadata.tmp) is not; torchrun then tears rank 1 down.
Rank 0's last stdout line: {"saved": [...]} (train), {"resumed_step": S, "step": T, "world_size": 2} (resume).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import die, emit, quiet, seed  # noqa: E402

quiet()

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint.filesystem import FileSystemWriter  # noqa: E402
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402


class AppState:
    """What DCP saves and loads: model and optimizer (distributed state dicts) and the step."""

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int = 0) -> None:
        self.model, self.opt, self.step = model, opt, step

    def state_dict(self) -> dict:
        model_sd, opt_sd = get_state_dict(self.model, self.opt)
        return {"model": model_sd, "optim": opt_sd, "step": torch.tensor(self.step)}

    def load_state_dict(self, sd: dict) -> None:
        set_state_dict(self.model, self.opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        self.step = int(sd["step"])


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    x, y = torch.randn(8, 32), torch.randn(8, 4)
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["train", "resume"])
    p.add_argument("path")
    p.add_argument("--saves", default="2,4")
    p.add_argument("--kill-at", type=int, default=-1)
    p.add_argument("--more", type=int, default=2)
    a = p.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    seed(rank)
    torch.manual_seed(0)  # the same initial weights on both ranks
    model = DDP(torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = AppState(model, opt)
    if a.cmd == "train":
        saved = []
        for target in [int(s) for s in a.saves.split(",")]:
            while state.step < target:
                train_step(model, opt)
                state.step += 1
            if target == a.kill_at and rank == 0:
                original = FileSystemWriter.finish

                def finish(self, metadata, results, original=original, target=target):  # noqa: ANN001, ANN202
                    die(f"FileSystemWriter.finish of step-{target}, before .metadata")
                    return original(self, metadata, results)

                FileSystemWriter.finish = finish  # type: ignore[method-assign]
            dcp.save({"app": state}, checkpoint_id=os.path.join(a.path, f"step-{target}"))
            saved.append(f"step-{target}")
        if rank == 0:
            emit(saved=saved)
    else:
        dcp.load({"app": state}, checkpoint_id=a.path)
        resumed = state.step
        for _ in range(a.more):
            train_step(model, opt)
            state.step += 1
        steps = [None, None]
        dist.all_gather_object(steps, (resumed, state.step))
        assert steps[0] == steps[1], steps
        if rank == 0:
            emit(resumed_step=resumed, step=state.step, world_size=dist.get_world_size())
    # Both ranks are done before either tears gloo down; then leave without the interpreter's teardown, which
    # with gloo's threads now and then aborts ("terminate called without an active exception") or hangs.
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
