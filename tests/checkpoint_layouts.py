"""Checkpoint files and directories in the formats real frameworks write, built with the standard library.

The bytes follow each format (the real-framework layer, tests/frameworks, writes them with the frameworks
themselves): torch.save's zip archive with its pickle at ``<stem>/data.pkl`` (Lightning .ckpt, Accelerate .bin
and .pkl files are the same), safetensors (u64 header length, JSON header, tensor data), and the directory
layouts of the Hugging Face Trainer, torch.distributed.checkpoint (DCP) and Accelerate's ``save_state``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def torch_zip(state: Mapping[str, Any], payload: bytes = b"\0" * 4096, stem: str = "archive") -> bytes:
    """A torch.save-style zip archive: ``<stem>/data.pkl`` holds STATE (pickle protocol 2, as torch uses),
    ``<stem>/data/0`` a tensor's bytes, entries stored uncompressed like torch's writer."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{stem}/data.pkl", pickle.dumps(dict(state), protocol=2))
        zf.writestr(f"{stem}/byteorder", b"little")
        zf.writestr(f"{stem}/data/0", payload)
        zf.writestr(f"{stem}/version", b"3\n")
    return buf.getvalue()


def lightning_ckpt(global_step: int, epoch: int = 0) -> bytes:
    """A Lightning 2.x checkpoint's top-level keys, in the order Lightning's dump_checkpoint writes them."""
    return torch_zip({"epoch": epoch, "global_step": global_step, "pytorch-lightning_version": "2.6.6", "state_dict": {}, "loops": {}})


def safetensors(data: bytes = b"\1" * 64) -> bytes:
    """A valid safetensors file holding DATA as one uint8 tensor."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [len(data)], "data_offsets": [0, len(data)]}}).encode()
    return len(header).to_bytes(8, "little") + header + data


def write(path: Path, data: bytes, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def hf_checkpoint(top: Path, step: int, mtime: float, *, finished: bool = True) -> Path:
    """``checkpoint-<step>/`` as transformers' Trainer._save_checkpoint writes it: model, training args,
    optimizer, scheduler, RNG state, then trainer_state.json last (absent when not FINISHED)."""
    d = top / f"checkpoint-{step}"
    write(d / "model.safetensors", safetensors(), mtime)
    write(d / "config.json", b'{"model_type": "gpt2"}', mtime)
    write(d / "training_args.bin", torch_zip({"output_dir": str(top)}), mtime)
    write(d / "optimizer.pt", torch_zip({"state": {}, "param_groups": []}), mtime)
    write(d / "scheduler.pt", torch_zip({"last_epoch": step}), mtime)
    write(d / "rng_state.pth", torch_zip({"python": 1}), mtime)
    if finished:
        write(d / "trainer_state.json", json.dumps({"global_step": step}).encode(), mtime)
    return d


def dcp_checkpoint(top: Path, step: int, mtime: float, *, finished: bool = True, ranks: int = 2) -> Path:
    """``step-<step>/`` as torch.distributed.checkpoint's FileSystemWriter writes it: one ``__<rank>_0.distcp``
    per rank, then the coordinator's ``.metadata`` last (absent when not FINISHED)."""
    d = top / f"step-{step}"
    for rank in range(ranks):
        write(d / f"__{rank}_0.distcp", os.urandom(2048), mtime)
    if finished:
        write(d / ".metadata", pickle.dumps({"step": step}), mtime)
    return d


def accelerate_checkpoint(top: Path, index: int, mtime: float, *, finished: bool = True) -> Path:
    """``checkpoint_<index>/`` as Accelerate's save_state writes it: model, optimizer, scheduler, sampler,
    then ``random_states_0.pkl`` last (absent when not FINISHED)."""
    d = top / f"checkpoint_{index}"
    write(d / "model.safetensors", safetensors(), mtime)
    write(d / "optimizer.bin", torch_zip({"state": {}}), mtime)
    write(d / "scheduler.bin", torch_zip({"last_epoch": index}), mtime)
    write(d / "sampler.bin", torch_zip({"epoch": index}), mtime)
    if finished:
        write(d / "random_states_0.pkl", torch_zip({"step": index}), mtime)
    return d
