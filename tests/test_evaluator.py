"""Tests of `seeyou_ml.evaluation.evaluator`, `cache` and `report` with a tiny SeeYouModel."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from PIL import Image

from seeyou_ml.evaluation import (
    CorpusEmbeddings,
    embed_corpus,
    evaluate_retrieval,
    format_table,
    load_embeddings,
    retrieval_recall,
    save_embeddings,
    text_to_text_recall,
    zero_shot_accuracy,
)
from seeyou_ml.presets import tiny_processor

CAPTIONS = {
    "en": ["a red circle", "a blue square", "a green star", "a yellow triangle"],
    "de": ["ein roter Kreis", "eine blaue Kreis", "ein Kreis", "eine Kreis"],
}


def tiny_corpus(with_label: bool = False) -> Dataset:
    """Four images; English captions on all, German on images 0-2; image 1 has two English captions."""
    rows = {"image": [], "caption": [], "lang": [], "image_id": []}
    for index in range(4):
        image = Image.new("RGB", (40, 40), (60 * index, 200 - 40 * index, 30 * index))
        captions = [("en", CAPTIONS["en"][index])] + ([("de", CAPTIONS["de"][index])] if index < 3 else [])
        captions += [("en", "a blue star")] if index == 1 else []
        for lang, caption in captions:
            rows["image"].append(image)
            rows["caption"].append(caption)
            rows["lang"].append(lang)
            rows["image_id"].append(f"photo-{index}")
    if with_label:
        rows["label"] = [["circle", "square", "star", "triangle"][int(i[-1])] for i in rows["image_id"]]
    return Dataset.from_dict(rows)


@pytest.fixture()
def processor(tiny_tokenizer):
    return tiny_processor(tiny_tokenizer, image_size=32)


class CountingModel(torch.nn.Module):
    """Wraps a model and counts the images it embeds."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config
        self.images_seen = 0

    def get_image_features(self, pixel_values):
        self.images_seen += pixel_values.shape[0]
        return self.model.get_image_features(pixel_values=pixel_values)

    def get_text_features(self, input_ids, attention_mask):
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)


def test_embed_corpus_embeds_each_image_once_in_order_of_first_appearance(tiny_model, processor):
    corpus = tiny_corpus()
    counting = CountingModel(tiny_model)
    embeddings = embed_corpus(counting, processor, corpus, batch_size=3, progress=False)
    assert counting.images_seen == 4
    assert embeddings.image_ids == ["photo-0", "photo-1", "photo-2", "photo-3"]
    assert embeddings.text_to_image.tolist() == [0, 0, 1, 1, 1, 2, 2, 3]
    assert embeddings.langs == corpus["lang"]
    with torch.inference_mode():
        pixels = processor(images=[corpus[2]["image"]], return_tensors="pt")["pixel_values"]
        expected = tiny_model.get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(embeddings.image_embeds[1], expected[0], rtol=1e-5, atol=1e-5)
    assert embeddings.text_embeds.shape == (8, tiny_model.config.projection_dim)


def test_per_language_recall_uses_that_languages_captions_and_images(tiny_model, processor):
    corpus = tiny_corpus()
    results = evaluate_retrieval(tiny_model, processor, corpus, batch_size=2, progress=False)
    embeddings = embed_corpus(tiny_model, processor, corpus, progress=False)
    assert results["languages"] == ["de", "en"]
    assert (results["num_images"], results["num_captions"]) == (4, 8)
    de_rows = [i for i, lang in enumerate(embeddings.langs) if lang == "de"]
    expected_de = retrieval_recall(embeddings.image_embeds[:3], embeddings.text_embeds[de_rows], [0, 1, 2])
    assert results["per_language"]["de"] == {**expected_de, "num_images": 3, "num_captions": 3}
    en_rows = [i for i, lang in enumerate(embeddings.langs) if lang == "en"]
    expected_en = retrieval_recall(embeddings.image_embeds, embeddings.text_embeds[en_rows], [0, 1, 1, 2, 3])
    assert results["per_language"]["en"] == {**expected_en, "num_images": 4, "num_captions": 5}
    for key, value in results["mean"].items():
        assert value == pytest.approx((expected_de[key] + expected_en[key]) / 2)
    json.dumps(results)  # the CLI writes it as is


def test_text_to_text_matrix_on_hand_built_embeddings():
    # Image 0: en caption e0, de captions d0a, d0b; image 1: en e1, de d1.
    embeds = torch.tensor(
        [
            [0.6, 0.8],  # e0 (image 0)
            [0.0, 1.0],  # e1 (image 1)
            [1.0, 0.0],  # d0a (image 0)
            [0.8, 0.6],  # d0b (image 0)
            [0.0, 1.0],  # d1 (image 1)
        ]
    )
    embeddings = CorpusEmbeddings(
        image_embeds=torch.eye(2),
        text_embeds=embeds,
        text_to_image=torch.tensor([0, 1, 0, 0, 1]),
        image_ids=["0", "1"],
        langs=["en", "en", "de", "de", "de"],
    )
    matrices = text_to_text_recall(embeddings, ["en", "de"], ks=(1, 2))
    # e0 scores d0a 0.6, d0b 0.96, d1 0.8 -> d0b first: hit. e1: d1 first: hit.
    assert matrices["R@1"]["en"]["de"] == 100.0
    # d0a scores e0 0.6, e1 0 -> hit; d0b: e0 0.96 -> hit; d1: e1 1.0 vs e0 0.8 -> hit.
    assert matrices["R@1"]["de"]["en"] == 100.0
    embeddings.text_embeds[0] = torch.tensor([0.0, 1.0])  # e0 now ties d1 best (1.0): image 1's caption wins
    matrices = text_to_text_recall(embeddings, ["en", "de"], ks=(1, 2))
    assert matrices["R@1"]["en"]["de"] == 50.0
    assert matrices["R@2"]["en"]["de"] == 100.0  # e0's second is d0b (0.6), a caption of its image
    assert matrices["R@1"]["de"]["en"] == pytest.approx(100 * 2 / 3)  # d1 ranks e0 first (tie, lower index)


def _class_embeds(model, processor, prompts: dict[str, list[str]], names) -> torch.Tensor:
    """(C, D) class embeddings computed by hand: each class's prompt embeddings summed and normalised."""
    from seeyou_ml.evaluation import embed_texts

    sums = [embed_texts(model, processor, prompts[name], progress=False).sum(0) for name in names]
    return torch.nn.functional.normalize(torch.stack(sums), dim=1)


def test_zero_shot_scores_each_language_by_its_own_class_embeddings(tiny_model, processor):
    prompts = {"en": {"circle": ["a circle", "a red circle"], "star": ["a star", "a green star"]},
               "de": {"circle": ["ein Kreis"], "star": ["ein roter Kreis"]}}
    english = _class_embeds(tiny_model, processor, prompts["en"], ("circle", "star"))
    german = _class_embeds(tiny_model, processor, prompts["de"], ("circle", "star"))
    # Images on the English class embeddings; a third image on German "star".
    images = torch.stack([english[0], english[1], german[1]])
    results = zero_shot_accuracy(tiny_model, processor, images, ["circle", "star", "star"], prompts, progress=False)
    expected_de = (images @ german.T).argmax(1).eq(torch.tensor([0, 1, 1])).double().mean().item() * 100
    assert results["en"]["classes"] == results["de"]["classes"] == 2
    assert results["de"]["accuracy"] == pytest.approx(expected_de)
    assert results["de"]["accuracy"] > 33.3  # the third image sits on its German class
    # Images swapped onto the other class's German embedding: every German prediction is wrong.
    swapped = zero_shot_accuracy(tiny_model, processor, torch.stack([german[1], german[0]]), ["circle", "star"],
                                 {"de": prompts["de"]}, progress=False)
    assert swapped == {"de": {"accuracy": 0.0, "classes": 2}}
    with pytest.raises(ValueError, match=r"prompts\['en'\] has no prompts for the classes \['square'\]"):
        zero_shot_accuracy(tiny_model, processor, images, ["circle", "square", "star"], prompts, progress=False)


def test_evaluate_retrieval_reports_zero_shot_for_a_labelled_corpus(tiny_model, processor):
    names = ("circle", "square", "star", "triangle")
    prompts = {"en": {name: [f"a {name}"] for name in names}, "de": {name: [f"ein {name}"] for name in names}}
    corpus = tiny_corpus(with_label=True)
    results = evaluate_retrieval(tiny_model, processor, corpus, label_column="label", prompts=prompts, progress=False)
    image_embeds = embed_corpus(tiny_model, processor, corpus, progress=False).image_embeds  # photo-0 .. photo-3
    expected = {}
    for lang in ("de", "en"):
        predicted = (image_embeds @ _class_embeds(tiny_model, processor, prompts[lang], names).T).argmax(1)
        expected[lang] = 100.0 * predicted.eq(torch.arange(4)).double().mean().item()
        assert results["zero_shot"][lang] == {"accuracy": pytest.approx(expected[lang]), "classes": 4}
    assert results["zero_shot"]["mean"] == {"accuracy": pytest.approx((expected["de"] + expected["en"]) / 2)}
    with pytest.raises(ValueError, match="needs both label_column and prompts"):
        evaluate_retrieval(tiny_model, processor, tiny_corpus(with_label=True), label_column="label")
    with pytest.raises(ValueError, match=r"languages \['fr'\] have no captions in this corpus; it has \['de', 'en'\]"):
        evaluate_retrieval(tiny_model, processor, tiny_corpus(), languages=["fr"], progress=False)


def test_cache_reuses_embeddings_until_the_weights_change(tiny_model, processor, tmp_path):
    corpus = tiny_corpus()
    counting = CountingModel(tiny_model)
    first = evaluate_retrieval(counting, processor, corpus, cache_dir=tmp_path, progress=False)
    assert counting.images_seen == 4 and len(list(tmp_path.iterdir())) == 1
    second = evaluate_retrieval(counting, processor, corpus, cache_dir=tmp_path, progress=False)
    assert counting.images_seen == 4  # nothing embedded again
    assert first == second
    with torch.no_grad():
        next(tiny_model.parameters()).add_(0.5)
    evaluate_retrieval(counting, processor, corpus, cache_dir=tmp_path, progress=False)
    assert counting.images_seen == 8 and len(list(tmp_path.iterdir())) == 2


def test_saved_embeddings_round_trip(tmp_path):
    embeddings = CorpusEmbeddings(torch.randn(2, 3), torch.randn(3, 3), torch.tensor([0, 1, 1]), ["a", "b"],
                                  ["en", "de", "en"])
    loaded = load_embeddings(save_embeddings(embeddings, tmp_path / "store", fingerprint="abc"))
    assert torch.equal(loaded.image_embeds, embeddings.image_embeds)
    assert torch.equal(loaded.text_embeds, embeddings.text_embeds)
    assert torch.equal(loaded.text_to_image, embeddings.text_to_image)
    assert (loaded.image_ids, loaded.langs) == (["a", "b"], ["en", "de", "en"])
    with pytest.raises(FileNotFoundError, match="has no embeddings.safetensors or meta.json"):
        load_embeddings(tmp_path / "empty")


def test_format_table_lists_languages_mean_and_text_to_text(tiny_model, processor):
    results = evaluate_retrieval(tiny_model, processor, tiny_corpus(), progress=False)
    lines = format_table(results).splitlines()
    assert lines[0].split()[:3] == ["lang", "images", "captions"]
    assert [line.split()[0] for line in lines[1:4]] == ["de", "en", "mean"]
    assert lines[1].split()[-1] == f"{results['per_language']['de']['rsum']:.1f}"
    assert any(line.startswith("T→T R@1") for line in lines)
