"""The on-instance checkpoint selection (infra/documents/lib/selection.py), imported directly: step parsing,
steps read from torch.save/Lightning archives, structural checks, and files held open for writing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.checkpoint_layouts import lightning_ckpt, safetensors, torch_zip, write

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra" / "documents" / "lib"))
import selection  # noqa: E402


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("epoch=2-step=260-train_loss=0.0036.ckpt", (260, "name:step")),  # not the 36 of the loss
        ("epoch=1-val_loss=0.12.ckpt", (1, "name:epoch")),  # not the 12 of the loss
        ("sample-mnist-epoch=02-val_loss=0.32.ckpt", (2, "name:epoch")),
        ("global_step100", (100, "name:step")),
        ("step-000200", (200, "name:step")),
        ("iter_0042.pt", (42, "name:iter")),
        ("iteration-7", (7, "name:iter")),
        ("epoch_3_iter_40.pt", (40, "name:iter")),  # iter before epoch
        ("checkpoint-500", (500, "name:number")),
        ("checkpoint_3", (3, "name:number")),
        ("ckpt7", (7, "name:number")),
        ("100.pt", (100, "name:number")),
        ("last.ckpt", (None, None)),
        ("zero_to_fp32.py", (None, None)),
        ("val_loss=0.12.ckpt", (None, None)),
        ("model_v2.bin", (None, None)),
    ],
)
def test_step_of_prefers_step_then_iter_then_epoch_and_never_a_decimal(name: str, expected: tuple[int | None, str | None]) -> None:
    assert selection.step_of(name) == expected


def test_content_step_reads_lightning_global_step_without_unpickling(tmp_path: Path) -> None:
    ckpt = write(tmp_path / "last.ckpt", lightning_ckpt(394, epoch=3))
    assert selection.content_step(str(ckpt)) == (394, "contents:global_step")


def test_content_step_follows_memoised_keys_and_prefers_step_over_epoch(tmp_path: Path) -> None:
    key = "step"
    # The same key string twice: pickle memoises it and the second use is a BINGET reference.
    state = {"epoch": 9, "model": {key: "not an int"}, key: 1200}
    path = write(tmp_path / "checkpoint.pt", torch_zip(state))
    assert selection.content_step(str(path)) == (1200, "contents:step")


def test_content_step_of_a_pickle_that_would_run_code_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (Path.touch, (str(marker),))  # type: ignore[return-value]

    path = write(tmp_path / "evil.pt", torch_zip({"global_step": 5, "payload": Evil()}))
    assert selection.content_step(str(path)) == (5, "contents:global_step")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("data", "name", "why"),
    [
        (torch_zip({"step": 1})[:-40], "a.pt", "no intact central directory"),
        (b"", "model.safetensors", "empty (0 bytes)"),
        (safetensors()[:-1], "model.safetensors", "tensors end at byte"),
        (b"\xff" * 8 + b"{}", "model.safetensors", "header is longer than the file"),
        ((4).to_bytes(8, "little") + b"nope", "model.safetensors", "does not parse"),
    ],
)
def test_file_check_rejects_cut_short_files(tmp_path: Path, data: bytes, name: str, why: str) -> None:
    path = write(tmp_path / name, data)
    rule, reason = selection.file_check(str(path), len(data))
    assert rule is None and why in reason


def test_file_check_accepts_whole_files(tmp_path: Path) -> None:
    zipped, tensors = torch_zip({"step": 1}), safetensors()
    assert selection.file_check(str(write(tmp_path / "a.pt", zipped)), len(zipped)) == ("zip central directory intact", None)
    tensors_path = write(tmp_path / "m.safetensors", tensors)
    assert selection.file_check(str(tensors_path), len(tensors)) == ("safetensors header and size agree", None)
    assert selection.file_check(str(write(tmp_path / "notes.txt", b"x")), 1) == ("no format check", None)


def test_open_for_write_finds_a_live_writer_and_not_a_reader(tmp_path: Path) -> None:
    written, read = tmp_path / "written.pt", write(tmp_path / "read.pt", b"data")
    code = "import sys, time; w = open(sys.argv[1], 'wb'); r = open(sys.argv[2], 'rb'); print('open', flush=True); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(written), str(read)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"open\n"
        held, why = selection.open_for_write()
        st_w, st_r = written.stat(), read.stat()
        assert held.get((st_w.st_dev, st_w.st_ino)) == proc.pid
        assert (st_r.st_dev, st_r.st_ino) not in held
        assert why is None
    finally:
        proc.kill()
        proc.wait()
    held, _ = selection.open_for_write()
    assert (st_w.st_dev, st_w.st_ino) not in held


def test_open_for_write_says_so_when_proc_is_unreadable(tmp_path: Path) -> None:
    held, why = selection.open_for_write(proc=str(tmp_path / "no-proc"))
    assert held == {} and "files still being written cannot be detected" in why


def test_select_orders_by_step_and_lists_what_it_rejected(tmp_path: Path) -> None:
    t0 = time.time() - 100
    write(tmp_path / "step-2.pt", torch_zip({"step": 2}), t0)
    write(tmp_path / "step-10.pt", torch_zip({"step": 10}), t0 - 50)  # older mtime, higher step
    write(tmp_path / "step-11.pt", b"", t0)
    found = selection.select(str(tmp_path), held={})
    assert found["chosen"]["name"] == "step-10.pt"
    assert [(c["name"], c["why"]) for c in found["rejected"]] == [("step-11.pt", "it is empty (0 bytes)")]
    assert found["candidates"] == 3
