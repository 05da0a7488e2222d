"""Recipes: YAML round trip, typed coercion, command-line overrides and the errors that name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from seeyou_ml.training.config import LossTermConfig, StageConfig, TrainingRecipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def test_yaml_round_trip_keeps_every_field(tmp_path):
    recipe = TrainingRecipe.from_dict({
        "optim": {"lr": "5e-4", "betas": [0.9, 0.95]},
        "stages": [{"name": "lit", "steps": 10, "freeze": ["vision"], "text_lr": 1e-5}, {"steps": 20}],
        "losses": {"contrastive_loss": {"start_step": 0}},
    })
    recipe.to_yaml(tmp_path / "r.yaml")
    again = TrainingRecipe.from_yaml(tmp_path / "r.yaml")
    assert again == recipe
    assert again.optim.lr == 5e-4  # YAML 1.1 reads "5e-4" as a string; the field's type makes it a float
    assert again.stages[0] == StageConfig(name="lit", steps=10, freeze=["vision"], text_lr=1e-5)
    assert again.total_steps == 30


def test_a_recipe_builds_on_its_base_recipe(tmp_path):
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "root.yaml").write_text(
        "name: root\nseed: 3\noptim: {lr: 1e-3, weight_decay: 0.2}\n"
        "stages: [{name: a, steps: 5}, {name: b, steps: 6}]\n"
        "losses: {contrastive_loss: {weight: 1.0}, box_loss: {start_step: 2}}\n"
    )
    (tmp_path / "bases" / "middle.yaml").write_text("base: root.yaml\nname: middle\noptim: {lr: 2e-3}\n")
    (tmp_path / "child.yaml").write_text(
        "base: bases/middle.yaml\nname: child\nstages: [{steps: 9}]\n"
        "losses: {itm_loss: {start_step: 4}, box_loss: null}\nmax_train_seconds: null\n"
    )
    recipe = TrainingRecipe.from_yaml(tmp_path / "child.yaml")
    assert recipe == TrainingRecipe.from_dict({
        "name": "child", "seed": 3, "optim": {"lr": 2e-3, "weight_decay": 0.2}, "stages": [{"steps": 9}],
        "losses": {"contrastive_loss": {"weight": 1.0}, "itm_loss": {"start_step": 4}},
    })
    # Sections merge key by key (optim keeps the root's weight decay), lists replace whole (one stage, not three), a
    # null entry drops the base's (box_loss).
    assert (recipe.optim.lr, recipe.optim.weight_decay, recipe.total_steps) == (2e-3, 0.2, 9)


def test_a_missing_or_circular_base_recipe_is_named(tmp_path):
    (tmp_path / "a.yaml").write_text("base: nope.yaml\n")
    with pytest.raises(ValueError, match=r"a.yaml names `base: nope.yaml`, but .*nope.yaml is not a file"):
        TrainingRecipe.from_yaml(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("base: c.yaml\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ValueError, match=r"its own base \(b.yaml -> c.yaml -> b.yaml\)"):
        TrainingRecipe.from_yaml(tmp_path / "b.yaml")
    (tmp_path / "d.yaml").write_text("base: e.yaml\n")
    (tmp_path / "e.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match="e.yaml holds a list; a config file is a YAML mapping"):
        TrainingRecipe.from_yaml(tmp_path / "d.yaml")


def test_the_flickr30k_recipe_is_the_coco_recipe_with_its_own_corpus_and_stages():
    import dataclasses

    coco = TrainingRecipe.from_yaml(RECIPES / "coco-karpathy-gpu.yaml")
    flickr = TrainingRecipe.from_yaml(RECIPES / "flickr30k-karpathy-gpu.yaml")
    assert flickr.model == coco.model and flickr.optim == coco.optim and flickr.losses == coco.losses
    assert flickr.data.corpus == "data/flickr30k" and flickr.data.batch_size == coco.data.batch_size
    assert [stage.steps for stage in flickr.stages] == [1000, 6000]
    assert dataclasses.replace(flickr.data, corpus=coco.data.corpus, corpus_kwargs=coco.data.corpus_kwargs) == coco.data


def test_overrides_dotted_bare_and_into_lists_and_mappings():
    recipe = TrainingRecipe().with_overrides([
        "--optim.lr", "1e-4", "--batch_size=32", "--stages.0.steps", "7", "--freeze_batchnorm", "true",
        "--losses.grounding_loss.start_step", "50", "--model.config_overrides.text_pooling", "cls",
        "--resume_from", "latest", "--corpus_kwargs.num_images", "40", "--split_kwargs.test.num_images", "5",
    ])
    assert recipe.optim.lr == 1e-4
    assert recipe.data.batch_size == 32
    assert recipe.stages[0].steps == 7
    assert recipe.model.freeze_batchnorm is True
    assert recipe.losses["grounding_loss"] == LossTermConfig(weight=1.0, start_step=50)
    assert recipe.model.config_overrides == {"text_pooling": "cls"}
    assert recipe.resume_from == "latest"
    assert recipe.data.corpus_kwargs == {"num_images": 40}
    assert recipe.data.split_kwargs == {"test": {"num_images": 5}}
    assert recipe.with_overrides(["--resume_from", "null"]).resume_from is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lrr", "1"], "Did you mean --lr,"),
        (["--lr"], "has no value"),
        (["lr", "1"], "`--key value`"),
        (["--lr", "fast"], "optim.lr='fast' is not a valid float"),
        (["--batch_size", "2.5"], "data.batch_size=2.5 is not a valid int"),
    ],
)
def test_bad_overrides_name_the_fix(args, message):
    with pytest.raises(ValueError, match=message.replace("?", r"\?").replace("(", r"\(")):
        TrainingRecipe().with_overrides(args)


def test_unknown_key_suggests_the_known_one():
    with pytest.raises(ValueError, match=r"'warmup' \(did you mean 'warmup_steps'\?\)"):
        TrainingRecipe.from_dict({"optim": {"warmup": 10}})


def test_time_budget_and_schedule_fields():
    recipe = TrainingRecipe().with_overrides(["--max_train_seconds", "90", "--schedule_by", "time"])
    assert (recipe.max_train_seconds, recipe.schedule_by) == (90.0, "time")
    assert TrainingRecipe().max_train_seconds is None and TrainingRecipe().schedule_by == "steps"
    with pytest.raises(ValueError, match="schedule_by=time spreads .* set --max_train_seconds SECONDS"):
        TrainingRecipe().with_overrides(["--schedule_by", "time"])
    with pytest.raises(ValueError, match="schedule_by='hours' is unknown; use one of steps, time"):
        TrainingRecipe().with_overrides(["--schedule_by", "hours"])
    with pytest.raises(ValueError, match="max_train_seconds=0.0 leaves no time to train"):
        TrainingRecipe().with_overrides(["--max_train_seconds", "0"])


@pytest.fixture(scope="module")
def local_towers(tmp_path_factory, tiny_tokenizer):
    """Offline stand-ins for the Hub towers the GPU recipes name: a tiny ResNet with its image processor and a tiny
    XLM-R with its tokenizer, saved as local checkpoints (what `model.vision` and `model.text` may name)."""
    from transformers import AutoModel

    from seeyou_ml.presets import tiny_config, tiny_processor

    folder = tmp_path_factory.mktemp("towers")
    config = tiny_config(vocab_size=len(tiny_tokenizer), pad_token_id=tiny_tokenizer.pad_token_id,
                         vision_widths=(8, 16), vision_depths=(1, 1), text_hidden_size=32, max_text_length=32)
    AutoModel.from_config(config.vision_config).save_pretrained(folder / "vision")
    tiny_processor(tiny_tokenizer, image_size=32).image_processor.save_pretrained(folder / "vision")
    AutoModel.from_config(config.text_config).save_pretrained(folder / "text")
    tiny_tokenizer.save_pretrained(folder / "text")
    return folder


# Adapter recipes start from a trained model's folder; tests/test_training_adapters.py trains one from a tiny base.
@pytest.mark.parametrize("path", sorted(p for p in RECIPES.glob("*.yaml") if "adapters" not in p.stem),
                         ids=lambda p: p.name)
def test_shipped_recipes_build_and_step(path, tmp_path, local_towers, monkeypatch):
    """Every shipped image-text recipe builds its trainer and takes a step, with its corpus, towers and sizes swapped
    for tiny offline ones through the same overrides a user has; everything else is the recipe's own."""
    import torch

    from seeyou_ml.data.samplers import NeighbourBatchSampler
    from seeyou_ml.training.build import build_trainer
    from training_fixtures import make_records, write_corpus

    recipe = TrainingRecipe.from_yaml(path)
    overrides = ["--output_dir", str(tmp_path / "out"), "--report_to", "null", "--progress_bar", "false",
                 "--mixed_precision", "null", "--batch_size", "8", "--num_workers", "0"]
    if recipe.data.corpus == "scenes":
        monkeypatch.setenv("SEEYOU_CACHE", str(tmp_path / "cache"))
        overrides += ["--split_kwargs.train.num_images", "24", "--corpus_kwargs.num_images", "12",
                      "--corpus_kwargs.num_proc", "1"]
    else:
        records = make_records(24, languages=("en", "de"))
        corpus = write_corpus(tmp_path / "corpus", records, split=recipe.data.train_split)
        write_corpus(corpus, records[:8], split=recipe.data.eval_split)
        overrides += ["--corpus", str(corpus), "--data.corpus_kwargs", "{format: captions-jsonl}"]
    if recipe.model.preset is None:
        overrides += ["--model.vision", str(local_towers / "vision"), "--model.text", str(local_towers / "text")]
    if recipe.model.tokenizer_vocab_size is not None:
        overrides += ["--tokenizer_vocab_size", "40", "--tokenizer_parallel_text", "[]"]
    recipe = recipe.with_overrides(overrides)

    trainer = build_trainer(recipe)
    model = trainer.unwrapped
    expected_dim = {**recipe.model.preset_kwargs, **recipe.model.config_overrides}.get("projection_dim")
    assert expected_dim is None or model.config.projection_dim == expected_dim
    assert model.is_activation_checkpointing == recipe.model.gradient_checkpointing
    assert [row["name"] for row in trainer.schedule.table] == [stage.name for stage in recipe.stages]
    assert isinstance(trainer.batch_sampler, NeighbourBatchSampler) == bool(recipe.data.hard_negatives.columns)
    collator = trainer.collate.collate_fn
    assert (collator.image_augment is not None) == (recipe.data.augment.randaugment_num_ops > 0)
    assert collator.cache_images == recipe.data.cache_images
    if recipe.model.channels_last:
        weight = next(m.weight for m in model.vision_model.modules() if isinstance(m, torch.nn.Conv2d))
        assert weight.is_contiguous(memory_format=torch.channels_last)
    trainer.loader.set_epoch(0)
    result = trainer.optimizer_step(next(iter(trainer.loader)))
    assert trainer.step == 1 and not result.skipped and torch.isfinite(torch.tensor(result.loss))


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_parse_with_registered_loss_terms(path):
    import seeyou_ml.training.adapters  # noqa: F401  (registers the distillation loss terms)
    from seeyou_ml.losses import LOSS_TERMS

    recipe = TrainingRecipe.from_yaml(path)
    assert recipe.total_steps > 0
    assert recipe.losses and set(recipe.losses) <= set(LOSS_TERMS)
    # Adapter recipes distil from parallel text; every other recipe trains image-text contrastively.
    assert ("contrastive_loss" in recipe.losses) == (recipe.adapters is None)


def test_train_entry_points_print_the_resolved_recipe(capsys):
    from seeyou_ml.cli import main as seeyou
    from seeyou_ml.training.launch import main as train_py

    recipe = str(RECIPES / "scenes-tiny.yaml")
    train_py(["--config", recipe, "--lr", "4e-4", "--print_recipe"])
    printed = capsys.readouterr().out
    assert TrainingRecipe.from_dict(__import__("yaml").safe_load(printed)).optim.lr == 4e-4
    assert seeyou(["train", recipe, "--optim.lr", "4e-4", "--print_recipe"]) == 0
    assert capsys.readouterr().out == printed


def test_split_kwargs_override_corpus_kwargs_per_split(tmp_path):
    from seeyou_ml.training.config import DataConfig

    config = DataConfig(corpus="scenes", corpus_kwargs={"num_images": 3, "cache_dir": str(tmp_path)},
                        split_kwargs={"train": {"num_images": 5}}, languages=["en", "de"])
    assert len(config.load_split("train")) == 5 * 2
    assert len(config.load_split("test")) == 3 * 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch_size", "0"], r"data.batch_size=0 must be >= 1"),
        (["--lr", "-1e-3"], r"optim.lr=-0.001 must be > 0"),
        (["--sub_batch_size", "0"], r"data.sub_batch_size=0 must be >= 1"),
        (["--num_workers", "-1"], r"data.num_workers=-1 must be >= 0"),
        (["--optim.text_lr", "-1"], r"optim.text_lr=-1.0 must be >= 0"),
        (["--betas", "[0.9, 1.5]"], r"optim.betas=\[0.9, 1.5\] \(entry 1\) must be < 1"),
        (["--eps", "0"], r"optim.eps=0.0 must be > 0"),
        (["--min_lr_ratio", "2"], r"optim.min_lr_ratio=2.0 must be <= 1"),
        (["--max_grad_norm", "0"], r"optim.max_grad_norm=0.0 must be > 0"),
        (["--stages.0.steps", "0"], r"stages.0.steps=0 must be >= 1"),
        (["--stages.0.freeze", "[vision, txt]"], r"stages.0.freeze=\['vision', 'txt'\] is not allowed; use any of "
                                                 r"vision, text, head"),
        (["--losses.contrastive_loss.weight", "-1"], r"losses.contrastive_loss.weight=-1.0 must be >= 0"),
        (["--log_every", "0"], r"monitor.log_every=0 must be >= 1"),
        (["--keep_last", "0"], r"checkpoint.keep_last=0 must be >= 1"),
        (["--embed_batch_size", "0"], r"eval.embed_batch_size=0 must be >= 1"),
        (["--hard_fraction", "1.5"], r"data.hard_negatives.hard_fraction=1.5 must be <= 1"),
        (["--group_size", "1"], r"data.hard_negatives.group_size=1 must be >= 2"),
        (["--seed", "-3"], r"seed=-3 must be >= 0"),
        (["--stages", "[]"], r"stages has 0 entries; give at least 1"),
        (["--randaugment_magnitude", "11"], r"data.augment.randaugment_magnitude=11.0 must be <= 10"),
        (["--group_size", "2"], r"section data.hard_negatives: group_size set without `columns`"),
        (["--mixup_prob", "2"], r"section data.augment: AugmentationConfig.mixup_prob=2.0 must lie in \[0, 1\]"),
    ],
)
def test_recipe_values_are_checked_when_read_naming_the_field(args, message):
    with pytest.raises(ValueError, match=message):
        TrainingRecipe().with_overrides(args)
    # The same check applies to a recipe file: nothing is loaded or built before it fires.
    with pytest.raises(ValueError, match=message):
        TrainingRecipe.from_dict(_nested(args))


def _nested(args: list[str]) -> dict:
    """The override `--a.b value` as the nested recipe data {a: {b: value}} (resolved like the command line)."""
    import yaml

    from seeyou_ml.training.overrides import resolve_key

    path = resolve_key(TrainingRecipe, args[0][2:], TrainingRecipe().to_dict())
    data = TrainingRecipe().to_dict()
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = yaml.safe_load(args[1])
    return data
