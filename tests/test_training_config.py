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


def test_overrides_dotted_bare_and_into_lists_and_mappings():
    recipe = TrainingRecipe().with_overrides([
        "--optim.lr", "1e-4", "--batch_size=32", "--stages.0.steps", "7", "--freeze_batchnorm", "true",
        "--losses.grounding_loss.start_step", "50", "--model.config_overrides.text_pooling", "cls",
        "--resume_from", "latest", "--corpus_kwargs.num_images", "40",
    ])
    assert recipe.optim.lr == 1e-4
    assert recipe.data.batch_size == 32
    assert recipe.stages[0].steps == 7
    assert recipe.model.freeze_batchnorm is True
    assert recipe.losses["grounding_loss"] == LossTermConfig(weight=1.0, start_step=50)
    assert recipe.model.config_overrides == {"text_pooling": "cls"}
    assert recipe.resume_from == "latest"
    assert recipe.data.corpus_kwargs == {"num_images": 40}
    assert recipe.with_overrides(["--resume_from", "null"]).resume_from is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lrr", "1"], "Did you mean --lr?"),
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


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_parse(path):
    import seeyou_ml.training.adapters  # noqa: F401  (registers the distillation loss terms)
    from seeyou_ml.training.objectives import LOSS_TERMS

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
    from seeyou_ml.training.build import load_split
    from seeyou_ml.training.config import DataConfig

    config = DataConfig(corpus="scenes", corpus_kwargs={"num_images": 3, "cache_dir": str(tmp_path)},
                        split_kwargs={"train": {"num_images": 5}}, languages=["en", "de"])
    assert len(load_split(config, "train")) == 5 * 2
    assert len(load_split(config, "test")) == 3 * 2
