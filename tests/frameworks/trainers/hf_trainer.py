"""Hugging Face transformers Trainer (5.x) on a tiny GPT-2 built from a local config (nothing downloaded).

    hf_trainer.py train CKDIR --max-steps 6 --save-steps 2 [--save-total-limit 2] [--kill-at-save N]
                              [--step-seconds X] [--embd 16] [--final-save-pretrained 8KB]
    hf_trainer.py resume PATH [--more 2]

``--kill-at-save N``: the Nth checkpoint save SIGKILLs the process in Trainer._save_checkpoint after the model,
optimizer, scheduler and RNG files and before trainer_state.json (TrainerState.save_to_json is the kill point).
``--final-save-pretrained SIZE``: after training, model.save_pretrained(CKDIR, max_shard_size=SIZE): shards at
the top level of CKDIR, next to the checkpoint-N directories.
Last stdout line: {"checkpoints": [...], "global_step": G} (train), {"resumed_step": S, "step": T} (resume).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import die, emit, quiet, seed  # noqa: E402

quiet()

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments  # noqa: E402
from transformers.trainer_callback import TrainerState  # noqa: E402

VOCAB, CTX = 64, 32


def model(embd: int) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=embd, vocab_size=VOCAB, n_positions=CTX))


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, VOCAB, (n, 16), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Observe(TrainerCallback):
    def __init__(self, step_seconds: float) -> None:
        self.first_step: int | None = None
        self.step_seconds = step_seconds

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003, ANN201
        if self.first_step is None:
            self.first_step = state.global_step
        if self.step_seconds:
            time.sleep(self.step_seconds)


def args(out: str, a: argparse.Namespace, max_steps: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=out,
        max_steps=max_steps,
        save_strategy="steps" if a.save_steps else "no",
        save_steps=a.save_steps,
        save_total_limit=a.save_total_limit,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        report_to="none",
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["train", "resume"])
    p.add_argument("path")
    p.add_argument("--max-steps", type=int, default=6)
    p.add_argument("--save-steps", type=int, default=2, help="0: save_strategy no")
    p.add_argument("--save-total-limit", type=int, default=None)
    p.add_argument("--kill-at-save", type=int, default=0)
    p.add_argument("--step-seconds", type=float, default=0.0)
    p.add_argument("--embd", type=int, default=16)
    p.add_argument("--final-save-pretrained", default="")
    p.add_argument("--more", type=int, default=2)
    p.add_argument("--out", default="", help="resume: the Trainer's output_dir (default: a sibling of PATH's parent)")
    a = p.parse_args()
    seed()
    if a.cmd == "train":
        if a.kill_at_save:
            original, count = TrainerState.save_to_json, [0]

            def save_to_json(self: TrainerState, json_path: str) -> None:
                if os.path.basename(json_path) == "trainer_state.json":
                    count[0] += 1
                    if count[0] == a.kill_at_save:
                        die(f"Trainer._save_checkpoint before {json_path}")
                original(self, json_path)

            TrainerState.save_to_json = save_to_json  # type: ignore[method-assign]
        obs = Observe(a.step_seconds)
        trainer = Trainer(model=model(a.embd), args=args(a.path, a, a.max_steps), train_dataset=Tokens(4096), callbacks=[obs])
        trainer.train()
        if a.final_save_pretrained:
            trainer.model.save_pretrained(a.path, max_shard_size=a.final_save_pretrained)
        emit(checkpoints=sorted(d for d in os.listdir(a.path) if d.startswith("checkpoint-")), global_step=trainer.state.global_step)
        return
    resumed = TrainerState.load_from_json(os.path.join(a.path, "trainer_state.json")).global_step
    obs = Observe(0.0)
    out = a.out or os.path.join(os.path.dirname(os.path.dirname(a.path)), "hf-resume-out")
    trainer = Trainer(model=model(a.embd), args=args(out, a, resumed + a.more), train_dataset=Tokens(4096), callbacks=[obs])
    trainer.train(resume_from_checkpoint=a.path)
    emit(resumed_step=obs.first_step, step=trainer.state.global_step)


if __name__ == "__main__":
    main()
