"""Samples/s of our training step against the bare towers and against `VisionTextDualEncoderModel` + `Trainer`.

Three ways to take one optimizer step on the same towers (the tiny ViT + tiny XLM-R of `_common.TowerSizes`), from
the same initial weights, at the same batch size, caption length, image size and precision:

- **ours**: `seeyou_ml.training.Trainer.optimizer_step`, the step of the training loop: `SeeYouModel` forward with
  the contrastive loss, backward through accelerate, gradient clipping at 1.0, AdamW over per-tower parameter groups,
  the staged warmup-cosine schedule, plus the step's bookkeeping (stage check, NaN guard, loss reduction). The
  optimizer is whatever the trainer builds (the table names its implementation).
- **bare**: `vision_model(pixel_values)` and `text_model(input_ids, attention_mask)`, a trivial loss of their
  pooled outputs (mean of squares), backward, AdamW step with the fastest implementation torch offers (fused where
  the device has the kernel, else foreach), `zero_grad`: the floor any trainer pays.
- **VTDE + Trainer**: `VisionTextDualEncoderModel` trained by transformers' `Trainer` (`return_loss=True`; its
  training step: forward, backward, clipping at 1.0, its default AdamW (fused on torch >= 2.8), linear schedule),
  timed by a callback from `on_step_begin` to `on_step_end`.

Data loading is excluded from all three: a few batches are collated once, up front, as synthetic tensors (random
pixels and token ids), and every step reuses them (the `Trainer` gets them from a collator that returns the
pre-built batch, outside the callback's window). The machine is shared and its load swings within seconds, so the
methods are interleaved step by step: after each `Trainer` step, its callback runs one step of each of the other two
(order rotating). Every step is timed alone; the table reports samples/s of the median step (and of the mean) over
`--steps` steps after `--warmup`, and the paired per-step ratios: step i of one method over step i of the other,
taken within the same few hundred milliseconds, as median and interquartile range.

    python benchmarks/train_throughput.py [--batch-size 64] [--seq-len 32] [--steps 30] [--mixed-precision bf16]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    TowerSizes,
    build_vtde,
    fastest_adamw,
    format_table,
    load_average,
    optimizer_kind,
    seeyou_from_vtde,
    spread,
)

VOCAB_SIZE = 8000
PAD_TOKEN_ID = 1
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 0.1
NUM_BATCHES = 4


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--batch-size", type=int, default=64, help="Pairs per step.")
    parser.add_argument("--seq-len", type=int, default=32, help="Caption length in tokens (all captions padded).")
    parser.add_argument("--steps", type=int, default=30, help="Timed steps per method.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps per method before them.")
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="no", help="Precision of all three.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    return parser.parse_args(argv)


def synthetic_batches(args: argparse.Namespace, image_size: int) -> list[dict]:
    """Pre-collated batches with the keys our collator produces (`lang`/`image_id` are metadata)."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for b in range(NUM_BATCHES):
        input_ids = torch.randint(4, VOCAB_SIZE, (args.batch_size, args.seq_len), generator=generator)
        input_ids[:, 0], input_ids[:, -1] = 0, 2  # <s> ... </s>
        batches.append({
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": torch.randn(args.batch_size, 3, image_size, image_size, generator=generator),
            "lang": ["en"] * args.batch_size,
            "image_id": [f"{b}-{i}" for i in range(args.batch_size)],
        })
    return batches


# ---- the three methods ------------------------------------------------------------------------------------------


class PreCollatedSampler(list):
    """Batch sampler over a list of pre-collated batches: each "batch" is one index (unused by the timed steps,
    which feed the batches to `optimizer_step` directly; the Trainer only needs a sampler to build its loader)."""

    batch_size = 1

    def __init__(self, num_batches: int):
        super().__init__([[i] for i in range(num_batches)])

    def set_epoch(self, epoch: int) -> None:
        pass


def ours_step(model, batches, args):
    """`step(i)`: one step of our Trainer over `model` on pre-collated batch `i`."""
    from seeyou_ml.training.config import TrainingRecipe
    from seeyou_ml.training.trainer import Trainer

    recipe = TrainingRecipe.from_dict({
        "output_dir": str(Path("outputs") / "benchmarks" / "train_throughput"),
        "mixed_precision": args.mixed_precision,
        "data": {"batch_size": args.batch_size, "eval_split": None},
        "optim": {"lr": LEARNING_RATE, "weight_decay": WEIGHT_DECAY, "warmup_steps": 10, "max_grad_norm": 1.0},
        "stages": [{"name": "joint", "steps": 100_000}],
        "monitor": {"report_to": None, "progress_bar": False, "collapse_every": 0},
        "checkpoint": {"save_every": 0},
    })
    trainer = Trainer(recipe, model=model, processor=None, train_dataset=batches, collate_fn=lambda rows: rows[0],
                      batch_sampler=PreCollatedSampler(len(batches)))

    def step(i: int) -> None:
        trainer.optimizer_step(batches[i % len(batches)])

    step.optimizer = optimizer_kind(trainer.optimizer)
    return step


def bare_step(vision_model, text_model, batches, args):
    """`step(i)`: the towers alone on batch `i`, a trivial loss of their pooled outputs, backward and AdamW."""
    vision_model.train()
    text_model.train()
    parameters = list(vision_model.parameters()) + list(text_model.parameters())
    optimizer = fastest_adamw(parameters, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.mixed_precision == "bf16")

    def step(i: int) -> None:
        batch = batches[i % len(batches)]
        with autocast:
            image = vision_model(pixel_values=batch["pixel_values"]).pooler_output  # (B, H)
            text = text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
            loss = image.float().pow(2).mean() + text.float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step.optimizer = optimizer_kind(optimizer)
    return step


def run_interleaved(vtde, others: dict, batches, args) -> dict[str, list[float]]:
    """Trains `vtde` with transformers' Trainer and, after each of its steps, runs one step of every other method.

    The Trainer's steps are timed from `on_step_begin` to `on_step_end` (forward, backward, clipping, AdamW, schedule;
    the batch is fetched before `on_step_begin`); the other methods' steps run in `on_step_end`, in an order that
    rotates every step, so all three see the same background load.

    Returns:
        `{method: [seconds of each step]}`, warm-up steps included.
    """
    from torch.utils.data import Dataset
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    times = {name: [] for name in [HF, *others]}

    class Interleave(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.begun = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times[HF].append(time.perf_counter() - self.begun)
            i = state.global_step - 1
            names = list(others)
            for name in names[i % len(names):] + names[:i % len(names)]:
                start = time.perf_counter()
                others[name](i)
                times[name].append(time.perf_counter() - start)

    class Indices(Dataset):
        def __len__(self):
            return total * args.batch_size

        def __getitem__(self, index):
            return index

    fetched = {"batches": 0}

    def collate_fn(rows):
        batch = batches[fetched["batches"] % len(batches)]
        fetched["batches"] += 1
        return {key: batch[key] for key in ("pixel_values", "input_ids", "attention_mask")} | {"return_loss": True}

    total = args.warmup + args.steps
    training_args = TrainingArguments(
        output_dir=str(Path("outputs") / "benchmarks" / "train_throughput_hf"),
        per_device_train_batch_size=args.batch_size,
        max_steps=total,
        learning_rate=LEARNING_RATE,
        weight_decay=WEIGHT_DECAY,
        bf16=args.mixed_precision == "bf16",
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=vtde, args=training_args, train_dataset=Indices(), data_collator=collate_fn,
                      callbacks=[Interleave()])
    trainer.remove_callback(PrinterCallback)  # its end-of-run metrics would interleave with the table
    trainer.train()
    times["optimizers"] = {HF: optimizer_kind(trainer.optimizer), **{n: step.optimizer for n, step in others.items()}}
    return times


OURS, BARE, HF = "ours (SeeYouModel + seeyou Trainer)", "bare towers + AdamW", "VTDE + transformers Trainer"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = TowerSizes()
    batches = synthetic_batches(args, sizes.image_size)
    vtde = build_vtde(VOCAB_SIZE, PAD_TOKEN_ID, sizes, seed=0)
    others = {
        OURS: ours_step(seeyou_from_vtde(vtde), batches, args),
        BARE: bare_step(copy.deepcopy(vtde.vision_model), copy.deepcopy(vtde.text_model), batches, args),
    }
    load_before = load_average()
    times = run_interleaved(copy.deepcopy(vtde), others, batches, args)
    optimizers = times.pop("optimizers")
    timed = {name: values[args.warmup:] for name, values in times.items()}
    median = {name: statistics.median(values) for name, values in timed.items()}

    headers = ["method", "AdamW", "samples/s (median step)", "samples/s (mean step)", "step time / ours"]
    rows = [[name, optimizers[name], args.batch_size / median[name], args.batch_size / statistics.fmean(timed[name]),
             f"{median[name] / median[OURS]:.3f}x"] for name in (OURS, BARE, HF)]
    print(f"\nbatch {args.batch_size}, {sizes.image_size}px images, {args.seq_len}-token captions, precision "
          f"{args.mixed_precision}, {torch.get_num_threads()} thread(s); {args.steps} timed steps per method after "
          f"{args.warmup} warm-up, interleaved step by step; pre-collated synthetic batches (no data loading); "
          f"load average {load_before} before, {load_average()} after")
    print(format_table(headers, rows))
    paired = []
    for label, top, bottom in (("ours / bare", OURS, BARE), ("VTDE+Trainer / ours", HF, OURS),
                               ("VTDE+Trainer / bare", HF, BARE)):
        ratios = [a / b for a, b in zip(timed[top], timed[bottom])]
        middle, low, high = spread(ratios)
        paired.append([label, f"{middle:.3f}x", f"{low:.3f}x", f"{high:.3f}x", f"{min(ratios):.3f}x",
                       f"{max(ratios):.3f}x"])
    print(f"\npaired per-step time ratios (step i of one method over step i of the other, {args.steps} pairs)")
    print(format_table(["ratio", "median", "25th pct", "75th pct", "min", "max"], paired))
    print("goal: ours / bare <= 1.05x")


if __name__ == "__main__":
    main()
