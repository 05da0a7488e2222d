"""Text→text retrieval on parallel text, with and without language adapters side by side.

Each English sentence of a `ParallelText` queries all its translations (en→XX) and each translation all English
sentences (XX→en); a query is a hit at k when its own counterpart is among the k best. The English side is always
embedded by the base model (the adapters are the other languages'); the translations once through their language's
adapter and once without, which is the comparison an adapter has to win.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..adapters import BASE_ADAPTER, language_adapters
from ..data.parallel import ParallelText
from .evaluator import embed_texts
from .retrieval import bidirectional_topk, recall_from_topk


def parallel_text_recall(
    english: torch.Tensor, translation: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """en→XX and XX→en R@k (percent) of aligned (N, D) embeddings, row i of one pairing with row i of the other."""
    pairs = torch.arange(english.shape[0])
    forward, backward = bidirectional_topk(english, translation, max(ks))
    results = {}
    for name, topk in (("en_to_xx", forward), ("xx_to_en", backward)):
        for k, value in recall_from_topk(topk, pairs, pairs, ks).items():
            results[f"{name}/R@{k}"] = value
    return results


def compare_parallel_text(
    model,
    processor,
    texts: Sequence[ParallelText],
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, Any]:
    """Parallel-text retrieval per language, through the language's adapter and through the base weights.

    Args:
        model: a `SeeYouModel`, with or without language adapters.
        processor: its processor.
        texts: one `ParallelText` per language (e.g. the held-out pairs of `load_parallel_text(..., "validation")`).
        ks: recall cut-offs.
        batch_size: sentences per forward pass.
        progress: show progress bars.

    Returns:
        `{"per_language": {lang: {"adapter": bool, "base": {metric: value}, "adapter_scores": {...} or None,
        "gain": {metric: adapter - base} or None}}, "mean": {"base": {...}, "adapter": {...}, "gain": {...}}}` with
        metrics `en_to_xx/R@k`, `xx_to_en/R@k` and `mean/R@k` (their average); the means run over the languages
        that have an adapter (all languages for "base" when none has).
    """
    adapters = set(language_adapters(model))
    per_language: dict[str, Any] = {}
    for text in texts:
        rows = len(text)
        english = embed_texts(model, processor, text.english, batch_size, progress, langs=[BASE_ADAPTER] * rows)
        base = embed_texts(model, processor, text.translation, batch_size, progress, langs=[BASE_ADAPTER] * rows)
        entry: dict[str, Any] = {"adapter": text.lang in adapters, "pairs": rows,
                                 "base": _with_mean(parallel_text_recall(english, base, ks), ks)}
        entry["adapter_scores"] = entry["gain"] = None
        if entry["adapter"]:
            routed = embed_texts(model, processor, text.translation, batch_size, progress, langs=[text.lang] * rows)
            entry["adapter_scores"] = _with_mean(parallel_text_recall(english, routed, ks), ks)
            entry["gain"] = {k: entry["adapter_scores"][k] - entry["base"][k] for k in entry["base"]}
        per_language[text.lang] = entry
    adapted = [entry for entry in per_language.values() if entry["adapter"]]
    mean: dict[str, Any] = {}
    if adapted:
        for name, key in (("base", "base"), ("adapter", "adapter_scores"), ("gain", "gain")):
            mean[name] = {k: sum(e[key][k] for e in adapted) / len(adapted) for k in adapted[0][key]}
    elif per_language:
        entries = list(per_language.values())
        mean["base"] = {k: sum(e["base"][k] for e in entries) / len(entries) for k in entries[0]["base"]}
    return {"per_language": per_language, "mean": mean}


def _with_mean(scores: dict[str, float], ks: Sequence[int]) -> dict[str, float]:
    return {**scores, **{f"mean/R@{k}": (scores[f"en_to_xx/R@{k}"] + scores[f"xx_to_en/R@{k}"]) / 2 for k in ks}}


__all__ = ["compare_parallel_text", "parallel_text_recall"]
