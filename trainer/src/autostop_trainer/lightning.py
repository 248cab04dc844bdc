"""PyTorch Lightning: save a checkpoint named with its step on autostop's signal, then stop cleanly (exit 0).

What Lightning 2.6 does by itself on SIGTERM (``trainer/connectors/signal_connector.py``): right before the
fit loop runs, ``_SignalConnector.register_signal_handlers`` installs a SIGTERM handler (composed with any
handler already installed) that forwards the signal to processes Lightning launched itself and sets
``trainer.received_sigterm``. At the next batch end the training loop raises ``SIGTERMException`` (a
``SystemExit`` with no code, so the process exits 0) **without saving anything**; ``on_exception`` hooks
run and ``trainer.fit`` does not return. Exit 0 without a checkpoint: only the last periodic one survives.

``AutostopCallback`` takes precedence: in ``on_train_start`` (after Lightning's registration) it installs
its own handler for autostop's signal(s), which only sets a flag, and restores Lightning's handler in
``on_train_end`` / ``on_exception``. At the next ``on_train_batch_end`` after the signal (agreed across
ranks with ``strategy.reduce_boolean_decision``), every rank calls ``trainer.save_checkpoint`` into a
dot-prefixed temporary name, rank 0 fsyncs and renames it to ``epoch=E-step=N.ckpt`` in the checkpoint
directory, and ``trainer.should_stop = True`` ends ``fit`` normally: the script exits 0 (check
``callback.stopped`` before you put a completion marker). A SIGTERM Lightning caught before training
started (e.g. during the sanity check) is honoured the same way, after which Lightning still raises its
``SIGTERMException`` (exit 0, the checkpoint already saved)::

    import lightning.pytorch as pl
    from autostop_trainer import put_completion_marker, resume_checkpoint, write_pid_file
    from autostop_trainer.lightning import AutostopCallback

    write_pid_file("/var/run/train/train.pid")
    autostop = AutostopCallback()                 # dirpath: the ModelCheckpoint's by default
    trainer = pl.Trainer(callbacks=[pl.callbacks.ModelCheckpoint(dirpath=CKPT_DIR, every_n_train_steps=500), autostop])
    trainer.fit(model, datamodule=dm, ckpt_path=resume_checkpoint())   # never ckpt_path="last"
    if not autostop.stopped and trainer.is_global_zero:
        put_completion_marker(default_marker_uri(BUCKET, RUN_ID))

Caveats: ``should_stop`` is ignored until ``min_steps`` / ``min_epochs`` are met (do not set them, or the
run trains on after saving); Lightning runs validation once more when stopping early, which must fit in
the grace period; a signal during a long validation is noticed at the next training batch end.
"""

import os
import signal
from collections.abc import Iterable
from typing import Any

from autostop_trainer.core import CHECKPOINT_DIR_ENV, SignalFlag, parse_signal, publish, remove_path

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # only the standalone pytorch_lightning package is installed
    from pytorch_lightning.callbacks import Callback

DEFAULT_FILENAME = "epoch={epoch}-step={step}.ckpt"


class _AutostopLogic:
    """Shared by the ``lightning.pytorch`` and ``pytorch_lightning`` flavours of the callback."""

    def __init__(
        self,
        dirpath: "str | os.PathLike[str] | None" = None,
        signals: Iterable["str | int | signal.Signals"] = ("SIGTERM",),
        filename: str = DEFAULT_FILENAME,
        weights_only: bool = False,
    ):
        """
        Args:
            dirpath: where the signal-time checkpoint goes (``autostop:checkpoint-dir``); default: the first
                ModelCheckpoint's ``dirpath``, else ``$AUTOSTOP_CHECKPOINT_DIR``.
            signals: autostop's signal(s), as ``autostop:signal`` names them (default SIGTERM).
            filename: ``str.format`` template with ``{epoch}`` and ``{step}`` (``trainer.global_step``); the
                step must stay in the name, autostop orders checkpoints by it.
            weights_only: passed to ``trainer.save_checkpoint`` (False: a full, resumable checkpoint).

        Raises ValueError for a signal autostop never sends or a template without ``{step}``.
        """
        if "{step}" not in filename or "/" in filename or filename.startswith("."):
            raise ValueError(f"filename must contain {{step}}, no '/' and not start with '.': {filename!r}")
        self.dirpath = os.fspath(dirpath) if dirpath is not None else None
        self.signals = tuple(parse_signal(s) for s in signals)
        self.filename = filename
        self.weights_only = weights_only
        self.flag: SignalFlag | None = None
        self.saved_path: str | None = None  # the signal-time checkpoint, once saved
        self._dir: str | None = None

    @property
    def stopped(self) -> bool:
        """True once training was stopped because of autostop's signal (do not mark the run complete then)."""
        return self.saved_path is not None

    # --- hooks ------------------------------------------------------------------------------------------

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._dir = self._resolve_dir(trainer)
        self.flag = SignalFlag(self.signals)  # replaces Lightning's SIGTERM handler until on_train_end
        if getattr(trainer, "received_sigterm", False) and signal.SIGTERM in self.signals:
            self.flag.set(signal.SIGTERM)  # Lightning's handler saw it first

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.flag is None or self.stopped:
            return
        if not trainer.strategy.reduce_boolean_decision(self.flag.received, all=False):
            return
        self.saved_path = self._save(trainer)
        trainer.should_stop = True

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._close()

    # --- helpers ----------------------------------------------------------------------------------------

    def _close(self) -> None:
        if self.flag is not None:
            self.flag.close()

    def _resolve_dir(self, trainer: Any) -> str:
        checkpoint = getattr(trainer, "checkpoint_callback", None)
        path = self.dirpath or getattr(checkpoint, "dirpath", None) or os.environ.get(CHECKPOINT_DIR_ENV)
        if not path:
            raise ValueError(
                "AutostopCallback needs a checkpoint directory: pass dirpath=, add a ModelCheckpoint or set $AUTOSTOP_CHECKPOINT_DIR"
            )
        return os.fspath(path)

    def _save(self, trainer: Any) -> str:
        """Every rank: save into a temporary name; rank 0 publishes it. Returns the final path."""
        name = self.filename.format(epoch=trainer.current_epoch, step=trainer.global_step)
        final = os.path.join(self._dir, name)
        if trainer.strategy.broadcast(os.path.exists(final), src=0):
            return final  # a ModelCheckpoint already saved this very step under this name
        temp = os.path.join(self._dir, f".{name}.tmp-autostop")
        if trainer.is_global_zero:
            os.makedirs(self._dir, exist_ok=True)
            remove_path(temp)  # left over by an earlier crash
        trainer.strategy.barrier("autostop_prepare")
        trainer.save_checkpoint(temp, weights_only=self.weights_only)
        if trainer.is_global_zero:
            publish(temp, final)
        trainer.strategy.barrier("autostop_publish")
        return final


class AutostopCallback(_AutostopLogic, Callback):
    """Lightning callback: on autostop's signal, save ``epoch=E-step=N.ckpt`` atomically and stop with exit 0.

    See the module docstring for what Lightning does by itself and how this callback takes precedence."""


def __getattr__(name: str) -> Any:
    """``PLAutostopCallback``: the same callback for the standalone ``pytorch_lightning`` package."""
    if name == "PLAutostopCallback":
        from pytorch_lightning.callbacks import Callback as PLCallback

        cls = type("PLAutostopCallback", (_AutostopLogic, PLCallback), {"__doc__": AutostopCallback.__doc__, "__module__": __name__})
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
