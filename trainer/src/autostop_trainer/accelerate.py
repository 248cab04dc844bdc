"""Hugging Face Accelerate: ``save_state`` checkpoints autostop can pick, and resuming from the restored one.

With ``ProjectConfiguration(project_dir=RUN_DIR, automatic_checkpoint_naming=True)`` every
``accelerator.save_state()`` writes ``RUN_DIR/checkpoints/checkpoint_<i>/`` (``i`` counts saves: 0, 1, 2, ...,
which autostop reads as the step) and ``total_limit`` deletes the oldest. Point ``autostop:checkpoint-dir``
at ``RUN_DIR/checkpoints``. Accelerate 1.16's ``save_accelerator_state`` writes the model, optimizer,
scheduler, sampler, dataloader and scaler states and then ``random_states_<process>.pkl``; autostop treats
an Accelerate directory without its ``random_states_*.pkl`` as incomplete. Objects registered with
``accelerator.register_for_checkpointing`` are written *after* it (``custom_checkpoint_<i>.pkl``).

``load_state(path)`` does not restore the save counter, so the next ``save_state()`` would try
``checkpoint_0`` again and fail ("already exists"): ``resume_state`` sets it past the restored directory::

    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from autostop_trainer import SignalFlag, write_pid_file
    from autostop_trainer.accelerate import resume_state, save_state
    from autostop_trainer.distributed import agree

    accelerator = Accelerator(project_config=ProjectConfiguration(project_dir=RUN_DIR, automatic_checkpoint_naming=True, total_limit=3))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    resume_state(accelerator)                      # accelerator.load_state($AUTOSTOP_RESUME_CHECKPOINT) if set
    with SignalFlag() as stop:
        for batch in loader:
            train_step(batch)
            if agree(stop.received):               # every rank, every step
                save_state(accelerator)
                raise SystemExit(0)

Under ``accelerate launch`` with several processes the launcher is torchrun's agent: see
``autostop_trainer.distributed`` for the PID file and ``--shutdown-timeout``.
"""

import os
import re
from typing import Any

from autostop_trainer.core import fsync_path, fsync_tree, resume_checkpoint

_ITERATION_RE = re.compile(r"^checkpoint_([0-9]+)$")


def checkpoints_dir(accelerator: Any) -> str:
    """``<project_dir>/checkpoints``: where automatic checkpoint naming writes, the ``autostop:checkpoint-dir``."""
    return os.path.join(accelerator.project_dir, "checkpoints")


def next_iteration(path: "str | os.PathLike[str]") -> int:
    """The save counter to continue with after loading ``.../checkpoint_<i>``: ``i + 1``.

    Raises ValueError if the directory name is not ``checkpoint_<number>``."""
    name = os.path.basename(os.path.normpath(os.fspath(path)))
    match = _ITERATION_RE.match(name)
    if not match:
        raise ValueError(f"not an Accelerate automatic checkpoint directory (checkpoint_<i>): {name!r}")
    return int(match.group(1)) + 1


def resume_state(accelerator: Any, path: "str | os.PathLike[str] | None" = None, **load_kwargs: Any) -> str | None:
    """``accelerator.load_state(path)`` (default ``$AUTOSTOP_RESUME_CHECKPOINT``) and, with automatic naming,
    set the save counter past it. Call it after ``prepare`` on every process.

    Returns the path loaded, or None when there is nothing to resume (a fresh run)."""
    path = os.fspath(path) if path is not None else resume_checkpoint()
    if path is None:
        return None
    accelerator.load_state(path, **load_kwargs)
    config = accelerator.project_configuration
    if config.automatic_checkpoint_naming and _ITERATION_RE.match(os.path.basename(os.path.normpath(path))):
        config.iteration = max(config.iteration, next_iteration(path))
    return path


def save_state(accelerator: Any, output_dir: "str | os.PathLike[str] | None" = None, **save_kwargs: Any) -> str:
    """``accelerator.save_state()`` on every process, then the main process fsyncs the new directory and its
    parent so the checkpoint survives a crash or a stop. Returns the directory written."""
    path = accelerator.save_state(os.fspath(output_dir) if output_dir is not None else None, **save_kwargs)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        fsync_tree(path)
        fsync_path(os.path.dirname(os.path.abspath(path)))
    accelerator.wait_for_everyone()
    return path
