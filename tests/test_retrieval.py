"""Tests of the tiled recall kernel (`seeyou_ml.evaluation.retrieval`) and its `evaluate` metric."""

from __future__ import annotations

import evaluate
import pytest
import torch

from seeyou_ml.evaluation import RETRIEVAL_METRIC_PATH, bidirectional_topk, retrieval_recall


def reference_recall(images, texts, owners, ks):
    """The definitions, straight: full score matrix, stable sort (equal scores keep index order)."""
    scores = images.double() @ texts.double().T  # (N, M)
    by_image = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (N, M)
    by_text = torch.sort(scores.T, dim=1, descending=True, stable=True).indices  # (M, N)
    results = {}
    has_caption = torch.bincount(owners, minlength=images.shape[0]) > 0
    for k in ks:
        image_hits = (owners[by_image[:, :k]] == torch.arange(images.shape[0])[:, None]).any(1)
        results[f"image_to_text/R@{k}"] = 100.0 * image_hits[has_caption].double().mean().item()
    for k in ks:
        text_hits = (by_text[:, :k] == owners[:, None]).any(1)
        results[f"text_to_image/R@{k}"] = 100.0 * text_hits.double().mean().item()
    results["rsum"] = sum(results.values())
    return results


def hand_built():
    """Three images, six captions; every rank below is worked out by hand from these dot products."""
    images = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    texts = torch.tensor(
        [
            [0.9, 0.1, 0.0],  # 0 -> image 0; best image 0: hit@1
            [0.2, 0.8, 0.0],  # 1 -> image 0; best image 1, image 0 second: hit@2
            [0.0, 0.7, 0.3],  # 2 -> image 1; best image 1: hit@1
            [0.6, 0.0, 0.5],  # 3 -> image 2; best image 0, image 2 second: hit@2
            [0.1, 0.2, 0.05],  # 4 -> image 2; order 1, 0, 2: hit@5 only
            [0.0, 0.3, 0.95],  # 5 -> image 1; best image 2, image 1 second: hit@2
        ]
    )
    owners = torch.tensor([0, 0, 1, 2, 2, 1])
    # Image rows: image 0 scores captions 0.9, 0.2, 0, 0.6, 0.1, 0 -> best caption 0 (its own): hit@1.
    # Image 1: 0.1, 0.8, 0.7, 0, 0.2, 0.3 -> best caption 1 (image 0's), second caption 2 (its own): hit@2.
    # Image 2: 0, 0, 0.3, 0.5, 0.05, 0.95 -> best caption 5 (image 1's), second caption 3 (its own): hit@2.
    return images, texts, owners


def test_hand_built_example_has_the_worked_out_recalls():
    images, texts, owners = hand_built()
    results = retrieval_recall(images, texts, owners, ks=(1, 2, 5))
    assert results["image_to_text/R@1"] == pytest.approx(100 / 3)
    assert results["image_to_text/R@2"] == pytest.approx(100.0)
    assert results["text_to_image/R@1"] == pytest.approx(200 / 6)
    assert results["text_to_image/R@2"] == pytest.approx(500 / 6)  # caption 4 ranks its image third
    assert results["text_to_image/R@5"] == pytest.approx(100.0)
    assert results["rsum"] == pytest.approx(100 / 3 + 100 + 100 + 200 / 6 + 500 / 6 + 100)
    assert results == pytest.approx(reference_recall(images, texts, owners, (1, 2, 5)))


def test_default_ks_and_key_order():
    images, texts, owners = hand_built()
    assert list(retrieval_recall(images, texts, owners)) == [
        "image_to_text/R@1", "image_to_text/R@5", "image_to_text/R@10",
        "text_to_image/R@1", "text_to_image/R@5", "text_to_image/R@10", "rsum",
    ]


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 16, 33, 1000])
def test_chunked_equals_unchunked_and_the_definition(chunk_size):
    generator = torch.Generator().manual_seed(chunk_size)
    images = torch.nn.functional.normalize(torch.randn(37, 8, generator=generator), dim=1)
    texts = torch.nn.functional.normalize(torch.randn(101, 8, generator=generator), dim=1)
    owners = torch.randint(0, 37, (101,), generator=generator)
    ks = (1, 5, 10)
    chunked = retrieval_recall(images, texts, owners, ks=ks, chunk_size=chunk_size)
    unchunked = retrieval_recall(images, texts, owners, ks=ks, chunk_size=10_000)
    assert chunked == unchunked
    assert chunked == pytest.approx(reference_recall(images, texts, owners, ks))


@pytest.mark.parametrize("chunk_size", [2, 5, 64])
def test_topk_lists_match_a_stable_sort_under_heavy_ties(chunk_size):
    generator = torch.Generator().manual_seed(0)
    # Half-integer coordinates: many exactly equal scores, all exactly representable.
    queries = (torch.randn(70, 4, generator=generator) * 2).round() / 2
    candidates = (torch.randn(45, 4, generator=generator) * 2).round() / 2
    query_topk, candidate_topk = bidirectional_topk(queries, candidates, 10, chunk_size=chunk_size)
    scores = queries @ candidates.T
    expected_query = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :10]
    expected_candidate = torch.sort(scores.T, dim=1, descending=True, stable=True).indices[:, :10]
    assert torch.equal(query_topk, expected_query)
    assert torch.equal(candidate_topk, expected_candidate)


def test_ties_go_to_the_lower_index():
    # Images 0 and 1 are identical; caption 0 belongs to image 1, caption 1 to image 0.
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    owners = torch.tensor([1, 0, 2])
    for chunk_size in (1, 2, 10):
        results = retrieval_recall(images, texts, owners, ks=(1, 2), chunk_size=chunk_size)
        # Text→image: both captions 0 and 1 rank image 0 first, so only caption 1 (and caption 2) hit at 1.
        assert results["text_to_image/R@1"] == pytest.approx(200 / 3)
        # Image→text: images 0 and 1 both rank caption 0 first; it is image 1's, so image 0 misses at 1.
        assert results["image_to_text/R@1"] == pytest.approx(200 / 3)
        assert results["image_to_text/R@2"] == results["text_to_image/R@2"] == 100.0


def test_images_without_captions_are_candidates_but_not_queries():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    texts = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    owners = torch.tensor([0, 1])  # image 2 has no caption but outranks image 1 for caption 1
    results = retrieval_recall(images, texts, owners, ks=(1,))
    assert results["text_to_image/R@1"] == 50.0
    assert results["image_to_text/R@1"] == 100.0  # averaged over images 0 and 1 only


def test_bf16_agrees_with_fp32_on_a_well_separated_example():
    generator = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(50, 64, generator=generator), dim=1)
    owners = torch.arange(150) % 50
    # Captions close to their image, and images nearly orthogonal: the margins dwarf bf16 rounding.
    texts = torch.nn.functional.normalize(images[owners] + 0.3 * torch.randn(150, 64, generator=generator) / 8, dim=1)
    fp32 = retrieval_recall(images, texts, owners, ks=(1, 5), chunk_size=16)
    bf16 = retrieval_recall(images, texts, owners, ks=(1, 5), chunk_size=16, dtype=torch.bfloat16)
    by_inputs = retrieval_recall(images.bfloat16(), texts.bfloat16(), owners, ks=(1, 5), chunk_size=16)
    assert fp32 == bf16 == by_inputs
    assert fp32["image_to_text/R@1"] == 100.0


def test_more_cut_off_than_candidates_counts_every_query_as_a_hit():
    images, texts, owners = hand_built()
    results = retrieval_recall(images, texts, owners, ks=(10,))
    assert results["image_to_text/R@10"] == results["text_to_image/R@10"] == 100.0


def test_errors_name_the_bad_input():
    images, texts, owners = hand_built()
    with pytest.raises(ValueError, match=r"text_to_image\[3\] = 7 is not an image index in \[0, 3\)"):
        retrieval_recall(images, texts, torch.tensor([0, 0, 1, 7, 2, 1]))
    with pytest.raises(ValueError, match="has 5 entries for 6 captions"):
        retrieval_recall(images, texts, owners[:5])
    with pytest.raises(ValueError, match="image_embeds has dim 3 but text_embeds has dim 2"):
        retrieval_recall(images, texts[:, :2], owners)
    broken = texts.clone()
    broken[4, 1] = float("nan")
    with pytest.raises(ValueError, match="row 4 of text_embeds is not finite"):
        retrieval_recall(images, broken, owners)
    with pytest.raises(ValueError, match="ks=.* positive"):
        retrieval_recall(images, texts, owners, ks=(0,))
    with pytest.raises(ValueError, match="dtype=torch.float16 is not supported"):
        retrieval_recall(images, texts, owners, dtype=torch.float16)


def test_evaluate_metric_loads_offline_and_equals_the_function():
    generator = torch.Generator().manual_seed(1)
    images = torch.nn.functional.normalize(torch.randn(20, 8, generator=generator), dim=1)
    texts = torch.nn.functional.normalize(torch.randn(60, 8, generator=generator), dim=1)
    owners = torch.randint(0, 20, (60,), generator=generator)
    metric = evaluate.load(RETRIEVAL_METRIC_PATH)
    expected = retrieval_recall(images, texts, owners)
    # fp32 inputs survive the Arrow round trip bit for bit, so the numbers are identical.
    assert metric.compute(image_embeds=images.numpy(), text_embeds=texts.numpy(), text_to_image=owners.numpy()) == expected
    for start in range(0, 60, 25):  # captions may also arrive in batches
        metric.add_batch(text_embeds=texts[start : start + 25].tolist(), text_to_image=owners[start : start + 25].tolist())
    assert metric.compute(image_embeds=images.tolist(), ks=(1, 5, 10)) == expected


def test_evaluate_metric_asks_for_the_images():
    metric = evaluate.load(RETRIEVAL_METRIC_PATH)
    with pytest.raises(ValueError, match="needs image_embeds"):
        metric.compute(text_embeds=[[1.0, 0.0]], text_to_image=[0])
