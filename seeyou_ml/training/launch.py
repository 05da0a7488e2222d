"""Command line of a training run: `--config recipe.yaml` plus `--key value` overrides.

Used by `recipes/train.py` (`accelerate launch recipes/train.py --config recipes/scenes-tiny.yaml --lr 1e-4`) and by
`seeyou train`. Overrides are resolved as [`TrainingRecipe.with_overrides`] documents.
"""

from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

import torch

from .config import TrainingRecipe
from .trainer import TrainOutput

DESCRIPTION = (
    "Train a SeeYou dual encoder from a YAML recipe. Any recipe field can be overridden with `--key value`: dotted "
    "(--optim.lr 1e-4, --stages.0.steps 200) or, when unique, bare (--lr 1e-4, --resume_from latest)."
)


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    """Adds the training arguments to `parser` (a new one when None)."""
    parser = parser or argparse.ArgumentParser(prog="train.py", description=DESCRIPTION)
    parser.add_argument("--config", required=True, help="Recipe YAML file (see recipes/).")
    parser.add_argument("--print_recipe", action="store_true",
                        help="Print the resolved recipe and exit without training.")
    return parser


def recipe_from_args(config: str, overrides: Sequence[str]) -> TrainingRecipe:
    """The recipe of `--config` with the remaining `--key value` arguments applied."""
    return TrainingRecipe.from_yaml(config).with_overrides(list(overrides))


def run(config: str, overrides: Sequence[str] = (), print_recipe: bool = False) -> Optional[TrainOutput]:
    """Resolves the recipe and trains it (or only prints it)."""
    recipe = recipe_from_args(config, overrides)
    if print_recipe:
        print(recipe.to_yaml(), end="")
        return None
    from .build import build_trainer
    from .report import print_summary

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    # The run's own decisions (precision, resume, checkpoints) are shown; other libraries stay at warnings.
    logging.getLogger("seeyou_ml.training").setLevel(logging.INFO)
    trainer = build_trainer(recipe)
    try:
        output = trainer.train()
        if trainer.accelerator.is_main_process:
            print_summary(output)
            _grounding_grid(trainer)
    finally:
        # A process group left for the interpreter's exit to tear down can abort a process (SIGABRT) after its work.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return output


def _grounding_grid(trainer) -> None:
    """With a grounding head and an eval split that has referring expressions: 16 of its images with gold and
    predicted boxes, in `grounding_grid.png` of the output directory."""
    dataset = trainer.eval_dataset
    if getattr(trainer.unwrapped, "grounding_head", None) is None or dataset is None:
        return
    if "phrase" not in dataset.column_names:
        return
    from ..evaluation.grounding import grounding_grid

    lang = "en" if "en" in set(dataset["lang"]) else dataset[0]["lang"]
    path = grounding_grid(trainer.unwrapped.eval(), trainer.processor, dataset,
                          trainer.output_dir / "grounding_grid.png", lang=lang)
    print(f"Grounding grid: {path}")


def main(argv: Optional[Sequence[str]] = None) -> Optional[TrainOutput]:
    """Entry point of `recipes/train.py`."""
    args, overrides = build_parser().parse_known_args(argv)
    return run(args.config, overrides, args.print_recipe)


__all__ = ["build_parser", "main", "recipe_from_args", "run"]
