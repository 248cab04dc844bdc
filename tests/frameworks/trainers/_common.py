"""Shared by the framework programs (run as subprocesses with AUTOSTOP_FRAMEWORKS_PYTHON; stdlib and torch only).

Every program prints exactly one JSON object as the LAST line of stdout (``emit``). A program told to die in the
middle of a save SIGKILLs itself (``die``): no Python cleanup, no atexit, no flush of anything not yet written,
which is what a spot reclaim or an OOM kill leaves on disk.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any


def emit(**fields: Any) -> None:
    sys.stdout.flush()
    print(json.dumps(fields), flush=True)


def die(where: str) -> None:
    """SIGKILL this process now (after telling stderr where: the test reads it when the kill did not happen)."""
    print(f"framework-trainer: SIGKILL at {where}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def seed(n: int = 0) -> None:
    import random

    import numpy as np
    import torch

    random.seed(n)
    np.random.seed(n)
    torch.manual_seed(n)


def quiet() -> None:
    """Less noise from the frameworks on stderr (the tests print it when something fails)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "lightning.fabric", "transformers", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
