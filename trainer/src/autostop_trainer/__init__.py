"""autostop_trainer: make a training script cooperate with autostop.

The core (this package) is standard library only. Framework parts are separate modules, imported only when
used: ``autostop_trainer.torch``, ``.lightning``, ``.transformers``, ``.distributed``, ``.accelerate``.
See ``core`` for the contract and the repository README, "Make a trainer cooperate".
"""

from autostop_trainer.core import (
    AUTOSTOP_SIGNALS,
    CHECKPOINT_DIR_ENV,
    RESUME_ENV,
    RUN_ID_ENV,
    SignalFlag,
    atomic_directory,
    atomic_save,
    checkpoint_name,
    default_marker_uri,
    fsync_path,
    fsync_tree,
    instance_identity,
    instance_prefix,
    log_completion,
    parse_signal,
    publish,
    put_completion_marker,
    read_pid_file,
    resume_checkpoint,
    split_s3_uri,
    write_pid_file,
)

__version__ = "0.1.0"

__all__ = [
    "AUTOSTOP_SIGNALS",
    "CHECKPOINT_DIR_ENV",
    "RESUME_ENV",
    "RUN_ID_ENV",
    "SignalFlag",
    "atomic_directory",
    "atomic_save",
    "checkpoint_name",
    "default_marker_uri",
    "fsync_path",
    "fsync_tree",
    "instance_identity",
    "instance_prefix",
    "log_completion",
    "parse_signal",
    "publish",
    "put_completion_marker",
    "read_pid_file",
    "resume_checkpoint",
    "split_s3_uri",
    "write_pid_file",
]
