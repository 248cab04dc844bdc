"""torchrun and torch.distributed.checkpoint (DCP): agree on the stop, save a new step directory.

What torchrun (torch 2.13, ``torch/distributed/elastic``) does with a signal: its agent handles SIGTERM,
SIGINT, SIGHUP and SIGQUIT (``--signals-to-handle``; add ``SIGUSR1``/``SIGUSR2`` there if
``autostop:signal`` names one), sends the same signal to every local worker, waits ``--shutdown-timeout``
seconds (``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``, default **30**) and then SIGKILLs them, and exits non-zero.
So under torchrun:

- the PID file must hold **torchrun's** PID (no environment variable gives it; a worker's parent is the
  agent, hence ``launcher_pid()`` = ``os.getppid()`` when ``TORCHELASTIC_RUN_ID`` is set). Write it from
  local rank 0 (``write_launcher_pid_file``), or write ``$$`` from a wrapper script that ``exec``s torchrun;
- give torchrun ``--shutdown-timeout`` at least ``autostop:grace-seconds`` (and ``autostop:spot-grace-seconds``),
  or the workers are killed after 30 s, mid-save;
- ranks see the signal at slightly different steps, so before acting they ``agree()`` (an all_reduce MAX of
  the flag) every step, and all of them then call ``dcp_save`` at the same step::

    from autostop_trainer import SignalFlag
    from autostop_trainer.distributed import agree, dcp_save, write_launcher_pid_file

    write_launcher_pid_file("/var/run/train/train.pid")
    with SignalFlag() as stop:
        for step in range(start + 1, total + 1):
            train_one_step()
            if agree(stop.received):              # collective: every rank, every step
                dcp_save({"model": model.state_dict(), "optim": optim.state_dict(), "step": step}, CKPT_DIR, step)
                raise SystemExit(0)

DCP's ``FileSystemWriter`` writes each rank's ``__<rank>_0.distcp`` and then, on the coordinator, ``.metadata``
(via ``.metadata.tmp`` + rename) last; autostop treats a DCP directory without ``.metadata`` as incomplete.
DCP overwrites an existing directory's ``.metadata``, so always save into a NEW ``step-N/``.
"""

import os
from typing import Any

from autostop_trainer.core import checkpoint_name, fsync_path, write_pid_file


def launcher_pid() -> int:
    """The PID autostop must signal: torchrun's (this worker's parent) under torchrun, else our own.

    torchrun sets ``TORCHELASTIC_RUN_ID`` in every worker and starts workers as its direct children."""
    return os.getppid() if os.environ.get("TORCHELASTIC_RUN_ID") else os.getpid()


def is_local_leader() -> bool:
    """True in local rank 0 (``LOCAL_RANK`` unset or ``"0"``): the one process per instance that writes files
    meant for that instance, such as the PID file."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def write_launcher_pid_file(path: "str | os.PathLike[str]") -> str | None:
    """On local rank 0, write ``launcher_pid()`` to ``path`` (see ``write_pid_file``); elsewhere do nothing.

    Returns the path written, or None on other ranks."""
    return write_pid_file(path, pid=launcher_pid()) if is_local_leader() else None


def _flag_device(dist: Any) -> Any:
    import torch

    backend = str(dist.get_backend()).lower()
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any rank (an all_reduce MAX); just ``flag`` without a process group.

    A collective: call it on every rank at the same point (e.g. each step end). Costs one tiny all_reduce
    (on the current CUDA device for NCCL, on the CPU otherwise)."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        return bool(flag)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return bool(flag)
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_flag_device(dist))
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def dcp_save(state_dict: dict, checkpoint_dir: "str | os.PathLike[str]", step: int, **save_kwargs: Any) -> str:
    """``torch.distributed.checkpoint.save`` into a new ``<checkpoint_dir>/step-NNNNNNNN/``; every rank calls it.

    DCP writes the shards, then ``.metadata`` last (atomically, via a temporary name), which is what autostop
    waits for. Rank 0 then fsyncs the new directory and ``checkpoint_dir``.

    Args:
        state_dict: what to save (DCP stateful objects, tensors, plain values).
        checkpoint_dir: ``autostop:checkpoint-dir``; must be the same shared path on every rank of an instance.
        step: completed optimizer steps, in the directory name.
        save_kwargs: passed to ``dcp.save`` (e.g. ``storage_writer``).

    Returns the directory. Raises FileExistsError (on every rank) if that step's directory already holds a
    ``.metadata``: DCP would silently replace it.
    """
    import torch.distributed.checkpoint as dcp

    path = os.path.join(os.fspath(checkpoint_dir), checkpoint_name(step))
    if os.path.exists(os.path.join(path, ".metadata")):
        raise FileExistsError(f"a DCP checkpoint already exists at {path}; save each step into a new directory")
    dcp.save(state_dict, checkpoint_id=path, **save_kwargs)
    if _rank() == 0:
        fsync_path(path)
        fsync_path(os.fspath(checkpoint_dir))
    return path


def dcp_load(state_dict: dict, path: "str | os.PathLike[str]", **load_kwargs: Any) -> dict:
    """Load a ``dcp_save`` directory in place into ``state_dict`` (every rank calls it); returns ``state_dict``.

    Resume from ``autostop_trainer.resume_checkpoint()`` (the restored ``step-N/`` directory)."""
    import torch.distributed.checkpoint as dcp

    dcp.load(state_dict, checkpoint_id=os.fspath(path), **load_kwargs)
    return state_dict
