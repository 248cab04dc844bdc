"""The on-instance checkpoint selection (infra/documents/lib/selection.py), imported directly: step parsing,
steps read from torch.save/Lightning archives, structural checks, and files held open for writing."""

from __future__ import annotations

import os
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
        ("ckpt-2026-12-05_13-45-30.pt", (None, None)),  # a date and a time of day are not steps
        ("run-20261205.pt", (None, None)),
        ("2026-12-05_step100", (100, "name:step")),
        ("step-" + "9" * 41, (None, None)),  # more digits than any step (and than DynamoDB numbers hold)
    ],
)
def test_step_of_prefers_step_then_iter_then_epoch_and_never_a_decimal(name: str, expected: tuple[int | None, str | None]) -> None:
    assert selection.step_of(name) == expected


def test_content_step_reads_lightning_global_step_without_unpickling(tmp_path: Path) -> None:
    ckpt = write(tmp_path / "last.ckpt", lightning_ckpt(394, epoch=3))
    assert selection.content_step(str(ckpt)) == (394, "contents:global_step", 3)


def test_content_step_follows_memoised_keys_and_prefers_step_over_epoch(tmp_path: Path) -> None:
    key = "step"
    # The same key string twice: pickle memoises it and the second use is a BINGET reference.
    state = {"epoch": 9, "model": {key: "not an int"}, key: 1200}
    path = write(tmp_path / "checkpoint.pt", torch_zip(state))
    assert selection.content_step(str(path)) == (1200, "contents:step", 9)


def test_content_step_of_a_pickle_that_would_run_code_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (Path.touch, (str(marker),))  # type: ignore[return-value]

    path = write(tmp_path / "evil.pt", torch_zip({"global_step": 5, "payload": Evil()}))
    assert selection.content_step(str(path)) == (5, "contents:global_step", None)
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


@pytest.mark.parametrize(
    ("name", "expected"),
    [("step-100.pt", True), ("last.ckpt", True), ("model.safetensors", True), ("step-100", True), ("train_2026.log", False),
     ("metrics-100.json", False), ("notes_step5.txt", False), ("run100", False)],
)  # fmt: skip
def test_only_checkpoint_file_types_are_candidates(name: str, expected: bool) -> None:
    assert selection.is_checkpoint_file_name(name) is expected


def chosen(tmp_path: Path) -> tuple[str | None, dict[str, str | None]]:
    found = selection.select(str(tmp_path), held={})
    return (found["chosen"] or {}).get("name"), {c["name"]: c["why"] for c in found["rejected"]}


def test_epochs_order_before_steps_counted_within_an_epoch(tmp_path: Path) -> None:
    write(tmp_path / "epoch1_step900.pt", torch_zip({"x": 1}), time.time() - 10)
    write(tmp_path / "epoch2_step100.pt", torch_zip({"x": 1}), time.time() - 20)
    assert chosen(tmp_path)[0] == "epoch2_step100.pt"


def test_lightning_epoch_only_names_beat_an_old_on_exception_file(tmp_path: Path) -> None:
    write(tmp_path / "epoch=9.ckpt", lightning_ckpt(4000, epoch=9))
    write(tmp_path / "on_exception.ckpt", lightning_ckpt(500, epoch=2))
    assert chosen(tmp_path)[0] == "epoch=9.ckpt"


def test_a_log_with_a_year_in_its_name_is_never_the_checkpoint(tmp_path: Path) -> None:
    write(tmp_path / "checkpoint-500" / "model.safetensors", safetensors())
    write(tmp_path / "train_2026.log", b"loss=0.1\n")
    name, why = chosen(tmp_path)
    assert name == "checkpoint-500"
    assert why["train_2026.log"].startswith("not a checkpoint file type")


def test_evaluation_results_do_not_make_newer_checkpoints_incomplete(tmp_path: Path) -> None:
    t0 = time.time() - 100
    for step in (100, 200, 300):
        write(tmp_path / f"step-{step}" / "model.safetensors", safetensors(), t0 + step / 10)
        write(tmp_path / f"step-{step}" / "optimizer.pt", torch_zip({"step": step}), t0 + step / 10)
        write(tmp_path / f"step-{step}" / "eval_results.json", b"{}", t0 + step / 10 + 1) if step < 300 else None
    assert chosen(tmp_path) == ("step-300", {})


def test_a_missing_rank_file_is_found_and_a_copied_config_does_not_hide_it(tmp_path: Path) -> None:
    t0 = time.time() - 100
    for step, ranks in ((100, (0, 1)), (200, (0,))):
        d = tmp_path / f"global_step{step}"
        for rank in ranks:
            write(d / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", torch_zip({"r": rank}), t0 + step)
        write(d / "config.json", b"{}", t0)  # shutil.copy2 keeps the source's old mtime
    name, why = chosen(tmp_path)
    assert name == "global_step100"
    assert why["global_step200"] == "it lacks zero_pp_rank_1_mp_rank_00_optim_states.pt, which global_step100 has: the save did not finish"


def test_hf_saves_prove_themselves_when_their_file_names_change(tmp_path: Path) -> None:
    from tests.checkpoint_layouts import hf_checkpoint

    t0 = time.time() - 100
    hf_checkpoint(tmp_path, 100, t0)
    d = hf_checkpoint(tmp_path, 200, t0 + 10)
    (d / "rng_state.pth").rename(d / "rng_state_0.pth")  # another world size
    assert chosen(tmp_path)[0] == "checkpoint-200"


def test_nested_dcp_without_metadata_and_symlinks_inside_are_incomplete(tmp_path: Path) -> None:
    write(tmp_path / "step-100" / "optim" / "__0_0.distcp", b"x" * 10)
    write(tmp_path / "step-100" / "optim" / ".metadata", b"m")
    write(tmp_path / "step-200" / "optim" / "__0_0.distcp", b"x" * 10)
    write(tmp_path / "step-300" / "config.json", b"{}")
    (tmp_path / "step-300" / "model.safetensors").symlink_to(tmp_path / "step-100" / "optim" / "__0_0.distcp")
    name, why = chosen(tmp_path)
    assert name == "step-100"
    assert "optim/ holds torch.distributed.checkpoint shards but no .metadata" in why["step-200"]
    assert "symbolic link, model.safetensors" in why["step-300"]


def test_malformed_files_are_rejected_not_crashed_on(tmp_path: Path) -> None:
    import zipfile

    header = b"[1, 2]"
    write(tmp_path / "step-1" / "model.safetensors", len(header).to_bytes(8, "little") + header)
    offsets = b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": ["0", "x"]}}'
    write(tmp_path / "step-2" / "model.safetensors", len(offsets).to_bytes(8, "little") + offsets)
    write(tmp_path / "step-3" / "model.safetensors.index.json", b'{"weight_map": {"a": null}}')
    with zipfile.ZipFile(tmp_path / "broken.pt", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02" + b"x" * 4000)
    raw = (tmp_path / "broken.pt").read_bytes()
    at = raw.index(b"archive/data.pkl") + 40
    (tmp_path / "broken.pt").write_bytes(raw[:at] + b"\xff" * 32 + raw[at + 32 :])  # corrupt deflate stream
    os.mkdir(tmp_path / b"step-4\xff".decode("utf-8", "surrogateescape"))
    name, why = chosen(tmp_path)
    assert name == "step-3"  # an index naming nothing is whole
    assert why["step-1"] == why["step-2"] == "model.safetensors: its safetensors header does not parse"
    assert why["broken.pt"] == "no step number in its name or contents"


def test_small_step_numbers_do_not_hide_or_invent_missing_files(tmp_path: Path) -> None:
    """checkpoint_0's custom_checkpoint_0.pkl is the same file as checkpoint_1's (Accelerate numbers its
    registered objects, not its steps)."""
    t0 = time.time() - 100
    for i in (0, 1):
        d = tmp_path / f"checkpoint_{i}"
        for name in ("model.safetensors", "optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"):
            write(d / name, safetensors() if name.endswith(".safetensors") else torch_zip({"i": i}), t0 + i)
    assert chosen(tmp_path) == ("checkpoint_1", {})
    (tmp_path / "checkpoint_1" / "custom_checkpoint_0.pkl").unlink()
    assert chosen(tmp_path)[1]["checkpoint_1"].startswith("it lacks custom_checkpoint_0.pkl")
