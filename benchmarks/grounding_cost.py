"""What the grounding head costs a training step: time and peak memory with the head vs without.

Three models, random init, batch 16 (`--batch-size`), CPU, fp32:
- `main`: the main job's model (recipes/scenes-tiny.yaml's model section) with and without its grounding_config;
- `main-cls`: the same with the head's matching logit read from the first token (`itm_pooling: cls`, which the main
  job does not use: it grounds worse on val, see the recipe), to show what matching every token costs;
- `r50-xlmr`: ResNet-50 + XLM-R base (the GPU recipes' towers) with recipes/coco-karpathy-gpu.yaml's head.
A step is forward, the loss terms (contrastive alone without the head; contrastive + ITM with hard negatives + box +
attention mass + attention-IoU with it), backward and the update of the recipe's optimizer, as the trainer runs it (the
fused AdamW, the recipe's `keep_freed_memory`).

Times: one model with its head, and steps with and without the head alternating in one process (the order swapped
every round), so both arms meet the same load swings: the step without it runs the model with `output_grounding=False`
and the contrastive term alone, as the trainer runs the steps before the head's terms start (the head's weights get no
gradient, so AdamW skips them). Run in separate processes one after the other, the arms met different load: on one
2-core AVX2 EPYC the main job's model read anywhere from 1.55 to 1.73x; alternating, 1.66-1.73x in three runs.
Memory: each arm in a process of its own (the plain arm's model built without the head) and its peak RSS. The table
gives each arm's median step time, their ratio, and each arm's peak RSS; a second table what the head adds to each
phase of the step (forward, loss terms, backward, optimizer step; the difference of the arms' medians).

    python benchmarks/grounding_cost.py [--models main main-cls r50-xlmr] [--rounds 20] [--batch-size 16]

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
#: The phases of a training step, timed one after the other.
PHASES = ("forward", "losses", "backward", "optimizer")


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


class TrainingSteps:
    """One model and its optimizer, taking a training step with the head or without it on a fixed batch."""

    def __init__(self, model_name: str, with_head: bool, batch_size: int):
        from seeyou_ml.training.memory import keep_freed_memory
        from seeyou_ml.training.optim import build_optimizer

        torch.manual_seed(0)
        self.model, recipe, image_size, vocab_size, channels_last = build(model_name, with_head)
        self.model.train()
        if recipe.keep_freed_memory:  # as the trainer runs the recipe
            keep_freed_memory()
        self.batch = batch_for(vocab_size, image_size, channels_last, batch_size)
        self.optimizer = build_optimizer(self.model, recipe.optim)  # the trainer's: fused AdamW, a group per tower

    def step(self, with_head: bool) -> dict[str, float]:
        """One optimizer step; returns the seconds of each of its `PHASES` and of the whole step (`step`)."""
        from seeyou_ml.losses import compute_losses

        keys = ["input_ids", "attention_mask", "pixel_values", "image_id"]
        weights = {"contrastive_loss": 1.0}
        if with_head:
            keys += ["phrase_input_ids", "phrase_attention_mask"]
            weights.update(itm_loss=1.0, box_loss=1.0, attention_mass_loss=1.0, attention_iou_loss=1.0)
        marks = [time.perf_counter()]
        # As the trainer: no own-pair matching pass in the forward; the matching term fuses them with the negatives.
        outputs = self.model(**{k: self.batch[k] for k in keys}, output_matching=False, output_grounding=with_head)
        marks.append(time.perf_counter())
        total, _ = compute_losses(outputs, self.batch, self.model, weights)
        marks.append(time.perf_counter())
        total.backward()
        marks.append(time.perf_counter())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        seconds = {phase: marks[i + 1] - marks[i] for i, phase in enumerate(PHASES)}
        return {**seconds, "step": marks[-1] - marks[0]}


def child_memory(model_name: str, with_head: bool, steps: int, batch_size: int) -> None:
    """Prints the peak RSS of a process that takes `steps` steps of one arm (the plain arm's model has no head)."""
    runner = TrainingSteps(model_name, with_head, batch_size)
    for _ in range(steps):
        runner.step(with_head)
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def alternating_times(model_name: str, rounds: int, batch_size: int) -> dict[str, list[dict[str, float]]]:
    """Step times (whole and per phase) without and with the head, alternating on one model, after a warm-up step of
    each (the allocator, oneDNN's kernels)."""
    runner = TrainingSteps(model_name, True, batch_size)
    times: dict[str, list[dict[str, float]]] = {"plain": [], "head": []}
    for round_index in range(rounds + 1):
        order = ("plain", "head") if round_index % 2 else ("head", "plain")
        for arm in order:
            seconds = runner.step(arm == "head")
            if round_index:
                times[arm].append(seconds)
    return times


def median_of(times: list[dict[str, float]], key: str) -> float:
    """The median over steps of one phase's seconds (`"step"`: the whole step)."""
    return statistics.median(t[key] for t in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["main", "main-cls", "r50-xlmr"],
                        choices=["main", "main-cls", "r50-xlmr"])
    parser.add_argument("--rounds", type=int, default=20, help="timed steps per arm, alternating (after a warm-up)")
    parser.add_argument("--memory-steps", type=int, default=3, help="steps of each arm's memory process")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "HEAD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_memory(args.child[0], args.child[1] == "head", args.memory_steps, args.batch_size)
        return
    cpu = torch.backends.cpu.get_cpu_capability()
    print(f"CPU: {cpu}, threads {torch.get_num_threads()}, batch {args.batch_size}, fp32")
    print(f"{'model':<10}{'plain s/step':>14}{'head s/step':>13}{'ratio':>8}{'plain MB':>10}{'head MB':>10}")
    phases = {}
    for name in args.models:
        peaks = {}
        for arm in ("plain", "head"):
            out = subprocess.run([sys.executable, __file__, "--child", name, arm, "--memory-steps",
                                  str(args.memory_steps), "--batch-size", str(args.batch_size)],
                                 check=True, capture_output=True, text=True).stdout
            peaks[arm] = json.loads(out.strip().splitlines()[-1])["peak_mb"]
        times = alternating_times(name, args.rounds, args.batch_size)
        plain, head = median_of(times["plain"], "step"), median_of(times["head"], "step")
        print(f"{name:<10}{plain:>14.3f}{head:>13.3f}{head / plain:>8.2f}{peaks['plain']:>10.0f}{peaks['head']:>10.0f}")
        phases[name] = {phase: median_of(times["head"], phase) - median_of(times["plain"], phase) for phase in PHASES}
    print("\nWhat the head adds to each phase of the step, median ms (the matching pass runs in the loss terms):")
    print(f"{'model':<10}" + "".join(f"{phase:>12}" for phase in PHASES))
    for name, extra in phases.items():
        print(f"{name:<10}" + "".join(f"{1000 * extra[phase]:>12.1f}" for phase in PHASES))


if __name__ == "__main__":
    main()
