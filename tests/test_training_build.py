"""Tests for `seeyou_ml.training.build`: the model section's layout and attention-kernel options."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import torch
from accelerate.utils import set_seed

from seeyou_ml.training.build import build_collator, build_model_and_processor, encoded_images, only_columns
from seeyou_ml.training.config import DataConfig, HardNegativesConfig, ModelConfig

from training_fixtures import make_records

PRESET = {"image_size": 32, "projection_dim": 16, "vision_widths": [8, 16], "vision_depths": [1, 1],
          "text_hidden_size": 32, "max_text_length": 32}


def built(tokenizer, **options):
    set_seed(0)
    model, processor = build_model_and_processor(ModelConfig(preset_kwargs=PRESET, **options), tokenizer)
    collator = build_collator(DataConfig(batch_size=4), processor, channels_last=options.get("channels_last", False))
    return model.train(), collator(make_records(6, languages=("en",)))


def test_channels_last_and_eager_attention_change_layout_and_kernel_not_results(tiny_tokenizer):
    plain_model, plain_batch = built(tiny_tokenizer)
    fast_model, fast_batch = built(tiny_tokenizer, channels_last=True, attn_implementation="eager")

    conv_weights = [m.weight for m in fast_model.vision_model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert conv_weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights)
    assert not all(w.is_contiguous() for w in conv_weights)
    assert fast_batch["pixel_values"].is_contiguous(memory_format=torch.channels_last)
    assert not fast_batch["pixel_values"].is_contiguous()
    assert torch.equal(fast_batch["pixel_values"], plain_batch["pixel_values"])
    assert fast_model.text_model.config._attn_implementation == "eager"
    assert plain_model.text_model.config._attn_implementation != "eager"

    losses, grads = [], []
    for model, batch in ((plain_model, plain_batch), (fast_model, fast_batch)):
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
        loss = model(**inputs, return_loss=True).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append(model.visual_projection.weight.grad)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_hard_negatives_build_neighbour_batches_from_the_named_columns():
    from seeyou_ml.data.samplers import NeighbourBatchSampler, UniqueImageBatchSampler
    from seeyou_ml.training.build import build_batch_sampler, row_features

    assert row_features([[["red", "blue"]], [["cross", "star"]], ["A Red cross"]]) == [
        [("red", "cross"), ("blue", "star"), "a", "red", "cross"]
    ]
    colours = [["red", "blue"], ["red", "green"], ["black", "blue"], ["red", "blue"]] * 4
    rows = {"image_id": [f"img{i}" for i in range(16)], "lang": ["en"] * 16, "caption": ["x"] * 16,
            "colours": colours, "shapes": [["cross", "star"]] * 16}
    config = DataConfig(batch_size=8, hard_negatives=HardNegativesConfig(columns=["colours", "shapes"], group_size=2,
                                                                         num_neighbours=3))
    dataset = datasets.Dataset.from_dict(rows)
    sampler = build_batch_sampler(config, dataset, seed=0)
    assert isinstance(sampler, NeighbourBatchSampler) and sampler.group_size == 2 and sampler.hard_fraction == 0.5
    assert all(len(batch) == 8 for batch in sampler)
    # img0 (red cross, blue star) shares both objects with img3, img4, img7, ...: those are its neighbours.
    names = list(sampler.image_names)
    assert {names[n] for n in sampler.neighbours[names.index("img0")]} <= {"img3", "img4", "img7", "img8", "img11",
                                                                            "img12", "img15"}

    assert isinstance(build_batch_sampler(DataConfig(batch_size=8), dataset, seed=0), UniqueImageBatchSampler)
    assert not isinstance(build_batch_sampler(DataConfig(batch_size=8), dataset, seed=0), NeighbourBatchSampler)
    with pytest.raises(KeyError, match=r"columns \['objects'\] are missing"):
        build_batch_sampler(DataConfig(batch_size=8, hard_negatives=HardNegativesConfig(columns=["objects"])), dataset, seed=0)
    records = [dict(zip(rows, values)) for values in zip(*rows.values())]
    with pytest.raises(KeyError, match=r"columns \['objects'\] are missing from some records"):
        build_batch_sampler(DataConfig(batch_size=8, hard_negatives=HardNegativesConfig(columns=["objects"])), records, seed=0)
    assert isinstance(build_batch_sampler(config, records, seed=0), NeighbourBatchSampler)


def test_encoded_images_hand_out_files_the_caching_collator_decodes_once(tiny_tokenizer, tmp_path):
    rows = make_records(4, languages=("en",))
    dataset = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
    encoded = encoded_images(dataset)
    assert set(encoded[0]["image"]) == {"bytes", "path"} and encoded[0]["caption"] == dataset[0]["caption"]
    assert encoded_images(encoded) is encoded and encoded_images(rows) is rows
    _, processor = build_model_and_processor(ModelConfig(preset_kwargs=PRESET), tiny_tokenizer)
    collator = build_collator(DataConfig(batch_size=4, cache_images=True), processor)
    assert collator.cache_images
    plain = build_collator(DataConfig(batch_size=4), processor)([dataset[i] for i in range(4)])
    batch = collator([encoded[i] for i in range(4)])
    torch.testing.assert_close(batch["pixel_values"], plain["pixel_values"])


def test_the_loader_reads_only_the_columns_the_collator_uses(tiny_tokenizer):
    rows = [dict(record, colours=["red"], held_out=False) for record in make_records(4, languages=("en",))]
    dataset = datasets.Dataset.from_list(rows)
    _, processor = build_model_and_processor(ModelConfig(preset_kwargs=PRESET), tiny_tokenizer)
    collator = build_collator(DataConfig(batch_size=4), processor)
    assert collator.columns == ["image", "caption", "lang", "image_id"]
    assert build_collator(DataConfig(batch_size=4, return_phrases=True), processor).columns == [
        "image", "caption", "lang", "image_id", "boxes", "phrase"]
    narrow = only_columns(dataset, collator.columns)
    assert narrow.column_names == ["image", "caption", "lang", "image_id"]
    assert narrow[2]["caption"] == rows[2]["caption"]
    torch.testing.assert_close(collator([narrow[i] for i in range(4)])["pixel_values"],
                               collator([dataset[i] for i in range(4)])["pixel_values"])
    assert only_columns(narrow, collator.columns) is narrow and only_columns(rows, collator.columns) is rows


def test_back_translation_is_switched_on_from_the_recipe(tiny_tokenizer):
    from seeyou_ml.data.augment import AugmentationConfig, BackTranslation
    from seeyou_ml.training.config import TrainingRecipe

    recipe = TrainingRecipe().with_overrides(["--back_translation_prob", "1", "--batch_size", "4"])
    assert recipe.data.augment == AugmentationConfig(back_translation_prob=1.0)
    records = make_records(4, languages=("en", "de"))
    for record in records:
        if record["lang"] == "de":
            record["caption"] = "ein " + record["caption"]
    _, processor = build_model_and_processor(ModelConfig(preset_kwargs=PRESET), tiny_tokenizer)
    collator = build_collator(recipe.data, processor, train=records)
    assert isinstance(collator.text_augment, BackTranslation)
    english = [r for r in records if r["lang"] == "en"]
    # With p=1 every English caption is replaced by its image's German one (and the language with it).
    assert [collator.text_augment(r["caption"], "en", image_id=r["image_id"]) for r in english] == [
        ("ein " + r["caption"], "de") for r in english]
    with pytest.raises(ValueError, match=r"back_translation_prob > 0 draws captions from the training split"):
        build_collator(recipe.data, processor)


def _small_scenes_recipe(tmp_path, monkeypatch, name: str, batch_size: int, train_images: int, overrides: list[str]):
    """A recipe of recipes/ on a small scenes corpus (cached under tmp_path), fp32, without reports."""
    from seeyou_ml.training.config import TrainingRecipe

    monkeypatch.setenv("SEEYOU_CACHE", str(tmp_path / "cache"))
    path = Path(__file__).resolve().parents[1] / "recipes" / name
    return TrainingRecipe.from_yaml(path).with_overrides(
        ["--output_dir", str(tmp_path / "out"), "--report_to", "null", "--batch_size", str(batch_size),
         "--mixed_precision", "null", "--split_kwargs.train.num_images", str(train_images),
         "--corpus_kwargs.num_images", "12", "--corpus_kwargs.num_proc", "1", *overrides]
    )


def test_a_late_grounding_term_without_a_head_is_refused_before_training(tmp_path, monkeypatch):
    from seeyou_ml.training.build import build_trainer

    recipe = _small_scenes_recipe(tmp_path, monkeypatch, "scenes-tiny.yaml", 8, 24, [
        "--model.config_overrides.grounding_config", "null", "--data.return_phrases", "false"])
    # The main recipe's head terms start at step 300 or later: without a head they are refused before any step.
    with pytest.raises(ValueError, match=r"Loss term attention_iou_loss needs a grounding head \(model.config_overrides"
                                         r".grounding_config\) and the referring expressions in each batch"):
        build_trainer(recipe)


def test_the_trainer_is_built_with_the_garbage_collector_off(tmp_path, monkeypatch):
    import gc

    import seeyou_ml.training.build as build
    from seeyou_ml.training.config import DataConfig

    states = []
    load_split = DataConfig.load_split
    monkeypatch.setattr(DataConfig, "load_split", lambda *args: states.append(gc.isenabled()) or load_split(*args))
    build.build_trainer(_small_scenes_recipe(tmp_path, monkeypatch, "scenes-tiny.yaml", 8, 24, []))
    assert states == [False, False] and gc.isenabled()  # train and eval splits loaded with it off; on again after


def test_the_rerank_recipe_grounds_each_named_object_first_then_ranks_against_negative_captions(tmp_path, monkeypatch):
    import json

    from seeyou_ml.training.build import build_trainer

    recipe = _small_scenes_recipe(tmp_path, monkeypatch, "scenes-tiny-rerank.yaml", 16, 32, [
        "--data.hard_negatives", "null", "--model.config_overrides.grounding_config.itm_train_pairs", "4",
        "--stages.0.steps", "2", "--stages.1.steps", "4", "--losses.mention_attention_loss.start_step", "2",
        "--losses.order_loss.start_step", "2", "--losses.itm_rank_loss.start_step", "4", "--checkpoint.save_every",
        "100"])
    trainer = build_trainer(recipe)
    model = trainer.unwrapped
    calls, text_weights = [], []
    forward = model.forward

    def recording_forward(**inputs):
        calls.append({k for k, v in inputs.items() if v is not None and v is not False})
        text_weights.append(model.text_model.embeddings.word_embeddings.weight.detach().clone())
        return forward(**inputs)

    monkeypatch.setattr(model, "forward", recording_forward)
    trainer.train()
    history = [json.loads(line) for line in (tmp_path / "out" / "history.jsonl").read_text().splitlines()]
    assert [("mention_attention_loss" in h, "order_loss" in h, "itm_rank_loss" in h) for h in history] == (
        [(False, False, False)] * 2 + [(True, True, False)] * 2 + [(True, True, True)] * 2)
    # itm_rank_loss starts near ln 8: each softmax holds the true pair and 7 candidates (the image side's 4 of them
    # the image's negative captions where it has 4).
    assert abs(history[4]["itm_rank_loss"] - torch.log(torch.tensor(8.0)).item()) < 0.5
    training_calls = calls[: len(history)]
    mentions, negatives = "mention_token_mask", "negative_input_ids"
    assert [(mentions in c, negatives in c, "phrase_input_ids" in c) for c in training_calls] == (
        [(False, False, False)] * 2 + [(True, False, False)] * 2 + [(True, True, False)] * 2)
    # The towers stay frozen while the head learns.
    assert all(torch.equal(text_weights[2], w) for w in text_weights[3 : len(history)])
