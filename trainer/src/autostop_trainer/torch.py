"""Plain PyTorch: atomic ``torch.save`` checkpoints named with their step, rotation, resume.

A minimal cooperating loop::

    import os
    import torch
    from autostop_trainer import SignalFlag, write_pid_file
    from autostop_trainer import torch as ckpt

    write_pid_file("/var/run/train/train.pid")
    state = ckpt.load_latest(CKPT_DIR)            # $AUTOSTOP_RESUME_CHECKPOINT, else the newest step-*.pt
    start = state["step"] if state else 0
    if state:
        model.load_state_dict(state["model"]); optimizer.load_state_dict(state["optimizer"])
    with SignalFlag() as stop:
        for step in range(start + 1, total + 1):
            train_one_step()
            if step % 500 == 0 or stop.received or step == total:
                ckpt.save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict()},
                          CKPT_DIR, step, keep=3)
            if stop.received:
                raise SystemExit(0)                # saved; autostop uploads it and stops the instance

``torch`` is imported only inside the functions, so importing this module is cheap.
"""

import os
import re
from typing import Any

from autostop_trainer.core import atomic_save, checkpoint_name, remove_path, resume_checkpoint

PREFIX = "step-"
WIDTH = 8
SUFFIX = ".pt"


def checkpoint_path(checkpoint_dir: "str | os.PathLike[str]", step: int, prefix: str = PREFIX, suffix: str = SUFFIX) -> str:
    """``<checkpoint_dir>/step-NNNNNNNN.pt`` for ``step``."""
    return os.path.join(os.fspath(checkpoint_dir), checkpoint_name(step, prefix=prefix, width=WIDTH, suffix=suffix))


def list_checkpoints(checkpoint_dir: "str | os.PathLike[str]", prefix: str = PREFIX, suffix: str = SUFFIX) -> list[tuple[int, str]]:
    """``[(step, path), ...]`` of the complete checkpoints this module wrote in ``checkpoint_dir``, oldest step
    first (temporary dot-prefixed files are never listed). A missing directory gives ``[]``."""
    pattern = re.compile(rf"^{re.escape(prefix)}([0-9]+){re.escape(suffix)}$")
    try:
        names = os.listdir(checkpoint_dir)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), os.path.join(os.fspath(checkpoint_dir), name)) for name in names if (m := pattern.match(name))]
    return sorted(found)


def latest(checkpoint_dir: "str | os.PathLike[str]", prefix: str = PREFIX, suffix: str = SUFFIX) -> str | None:
    """The path of the highest-step checkpoint in ``checkpoint_dir``, or None."""
    found = list_checkpoints(checkpoint_dir, prefix, suffix)
    return found[-1][1] if found else None


def rotate(
    checkpoint_dir: "str | os.PathLike[str]", keep: int, protect: str | None = None, prefix: str = PREFIX, suffix: str = SUFFIX
) -> list[str]:
    """Delete all but the ``keep`` highest-step checkpoints; ``protect`` (e.g. the one just saved) is never deleted.

    Each doomed checkpoint is first renamed to a dot-prefixed name, so a half-deleted file is never visible
    under a checkpoint name. Returns the deleted paths. Raises ValueError if ``keep`` < 1."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    found = list_checkpoints(checkpoint_dir, prefix, suffix)
    deleted = []
    for _step, path in found[:-keep]:
        if protect is not None and os.path.abspath(path) == os.path.abspath(protect):
            continue
        doomed = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.deleting-{os.getpid()}")
        os.rename(path, doomed)
        remove_path(doomed)
        deleted.append(path)
    return deleted


def save(state: Any, checkpoint_dir: "str | os.PathLike[str]", step: int, keep: int | None = None, **save_kwargs: Any) -> str:
    """Atomically ``torch.save(state)`` to ``<checkpoint_dir>/step-NNNNNNNN.pt``, then optionally rotate.

    The bytes go to a dot-prefixed temporary sibling, are fsynced and renamed; the directory is fsynced.
    Call it from one process only (rank 0) for replicated state.

    Args:
        state: anything ``torch.save`` accepts (put the step in it too, e.g. ``{"step": step, ...}``).
        checkpoint_dir: created if missing; point ``autostop:checkpoint-dir`` at it.
        step: completed optimizer steps (>= 0), in the name.
        keep: keep only the ``keep`` highest-step checkpoints (never the one just saved); None keeps all.
        save_kwargs: passed to ``torch.save``.

    Returns the checkpoint's path. Raises FileExistsError if that step's checkpoint already exists.
    """
    import torch

    path = checkpoint_path(checkpoint_dir, step)
    atomic_save(path, lambda temp: torch.save(state, temp, **save_kwargs))
    if keep is not None:
        rotate(checkpoint_dir, keep, protect=path)
    return path


def load(path: "str | os.PathLike[str]", map_location: Any = "cpu", **load_kwargs: Any) -> Any:
    """``torch.load(path, map_location=...)``; torch >= 2.6 loads with ``weights_only=True`` unless told otherwise."""
    import torch

    return torch.load(os.fspath(path), map_location=map_location, **load_kwargs)


def resume_path(checkpoint_dir: "str | os.PathLike[str]") -> str | None:
    """Where to resume from: ``$AUTOSTOP_RESUME_CHECKPOINT`` (set by autostop's restore), else the newest
    ``step-*.pt`` in ``checkpoint_dir``, else None (start from scratch)."""
    return resume_checkpoint() or latest(checkpoint_dir)


def load_latest(checkpoint_dir: "str | os.PathLike[str]", map_location: Any = "cpu", **load_kwargs: Any) -> Any:
    """The state saved at ``resume_path(checkpoint_dir)``, or None when there is nothing to resume."""
    path = resume_path(checkpoint_dir)
    return None if path is None else load(path, map_location=map_location, **load_kwargs)
