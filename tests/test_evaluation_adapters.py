"""Evaluation with and without language adapters: parallel text, retrieval side by side, report and CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from PIL import Image

from seeyou_ml.adapters import add_language_adapter, merge_language_adapter, save_language_adapters
from seeyou_ml.cli import main
from seeyou_ml.data.parallel import ParallelText
from seeyou_ml.evaluation import (
    compare_parallel_text,
    embed_texts,
    evaluate_retrieval,
    format_adapter_table,
    format_table,
    parallel_text_recall,
)
from seeyou_ml.evaluation.report import ADAPTERS_PNG
from seeyou_ml.presets import tiny_processor
from tests.test_adapters import random_lora
from tests.test_evaluator import tiny_corpus

PAIRS = ParallelText("de", ["a red circle", "a blue square", "a green star", "a yellow triangle", "a red star"],
                     ["ein roter Kreis", "eine blaue Kreis", "ein Kreis", "eine Kreis", "ein roter"])


@pytest.fixture()
def processor(tiny_tokenizer):
    return tiny_processor(tiny_tokenizer, image_size=32)


@pytest.fixture()
def adapted(tiny_model):
    add_language_adapter(tiny_model, "de", random_lora(7))
    return tiny_model.eval()


def test_parallel_text_recall_on_hand_built_embeddings():
    english = torch.eye(4)
    assert parallel_text_recall(english, english, ks=(1,)) == {"en_to_xx/R@1": 100.0, "xx_to_en/R@1": 100.0}
    # Translations 0 and 1 swapped: those two pairs miss at 1 and hit at 2, in both directions.
    swapped = english[[1, 0, 2, 3]]
    scores = parallel_text_recall(english, swapped, ks=(1, 2))
    assert scores == {"en_to_xx/R@1": 50.0, "en_to_xx/R@2": 100.0, "xx_to_en/R@1": 50.0, "xx_to_en/R@2": 100.0}


def test_compare_parallel_text_scores_base_and_adapter_embeddings(adapted, processor):
    other = ParallelText("fr", PAIRS.english, ["un cercle rouge", "une étoile", "un cercle", "une", "rouge"])
    results = compare_parallel_text(adapted, processor, [PAIRS, other], ks=(1, 5))
    english = embed_texts(adapted, processor, PAIRS.english, progress=False, langs=["__base__"] * 5)
    base = embed_texts(adapted, processor, PAIRS.translation, progress=False, langs=["__base__"] * 5)
    routed = embed_texts(adapted, processor, PAIRS.translation, progress=False, langs=["de"] * 5)
    entry = results["per_language"]["de"]
    assert entry["adapter"] and entry["pairs"] == 5
    assert {k: entry["base"][k] for k in parallel_text_recall(english, base, (1, 5))} == parallel_text_recall(
        english, base, (1, 5))
    expected = parallel_text_recall(english, routed, (1, 5))
    assert {k: entry["adapter_scores"][k] for k in expected} == expected
    assert entry["adapter_scores"]["mean/R@1"] == (expected["en_to_xx/R@1"] + expected["xx_to_en/R@1"]) / 2
    assert entry["gain"]["mean/R@1"] == entry["adapter_scores"]["mean/R@1"] - entry["base"]["mean/R@1"]
    assert results["per_language"]["fr"]["adapter"] is False and results["per_language"]["fr"]["gain"] is None
    assert results["mean"]["adapter"] == entry["adapter_scores"]  # the mean runs over languages with an adapter


def test_evaluate_retrieval_puts_base_and_adapter_side_by_side(adapted, tiny_model, processor):
    corpus = tiny_corpus()
    results = evaluate_retrieval(adapted, processor, corpus, progress=False)
    assert results["without_adapters"]["languages"] == ["de"]
    # Without adapters: what the model scores with the adapter deleted.
    plain = copy.deepcopy(adapted)
    from seeyou_ml.adapters import delete_language_adapter

    delete_language_adapter(plain, "de")
    reference = evaluate_retrieval(plain, processor, corpus, progress=False)
    assert results["without_adapters"]["per_language"]["de"] == reference["per_language"]["de"]
    assert results["per_language"]["en"] == reference["per_language"]["en"]  # en has no adapter
    # With adapters: what the model with the de adapter merged scores on de.
    merged = merge_language_adapter(copy.deepcopy(adapted), "de")
    assert results["per_language"]["de"] == evaluate_retrieval(merged, processor, corpus,
                                                               progress=False)["per_language"]["de"]
    assert "without_adapters" not in evaluate_retrieval(adapted, processor, corpus, progress=False,
                                                        compare_adapters=False)
    table = format_table(results).splitlines()
    assert table[-2].split() == ["R@1", "adapter", "vs", "base", "I→T", "base", "I→T", "adapter", "T→I", "base",
                                 "T→I", "adapter"]
    assert table[-1].split()[0] == "de"
    rows = format_adapter_table(results).splitlines()
    base = results["without_adapters"]["per_language"]["de"]["image_to_text/R@1"]
    assert rows[1].split()[:3] == ["de", "I→T", f"{base:.1f}"]


def test_cli_evaluate_loads_adapters_and_draws_the_comparison(adapted, tiny_model, tiny_tokenizer, tmp_path):
    model_dir, adapters_dir = tmp_path / "model", tmp_path / "adapters"
    save_language_adapters(adapted, adapters_dir)
    from seeyou_ml.adapters import delete_language_adapter

    delete_language_adapter(adapted, "de")  # the model folder holds the plain base
    adapted.save_pretrained(model_dir)
    tiny_processor(tiny_tokenizer, image_size=32).save_pretrained(model_dir)
    corpus = tmp_path / "corpus"
    (corpus / "images").mkdir(parents=True)
    lines = []
    for index, (en, de) in enumerate([("a red circle", "ein roter Kreis"), ("a blue square", "eine blaue Kreis")]):
        Image.new("RGB", (40, 40), (90 * index, 100, 50)).save(corpus / "images" / f"{index}.png")
        lines.append(json.dumps({"image_id": str(index), "image": f"images/{index}.png",
                                 "captions": {"en": [en], "de": [de]}}))
    (corpus / "val.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = tmp_path / "out" / "results.json"
    assert main(["evaluate", "--model", str(model_dir), "--data", str(corpus), "--output", str(output),
                 "--adapters", str(adapters_dir), "--no-progress"]) == 0
    results = json.loads(output.read_text())
    assert results["without_adapters"]["languages"] == ["de"]
    with Image.open(output.parent / ADAPTERS_PNG) as image:
        assert image.format == "PNG"
