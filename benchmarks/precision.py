"""One training step of the main job's model per precision (fp32, bf16) and per CPU kernel level, side by side.

    python benchmarks/precision.py [--recipe recipes/scenes-tiny.yaml] [--steps 5] [--batch-size N]

Each (kernel level, precision) pair runs in its own process: the kernel level is fixed when torch loads, by
`ATEN_CPU_CAPABILITY` and `ONEDNN_MAX_CPU_ISA`, so an AVX-512 machine also measures the AVX2 kernels an AVX2-only
CPU would run (where bf16 is emulated). A step is what the trainer does: forward under autocast, the contrastive
loss, backward, gradient clipping and the fused AdamW step, on the recipe's model and batch size with images of the
recipe's size and 30-token captions. The table gives the median step time, its ratio to fp32 at the same kernel
level, and what `mixed_precision: auto` picks at that level.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
CAPTION_TOKENS = 30


def measure(recipe_path: str, precision: str, steps: int, batch_size: int | None) -> dict:
    """Times `steps` training steps in this process; returns the step times and what `auto` resolves to."""
    import torch

    from seeyou_ml.training.build import build_model_and_processor
    from seeyou_ml.training.config import TrainingRecipe
    from seeyou_ml.training.optim import build_optimizer
    from seeyou_ml.training.precision import resolve_mixed_precision

    recipe = TrainingRecipe.from_yaml(recipe_path)
    torch.manual_seed(0)
    model, _ = build_model_and_processor(recipe.model)
    model.train()
    optimizer = build_optimizer(model, recipe.optim)
    batch = batch_size or recipe.data.batch_size
    size = recipe.model.preset_kwargs.get("image_size", 64)
    pixels = torch.randn(batch, 3, size, size)  # (B, 3, H, W)
    if recipe.model.channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    input_ids = torch.randint(5, 200, (batch, CAPTION_TOKENS))  # (B, T)
    attention_mask = torch.ones_like(input_ids)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels,
                         return_loss=True).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "precision": precision,
        "step_seconds": times,
        "auto": resolve_mixed_precision("auto", device="cpu").mixed_precision,
    }


def run_child(level: str, precision: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(AVX2_ENV if level == "avx2" else {})}
    command = [sys.executable, __file__, "--child", precision, "--recipe", args.recipe, "--steps", str(args.steps)]
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    out = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/scenes-tiny.yaml")
    parser.add_argument("--steps", type=int, default=5, help="Timed steps per process (after 2 warm-up steps).")
    parser.add_argument("--batch-size", type=int, default=None, help="Default: the recipe's data.batch_size.")
    parser.add_argument("--child", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.recipe, args.child, args.steps, args.batch_size)))
        return

    import torch

    native = torch.backends.cpu.get_cpu_capability()
    levels = ["native"] + (["avx2"] if native.startswith("AVX512") else [])
    rows = []
    for level in levels:
        results = {precision: run_child(level, precision, args) for precision in ("fp32", "bf16")}
        base = statistics.median(results["fp32"]["step_seconds"])
        for precision, result in results.items():
            median = statistics.median(result["step_seconds"])
            spread = (max(result["step_seconds"]) - min(result["step_seconds"])) / median
            label = "fp32" if result["auto"] == "no" else result["auto"]
            rows.append((result["capability"] + (" (emulated)" if level == "avx2" else ""), precision,
                         median * 1000, spread * 100, median / base, label))
    print(f"recipe {args.recipe}, {args.steps} steps per cell, machine kernels {native}")
    print(f"{'kernels':<18} {'precision':<9} {'step ms':>8} {'spread %':>9} {'vs fp32':>8}  auto picks")
    for kernels, precision, ms, spread, ratio, auto in rows:
        print(f"{kernels:<18} {precision:<9} {ms:8.0f} {spread:9.1f} {ratio:7.2f}x  {auto}")


if __name__ == "__main__":
    main()
