"""Our training recipe against `VisionTextDualEncoderModel` + transformers' `Trainer`, same towers, same time.

What is compared: two dual encoders with identical towers and identical initial weights, each trained for the same
wall-clock budget on flickr8k-multi train and scored with the same evaluator on flickr8k-multi val.

- **ours**: `SeeYouModel` (the same towers, weights copied from the baseline's initial VTDE, read out as
  SeeYouModel does by default: mean pooling of the text tower, the vision tower's pooler; linear projections; VTDE's
  tanh text pooler is left unused) trained by `seeyou_ml.training.Trainer` with our recipe: image-unique batches (no false negatives),
  AdamW with per-tower groups and no decay on norms/biases/temperature, warmup + cosine, clipping at 1.0, accelerate.
  The recipe comes from `recipes/flickr8k-multi.yaml` when it exists (else the defaults below), run with
  `max_train_seconds` = the budget and `schedule_by: time`, so its stages, warmup and cosine are laid over the
  budget and end with it whatever the step time.
- **baseline**: `VisionTextDualEncoderModel` trained the way transformers'
  `examples/pytorch/contrastive-image-text/run_clip.py` does: captions tokenised up front padded to
  `max_seq_length=128`, images transformed on the fly, a `collate_fn` returning `pixel_values`, `input_ids`,
  `attention_mask` and `return_loss=True`, `Trainer` with the example's documented hyper-parameters (batch 64,
  lr 5e-5, warmup 0, weight decay 0.1, otherwise `TrainingArguments` defaults: AdamW, linear decay over 3 epochs,
  clipping at 1.0, random caption order). A `TrainerCallback` stops it when the budget is spent.

Both use the same tokenizer (SentencePiece trained on the train captions, cached under outputs/benchmarks), the same
image processor (resize to the tower's size, ImageNet statistics), the same threads and no data workers. Data loading
counts against both budgets. Each arm runs in its own process; by default the two run side by side, so that on a
shared machine both see the same background load. Evaluation: R@1/5/10 per val language, image→text and
text→image, by `seeyou_ml.evaluation.evaluate_retrieval` over L2-normalised embeddings (VTDE's features are
normalised by a wrapper; see `_common.evaluate_per_language`).

    python benchmarks/recipe_vs_baseline.py                                   # 480 s per arm
    python benchmarks/recipe_vs_baseline.py --budget-seconds 60 --max-train-images 1000   # smoke test
    python benchmarks/recipe_vs_baseline.py --ours-text-pooling pooler               # ablation: VTDE's readout

The readout is part of our recipe: with VTDE's (`pooler`: tanh over the `<s>` token) the randomly initialised text
tower gives nearly the same embedding to every caption (mean off-diagonal cosine ~0.9998), and a few hundred CPU steps
do not get past the uniform-logits plateau (loss ln B); `--ours-text-pooling pooler` shows that ablation.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    CACHE_DIR,
    FLICKR_DIR,
    REPO_ROOT,
    TowerSizes,
    build_vtde,
    evaluate_per_language,
    flickr_tokenizer,
    format_table,
    load_average,
    load_flickr,
    seeyou_from_vtde,
)

RECIPE_FILE = REPO_ROOT / "recipes" / "flickr8k-multi.yaml"

# Our recipe when recipes/flickr8k-multi.yaml is absent: from-scratch towers, so a higher peak rate than the 3e-5
# meant for pretrained ones; warmup and stage lengths are shares of the budget (schedule_by: time).
DEFAULT_RECIPE = {
    "name": "recipe-vs-baseline",
    "seed": 0,
    "mixed_precision": "no",
    "data": {"batch_size": 128, "image_unique_batches": True, "max_length": 64},
    "optim": {"lr": 1e-3, "weight_decay": 0.1, "warmup_steps": 50, "min_lr_ratio": 0.0, "max_grad_norm": 1.0},
    "stages": [{"name": "joint", "steps": 1000}],
}
RUN_CLIP_ARGS = {"per_device_train_batch_size": 64, "learning_rate": 5e-5, "warmup_steps": 0, "weight_decay": 0.1}
RUN_CLIP_MAX_SEQ_LENGTH = 128


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--budget-seconds", type=float, default=480.0, help="Wall-clock training budget per arm.")
    parser.add_argument("--max-train-images", type=int, default=None,
                        help="Train on the captions of the first N train images only (quick runs).")
    parser.add_argument("--recipe", default=str(RECIPE_FILE),
                        help="Our recipe YAML (data/optim/stages/precision are used; model and corpus are fixed "
                             "here). Built-in defaults when the file does not exist.")
    parser.add_argument("--ours-lr", type=float, default=None,
                        help="Peak learning rate of our recipe (default: the recipe's; for ablations).")
    parser.add_argument("--baseline-lr", type=float, default=RUN_CLIP_ARGS["learning_rate"],
                        help="Baseline learning rate (run_clip's documented 5e-5 by default; for ablations).")
    parser.add_argument("--ours-text-pooling", choices=["pooler", "mean", "cls"], default="mean",
                        help="How our model reads a caption out of the (same) text tower: `mean` is SeeYouModel's "
                             "default; `pooler` is VTDE's tanh pooler over <s> (identical model).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the shared initialisation and of both runs.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each arm.")
    parser.add_argument("--sequential", action="store_true",
                        help="Run the arms one after the other (default: side by side, one process each).")
    parser.add_argument("--work-dir", default=str(CACHE_DIR / "recipe_vs_baseline"), help="Scratch directory.")
    parser.add_argument("--arm", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---- our recipe -------------------------------------------------------------------------------------------------


def our_recipe(args: argparse.Namespace, output_dir: Path):
    """The recipe of `--recipe` (or the defaults) with the benchmark's corpus, model and bookkeeping fixed."""
    import yaml

    from seeyou_ml.training.config import TrainingRecipe

    source = Path(args.recipe)
    data = yaml.safe_load(source.read_text(encoding="utf-8")) if source.exists() else copy.deepcopy(DEFAULT_RECIPE)
    data["output_dir"] = str(output_dir)
    data["seed"] = args.seed
    data.setdefault("data", {}).update({"corpus": str(FLICKR_DIR), "corpus_kwargs": {}, "eval_split": None,
                                        "languages": None, "num_workers": 0})
    data["data"]["max_length"] = min(data["data"].get("max_length") or RUN_CLIP_MAX_SEQ_LENGTH,
                                     RUN_CLIP_MAX_SEQ_LENGTH)
    # The model is built here (from the shared initial VTDE), so only the recipe's training switches of its model
    # section apply.
    model = data.get("model", {})
    data["model"] = {"preset": None, **{k: model[k] for k in ("gradient_checkpointing", "freeze_batchnorm")
                                        if k in model}}
    data["monitor"] = {**data.get("monitor", {}), "report_to": None, "progress_bar": True}
    data["checkpoint"] = {"save_every": 0}
    data["max_train_seconds"] = args.budget_seconds
    data["schedule_by"] = "time"
    if args.ours_lr is not None:
        data.setdefault("optim", {})["lr"] = args.ours_lr
    return TrainingRecipe.from_dict(data), source.exists()


def run_ours(args: argparse.Namespace, work_dir: Path) -> dict:
    from transformers import VisionTextDualEncoderModel

    from seeyou_ml.presets import tiny_processor
    from seeyou_ml.training.build import build_batch_sampler, build_collator
    from seeyou_ml.training.trainer import Trainer, make_accelerator

    output_dir = work_dir / "ours"
    shutil.rmtree(output_dir, ignore_errors=True)
    recipe, from_file = our_recipe(args, output_dir)
    tokenizer = flickr_tokenizer()
    sizes = TowerSizes()
    processor = tiny_processor(tokenizer, image_size=sizes.image_size)
    model = seeyou_from_vtde(VisionTextDualEncoderModel.from_pretrained(str(work_dir / "init")),
                             text_pooling=args.ours_text_pooling)
    train = load_flickr("train", args.max_train_images)
    accelerator = make_accelerator(recipe)
    trainer = Trainer(recipe, model=model, processor=processor, train_dataset=train,
                      collate_fn=build_collator(recipe.data, processor),
                      batch_sampler=build_batch_sampler(recipe.data, train, recipe.seed), accelerator=accelerator)
    print(f"[ours] stages {[(s.name, s.steps) for s in recipe.stages]} laid over {recipe.max_train_seconds:g} s",
          flush=True)
    output = trainer.train()
    losses = [loss for _, loss in output.losses]
    val = load_flickr("val")
    results = evaluate_per_language(trainer.unwrapped, processor, val)
    return {
        "train_seconds": output.train_seconds,
        "steps": output.step,
        "samples": output.step * recipe.data.batch_size,
        "batch_size": recipe.data.batch_size,
        "final_loss": statistics.fmean(losses[-10:]) if losses else float("nan"),
        "recipe": f"{Path(args.recipe).name if from_file else 'built-in defaults'} scheduled by time, "
                  f"lr {recipe.optim.lr:g}, precision {accelerator.mixed_precision}, "
                  f"text pooling {args.ours_text_pooling}",
        "results": results,
    }


# ---- the run_clip baseline --------------------------------------------------------------------------------------


def run_baseline(args: argparse.Namespace, work_dir: Path) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments, VisionTextDualEncoderModel

    from seeyou_ml.presets import tiny_processor

    class WallClockStop(TrainerCallback):
        """Stops training at the first step end past the budget."""

        def __init__(self, seconds: float):
            self.seconds = seconds
            self.started = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if time.perf_counter() - self.started >= self.seconds:
                control.should_training_stop = True

    output_dir = work_dir / "baseline"
    shutil.rmtree(output_dir, ignore_errors=True)
    tokenizer = flickr_tokenizer()
    sizes = TowerSizes()
    processor = tiny_processor(tokenizer, image_size=sizes.image_size)
    model = VisionTextDualEncoderModel.from_pretrained(str(work_dir / "init"))
    train = load_flickr("train", args.max_train_images)

    # As run_clip: tokenise every caption once, padded to max_seq_length; transform images when a row is read.
    def tokenize_captions(captions):
        return tokenizer(captions, max_length=RUN_CLIP_MAX_SEQ_LENGTH, padding="max_length", truncation=True)

    train = train.map(tokenize_captions, input_columns=["caption"], batched=True, desc="tokenize captions")

    def transform_images(examples):
        images = [image.convert("RGB") for image in examples["image"]]
        examples["pixel_values"] = list(processor(images=images, return_tensors="pt")["pixel_values"])
        return examples

    train.set_transform(transform_images)

    def collate_fn(examples):
        return {
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "input_ids": torch.tensor([example["input_ids"] for example in examples], dtype=torch.long),
            "attention_mask": torch.tensor([example["attention_mask"] for example in examples], dtype=torch.long),
            "return_loss": True,
        }

    training_args = TrainingArguments(
        output_dir=str(output_dir),
        **{**RUN_CLIP_ARGS, "learning_rate": args.baseline_lr},
        remove_unused_columns=False,
        seed=args.seed,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=25,
        dataloader_num_workers=0,
    )
    stopper = WallClockStop(args.budget_seconds)
    trainer = Trainer(model=model, args=training_args, train_dataset=train, data_collator=collate_fn,
                      callbacks=[stopper])
    result = trainer.train()
    train_seconds = time.perf_counter() - stopper.started
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    val = load_flickr("val")
    results = evaluate_per_language(model, processor, val)
    return {
        "train_seconds": train_seconds,
        "steps": result.global_step,
        "samples": result.global_step * RUN_CLIP_ARGS["per_device_train_batch_size"],
        "batch_size": RUN_CLIP_ARGS["per_device_train_batch_size"],
        "final_loss": losses[-1] if losses else float("nan"),
        "recipe": f"run_clip.py, lr {args.baseline_lr:g}, fp32, text pooling pooler",
        "results": results,
    }


# ---- driver -----------------------------------------------------------------------------------------------------


def mean_recall(results: dict, k: int, direction: str | None = None) -> float:
    """Mean over languages (and over both directions unless one is named) of R@k."""
    directions = [direction] if direction else ["image_to_text", "text_to_image"]
    return statistics.fmean(r[f"{d}/R@{k}"] for r in results.values() for d in directions)


def print_report(ours: dict, baseline: dict, args: argparse.Namespace) -> None:
    headers = ["lang", "ours i→t", "ours t→i", "base i→t", "base t→i", "ours/base"]
    rows = []
    for lang in sorted(ours["results"]):
        o, b = ours["results"][lang], baseline["results"][lang]
        o_mean = (o["image_to_text/R@10"] + o["text_to_image/R@10"]) / 2
        b_mean = (b["image_to_text/R@10"] + b["text_to_image/R@10"]) / 2
        rows.append([lang, o["image_to_text/R@10"], o["text_to_image/R@10"], b["image_to_text/R@10"],
                     b["text_to_image/R@10"], f"{o_mean / b_mean:.2f}x" if b_mean else "inf"])
    rows.append(["mean", mean_recall(ours["results"], 10, "image_to_text"),
                 mean_recall(ours["results"], 10, "text_to_image"),
                 mean_recall(baseline["results"], 10, "image_to_text"),
                 mean_recall(baseline["results"], 10, "text_to_image"),
                 f"{mean_recall(ours['results'], 10) / mean_recall(baseline['results'], 10):.2f}x"])
    print(f"\nflickr8k-multi val R@10 (%), budget {args.budget_seconds:g} s per arm"
          f"{f', first {args.max_train_images} train images' if args.max_train_images else ''}")
    print(format_table(headers, rows))
    print()
    summary = [["mean R@1 (both directions)", mean_recall(ours["results"], 1), mean_recall(baseline["results"], 1)],
               ["mean R@5 (both directions)", mean_recall(ours["results"], 5), mean_recall(baseline["results"], 5)],
               ["mean R@10 (both directions)", mean_recall(ours["results"], 10),
                mean_recall(baseline["results"], 10)]]
    for key in ("train_seconds", "steps", "batch_size", "samples", "final_loss"):
        summary.append([key, ours[key], baseline[key]])
    summary.append(["recipe", ours["recipe"], baseline["recipe"]])
    summary.append(["load average during run", ours["load"], baseline["load"]])
    print(format_table(["", "ours", "baseline"], summary))
    ratio = mean_recall(ours["results"], 10) / mean_recall(baseline["results"], 10)
    print(f"\nmean val R@10 ours/baseline: {ratio:.2f}x (goal >= 1.3x)")


def main(argv=None) -> None:
    args = parse_args(argv)
    work_dir = Path(args.work_dir)
    if args.arm:
        import torch

        torch.set_num_threads(args.threads)
        result = run_ours(args, work_dir) if args.arm == "ours" else run_baseline(args, work_dir)
        result["load"] = load_average()
        (work_dir / f"{args.arm}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
        return

    # The shared initialisation: one random VTDE, saved as safetensors and loaded by both arms.
    work_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = flickr_tokenizer()
    build_vtde(len(tokenizer), tokenizer.pad_token_id, TowerSizes(), args.seed).save_pretrained(
        str(work_dir / "init"))
    forwarded = list(argv if argv is not None else sys.argv[1:])
    arms = ("ours", "baseline")
    if args.sequential:
        for arm in arms:
            print(f"=== {arm} (load average {load_average()}) ===", flush=True)
            subprocess.run([sys.executable, __file__, *forwarded, "--arm", arm], check=True, cwd=REPO_ROOT)
    else:
        # Side by side, one process each: on a shared machine both arms then see the same background load.
        logs = {arm: open(work_dir / f"{arm}.log", "w", encoding="utf-8") for arm in arms}
        print(f"running both arms side by side (load average {load_average()}); logs: "
              f"{', '.join(str(work_dir / f'{arm}.log') for arm in arms)}", flush=True)
        processes = {arm: subprocess.Popen([sys.executable, __file__, *forwarded, "--arm", arm], cwd=REPO_ROOT,
                                           stdout=logs[arm], stderr=subprocess.STDOUT) for arm in arms}
        for arm, process in processes.items():
            if process.wait():
                raise SystemExit(f"the {arm} arm failed (exit {process.returncode}); see {work_dir / f'{arm}.log'}")
            logs[arm].close()
    results = {arm: json.loads((work_dir / f"{arm}.json").read_text(encoding="utf-8")) for arm in arms}
    print_report(results["ours"], results["baseline"], args)


if __name__ == "__main__":
    main()
