"""Peak memory and step time of a training step with and without gradient checkpointing.

ResNet-50 + XLM-R base (random init), batch 16, 224 px, on the CPU. "Activation peak" is the peak resident memory of
the training steps above what the process held before the first step (weights, gradients, the batch): the part
checkpointing trades for recompute. It is measured in a fresh process per mode, which reads the peak from the kernel
(`VmHWM`, reset before the steps) and runs with glibc placing every block of 64 KB or more in its own mapping, so that
freeing a tensor returns its pages and resident memory follows the live tensors (by default glibc keeps freed heap
pages resident, and the peak would count memory freed long before). Step time is measured with the default
allocator in processes that keep one mode, as a training run does, alternating plain and checkpointed processes
(`--rounds` each) so that slow spells of a shared machine hit both: the median over all their steps after the
warm-ups. Prints a table with the ratios.

The activation figure isolates what checkpointing changes; it is not what a user sees. Beside it the table gives
the process peak of a training run as a user starts it: the trainer's AdamW (`seeyou_ml.training.optim.
build_optimizer`, whose two moment buffers per weight appear at the first step), glibc's default allocator, and the
kernel's peak resident size of the whole process from start to the last step (`VmHWM`, never reset).

    python benchmarks/grad_checkpointing.py [--batch-size 16] [--image-size 224] [--seq-len 32] [--steps 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MEMORY_ENV, reset_peak, resident_mb  # noqa: E402


def build(args: argparse.Namespace, adamw: bool = False):
    """ResNet-50 + XLM-R base (checkpointed with `--checkpointing`) with gradients allocated up front, and a function
    running one training step and returning its time. The optimizer is plain SGD (no state, so the memory base holds
    everything but the activations), or with `adamw` the one the trainer builds."""

    import torch

    from seeyou_ml import SeeYouConfig, SeeYouModel
    from seeyou_ml.training.config import OptimConfig
    from seeyou_ml.training.optim import build_optimizer

    torch.manual_seed(0)
    model = SeeYouModel(SeeYouConfig()).train()
    if args.checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    optimizer = build_optimizer(model, OptimConfig()) if adamw else torch.optim.SGD(model.parameters(), lr=1e-4)
    batch = dict(
        input_ids=torch.randint(3, 250000, (args.batch_size, args.seq_len)),
        attention_mask=torch.ones(args.batch_size, args.seq_len, dtype=torch.long),
        pixel_values=torch.randn(args.batch_size, 3, args.image_size, args.image_size),
    )
    for parameter in model.parameters():  # gradients allocated up front, so the memory base holds them
        parameter.grad = torch.zeros_like(parameter)

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=False)
        model(**batch, return_loss=True).loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def measure_memory(args: argparse.Namespace) -> dict:
    """Peak resident memory of a warm-up step and `--steps` more, above the resident size before them."""
    step = build(args)
    reset_peak()
    base = resident_mb("VmRSS")
    for _ in range(1 + args.steps):
        step()
    peak = resident_mb("VmHWM")
    return {"peak_mb": peak, "activation_mb": peak - base}


def measure_user_peak(args: argparse.Namespace) -> dict:
    """Peak resident memory of the whole process (imports, model, AdamW state, `--steps` + 1 steps), as a user sees
    it in `top` or in an out-of-memory kill."""
    step = build(args, adamw=True)
    for _ in range(1 + args.steps):
        step()
    return {"user_peak_mb": resident_mb("VmHWM")}


def measure_time(args: argparse.Namespace) -> dict:
    """Times of `--steps` training steps after a warm-up, in one mode, as a run that keeps that mode sees them."""
    step = build(args)
    step()
    return {"step_s": [step() for _ in range(args.steps)]}


def run_child(cmd: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="Timing processes per mode (alternating).")
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["memory", "user-peak", "time"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure = {"memory": measure_memory, "user-peak": measure_user_peak, "time": measure_time}[args.child]
        print(json.dumps(measure(args)))
        return

    def child(kind: str, mode: str, env: dict[str, str]) -> dict:
        cmd = [sys.executable, __file__, "--child", kind, "--batch-size", str(args.batch_size), "--image-size",
               str(args.image_size), "--seq-len", str(args.seq_len), "--steps", str(args.steps)]
        return run_child(cmd + (["--checkpointing"] if mode == "checkpointed" else []), env)

    results = {mode: child("memory", mode, {**os.environ, **MEMORY_ENV}) for mode in ("plain", "checkpointed")}
    default_env = {k: v for k, v in os.environ.items() if k not in MEMORY_ENV}
    for mode in ("plain", "checkpointed"):
        results[mode].update(child("user-peak", mode, default_env))
    times: dict[str, list[float]] = {"plain": [], "checkpointed": []}
    for round_ in range(args.rounds):  # processes alternate, so slow spells of a shared machine hit both modes
        for mode in (("plain", "checkpointed") if round_ % 2 == 0 else ("checkpointed", "plain")):
            times[mode] += child("time", mode, default_env)["step_s"]
    for mode, values in times.items():
        results[mode]["step_s"] = sorted(values)[len(values) // 2]

    plain, ckpt = results["plain"], results["checkpointed"]
    print(f"ResNet-50 + XLM-R base, batch {args.batch_size}, {args.image_size} px, {args.seq_len} tokens, CPU fp32")
    rows = (("activation_mb", "activation peak (MB)"), ("peak_mb", "peak, SGD, per-block mmap (MB)"),
            ("user_peak_mb", "process peak, AdamW, default allocator (MB)"), ("step_s", "step time (s)"))
    width = max(len(label) for _, label in rows) + 2
    print(f"{'':<{width}}{'plain':>12}{'checkpointed':>14}{'ratio':>8}")
    for key, label in rows:
        print(f"{label:<{width}}{plain[key]:>12.2f}{ckpt[key]:>14.2f}{ckpt[key] / plain[key]:>8.3f}")
    print(f"what checkpointing saves a user: {plain['user_peak_mb'] - ckpt['user_peak_mb']:.0f} MB of a "
          f"{plain['user_peak_mb']:.0f} MB process peak ({1 - ckpt['user_peak_mb'] / plain['user_peak_mb']:.1%})")
    print("goals: activation peak ratio <= 0.50, step time ratio <= 1.35")


if __name__ == "__main__":
    main()
