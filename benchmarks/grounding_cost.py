"""What the grounding head costs a training step: time and peak memory with the head vs without.

Three models, random init, batch 16 (`--batch-size`), CPU, fp32:
- `main`: the main job's model (recipes/scenes-tiny.yaml's model section) with and without its grounding_config;
- `main-cls`: the same with the head's matching logit read from the first token (`itm_pooling: cls`, which the main
  job does not use: it grounds worse on val, see the recipe), to show what matching every token costs;
- `r50-xlmr`: ResNet-50 + XLM-R base (the GPU recipes' towers) with recipes/coco-karpathy-gpu.yaml's head.
A step is forward, the loss terms (contrastive alone without the head; contrastive + ITM with hard negatives + box +
attention mass + attention-IoU with it), backward and the update of the recipe's optimizer, as the trainer runs it (the
fused AdamW, the recipe's `keep_freed_memory`). Each (model, head) arm runs in its own process
(so its peak RSS is its own), arms alternate plain/head `--rounds` times, and the table gives the median step time of
each arm, the ratio of medians, and each arm's largest peak RSS.

    python benchmarks/grounding_cost.py [--models main main-cls r50-xlmr] [--steps 5] [--rounds 2] [--batch-size 16]

At the main job's own batch (`--models main --batch-size 512`) the head matches and grounds only the shares its recipe
gives it (`itm_train_pairs`, `expression_train_pairs`).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def build(model_name: str, with_head: bool):
    """The model, its recipe and the input shapes of one arm."""
    from seeyou_ml import SeeYouConfig, SeeYouModel
    from seeyou_ml.training.build import build_model_and_processor
    from seeyou_ml.training.config import TrainingRecipe

    if model_name in ("main", "main-cls"):
        recipe = TrainingRecipe.from_yaml(REPO_ROOT / "recipes" / "scenes-tiny.yaml")
        overrides = recipe.model.config_overrides
        if not with_head:
            recipe.model.config_overrides = {k: v for k, v in overrides.items() if k != "grounding_config"}
        elif model_name == "main-cls":
            overrides["grounding_config"] = dict(overrides["grounding_config"], itm_pooling="cls")
        model, processor = build_model_and_processor(recipe.model)
        image_size = recipe.model.preset_kwargs.get("image_size", 64)
        return model, recipe, image_size, len(processor.tokenizer), recipe.model.channels_last
    recipe = TrainingRecipe.from_yaml(REPO_ROOT / "recipes" / "coco-karpathy-gpu.yaml")
    config = SeeYouConfig(grounding_config=recipe.model.config_overrides["grounding_config"] if with_head else None)
    return SeeYouModel(config), recipe, 224, config.text_config.vocab_size, False


def batch_for(vocab_size: int, image_size: int, channels_last: bool, batch: int = 16) -> dict:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab_size, (batch, 30), generator=generator)
    phrase = torch.randint(5, vocab_size, (batch, 10), generator=generator)
    pixels = torch.randn(batch, 3, image_size, image_size, generator=generator)
    if channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    centres = torch.rand(batch, 2, generator=generator) * 0.6 + 0.2
    return {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels,
        "image_id": [str(i) for i in range(batch)],
        "phrase_input_ids": phrase, "phrase_attention_mask": torch.ones_like(phrase),
        "phrase_boxes": torch.cat([centres, torch.full((batch, 2), 0.2)], dim=1),
    }


def child(model_name: str, with_head: bool, steps: int, batch_size: int) -> None:
    from seeyou_ml.losses import compute_losses
    from seeyou_ml.training.memory import keep_freed_memory
    from seeyou_ml.training.optim import build_optimizer

    torch.manual_seed(0)
    model, recipe, image_size, vocab_size, channels_last = build(model_name, with_head)
    model.train()
    if recipe.keep_freed_memory:  # as the trainer runs the recipe
        keep_freed_memory()
    batch = batch_for(vocab_size, image_size, channels_last, batch_size)
    forward_keys = ["input_ids", "attention_mask", "pixel_values", "image_id"]
    weights = {"contrastive_loss": 1.0}
    if with_head:
        forward_keys += ["phrase_input_ids", "phrase_attention_mask"]
        weights.update(itm_loss=1.0, box_loss=1.0, attention_mass_loss=1.0, attention_iou_loss=1.0)
    optimizer = build_optimizer(model, recipe.optim)  # the trainer's: fused AdamW, a group per tower
    times = []
    for step in range(steps + 1):  # the first step warms up the allocator and oneDNN
        start = time.perf_counter()
        # As the trainer: no own-pair matching pass in the forward; the matching term fuses them with the negatives.
        outputs = model(**{k: batch[k] for k in forward_keys}, output_matching=False)
        total, _ = compute_losses(outputs, batch, model, weights)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"median_s": statistics.median(times), "peak_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["main", "main-cls", "r50-xlmr"],
                        choices=["main", "main-cls", "r50-xlmr"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process (after one warm-up step)")
    parser.add_argument("--rounds", type=int, default=2, help="plain/head process pairs per model, alternating")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "HEAD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1] == "head", args.steps, args.batch_size)
        return
    cpu = torch.backends.cpu.get_cpu_capability()
    print(f"CPU: {cpu}, threads {torch.get_num_threads()}, batch {args.batch_size}, fp32")
    print(f"{'model':<10}{'plain s/step':>14}{'head s/step':>13}{'ratio':>8}{'plain MB':>10}{'head MB':>10}")
    for name in args.models:
        runs: dict[str, list[dict]] = {"plain": [], "head": []}
        for _ in range(args.rounds):
            for arm in ("plain", "head"):
                out = subprocess.run([sys.executable, __file__, "--child", name, arm, "--steps", str(args.steps),
                                      "--batch-size", str(args.batch_size)],
                                     check=True, capture_output=True, text=True).stdout
                runs[arm].append(json.loads(out.strip().splitlines()[-1]))
        plain = statistics.median(r["median_s"] for r in runs["plain"])
        head = statistics.median(r["median_s"] for r in runs["head"])
        plain_mb = max(r["peak_mb"] for r in runs["plain"])
        head_mb = max(r["peak_mb"] for r in runs["head"])
        print(f"{name:<10}{plain:>14.3f}{head:>13.3f}{head / plain:>8.2f}{plain_mb:>10.0f}{head_mb:>10.0f}")


if __name__ == "__main__":
    main()
