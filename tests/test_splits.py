"""Tests for `seeyou_ml.data.splits`: one way to load a named corpus's split and its zero-shot task."""

from __future__ import annotations

from seeyou_ml.data.scenes import class_prompts
from seeyou_ml.data.splits import load_split, zero_shot_arguments
from training_fixtures import make_records, write_corpus


def test_scenes_split_with_its_zero_shot_labels_and_prompts(tmp_path):
    dataset = load_split("scenes", "test", languages=["en", "de"], num_images=3, cache_dir=tmp_path)
    assert len(dataset) == 6 and sorted(set(dataset["lang"])) == ["de", "en"]
    assert zero_shot_arguments("scenes", dataset) == {
        "label_column": "label", "prompts": {"de": class_prompts("de"), "en": class_prompts("en")}}


def test_other_corpora_go_to_load_corpus_and_have_no_zero_shot_task(tmp_path):
    folder = write_corpus(tmp_path / "corpus", make_records(4, languages=("en", "de")), split="val")
    dataset = load_split(str(folder), "val", languages=["de"])
    assert len(dataset) == 4 and set(dataset["lang"]) == {"de"}
    assert zero_shot_arguments(str(folder), dataset) == {}
