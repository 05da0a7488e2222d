"""The main job's training step with the next batch collated in the step, in a background thread, or not at all.

    python benchmarks/collate_overlap.py [--recipe recipes/scenes-tiny.yaml] [--steps 12] [--rounds 3]

Builds the recipe's trainer (its corpus, sampler, collator and model), fills the image cache with one epoch of
batches, then times optimizer steps in alternating rounds of three ways to feed them:

- `collate in step`: the loader collates each batch before its step (`data.background_collate: false`).
- `background thread`: the next batch is collated in a thread while the model steps (the default).
- `pre-collated`: the step alone, on batches collated beforehand: the floor the other two approach.

The table gives the median step time over all rounds and its ratio to collating in the step. Run it on a quiet
machine; under `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` it measures the AVX2 kernels.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from seeyou_ml.training.build import build_trainer
from seeyou_ml.training.config import TrainingRecipe
from seeyou_ml.training.trainer import background_batches

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_medians, trainer_header  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def timed_steps(trainer, batches, steps: int) -> list[float]:
    """Seconds per optimizer step for `steps` steps fed by the iterator `batches` (fetching included)."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.optimizer_step(next(batches))
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(REPO_ROOT / "recipes" / "scenes-tiny.yaml"))
    parser.add_argument("--steps", type=int, default=12, help="steps per way and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    recipe = TrainingRecipe.from_yaml(args.recipe).with_overrides(
        ["--data.eval_split", "null", "--monitor.progress_bar", "false", "--output_dir", "/tmp/collate-overlap"]
    )
    recipe.monitor.report_to = None
    trainer = build_trainer(recipe)
    trainer.stages.apply(trainer.schedule_position())

    def endless():
        while True:
            yield from trainer.loader

    loader = endless()
    for _ in range(len(trainer.batch_sampler)):  # one epoch: every training image in the cache
        next(loader)
    held = [next(loader) for _ in range(4)]
    timed_steps(trainer, iter(held), 2)  # warm-up

    times: dict[str, list[float]] = {"collate in step": [], "background thread": [], "pre-collated": []}
    for _ in range(args.rounds):
        times["collate in step"] += timed_steps(trainer, loader, args.steps)
        background = background_batches(loader)
        times["background thread"] += timed_steps(trainer, background, args.steps)
        background.close()
        times["pre-collated"] += timed_steps(trainer, iter(held * (args.steps // 4 + 1)), args.steps)

    print(trainer_header(recipe, trainer, f"{args.rounds} rounds x {args.steps} steps per way"))
    print_medians("feeding", times, digits=0)


if __name__ == "__main__":
    main()
