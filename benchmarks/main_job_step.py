"""The main job's training step with and without each of its speed levers, measured side by side.

    python benchmarks/main_job_step.py [--recipe recipes/scenes-tiny.yaml] [--rounds 8]

Builds the recipe's trainer (corpus, sampler, collator, model), collates a few batches once, then takes optimizer
steps on them in rotating order, one step per variant per round, so every variant sees the same load swings:

- `one text pass`: the text tower over the whole batch padded to its longest caption (`text_length_groups: 1`).
- `length groups`: the text tower over four groups of captions of similar length.
- `length groups, freed memory kept`: the same with `keep_freed_memory` (the recipe's setting): large tensors come
  from the heap and reuse the last step's pages; the other two run with glibc's behaviour for large requests.

The table gives the median step and its ratio to the first variant, then the collator's time per batch when it
tokenises every caption and when it pads token ids it has cached (`data.cache_text`), the images coming from the
image cache in both. Under `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` it measures the AVX2 kernels.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from seeyou_ml.training.build import build_trainer
from seeyou_ml.training.config import TrainingRecipe
from seeyou_ml.training.memory import keep_freed_memory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_medians, trainer_header  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(REPO_ROOT / "recipes" / "scenes-tiny.yaml"))
    parser.add_argument("--rounds", type=int, default=8, help="steps per variant")
    args = parser.parse_args(argv)

    recipe = TrainingRecipe.from_yaml(args.recipe).with_overrides(
        ["--data.eval_split", "null", "--monitor.progress_bar", "false", "--output_dir", "/tmp/main-job-step"]
    )
    recipe.monitor.report_to = None
    trainer = build_trainer(recipe)
    config = trainer.unwrapped.config
    loader = iter(trainer.loader)
    records = [trainer.loader.dataset[i] for i in range(recipe.data.batch_size)]
    batches = [next(loader) for _ in range(4)]

    variants = {"one text pass": (1, False), "length groups": (4, False), "length groups, freed memory kept": (4, True)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_index in range(args.rounds + 1):  # round 0 warms up every variant
        for offset in range(len(names)):
            name = names[(round_index + offset) % len(names)]
            config.text_length_groups, keep = variants[name]
            keep_freed_memory(keep)
            start = time.perf_counter()
            trainer.optimizer_step(batches[round_index % len(batches)])
            if round_index:
                times[name].append(time.perf_counter() - start)

    collate: dict[str, list[float]] = {"tokenise every caption": [], "cached token ids": []}
    collator = trainer.collate.collate_fn
    for cached in (False, True, False, True, False, True):
        collator.cache_text = cached
        collator(records)  # the cached variant learns the captions here
        start = time.perf_counter()
        collator(records)
        collate["cached token ids" if cached else "tokenise every caption"].append(time.perf_counter() - start)

    print(trainer_header(recipe, trainer, f"{args.rounds} steps per variant"))
    print_medians("step", times, digits=0)
    print_medians("collate", collate, digits=1)


if __name__ == "__main__":
    main()
