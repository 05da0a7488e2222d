"""Re-ranking with the matching head: with k = the gallery, it equals brute-force matching of every pair."""

from __future__ import annotations

import pytest
import torch

from seeyou_ml import SeeYouModel
from seeyou_ml.evaluation import evaluate_retrieval
from seeyou_ml.evaluation.rerank import candidate_logits, encode_for_matching, rerank_topk
from seeyou_ml.evaluation.retrieval import recall_from_topk
from seeyou_ml.presets import tiny_config, tiny_processor

from test_evaluator import tiny_corpus

HEAD = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}


@pytest.fixture()
def head_model(tiny_tokenizer):
    torch.manual_seed(0)
    return SeeYouModel(tiny_config(vocab_size=len(tiny_tokenizer), vision_widths=(8, 16), max_text_length=32,
                                   grounding_config=HEAD)).eval()


def _brute_force_logits(model, processor, images, captions) -> torch.Tensor:
    """(captions, images) matching logits of every pair, each pair run through the whole model on its own."""
    logits = torch.empty(len(captions), len(images))
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        for t, caption in enumerate(captions):
            encoded = processor(text=[caption], return_tensors="pt")
            for i in range(len(images)):
                out = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                            pixel_values=pixel_values[i : i + 1])
                logits[t, i] = out.itm_logits[0]
    return logits


def test_reranking_the_whole_gallery_equals_brute_force_matching(head_model, tiny_tokenizer):
    processor = tiny_processor(tiny_tokenizer, image_size=32)
    corpus = tiny_corpus()
    english = corpus.filter(lambda r: r["lang"] == "en")
    first = {}
    for row, image_id in enumerate(english["image_id"]):
        first.setdefault(image_id, row)
    images = [english[row]["image"] for row in first.values()]
    captions = english["caption"]
    owners = torch.tensor([list(first).index(i) for i in english["image_id"]])
    brute = _brute_force_logits(head_model, processor, images, captions)  # (5 captions, 4 images)

    gallery = encode_for_matching(head_model, processor, images, captions, batch_size=3)
    # Start from the reversed order so that re-ranking has everything to do.
    text_topk = torch.arange(len(images)).flip(0).repeat(len(captions), 1)
    image_topk = torch.arange(len(captions)).flip(0).repeat(len(images), 1)
    by_text = rerank_topk(head_model, gallery, text_topk, text_queries=True, batch_size=2)
    by_image = rerank_topk(head_model, gallery, image_topk, text_queries=False, batch_size=3)
    torch.testing.assert_close(by_text, brute.argsort(dim=1, descending=True))
    torch.testing.assert_close(by_image, brute.T.argsort(dim=1, descending=True))

    results = evaluate_retrieval(head_model, processor, corpus, ks=(1, 4), text_to_text=False, progress=False,
                                 rerank_top_k=4, rerank_similarity_weight=0.0)
    gallery_ids = torch.arange(len(images))
    expected_to_image = recall_from_topk(brute.argsort(dim=1, descending=True), owners, gallery_ids, (1,))[1]
    expected_to_text = recall_from_topk(brute.T.argsort(dim=1, descending=True), gallery_ids, owners, (1,))[1]
    assert results["reranked"]["en"]["text_to_image/R@1"] == pytest.approx(expected_to_image)
    assert results["reranked"]["en"]["image_to_text/R@1"] == pytest.approx(expected_to_text)
    # Every candidate is in a list of length k = 4: R@4 is 100 before and after.
    assert results["reranked"]["en"]["text_to_image/R@4"] == 100.0 == results["per_language"]["en"]["text_to_image/R@4"]


def test_padding_entries_stay_last(head_model, tiny_tokenizer):
    processor = tiny_processor(tiny_tokenizer, image_size=32)
    corpus = tiny_corpus()
    gallery = encode_for_matching(head_model, processor, corpus["image"][:2], ["a red circle"], batch_size=2)
    reranked = rerank_topk(head_model, gallery, torch.tensor([[2, 1, 0]]), text_queries=True)
    assert reranked[0, -1] == 2 and sorted(reranked[0, :2].tolist()) == [0, 1]


def test_rerank_needs_a_head_and_a_long_enough_list(tiny_model, tiny_tokenizer, head_model):
    processor = tiny_processor(tiny_tokenizer, image_size=32)
    with pytest.raises(ValueError, match="grounding head"):
        evaluate_retrieval(tiny_model, processor, tiny_corpus(), text_to_text=False, progress=False, rerank_top_k=10)
    with pytest.raises(ValueError, match="rerank_top_k=2 is below the largest recall cut-off 10"):
        evaluate_retrieval(head_model, processor, tiny_corpus(), text_to_text=False, progress=False, rerank_top_k=2)


def test_reranking_adds_the_weighted_similarity_of_the_pair(head_model, tiny_tokenizer):
    processor = tiny_processor(tiny_tokenizer, image_size=32)
    english = tiny_corpus().filter(lambda r: r["lang"] == "en")
    images = [english[row]["image"] for row in (0, 1, 3, 4)]  # one row per image; row 2 is image 1's second caption
    captions = list(english["caption"])
    brute = _brute_force_logits(head_model, processor, images, captions)  # (5 captions, 4 images)
    with torch.no_grad():
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        image_embeds = head_model.get_image_features(pixel_values).pooler_output
        encoded = processor(text=captions, return_tensors="pt", padding=True)
        text_embeds = head_model.get_text_features(encoded["input_ids"], encoded["attention_mask"]).pooler_output
    similarity = text_embeds @ image_embeds.T  # (5, 4)
    alone = (brute.argsort(dim=1, descending=True), similarity.argsort(dim=1, descending=True))
    # A weight at which the sum's order (BLIP: matching logit + weighted similarity) is neither score's alone.
    ratio = float(brute.std() / similarity.std())
    for weight in (ratio * 2.0**k for k in range(-6, 7)):
        expected = (brute + weight * similarity).argsort(dim=1, descending=True)
        if not any(torch.equal(expected, order) for order in alone):
            break
    assert not any(torch.equal(expected, order) for order in alone)

    gallery = encode_for_matching(head_model, processor, images, captions, batch_size=3)
    text_topk = torch.arange(len(images)).flip(0).repeat(len(captions), 1)  # (5, 4), every image, reversed
    prior = candidate_logits(text_embeds, image_embeds, text_topk, weight)
    torch.testing.assert_close(rerank_topk(head_model, gallery, text_topk, text_queries=True, batch_size=2,
                                           prior=prior), expected)


def test_evaluation_reranks_with_the_similarity_weight(head_model, tiny_tokenizer):
    processor = tiny_processor(tiny_tokenizer, image_size=32)

    def reranked(weight: float) -> dict:
        return evaluate_retrieval(head_model, processor, tiny_corpus(), languages=["en"], ks=(1, 2, 4),
                                  text_to_text=False, progress=False, rerank_top_k=4,
                                  rerank_similarity_weight=weight)

    metrics = [f"{direction}/R@{k}" for direction in ("text_to_image", "image_to_text") for k in (1, 2)]
    # A weight that dwarfs the matching logits keeps the dual encoder's order, in both directions; its negative
    # reverses the order of each list, which moves the recalls.
    kept, reversed_ = reranked(1e9), reranked(-1e9)
    assert [kept["reranked"]["en"][m] for m in metrics] == [kept["per_language"]["en"][m] for m in metrics]
    assert [reversed_["reranked"]["en"][m] for m in metrics] != [kept["per_language"]["en"][m] for m in metrics]


def test_candidate_logits_are_the_scaled_dot_products_of_the_listed_pairs():
    queries = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    candidates = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.8, 0.6]])
    topk = torch.tensor([[1, 2, 3], [0, 2, 1]])  # index 3 is padding (past the 3 candidates)
    expected = torch.tensor([[1.0, 0.8, 0.0], [0.8, 0.96, 0.6]]) * 10.0
    torch.testing.assert_close(candidate_logits(queries, candidates, topk, 10.0), expected)
    torch.testing.assert_close(candidate_logits(queries, candidates, topk, 10.0, chunk_size=1), expected)


def test_rerank_prior_must_match_the_candidate_lists(head_model, tiny_tokenizer):
    processor = tiny_processor(tiny_tokenizer, image_size=32)
    gallery = encode_for_matching(head_model, processor, tiny_corpus()["image"][:2], ["a red circle"], batch_size=2)
    with pytest.raises(ValueError, match=r"prior \(1, 3\) must have the shape of topk \(1, 2\)"):
        rerank_topk(head_model, gallery, torch.tensor([[1, 0]]), text_queries=True, prior=torch.zeros(1, 3))
