"""Peak memory and step time of a training step with and without gradient checkpointing.

ResNet-50 + XLM-R base (random init), batch 16, 224 px, on the CPU. Each mode runs in fresh processes, one that
measures memory and one that measures time. "Activation peak" is the peak resident memory of the training steps
above what the process held before the first step (weights, gradients, the batch): the part checkpointing trades
for recompute. The memory process reads the peak from the kernel (`VmHWM`, reset before the steps) and runs with
glibc placing every block of 64 KB or more in its own mapping, so that freeing a tensor returns its pages and
resident memory follows the live tensors (by default glibc keeps freed heap pages resident, and the peak would count
memory freed long before). The time process runs with the default allocator. Step time is the median over the
steps after a warm-up. Prints a table with the ratios.

    python benchmarks/grad_checkpointing.py [--batch-size 16] [--image-size 224] [--seq-len 32] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def resident_mb(field: str) -> float:
    """`VmRSS` (now) or `VmHWM` (peak since the last reset) of this process, in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} line; this benchmark needs Linux.")


def reset_peak() -> None:
    """Sets this process's `VmHWM` back to its current resident size (Linux `clear_refs` code 5)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def run_mode(args: argparse.Namespace) -> dict:
    import warnings

    import torch

    from seeyou_ml import SeeYouConfig, SeeYouModel

    torch.manual_seed(0)
    model = SeeYouModel(SeeYouConfig()).train()  # ResNet-50 + XLM-R base
    if args.checkpointing:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    batch = dict(
        input_ids=torch.randint(3, 250000, (args.batch_size, args.seq_len)),
        attention_mask=torch.ones(args.batch_size, args.seq_len, dtype=torch.long),
        pixel_values=torch.randn(args.batch_size, 3, args.image_size, args.image_size),
    )

    def step():
        optimizer.zero_grad(set_to_none=False)
        model(**batch, return_loss=True).loss.backward()
        optimizer.step()

    for parameter in model.parameters():  # gradients allocated up front, so the base below holds them
        parameter.grad = torch.zeros_like(parameter)
    reset_peak()
    base = resident_mb("VmRSS")
    step()  # warm-up; its peak counts, its time does not
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = resident_mb("VmHWM")
    return {"step_s": sorted(times)[len(times) // 2], "peak_mb": peak, "activation_mb": peak - base}


def run_child(cmd: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_mode(args)))
        return

    results = {}
    for mode in ("plain", "checkpointed"):
        cmd = [sys.executable, __file__, "--child", "--batch-size", str(args.batch_size), "--image-size",
               str(args.image_size), "--seq-len", str(args.seq_len), "--steps", str(args.steps)]
        if mode == "checkpointed":
            cmd.append("--checkpointing")
        memory = run_child(cmd, {**os.environ, **MEMORY_ENV})
        timing = run_child(cmd, {k: v for k, v in os.environ.items() if k not in MEMORY_ENV})
        results[mode] = {"activation_mb": memory["activation_mb"], "peak_mb": memory["peak_mb"],
                         "step_s": timing["step_s"]}

    plain, ckpt = results["plain"], results["checkpointed"]
    print(f"ResNet-50 + XLM-R base, batch {args.batch_size}, {args.image_size} px, {args.seq_len} tokens, CPU fp32")
    print(f"{'':<22}{'plain':>12}{'checkpointed':>14}{'ratio':>8}")
    for key, label in (("activation_mb", "activation peak (MB)"), ("peak_mb", "process peak (MB)"),
                       ("step_s", "step time (s)")):
        print(f"{label:<22}{plain[key]:>12.2f}{ckpt[key]:>14.2f}{ckpt[key] / plain[key]:>8.3f}")
    print("goals: activation peak ratio <= 0.50, step time ratio <= 1.35")


if __name__ == "__main__":
    main()
