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
- **baseline**: `VisionTextDualEncoderModel` trained with transformers' `Trainer` as in
  `examples/pytorch/contrastive-image-text/run_clip.py` (captions tokenised up front, images transformed on the fly,
  a `collate_fn` returning `pixel_values`, `input_ids`, `attention_mask` and `return_loss=True`, batch 64, weight
  decay 0.1, the Trainer's default AdamW, clipping at 1.0, random caption order), with what a run_clip user would
  choose for towers trained from scratch rather than the example's settings for pretrained ones: its own learning
  rate, picked by a small sweep scored on val (`--baseline-lr-sweep`; skipped when `--baseline-lr` is given),
  dynamic padding to the longest caption of the batch with the same maximum length as ours (not 128 for every
  caption), the same precision as ours, and a cosine schedule laid over the same budget with the same warmup share
  (not a linear decay over 3 epochs that barely moves within the budget). A `TrainerCallback` stops it when the
  budget is spent.

Not equalised, because it is what the two models are: VTDE reads a caption out with the text tower's tanh pooler over
`<s>`, SeeYouModel by mean pooling (`--ours-text-pooling pooler` gives ours VTDE's readout, the same model).

Both use the same tokenizer (SentencePiece trained on the train captions, cached under outputs/benchmarks), the same
image processor (resize to the tower's size, ImageNet statistics), the same threads and no data workers. Data loading
counts against both budgets. Each arm runs in its own process; the runs of one seed (and the sweep's runs) go side
by side, so that on a shared machine they see the same background load. Every arm runs once per seed (`--seeds`,
default 0,1,2: the shared initialisation and both data orders); the report gives each seed's figures, the spread
over seeds and the ours/baseline ratio per seed, so a ratio is quoted only with the spread it survives.
Evaluation: R@1/5/10 per val language, image→text and text→image, by `seeyou_ml.evaluation.evaluate_retrieval`
over L2-normalised embeddings (VTDE's features are normalised by a wrapper; see `_common.evaluate_per_language`).

    python benchmarks/recipe_vs_baseline.py       # sweep 4 × 120 s, then 240 s per arm and seed: ~20 min on 2 cores
    python benchmarks/recipe_vs_baseline.py --budget-seconds 60 --max-train-images 1000 --seeds 0   # smoke test
    python benchmarks/recipe_vs_baseline.py --ours-text-pooling pooler               # ablation: VTDE's readout

The readout is part of our recipe: with VTDE's (`pooler`: tanh over the `<s>` token) the randomly initialised text
tower gives nearly the same embedding to every caption (mean off-diagonal cosine ~0.9998), and a few hundred CPU steps
do not get past the uniform-logits plateau (loss ln B); `--ours-text-pooling pooler` shows that ablation.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

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
    optimizer_kind,
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
RUN_CLIP_ARGS = {"per_device_train_batch_size": 64, "weight_decay": 0.1}
RUN_CLIP_MAX_SEQ_LENGTH = 128
BASELINE_LR_SWEEP = "1e-4,3e-4,1e-3,3e-3"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--budget-seconds", type=float, default=240.0,
                        help="Wall-clock training budget per arm and seed.")
    parser.add_argument("--max-train-images", type=int, default=None,
                        help="Train on the captions of the first N train images only (quick runs).")
    parser.add_argument("--recipe", default=str(RECIPE_FILE),
                        help="Our recipe YAML (data/optim/stages/precision are used; model and corpus are fixed "
                             "here). Built-in defaults when the file does not exist.")
    parser.add_argument("--ours-lr", type=float, default=None,
                        help="Peak learning rate of our recipe (default: the recipe's; for ablations).")
    parser.add_argument("--baseline-lr", type=float, default=None,
                        help="Baseline peak learning rate; by default the best of --baseline-lr-sweep on val.")
    parser.add_argument("--baseline-lr-sweep", default=BASELINE_LR_SWEEP,
                        help="Learning rates the baseline tries (first seed, side by side, scored on val R@10).")
    parser.add_argument("--sweep-seconds", type=float, default=120.0,
                        help="Budget of each sweep run (the sweep's runs share the cores, so rates are compared with "
                             "each other, not with the final runs).")
    parser.add_argument("--ours-text-pooling", choices=["pooler", "mean", "cls"], default="mean",
                        help="How our model reads a caption out of the (same) text tower: `mean` is SeeYouModel's "
                             "default; `pooler` is VTDE's tanh pooler over <s> (identical model).")
    parser.add_argument("--seeds", default="0,1,2",
                        help="Seeds (each: the shared initialisation and both runs' data order and dropout).")
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each arm.")
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

    output_dir = work_dir / args.tag
    shutil.rmtree(output_dir, ignore_errors=True)
    recipe, from_file = our_recipe(args, output_dir)
    tokenizer = flickr_tokenizer()
    sizes = TowerSizes()
    processor = tiny_processor(tokenizer, image_size=sizes.image_size)
    model = seeyou_from_vtde(VisionTextDualEncoderModel.from_pretrained(str(work_dir / f"init-{args.seed}")),
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


def warmup_cosine_by_time(budget_seconds: float, warmup_share: float, clock: dict) -> Callable[[int], float]:
    """Learning-rate factor at the elapsed share of the budget: linear warmup over `warmup_share`, then cosine to 0
    at the end of the budget (what `schedule_by: time` lays over ours). `clock["start"]` is set when training
    begins."""

    def factor(_step: int) -> float:
        if clock.get("start") is None:
            return 0.0
        share = min((time.perf_counter() - clock["start"]) / budget_seconds, 1.0)
        if share < warmup_share:
            return share / warmup_share
        return 0.5 * (1.0 + math.cos(math.pi * (share - warmup_share) / (1.0 - warmup_share)))

    return factor


def run_baseline(args: argparse.Namespace, work_dir: Path) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments, VisionTextDualEncoderModel

    from seeyou_ml.presets import tiny_processor

    recipe, _ = our_recipe(args, work_dir / "unused")
    budget = args.budget_seconds
    # The same warmup share of the run as ours: its warmup steps over its scheduled steps.
    warmup_share = min(recipe.optim.warmup_steps / max(sum(stage.steps for stage in recipe.stages), 1), 0.5)
    clock = {"start": None}

    class WallClockStop(TrainerCallback):
        """Starts the schedule's clock and stops training at the first step end past the budget."""

        def on_train_begin(self, args, state, control, **kwargs):
            clock["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if time.perf_counter() - clock["start"] >= budget:
                control.should_training_stop = True

    class CosineOverBudget(Trainer):
        """transformers' Trainer with its schedule following the clock: warmup + cosine laid over the budget."""

        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:
                factor = warmup_cosine_by_time(budget, warmup_share, clock)
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
            return self.lr_scheduler

    output_dir = work_dir / args.tag
    shutil.rmtree(output_dir, ignore_errors=True)
    tokenizer = flickr_tokenizer()
    sizes = TowerSizes()
    processor = tiny_processor(tokenizer, image_size=sizes.image_size)
    model = VisionTextDualEncoderModel.from_pretrained(str(work_dir / f"init-{args.seed}"))
    train = load_flickr("train", args.max_train_images)
    max_length = recipe.data.max_length

    # As run_clip: tokenise every caption once; transform images when a row is read. Unlike run_clip, no padding
    # here: each batch is padded to its longest caption, as our collator does.
    def tokenize_captions(captions):
        return tokenizer(captions, max_length=max_length, truncation=True)

    train = train.map(tokenize_captions, input_columns=["caption"], batched=True, desc="tokenize captions")

    def transform_images(examples):
        images = [image.convert("RGB") for image in examples["image"]]
        examples["pixel_values"] = list(processor(images=images, return_tensors="pt")["pixel_values"])
        return examples

    train.set_transform(transform_images)

    def collate_fn(examples):
        text = tokenizer.pad([{"input_ids": example["input_ids"]} for example in examples], padding="longest",
                             return_tensors="pt")
        return {
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "return_loss": True,
        }

    training_args = TrainingArguments(
        output_dir=str(output_dir),
        **RUN_CLIP_ARGS,
        learning_rate=args.baseline_lr,
        max_steps=10**9,  # the budget ends the run; the schedule follows the clock, not a step count
        bf16=args.precision == "bf16",
        remove_unused_columns=False,
        seed=args.seed,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=5,  # short budgets take few steps; the final loss is the last logged one
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = CosineOverBudget(model=model, args=training_args, train_dataset=train, data_collator=collate_fn,
                               callbacks=[WallClockStop()])
    result = trainer.train()
    train_seconds = time.perf_counter() - clock["start"]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    val = load_flickr("val")
    results = evaluate_per_language(model, processor, val)
    return {
        "train_seconds": train_seconds,
        "steps": result.global_step,
        "samples": result.global_step * RUN_CLIP_ARGS["per_device_train_batch_size"],
        "batch_size": RUN_CLIP_ARGS["per_device_train_batch_size"],
        "final_loss": losses[-1] if losses else float("nan"),
        "recipe": f"run_clip.py, lr {args.baseline_lr:g}, {args.precision}, cosine over the budget "
                  f"(warmup {warmup_share:.0%}), padded to the batch's longest (max {max_length}), "
                  f"{optimizer_kind(trainer.optimizer)} AdamW, text pooling pooler",
        "results": results,
    }


# ---- driver -----------------------------------------------------------------------------------------------------


def mean_recall(results: dict, k: int, direction: str | None = None) -> float:
    """Mean over languages (and over both directions unless one is named) of R@k."""
    directions = [direction] if direction else ["image_to_text", "text_to_image"]
    return statistics.fmean(r[f"{d}/R@{k}"] for r in results.values() for d in directions)


def run_arms(arms: dict[str, list[str]], args: argparse.Namespace, work_dir: Path) -> dict[str, dict]:
    """Runs each arm (tag → extra arguments) in its own process, all side by side; returns tag → result."""
    base = ["--budget-seconds", str(args.budget_seconds), "--recipe", args.recipe, "--ours-text-pooling",
            args.ours_text_pooling, "--threads", str(args.threads), "--work-dir", str(work_dir), "--precision",
            args.precision]
    if args.max_train_images:
        base += ["--max-train-images", str(args.max_train_images)]
    if args.ours_lr is not None:
        base += ["--ours-lr", str(args.ours_lr)]
    logs = {tag: open(work_dir / f"{tag}.log", "w", encoding="utf-8") for tag in arms}
    print(f"running {', '.join(arms)} side by side (load average {load_average()}); logs in {work_dir}", flush=True)
    processes = {tag: subprocess.Popen([sys.executable, __file__, *base, *extra, "--tag", tag], cwd=REPO_ROOT,
                                       stdout=logs[tag], stderr=subprocess.STDOUT) for tag, extra in arms.items()}
    for tag, process in processes.items():
        code = process.wait()
        logs[tag].close()
        if code:
            raise SystemExit(f"the {tag} run failed (exit {code}); see {work_dir / f'{tag}.log'}")
    return {tag: json.loads((work_dir / f"{tag}.json").read_text(encoding="utf-8")) for tag in arms}


def sweep_baseline_lr(args: argparse.Namespace, work_dir: Path) -> float:
    """The baseline learning rate of `--baseline-lr-sweep` with the best mean val R@10, on the first seed."""
    rates = [float(rate) for rate in args.baseline_lr_sweep.split(",")]
    seed = args.seed_list[0]
    sweep_args = copy.copy(args)
    sweep_args.budget_seconds = args.sweep_seconds
    arms = {f"sweep-lr{rate:g}": ["--arm", "baseline", "--seed", str(seed), "--baseline-lr", str(rate)]
            for rate in rates}
    results = run_arms(arms, sweep_args, work_dir)
    rows = [[f"{rate:g}", results[tag]["steps"], results[tag]["final_loss"], mean_recall(results[tag]["results"], 10)]
            for rate, tag in zip(rates, arms)]
    print(f"\nbaseline learning-rate sweep (seed {seed}, {sweep_args.budget_seconds:g} s each, side by side, "
          "scored on val)")
    print(format_table(["lr", "steps", "final loss", "mean R@10"], rows))
    best = max(zip(rates, arms), key=lambda pair: mean_recall(results[pair[1]]["results"], 10))[0]
    print(f"chosen baseline lr: {best:g}")
    return best


def print_report(runs: dict[int, dict[str, dict]], args: argparse.Namespace) -> None:
    """Per-seed figures of both arms, their mean ± sd over seeds, per-language R@10 and the per-seed ratios."""
    seeds = sorted(runs)
    print(f"\nflickr8k-multi val, budget {args.budget_seconds:g} s per arm and seed, seeds {seeds}"
          f"{f', first {args.max_train_images} train images' if args.max_train_images else ''}; "
          f"CPU {cpu_capability()}")
    headers = ["seed", "ours R@1", "base R@1", "ours R@10", "base R@10", "ours/base R@10", "ours steps",
               "base steps", "ours loss", "base loss"]
    rows, ratios = [], []
    for seed in seeds:
        ours, base = runs[seed]["ours"], runs[seed]["baseline"]
        ratio = mean_recall(ours["results"], 10) / max(mean_recall(base["results"], 10), 1e-9)
        ratios.append(ratio)
        rows.append([seed, mean_recall(ours["results"], 1), mean_recall(base["results"], 1),
                     mean_recall(ours["results"], 10), mean_recall(base["results"], 10), f"{ratio:.2f}x",
                     ours["steps"], base["steps"], ours["final_loss"], base["final_loss"]])

    def mean_sd(arm: str, k: int) -> str:
        values = [mean_recall(runs[seed][arm]["results"], k) for seed in seeds]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.2f} ± {spread:.2f}"

    rows.append(["mean ± sd", mean_sd("ours", 1), mean_sd("baseline", 1), mean_sd("ours", 10),
                 mean_sd("baseline", 10), f"{statistics.fmean(ratios):.2f}x", "", "", "", ""])
    print("mean over languages and both directions, in %")
    print(format_table(headers, rows))
    per_lang = []
    for lang in sorted(runs[seeds[0]]["ours"]["results"]):
        o = statistics.fmean(mean_recall({lang: runs[s]["ours"]["results"][lang]}, 10) for s in seeds)
        b = statistics.fmean(mean_recall({lang: runs[s]["baseline"]["results"][lang]}, 10) for s in seeds)
        per_lang.append([lang, o, b, f"{o / b:.2f}x" if b else "inf"])
    print("\nR@10 per language (mean of both directions and of the seeds, %)")
    print(format_table(["lang", "ours", "baseline", "ours/base"], per_lang))
    first = runs[seeds[0]]
    print(f"\nours: {first['ours']['recipe']}\nbaseline: {first['baseline']['recipe']}")
    print(f"load average at the end of each seed's runs: {', '.join(runs[s]['ours']['load'] for s in seeds)}")
    print(f"\nmean val R@10 ours/baseline: {statistics.fmean(ratios):.2f}x over {len(seeds)} seed(s), range "
          f"{min(ratios):.2f}x to {max(ratios):.2f}x; the ratio every seed reaches: {min(ratios):.2f}x "
          "(goal >= 1.3x)")


def cpu_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def main(argv=None) -> None:
    args = parse_args(argv)
    work_dir = Path(args.work_dir)
    if args.arm:
        import torch

        torch.set_num_threads(args.threads)
        result = run_ours(args, work_dir) if args.arm == "ours" else run_baseline(args, work_dir)
        result["load"] = load_average()
        (work_dir / f"{args.tag}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
        return

    from seeyou_ml.training.trainer import make_accelerator

    args.seed_list = [int(seed) for seed in args.seeds.split(",")]
    work_dir.mkdir(parents=True, exist_ok=True)
    # Both arms train at the precision our recipe resolves to on this machine.
    args.precision = make_accelerator(our_recipe(args, work_dir / "unused")[0]).mixed_precision
    tokenizer = flickr_tokenizer()
    for seed in args.seed_list:  # the shared initialisation of each seed, loaded by both arms
        build_vtde(len(tokenizer), tokenizer.pad_token_id, TowerSizes(), seed).save_pretrained(
            str(work_dir / f"init-{seed}"))
    baseline_lr = args.baseline_lr if args.baseline_lr is not None else sweep_baseline_lr(args, work_dir)
    runs = {}
    for seed in args.seed_list:
        arms = {f"ours-{seed}": ["--arm", "ours", "--seed", str(seed)],
                f"baseline-{seed}": ["--arm", "baseline", "--seed", str(seed), "--baseline-lr", str(baseline_lr)]}
        results = run_arms(arms, args, work_dir)
        runs[seed] = {"ours": results[f"ours-{seed}"], "baseline": results[f"baseline-{seed}"]}
    print_report(runs, args)


if __name__ == "__main__":
    main()
