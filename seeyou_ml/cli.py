"""The `seeyou` command: one subcommand per task, each registered as a [`Subcommand`].

```
seeyou evaluate --model DIR --data PATH_OR_NAME --split val [--languages en,de] [--output results.json]
```

A new task adds a `Subcommand` (its arguments and what it runs) with [`register_subcommand`]; `main` builds the
parser from every registered one.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence


@dataclass(frozen=True)
class Subcommand:
    """A `seeyou` subcommand.

    Args:
        name: what follows `seeyou` on the command line.
        help: one line for `seeyou --help`.
        add_arguments: adds the subcommand's options to its parser.
        run: runs it with the parsed arguments and returns the exit status.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


_SUBCOMMANDS: dict[str, Subcommand] = {}


def register_subcommand(command: Subcommand) -> Subcommand:
    """Makes `command` available as `seeyou <command.name>`.

    Raises:
        ValueError: when another subcommand already has that name.
    """
    if command.name in _SUBCOMMANDS and _SUBCOMMANDS[command.name] is not command:
        raise ValueError(f"a subcommand named {command.name!r} is already registered; pick another name.")
    _SUBCOMMANDS[command.name] = command
    return command


def build_parser() -> argparse.ArgumentParser:
    """The `seeyou` argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="seeyou", description="Multilingual image-text alignment: seeyou-ml.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _SUBCOMMANDS.values():
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `seeyou` console script."""
    args = build_parser().parse_args(argv)
    return args._run(args)


# ---- seeyou evaluate ---------------------------------------------------------------------------------------------


def _comma_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="folder written by save_pretrained (model and processor)")
    parser.add_argument("--data", required=True,
                        help="a corpus path or dataset name for seeyou_ml.data.load_corpus, or 'scenes' for the "
                             "embedded scenes corpus")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--languages", type=_comma_list, default=None,
                        help="comma-separated ISO 639-1 codes (default: every language of the split)")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--plots-dir", type=Path, default=None,
                        help="save PNG figures here (default: next to --output, else no figures)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    parser.add_argument("--num-images", type=int, default=None,
                        help="scenes only: images in the split (default: the split's full size)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="reuse corpus embeddings saved here")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--rerank-top-k", type=int, default=None,
                        help="re-score each query's top k with the model's matching head and report recall before "
                             "and after (needs a grounding head)")


def _load_data(args: argparse.Namespace):
    """The evaluation corpus and, for the scenes corpus, its zero-shot labels and prompts."""
    if args.data == "scenes":
        from .data.scenes import class_prompts, load_scenes

        dataset = load_scenes(args.split, num_images=args.num_images, languages=args.languages)
        languages = args.languages or sorted(set(dataset["lang"]))
        return dataset, {"label_column": "label", "prompts": {lang: class_prompts(lang) for lang in languages}}
    from .data import load_corpus

    return load_corpus(args.data, split=args.split, languages=args.languages), {}


def _run_evaluate(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModel, AutoProcessor

    import seeyou_ml  # noqa: F401  (registers the seeyou classes with the Auto* factories)

    from .evaluation import evaluate_retrieval, format_table, save_plots

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModel.from_pretrained(args.model).to(device).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    dataset, zero_shot = _load_data(args)
    results = evaluate_retrieval(
        model,
        processor,
        dataset,
        languages=args.languages,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
        rerank_top_k=args.rerank_top_k,
        **zero_shot,
    )
    results = {"model": str(args.model), "data": args.data, "split": args.split, **results}
    print(format_table(results))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"\nResults: {args.output}")
    plots_dir = args.plots_dir or (args.output.parent if args.output is not None else None)
    if plots_dir is not None:
        for path in save_plots(results, plots_dir):
            print(f"Figure: {path}")
    return 0


register_subcommand(
    Subcommand(
        name="evaluate",
        help="Cross-lingual retrieval (R@1/5/10 per language, text→text, zero-shot) of a saved model on a corpus.",
        add_arguments=_add_evaluate_arguments,
        run=_run_evaluate,
    )
)


# ---- seeyou ground -----------------------------------------------------------------------------------------------


def _add_ground_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="folder written by save_pretrained, with a grounding head")
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--text", required=True, help="referring expression, e.g. 'the red circle left of the star'")
    parser.add_argument("--output", type=Path, default=Path("grounding.png"), help="PNG to write (grounding.png)")


def _run_ground(args: argparse.Namespace) -> int:
    from transformers import AutoModel, AutoProcessor

    import seeyou_ml  # noqa: F401  (registers the seeyou classes with the Auto* factories)

    from .evaluation.grounding import ground_picture

    model = AutoModel.from_pretrained(args.model).eval()
    result = ground_picture(model, AutoProcessor.from_pretrained(args.model), args.image, args.text, args.output)
    box = ", ".join(f"{v:.1f}" for v in result.boxes[0].tolist())
    print(f"box [{box}]  match {result.scores[0]:.3f}  picture {args.output}")
    return 0


register_subcommand(
    Subcommand(
        name="ground",
        help="Find what a referring expression points at in an image; writes a PNG with the box and attention map.",
        add_arguments=_add_ground_arguments,
        run=_run_ground,
    )
)


# ---- seeyou train ------------------------------------------------------------------------------------------------


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="recipe YAML file (see recipes/)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER,
                        help="recipe fields as --key value: dotted (--optim.lr 1e-4) or, when unique, bare (--lr 1e-4); "
                             "--print_recipe prints the resolved recipe without training")


def _run_train(args: argparse.Namespace) -> int:
    from .training.launch import run

    overrides = [arg for arg in args.overrides if arg != "--print_recipe"]
    run(args.config, overrides, print_recipe=len(overrides) != len(args.overrides))
    return 0


register_subcommand(
    Subcommand(
        name="train",
        help="Train from a recipe: seeyou train recipes/scenes-tiny.yaml [--key value ...] (or accelerate launch "
             "recipes/train.py --config ... for several processes).",
        add_arguments=_add_train_arguments,
        run=_run_train,
    )
)


if __name__ == "__main__":
    sys.exit(main())
