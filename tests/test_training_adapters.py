import json

import pytest
import torch
from safetensors.torch import load_file

from seeyou_ml import SeeYouModel
from seeyou_ml.adapters import language_adapters
from seeyou_ml.presets import tiny_processor
from seeyou_ml.training.adapters import (
    ParallelTextCollator,
    distillation_contrastive_term,
    distillation_mse_term,
    parallel_records,
)
from seeyou_ml.training.build import build_trainer
from seeyou_ml.training.config import AdaptersConfig, TrainingRecipe
from seeyou_ml.data.parallel import ParallelText
from seeyou_ml.losses import contrastive_loss
from tests.training_fixtures import tiny_model, tiny_recipe

COLOURS = ["red", "blue", "green", "yellow"]
SHAPES = ["circle", "square", "star", "triangle"]
FRENCH = {"red": "rouge", "blue": "bleue", "green": "verte", "yellow": "jaune", "circle": "cercle",
          "square": "carre", "star": "étoile", "triangle": "triangle"}


def write_parallel(folder, lang, words):
    """16 pairs "a red circle" / "<word> <word>" (the translation's words in `words`)."""
    lines = [json.dumps({"en": f"a {c} {s}", lang: f"un {words[s]} {words[c]}"}) for c in COLOURS for s in SHAPES]
    path = folder / f"en-{lang}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def base_dir(tmp_path, tiny_tokenizer):
    folder = tmp_path / "base"
    tiny_model(len(tiny_tokenizer)).save_pretrained(folder)
    tiny_processor(tiny_tokenizer, image_size=32).save_pretrained(folder)
    return folder


def adapter_recipe(tmp_path, base_dir, **adapters):
    write_parallel(tmp_path, "fr", FRENCH)
    write_parallel(tmp_path, "es", {w: w[::-1] for w in FRENCH})
    section = {"base": str(base_dir), "train_languages": ["fr", "es"],
               "parallel_text": str(tmp_path / "en-{lang}.jsonl"), "validation_pairs": 4, "lora_r": 4,
               **adapters}
    return tiny_recipe(tmp_path / "out", adapters=section,
                       losses={"distillation_mse_loss": {"weight": 1.0}, "distillation_contrastive_loss": {}},
                       data={"batch_size": 8, "eval_split": None, "max_length": 16},
                       optim={"lr": 1e-3, "warmup_steps": 1}, stages=[{"steps": 24}])


def test_adapters_section_round_trips_and_overrides():
    recipe = TrainingRecipe.from_dict({"adapters": {"train_languages": "es,ja", "lora_r": "8"}})
    assert recipe.adapters == AdaptersConfig(train_languages=["es", "ja"], lora_r=8)
    assert TrainingRecipe.from_dict(recipe.to_dict()) == recipe
    assert recipe.with_overrides(["--lora_alpha", "4"]).adapters.lora_alpha == 4
    assert TrainingRecipe.from_dict({}).adapters is None
    with pytest.raises(ValueError, match="Unknown recipe key.*'rank'"):
        TrainingRecipe.from_dict({"adapters": {"rank": 4}})


def test_distillation_terms_against_reference():
    generator = torch.Generator().manual_seed(0)
    student = torch.nn.functional.normalize(torch.randn(5, 8, generator=generator), dim=-1)
    teacher = torch.nn.functional.normalize(torch.randn(5, 8, generator=generator), dim=-1)
    outputs = {"text_embeds": student, "teacher_embeds": teacher}
    model = tiny_model(40)
    expected_mse = sum(float(((s - t) ** 2).sum()) for s, t in zip(student, teacher)) / 5
    assert distillation_mse_term(outputs, {}, model).item() == pytest.approx(expected_mse, rel=1e-6)
    scale = model.scale()
    logits = scale * teacher @ student.T
    target = torch.arange(5)
    reference = (torch.nn.functional.cross_entropy(logits, target)
                 + torch.nn.functional.cross_entropy(logits.T, target)) / 2
    torch.testing.assert_close(distillation_contrastive_term(outputs, {}, model), reference.detach())
    torch.testing.assert_close(reference.detach(), contrastive_loss(teacher, student, scale).detach())


def test_parallel_collator_and_records(tiny_tokenizer):
    texts = [ParallelText("fr", ["a red circle", "a blue star"], ["un cercle rouge", "une étoile bleue"])]
    records = parallel_records(texts)
    assert [r["image_id"] for r in records] == ["fr-0", "fr-1"] and records[1]["translation"] == "une étoile bleue"
    batch = ParallelTextCollator(tiny_tokenizer, max_length=6)(records)
    assert batch["lang"] == ["fr", "fr"]
    expected = tiny_tokenizer(["un cercle rouge", "une étoile bleue"], padding=True, truncation=True, max_length=6,
                              return_tensors="pt")
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(batch["teacher_input_ids"], tiny_tokenizer(["a red circle", "a blue star"], padding=True,
                                                                  return_tensors="pt")["input_ids"])


def test_adapter_recipe_trains_only_adapters_and_saves_them(tmp_path, base_dir, tiny_tokenizer):
    recipe = adapter_recipe(tmp_path, base_dir)
    trainer = build_trainer(recipe)
    base_weights = {k: v.clone() for k, v in SeeYouModel.from_pretrained(base_dir).state_dict().items()}
    output = trainer.train()
    losses = [loss for _, loss in output.losses]
    assert len(losses) == 24 and sum(losses[-6:]) / 6 < sum(losses[:6]) / 6 - 0.1

    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "adapters").iterdir()) == ["es", "fr"]
    saved = load_file(out / "model.safetensors")
    for key, value in base_weights.items():  # the base stayed frozen
        torch.testing.assert_close(saved[key], value, rtol=0, atol=0)
    trained = load_file(out / "adapters" / "fr" / "adapter_model.safetensors")
    assert any(float(v.abs().max()) > 0 for k, v in trained.items() if "lora_B" in k or "lora_embedding_B" in k)

    results = json.loads((out / "retrieval_results.json").read_text())["parallel_text"]
    assert set(results["per_language"]) == {"fr", "es"}
    for entry in results["per_language"].values():
        assert entry["pairs"] == 4 and entry["adapter"]
        assert entry["gain"]["mean/R@1"] == pytest.approx(entry["adapter_scores"]["mean/R@1"] - entry["base"]["mean/R@1"])
    reloaded = SeeYouModel.from_pretrained(out)
    assert language_adapters(reloaded) == ["es", "fr"]


def test_adapter_recipe_rejects_empty_languages(tmp_path, base_dir):
    with pytest.raises(ValueError, match="adapters.train_languages is empty"):
        build_trainer(adapter_recipe(tmp_path, base_dir, train_languages=[]))
