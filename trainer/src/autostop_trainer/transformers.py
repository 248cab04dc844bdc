"""Hugging Face Trainer: on autostop's signal, save ``checkpoint-N`` at the next step end and stop.

``AutostopCallback`` installs a handler that only sets a flag when training begins (restoring the previous
handler when it ends). At the next ``on_step_end`` after the signal (agreed across ranks with an
all_reduce when a process group exists) it sets ``control.should_save`` and ``control.should_training_stop``:
the Trainer then writes ``<output_dir>/checkpoint-<global_step>/`` and leaves the training loop, and
``trainer.train()`` returns normally (exit 0). Check ``callback.stopped`` before marking the run complete.

How transformers 5.25 writes a checkpoint (``Trainer._save_checkpoint``), into the final directory name
directly (not atomic): the model (``model.safetensors``, ``config.json``, ``training_args.bin``), then
``optimizer.pt``, ``scheduler.pt``, ``scaler.pt`` if any, ``rng_state*.pth``, and **``trainer_state.json``
last** (process 0 only); then ``save_total_limit`` rotation (``shutil.rmtree`` of the oldest, chosen by
modification time). autostop treats a Trainer directory without ``trainer_state.json`` as incomplete, and
skips files still open for writing. Point ``autostop:checkpoint-dir`` at ``output_dir``.

``TrainingArguments(enable_jit_checkpoint=True)`` (transformers 5.x) is the built-in alternative, SIGTERM
only: its handler waits 3 s (``kill_wait``, to tell a SIGTERM from a SIGKILL that follows) and then, at the
next step begin/end or pre-optimizer step, writes ``checkpoint-N`` with a ``checkpoint-is-incomplete.txt``
sentinel (removed when done; autostop ignores the directory while it is there) and stops. Either way the
save must finish inside autostop's grace: ``autostop:grace-seconds`` for a stop, ``autostop:spot-grace-seconds``
(at most 110 s) after a Spot warning; JIT needs 3 s + the rest of the current step + the save. With both
enabled, this callback's handler replaces the JIT one while training runs (one save, not two)::

    from transformers import Trainer, TrainingArguments
    from autostop_trainer import put_completion_marker, resume_checkpoint, write_pid_file
    from autostop_trainer.transformers import AutostopCallback

    write_pid_file("/var/run/train/train.pid")
    autostop = AutostopCallback()
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=CKPT_DIR, save_steps=500, report_to=[]),
                      train_dataset=ds, callbacks=[autostop])
    trainer.train(resume_from_checkpoint=resume_checkpoint())   # None: a fresh run
    if not autostop.stopped and trainer.is_world_process_zero():
        put_completion_marker(default_marker_uri(BUCKET, RUN_ID))

Do not pass ``resume_from_checkpoint=True``: it picks the highest ``checkpoint-*`` in ``output_dir`` and
raises when there is none; ``$AUTOSTOP_RESUME_CHECKPOINT`` is the one autostop verified and restored.
"""

import logging
import signal
from collections.abc import Iterable
from typing import Any

from transformers import TrainerCallback

from autostop_trainer.core import SignalFlag, parse_signal
from autostop_trainer.distributed import agree

log = logging.getLogger(__name__)


class AutostopCallback(TrainerCallback):
    """On autostop's signal: save ``checkpoint-<global_step>`` at the next step end and stop training.

    Args:
        signals: autostop's signal(s), as ``autostop:signal`` names them (default SIGTERM).

    Raises ValueError for a signal autostop never sends.
    """

    def __init__(self, signals: Iterable["str | int | signal.Signals"] = ("SIGTERM",)):
        self.signals = tuple(parse_signal(s) for s in signals)
        self.flag: SignalFlag | None = None
        self.stop_step: int | None = None  # global_step of the signal-time checkpoint

    @property
    def stopped(self) -> bool:
        """True once training was stopped because of autostop's signal (do not mark the run complete then)."""
        return self.stop_step is not None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if getattr(args, "enable_jit_checkpoint", False):
            log.warning("autostop: enable_jit_checkpoint is on; AutostopCallback's handler replaces its SIGTERM handler during training")
        self.flag = SignalFlag(self.signals)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.flag is None or self.stopped or not agree(self.flag.received):
            return
        self.stop_step = state.global_step
        control.should_save = True
        control.should_training_stop = True
        log.warning("autostop: %s received; saving checkpoint-%d and stopping", self.flag.name or "signal", state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.flag is not None:
            self.flag.close()
