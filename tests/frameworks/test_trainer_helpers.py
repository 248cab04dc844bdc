"""The trainer helpers (``trainer/src/autostop_trainer``) with the real frameworks: a tiny model trains in a
subprocess run by the frameworks' Python (``AUTOSTOP_FRAMEWORKS_PYTHON``), the test sends SIGTERM to the PID in
the PID file once some steps ran, and then checks: exit code 0, a checkpoint named with its step, nothing
temporary left behind, and that the framework's own loader resumes from it at that step.

The programs are below as text (written to the test's directory and run there); the helpers are imported from
this working tree (PYTHONPATH), so the test checks the code in the repository, not an older installed copy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

FRAMEWORKS_PYTHON = os.environ.get("AUTOSTOP_FRAMEWORKS_PYTHON", "")
if not FRAMEWORKS_PYTHON:
    pytest.skip("AUTOSTOP_FRAMEWORKS_PYTHON is not set (the frameworks' virtualenv runs these programs)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
TRAINER_SRC = ROOT / "trainer" / "src"
sys.path.insert(0, str(TRAINER_SRC))

from autostop_trainer import read_pid_file  # noqa: E402

READY_STEPS = 5  # the programs print "ready" once this many optimizer steps are done


# --- running the programs ----------------------------------------------------------------------------------


def framework_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    home = Path(tempfile.gettempdir()) / "autostop-helpers-home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "HF_HOME": str(home / "hf"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": str(TRAINER_SRC),
        "TMPDIR": os.environ.get("TMPDIR", tempfile.gettempdir()),
    }
    env.update(extra or {})
    return env


def json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object printed in TEXT, in order, even when two processes' lines ran together."""
    decoder, found, at = json.JSONDecoder(), [], text.find("{")
    while at != -1:
        try:
            value, end = decoder.raw_decode(text, at)
        except ValueError:
            at = text.find("{", at + 1)
            continue
        if isinstance(value, dict):
            found.append(value)
        at = text.find("{", end)
    return found


class Program:
    """A framework program running in the background; its stdout+stderr go to a log file."""

    def __init__(self, tmp_path: Path, name: str, source: str, *args: Any, env: dict[str, str] | None = None, torchrun: int = 0):
        script = tmp_path / f"{name}.py"
        script.write_text(PRELUDE + source)
        self.log = tmp_path / f"{name}-{time.monotonic_ns()}.log"
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={torchrun}", "--monitor-interval=0.2"]
        argv = [FRAMEWORKS_PYTHON, *(launcher if torchrun else []), str(script), *map(str, args)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, env=framework_env(env), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"{needle!r} never appeared (exit {self.proc.returncode}):\n{self.text()[-6000:]}")
            time.sleep(0.05)

    def finish(self, timeout: float = 120) -> dict[str, Any]:
        """Wait for exit; returns the JSON object on the last line that holds one."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running after {timeout}s:\n{self.text()[-6000:]}")
        found = json_objects(self.text())
        if found:
            return found[-1]
        pytest.fail(f"no result line (exit {self.proc.returncode}):\n{self.text()[-6000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run(tmp_path: Path, name: str, source: str, *args: Any, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a program to the end; it must exit 0."""
    program = Program(tmp_path, name, source, *args, env=env)
    result = program.finish()
    assert program.proc.returncode == 0, program.text()[-6000:]
    return result


def signal_when_ready(program: Program, pid_file: Path, sig: int = signal.SIGTERM) -> int:
    """Once the PID file exists and the program printed "ready", send SIG to the PID in the file. Returns it."""
    program.wait_for("ready")
    pid = read_pid_file(pid_file)
    os.kill(pid, sig)
    return pid


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# --- the programs ---------------------------------------------------------------------------------------------

PRELUDE = """
import json, os, sys, warnings, logging
warnings.filterwarnings("ignore")
for _name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "transformers", "accelerate"):
    logging.getLogger(_name).setLevel(logging.ERROR)

def emit(**fields):
    print(json.dumps(fields), flush=True)
"""

LIGHTNING = """
import torch
import lightning.pytorch as pl
from torch.utils.data import DataLoader, TensorDataset
from autostop_trainer import resume_checkpoint, write_pid_file
from autostop_trainer.lightning import AutostopCallback

ckpt_dir, pid_file, max_steps = sys.argv[1], sys.argv[2], int(sys.argv[3])

class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

class Progress(pl.Callback):
    first = None
    def on_train_batch_end(self, trainer, *args):
        if Progress.first is None:
            Progress.first = trainer.global_step
        if trainer.global_step == Progress.first + READY:
            print("ready", flush=True)

READY = int(os.environ.get("READY_STEPS", "5"))
write_pid_file(pid_file)
torch.manual_seed(0)
data = DataLoader(TensorDataset(torch.randn(4096, 8), torch.randn(4096, 1)), batch_size=8)
autostop = AutostopCallback()   # dirpath: the ModelCheckpoint's
checkpoints = pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=100000)
callbacks = [Progress(), checkpoints] + ([] if os.environ.get("WITHOUT_AUTOSTOP") else [autostop])
trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=callbacks)
resume = resume_checkpoint()
start_step = torch.load(resume, weights_only=False)["global_step"] if resume else 0
trainer.fit(Tiny(), train_dataloaders=data, ckpt_path=resume)
emit(stopped=autostop.stopped, saved=autostop.saved_path, global_step=trainer.global_step, start_step=start_step,
     first_batch_end=Progress.first, signal_name=autostop.flag.name, handler_restored=not autostop.flag.installed())
"""

HF = """
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments
from autostop_trainer import resume_checkpoint, write_pid_file
from autostop_trainer.transformers import AutostopCallback

ckpt_dir, pid_file, max_steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
READY = int(os.environ.get("READY_STEPS", "5"))

class Rows(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 64, (512, 16), generator=g)
    def __len__(self):
        return len(self.ids)
    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}

class Progress(TrainerCallback):
    first = None
    def on_step_end(self, args, state, control, **kw):
        if Progress.first is None:
            Progress.first = state.global_step
        if state.global_step == Progress.first - 1 + READY:
            print("ready", flush=True)

write_pid_file(pid_file)
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32))
args = TrainingArguments(output_dir=ckpt_dir, max_steps=max_steps, per_device_train_batch_size=4, save_strategy="no",
                         logging_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
autostop = AutostopCallback()
trainer = Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[Progress(), autostop])
trainer.train(resume_from_checkpoint=resume_checkpoint())
emit(stopped=autostop.stopped, stop_step=autostop.stop_step, global_step=trainer.state.global_step,
     first_step_end=Progress.first, handler_restored=not autostop.flag.installed())
"""

TORCH = """
import time
import torch
from autostop_trainer import SignalFlag, write_pid_file
from autostop_trainer import torch as ckpt

ckpt_dir, pid_file, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
write_pid_file(pid_file)
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
state = ckpt.load_latest(ckpt_dir)
start = state["step"] if state else 0
if state:
    model.load_state_dict(state["model"]); optimizer.load_state_dict(state["optimizer"])
step = start
with SignalFlag() as stop:
    for step in range(start + 1, total + 1):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        time.sleep(0.01)
        if step == start + 5:
            print("ready", flush=True)
        if step % 50 == 0 or stop.received or step == total:
            ckpt.save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict()}, ckpt_dir, step, keep=2)
        if stop.received:
            break
emit(stopped=stop.received, start=start, step=step, latest=ckpt.latest(ckpt_dir))
"""

TORCHRUN_DCP = """
import time
import torch
import torch.distributed as dist
from autostop_trainer import SignalFlag
from autostop_trainer.distributed import agree, dcp_load, dcp_save, write_launcher_pid_file

ckpt_dir, pid_file = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
write_launcher_pid_file(pid_file)          # local rank 0: torchrun's PID
model = torch.nn.Linear(4, 1)
with SignalFlag() as stop:
    for step in range(1, 100000):
        time.sleep(0.02)
        dist.barrier()
        if step == 5 and rank == 0:
            print("ready", flush=True)
        if agree(stop.received):
            path = dcp_save({"model": model.state_dict(), "step": step}, ckpt_dir, step)
            back = {"model": torch.nn.Linear(4, 1).state_dict(), "step": 0}
            dcp_load(back, path)
            print(json.dumps({"rank": rank, "saved": path, "step": step, "loaded_step": back["step"],
                              "got_signal": stop.received, "parent": os.getppid()}), flush=True)
            dist.destroy_process_group()
            sys.exit(0)
"""

ACCELERATE = """
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from autostop_trainer.accelerate import checkpoints_dir, resume_state, save_state

run_dir, saves = sys.argv[1], int(sys.argv[2])
accelerator = Accelerator(cpu=True, project_config=ProjectConfiguration(project_dir=run_dir, automatic_checkpoint_naming=True))
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
model, optimizer = accelerator.prepare(model, optimizer)
resumed = resume_state(accelerator)
written = []
for _ in range(saves):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    accelerator.backward(loss); optimizer.step(); optimizer.zero_grad()
    written.append(os.path.basename(save_state(accelerator)))
emit(resumed=resumed, written=written, listing=sorted(os.listdir(checkpoints_dir(accelerator))),
     files=sorted(os.listdir(os.path.join(checkpoints_dir(accelerator), written[-1]))))
"""


# --- tests ------------------------------------------------------------------------------------------------------


def test_lightning_callback_saves_step_checkpoint_on_sigterm_and_resumes(tmp_path: Path) -> None:
    ckpt_dir, pid_file = tmp_path / "ckpt", tmp_path / "train.pid"
    program = Program(tmp_path, "lightning_train", LIGHTNING, ckpt_dir, pid_file, 100000)
    assert signal_when_ready(program, pid_file) == program.proc.pid
    out = program.finish()
    assert program.proc.returncode == 0, program.text()[-6000:]
    # fit() returned normally (no SIGTERMException): the result line is printed after it
    assert out["stopped"] and out["signal_name"] == "SIGTERM" and out["handler_restored"]
    step = out["global_step"]
    assert step >= READY_STEPS
    saved = ckpt_dir / f"epoch=0-step={step}.ckpt"
    assert out["saved"] == str(saved) and saved.is_file()
    assert leftovers(ckpt_dir) == []

    resumed = run(tmp_path, "lightning_train", LIGHTNING, ckpt_dir, pid_file, step + 3, env={"AUTOSTOP_RESUME_CHECKPOINT": str(saved)})
    assert resumed["start_step"] == step  # torch.load of the checkpoint
    assert resumed["first_batch_end"] == step + 1  # Trainer.fit(ckpt_path=...) went on from there
    assert resumed["global_step"] == step + 3 and not resumed["stopped"]


def test_lightning_alone_exits_0_on_sigterm_without_saving(tmp_path: Path) -> None:
    """Why the callback exists: Lightning 2.6's own SIGTERM handling raises SIGTERMException (a SystemExit with
    no code) at the next batch end: exit 0, fit() never returns, and no checkpoint is written."""
    ckpt_dir, pid_file = tmp_path / "ckpt", tmp_path / "train.pid"
    program = Program(tmp_path, "lightning_alone", LIGHTNING, ckpt_dir, pid_file, 100000, env={"WITHOUT_AUTOSTOP": "1"})
    signal_when_ready(program, pid_file)
    program.proc.wait(timeout=60)
    assert program.proc.returncode == 0, program.text()[-6000:]
    assert not any(line.startswith("{") for line in program.text().splitlines())  # fit() did not return
    assert not ckpt_dir.exists() or list(ckpt_dir.iterdir()) == []


def test_hf_trainer_callback_saves_checkpoint_n_on_sigterm_and_resumes(tmp_path: Path) -> None:
    ckpt_dir, pid_file = tmp_path / "out", tmp_path / "train.pid"
    program = Program(tmp_path, "hf_train", HF, ckpt_dir, pid_file, 100000)
    signal_when_ready(program, pid_file)
    out = program.finish()
    assert program.proc.returncode == 0, program.text()[-6000:]
    assert out["stopped"] and out["handler_restored"]
    step = out["stop_step"]
    assert step == out["global_step"] and step >= READY_STEPS
    saved = ckpt_dir / f"checkpoint-{step}"
    assert json.loads((saved / "trainer_state.json").read_text())["global_step"] == step
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= {p.name for p in saved.iterdir()}
    assert [p.name for p in ckpt_dir.iterdir() if p.name.startswith("checkpoint-")] == [saved.name]

    resumed = run(tmp_path, "hf_train", HF, ckpt_dir, pid_file, step + 3, env={"AUTOSTOP_RESUME_CHECKPOINT": str(saved)})
    assert resumed["first_step_end"] == step + 1  # trainer.train(resume_from_checkpoint=...) went on from there
    assert resumed["global_step"] == step + 3 and not resumed["stopped"]


def test_torch_save_on_sigterm_then_load_latest_resumes(tmp_path: Path) -> None:
    ckpt_dir, pid_file = tmp_path / "ckpt", tmp_path / "train.pid"
    program = Program(tmp_path, "torch_train", TORCH, ckpt_dir, pid_file, 100000)
    signal_when_ready(program, pid_file)
    out = program.finish()
    assert program.proc.returncode == 0, program.text()[-6000:]
    step = out["step"]
    assert out["stopped"] and out["latest"] == str(ckpt_dir / f"step-{step:08d}.pt")
    assert len(list(ckpt_dir.glob("step-*.pt"))) <= 2 and leftovers(ckpt_dir) == []

    resumed = run(tmp_path, "torch_train", TORCH, ckpt_dir, pid_file, step + 3)
    assert resumed["start"] == step and resumed["step"] == step + 3 and not resumed["stopped"]
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [f"step-{step:08d}.pt", f"step-{step + 3:08d}.pt"]  # keep=2


def test_torchrun_forwards_sigterm_ranks_agree_and_dcp_saves_a_new_step_dir(tmp_path: Path) -> None:
    ckpt_dir, pid_file = tmp_path / "ckpt", tmp_path / "train.pid"
    program = Program(tmp_path, "dcp_train", TORCHRUN_DCP, ckpt_dir, pid_file, torchrun=2)
    pid = signal_when_ready(program, pid_file)
    assert pid == program.proc.pid  # the PID file holds torchrun's PID, written by local rank 0
    program.finish()
    assert program.proc.returncode != 0  # torchrun re-raises the signal after its workers exit (exit 0 each)
    results = [r for r in json_objects(program.text()) if "rank" in r]  # two ranks may print on one line
    assert sorted(r["rank"] for r in results) == [0, 1], program.text()[-6000:]
    assert len({r["step"] for r in results}) == 1  # agreed on one step
    assert all(r["parent"] == pid and r["got_signal"] for r in results)  # torchrun forwarded it to both ranks
    step = results[0]["step"]
    saved = ckpt_dir / f"step-{step:08d}"
    assert results[0]["saved"] == str(saved) and all(r["loaded_step"] == step for r in results)
    assert (saved / ".metadata").is_file() and sorted(p.name for p in saved.glob("*.distcp"))
    assert [p.name for p in ckpt_dir.iterdir()] == [saved.name]


def test_accelerate_resume_state_continues_checkpoint_numbering(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = run(tmp_path, "accelerate_train", ACCELERATE, run_dir, 2)
    assert first["resumed"] is None and first["written"] == ["checkpoint_0", "checkpoint_1"]
    assert "random_states_0.pkl" in first["files"]
    restored = run_dir / "checkpoints" / "checkpoint_1"
    second = run(tmp_path, "accelerate_train", ACCELERATE, run_dir, 1, env={"AUTOSTOP_RESUME_CHECKPOINT": str(restored)})
    assert second["resumed"] == str(restored) and second["written"] == ["checkpoint_2"]
    assert second["listing"] == ["checkpoint_0", "checkpoint_1", "checkpoint_2"]
