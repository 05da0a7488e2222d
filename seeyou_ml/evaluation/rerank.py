"""Re-ranking the dual encoder's top-k candidates with the grounding head's image-text matching logit (BLIP-style).

A candidate's new score is its matching logit plus `similarity_weight` times the dual encoder's logit of the pair
(`scale * cosine`, what the contrastive loss reads). BLIP (Li et al. 2022) adds the two (weight 1); ALBEF orders by
the matching logit alone (weight 0). With the sum, a matching head that separates the pairs less well than the dual
encoder's similarity leaves its order mostly as it was instead of shuffling it.

The gallery's images are encoded once into the head's regions (N x H*W x d) and the captions once into its token
states; each query's k candidates are then scored pair by pair, `batch_size` queries at a time, each distinct caption
and image of a batch entering the head once. Memory is linear in the gallery (regions and token states) plus
`batch_size * k` pairs, never quadratic.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..images import load_image


@torch.no_grad()
def encode_for_matching(
    model: Any, processor: Any, images: Sequence[Any], captions: Sequence[str], batch_size: int = 64
) -> dict[str, Any]:
    """The grounding head's inputs for a gallery: `regions` (N, H*W, d), `region_size`, and the captions' `text`
    (M, T, d) and `mask` (M, T), padded to the longest caption."""
    if getattr(model, "grounding_head", None) is None:
        raise ValueError("re-ranking needs a model with a grounding head (grounding_config in its config).")
    model.eval()
    device = next(model.parameters()).device
    head = model.grounding_head
    regions, size = [], None
    for start in range(0, len(images), batch_size):
        pil = [load_image(image) for image in images[start : start + batch_size]]
        pixel_values = processor(images=pil, return_tensors="pt")["pixel_values"].to(device)
        chunk, size = head.encode_regions(model.grounding_feature_map(model.get_image_features(pixel_values)))
        regions.append(chunk.float().cpu())
    texts, masks = [], []
    for start in range(0, len(captions), 4 * batch_size):
        encoded = processor(text=list(captions[start : start + 4 * batch_size]), return_tensors="pt", padding=True,
                            truncation=True).to(device)
        states = model.get_text_features(encoded["input_ids"], encoded["attention_mask"]).last_hidden_state
        texts.append(head.encode_text(states, encoded["input_ids"]).float().cpu())
        masks.append(encoded["attention_mask"].cpu())
    length = max(t.shape[1] for t in texts)
    text = torch.cat([F.pad(t, (0, 0, 0, length - t.shape[1])) for t in texts])  # (M, T, d)
    mask = torch.cat([F.pad(m, (0, length - m.shape[1])) for m in masks])  # (M, T)
    return {"regions": torch.cat(regions), "region_size": size, "text": text, "mask": mask}


@torch.no_grad()
def rerank_topk(
    model: Any,
    encoded: dict[str, Any],
    topk: torch.Tensor,
    text_queries: bool,
    batch_size: int = 64,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reorders each query's candidates by the matching logit of the pair, plus a prior score where given.

    Args:
        model: the model whose `grounding_head` scores the pairs.
        encoded: [`encode_for_matching`] of the gallery.
        topk: (Q, k) candidate indices, best first; padding entries (an index past the candidates) stay last.
        text_queries: whether the queries are captions (candidates images) or images (candidates captions).
        batch_size: queries scored at once (`batch_size * k` pairs).
        prior: (Q, k) scores added to the matching logits, e.g. the dual encoder's weighted logits of the pairs
            ([`candidate_logits`]); `None` orders by the matching logit alone.

    Returns:
        (Q, k) the same candidates, ordered by score, highest first.
    """
    if prior is not None and prior.shape != topk.shape:
        raise ValueError(f"prior {tuple(prior.shape)} must have the shape of topk {tuple(topk.shape)}.")
    head = model.grounding_head
    device = next(model.parameters()).device
    regions, text, mask = encoded["regions"], encoded["text"], encoded["mask"]
    num_candidates = len(regions) if text_queries else len(text)
    reranked = []
    for start in range(0, len(topk), batch_size):
        candidates = topk[start : start + batch_size]  # (q, k)
        queries = torch.arange(start, start + len(candidates))[:, None].expand_as(candidates)  # (q, k)
        valid = candidates < num_candidates
        image_index = (candidates if text_queries else queries).clamp(max=len(regions) - 1).flatten()
        text_index = (queries if text_queries else candidates).clamp(max=len(text) - 1).flatten()
        # Each distinct caption and image of the q * k pairs goes to the head once (an image query's k captions, a
        # caption query's k images): the head attends over each caption once, not once per pair.
        texts, text_pair = torch.unique(text_index, return_inverse=True)
        images, image_pair = torch.unique(image_index, return_inverse=True)
        logits = head.fuse(
            text[texts].to(device), mask[texts].to(device), regions[images].to(device), encoded["region_size"],
            locate=False, pairs=(text_pair.to(device), image_pair.to(device)),
        ).itm_logits.float().cpu().view(candidates.shape)  # (q * k,) -> (q, k)
        if prior is not None:
            logits = logits + prior[start : start + batch_size].float()
        logits = logits.masked_fill(~valid, float("-inf"))
        order = logits.argsort(dim=1, descending=True, stable=True)
        reranked.append(candidates.gather(1, order))
    return torch.cat(reranked)


def candidate_logits(
    query_embeds: torch.Tensor, candidate_embeds: torch.Tensor, topk: torch.Tensor, scale: float,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """The dual encoder's logits `scale * <query, candidate>` of each query's top-k candidates.

    Args:
        query_embeds: (Q, D) normalised embeddings of the queries.
        candidate_embeds: (C, D) normalised embeddings of the candidates.
        topk: (Q, k) candidate indices; padding entries (an index past the candidates) get 0.
        scale: the inverse temperature (e.g. `model.scale()`); 0 gives all zeros.
        chunk_size: queries gathered at once (`chunk_size * k * D` floats).

    Returns:
        (Q, k) float32 logits.
    """
    valid = topk < len(candidate_embeds)
    index = topk.clamp(max=len(candidate_embeds) - 1)
    logits = torch.empty(topk.shape, dtype=torch.float32, device=query_embeds.device)
    for start in range(0, len(topk), chunk_size):
        rows = slice(start, start + chunk_size)
        chosen = candidate_embeds[index[rows]].float()  # (q, k, D)
        logits[rows] = scale * torch.einsum("qd,qkd->qk", query_embeds[rows].float(), chosen)
    return logits.masked_fill(~valid, 0.0)


__all__ = ["candidate_logits", "encode_for_matching", "rerank_topk"]
