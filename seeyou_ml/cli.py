"""The `seeyou` command: one subcommand per task, each registered as a [`Subcommand`].

```
seeyou train RECIPE.yaml [--key value ...]
seeyou evaluate --model DIR --data PATH_OR_NAME [--split val] [--languages en,de] [--output results.json]
seeyou ground --model DIR --image IMAGE --text "the red circle left of the star" [--output grounding.png]
seeyou push OUTPUT_DIR --repo-id NAME [--private] [--revision BRANCH] [--commit-message MSG] [--dry-run DIR]
seeyou card OUTPUT_DIR [--repo-id NAME] [--output README.md]
```

`seeyou COMMAND --help` describes each. A user error (a missing file or folder, an unknown split or language, an
invalid recipe) prints one line that names the input and the fix and exits with status 2; `--debug` shows the
traceback instead.

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

import yaml

USER_ERROR_STATUS = 2
"""Exit status of a user error, as argparse uses for bad arguments."""

# What a user's input can cause: library functions raise these with messages that name the input and the fix. OSError
# covers missing files, unreachable Hub repositories and a refused upload.
USER_ERRORS = (ValueError, OSError, yaml.YAMLError)


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
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _SUBCOMMANDS.values():
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        # SUPPRESS: the subcommand's default must not overwrite `seeyou --debug COMMAND`.
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show the traceback of an error")
        command.add_arguments(sub)
        sub.set_defaults(_run=command.run)
    return parser


def one_line(error: BaseException) -> str:
    """The error's message on one line (whitespace runs, newlines included, become one space)."""
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `seeyou` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"seeyou {args.command}: error: {one_line(error)} (--debug shows the traceback)", file=sys.stderr)
        return USER_ERROR_STATUS


def _comma_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _column_mapping(value: str) -> dict[str, str]:
    """`SRC=DEST[,SRC=DEST...]` as a mapping."""
    pairs = [item.split("=", 1) for item in _comma_list(value)]
    if not pairs or any(len(pair) != 2 or not pair[0].strip() or not pair[1].strip() for pair in pairs):
        raise argparse.ArgumentTypeError(f"{value!r} is not SRC=DEST[,SRC=DEST...], e.g. sentence=caption,img=image")
    return {src.strip(): dest.strip() for src, dest in pairs}


def _looks_local(name: str) -> bool:
    """Whether a `--model` value can only mean a local folder: a path form a Hub id never has, or a folder whose
    parent exists here."""
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        return True
    parent = Path(name).parent
    return str(parent) != "." and parent.is_dir()


def check_model_dir(name: str) -> None:
    """Checks a `--model` value that names a local folder: it must exist and hold `config.json`.

    Raises:
        FileNotFoundError: naming the folder and what to give instead.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"--model {name}: the folder has no config.json; give a folder written by "
                                    "`seeyou train` or save_pretrained.")
    elif path.exists() or _looks_local(name):
        raise FileNotFoundError(f"--model {name}: no such directory; give the output directory of `seeyou train` "
                                "(it holds config.json) or a Hub model id.")


# ---- seeyou train ------------------------------------------------------------------------------------------------


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="recipe YAML file (see recipes/)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER,
                        help="recipe fields as --key value: dotted (--optim.lr 1e-4) or, when unique, bare (--lr 1e-4); "
                             "--print_recipe prints the resolved recipe without training")


def _run_train(args: argparse.Namespace) -> int:
    from .training.launch import run

    # The overrides take everything after the recipe, so flags of the command itself are picked out here.
    if "--debug" in args.overrides:
        args.debug = True
    overrides = [arg for arg in args.overrides if arg not in ("--print_recipe", "--debug")]
    if not Path(args.config).is_file():
        raise FileNotFoundError(f"recipe {args.config}: no such file; give a recipe YAML such as "
                                "recipes/scenes-tiny.yaml.")
    try:
        run(args.config, overrides, print_recipe="--print_recipe" in args.overrides)
    except yaml.YAMLError as error:
        raise ValueError(f"recipe {args.config} is not valid YAML ({one_line(error)}); fix the file.") from error
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


# ---- seeyou evaluate ---------------------------------------------------------------------------------------------


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from .data.corpus import CORPUS_FORMATS

    parser.add_argument("--model", required=True, help="folder written by save_pretrained (model and processor), or "
                                                        "a Hub model id")
    parser.add_argument("--data", required=True,
                        help="a corpus path or dataset name for seeyou_ml.data.load_corpus, or 'scenes' for the "
                             "embedded scenes corpus")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--languages", type=_comma_list, default=None,
                        help="comma-separated ISO 639-1 codes (default: every language of the split)")
    parser.add_argument("--format", choices=sorted(CORPUS_FORMATS), default=None,
                        help="corpus format of --data (default: detected from the path)")
    parser.add_argument("--image-root", type=Path, default=None,
                        help="where the corpus's image paths are relative to (default: the corpus folder)")
    parser.add_argument("--column-mapping", type=_column_mapping, default=None,
                        help="rename source columns onto the record schema: SRC=DEST[,SRC=DEST...], e.g. "
                             "sentence=caption")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--plots-dir", type=Path, default=None,
                        help="save PNG figures here (default: next to --output, else no figures)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    parser.add_argument("--num-images", type=int, default=None,
                        help="scenes only: images in the split (default: the split's full size)")
    parser.add_argument("--seed", type=int, default=None,
                        help="scenes only: seed of the corpus (default 0, the one the recipes train and test on); "
                             "another seed draws new images of the same kind, to check a model on data it has never "
                             "seen")
    parser.add_argument("--cache-dir", type=Path, default=None, help="reuse corpus embeddings saved here")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--adapters", type=Path, default=None,
                        help="folder of per-language LoRA adapters (<lang>/adapter_config.json, peft's layout) to "
                             "load onto the model; languages with an adapter are scored with and without it")
    parser.add_argument("--rerank-top-k", type=int, default=None,
                        help="re-score each query's top k with the model's matching head and report recall before "
                             "and after (needs a grounding head)")
    parser.add_argument("--rerank-similarity-weight", type=float, default=1.0,
                        help="re-ranking score = matching logit + this x the dual encoder's logit of the pair "
                             "(default: 1, BLIP's sum; 0 orders by the matching logit alone)")


def _load_data(args: argparse.Namespace):
    """The evaluation corpus: the scenes corpus (`--num-images`, `--seed`) or one read by load_corpus."""
    from .data.splits import SCENES, load_split

    corpus_options = {"format": args.format, "image_root": args.image_root, "column_mapping": args.column_mapping}
    scenes_options = {"num_images": args.num_images, "seed": args.seed}
    if args.data == SCENES:
        misplaced = corpus_options
        kwargs = {name: value for name, value in scenes_options.items() if value is not None}
        fix = ("options of corpora read by load_corpus, not of the embedded scenes corpus; leave them out or give a "
               "corpus path as --data.")
    else:
        misplaced, kwargs = scenes_options, corpus_options
        fix = f"options of the embedded scenes corpus (--data scenes), not of {args.data}; leave them out."
    given = [f"--{name.replace('_', '-')}" for name, value in misplaced.items() if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: {fix}")
    return load_split(args.data, args.split, languages=args.languages, **kwargs)


def _load_model(name: str, device: str):
    """Model and processor of a saved folder or Hub id, with an error that says which of the two was meant."""
    from transformers import AutoModel, AutoProcessor

    import seeyou_ml  # noqa: F401  (registers the seeyou classes with the Auto* factories)

    check_model_dir(name)
    try:
        return AutoModel.from_pretrained(name).to(device).eval(), AutoProcessor.from_pretrained(name)
    except OSError as error:
        if Path(name).expanduser().is_dir():
            raise
        raise OSError(f"--model {name}: no such local directory, and not loadable from the Hub "
                      f"({one_line(error)}); give the output directory of `seeyou train`.") from error


def _run_evaluate(args: argparse.Namespace) -> int:
    import torch

    from .evaluation import format_results, save_plots
    from .evaluation.grounding import corpus_evaluation

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_model_dir(args.model)  # before the corpus loads: a typo in --model shows at once
    dataset = _load_data(args)
    model, processor = _load_model(args.model, device)
    if args.adapters is not None:
        from .adapters import load_language_adapters

        load_language_adapters(model, args.adapters)
        model.to(device).eval()
    # As the main job's report: zero-shot on a corpus with labels, and a grounding head's boxes on the scenes corpus.
    results = corpus_evaluation(args.data, dataset)(
        model,
        processor,
        dataset,
        languages=args.languages,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
        rerank_top_k=args.rerank_top_k,
        rerank_similarity_weight=args.rerank_similarity_weight,
    )
    results = {"model": str(args.model), "data": args.data, "split": args.split, **results}
    print(format_results(results))
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
        help="Cross-lingual retrieval (R@1/5/10 per language, text→text, zero-shot) of a saved model on a corpus, "
             "and grounding on the scenes corpus.",
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
    from .evaluation.grounding import ground_picture

    if not Path(args.image).is_file():
        raise FileNotFoundError(f"--image {args.image}: no such file; give the path of an image.")
    model, processor = _load_model(args.model, "cpu")
    result = ground_picture(model, processor, args.image, args.text, args.output)
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


# ---- seeyou push -------------------------------------------------------------------------------------------------


def _add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", type=Path, help="output directory of `seeyou train`")
    parser.add_argument("--repo-id", required=True, help="Hub repository, user/name or org/name (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", default=None, help="branch to commit to (created if missing; default: main)")
    parser.add_argument("--commit-message", default=None, help="message of the upload commit")
    parser.add_argument("--license", default=None, help="license id in the card's metadata (default: apache-2.0)")
    parser.add_argument("--dry-run", type=Path, default=None, metavar="DIR",
                        help="write exactly the folder that would be uploaded into DIR (new or empty), list it and "
                             "upload nothing")


def _run_push(args: argparse.Namespace) -> int:
    from .hub import LICENSE, push_to_hub

    # The token is read by huggingface_hub from HF_TOKEN or the login store; this command never sees or prints it.
    result = push_to_hub(args.output_dir, args.repo_id, private=args.private, revision=args.revision,
                         commit_message=args.commit_message, dry_run=args.dry_run, license=args.license or LICENSE)
    if result.folder is not None:
        print(f"Dry run: {len(result.files)} files for {result.repo_id} written to {result.folder}:")
    else:
        print(f"Uploaded {len(result.files)} files to {result.repo_id}: {result.commit_url}")
    for name in result.files:
        print(f"  {name}")
    return 0


register_subcommand(
    Subcommand(
        name="push",
        help="Upload a training output (model, processor, remote code, card, adapters, results, recipe) to the Hub.",
        add_arguments=_add_push_arguments,
        run=_run_push,
    )
)


# ---- seeyou card -------------------------------------------------------------------------------------------------


def _add_card_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", type=Path, help="output directory of `seeyou train`")
    parser.add_argument("--repo-id", default=None, help="Hub repository the card's usage snippet loads from "
                                                        "(default: the folder)")
    parser.add_argument("--output", type=Path, default=None, help="where to write the card (default: "
                                                                  "OUTPUT_DIR/README.md)")
    parser.add_argument("--license", default=None, help="license id in the card's metadata (default: apache-2.0)")


def _run_card(args: argparse.Namespace) -> int:
    from .hub import LICENSE, write_model_card

    path = write_model_card(args.output_dir, repo_id=args.repo_id, license=args.license or LICENSE, path=args.output)
    print(f"Model card: {path}")
    return 0


register_subcommand(
    Subcommand(
        name="card",
        help="Render the model card (README.md) of a training output from model_cards/, with its results.",
        add_arguments=_add_card_arguments,
        run=_run_card,
    )
)


if __name__ == "__main__":
    sys.exit(main())
