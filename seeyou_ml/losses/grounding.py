"""Losses of the grounding head: box regression, attention localisation and image-text matching.

- Box regression: L1 plus generalised IoU on `(cx, cy, w, h)` boxes in [0, 1], weighted 5 and 2 as DETR (Carion et
  al. 2020) and MDETR (Kamath et al. 2021) weight them; GIoU after Rezatofighi et al. (2019).
- Attention localisation: one minus the soft IoU (`sum(min) / sum(max)`, the fuzzy Jaccard index) between a
  phrase's cross-attention map, scaled to a peak of 1, and the share of each feature-map cell that the gold box covers.
- Image-text matching with hard negatives (ALBEF, Li et al. 2021): for every text one negative image and for every
  image one negative text, drawn with probability softmax(similarity) over the non-positives of the global batch,
  then binary cross-entropy over the positive and the negative pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import distributed, gather_no_grad

L1_WEIGHT = 5.0
GIOU_WEIGHT = 2.0


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """`(cx, cy, w, h)` -> `(x0, y0, x1, y1)`, over the last dimension."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """`(x0, y0, x1, y1)` -> `(cx, cy, w, h)`, over the last dimension."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and union of paired `(x0, y0, x1, y1)` boxes.

    Args:
        boxes1, boxes2: (N, 4) boxes; row i of one is compared with row i of the other.

    Returns:
        `(iou, union)`, each (N,).
    """
    top_left = torch.maximum(boxes1[:, :2], boxes2[:, :2])  # (N, 2)
    bottom_right = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])  # (N, 2)
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)  # (N,)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clamp(min=0).prod(-1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).clamp(min=0).prod(-1)
    union = area1 + area2 - inter
    return inter / union.clamp(min=1e-9), union


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of paired `(x0, y0, x1, y1)` boxes: IoU minus the share of the enclosing box covered by
    neither; in [-1, 1], negative for disjoint boxes (so it still has a gradient where IoU is 0).

    Args:
        boxes1, boxes2: (N, 4) boxes.

    Returns:
        (N,) GIoU of each pair.
    """
    iou, union = box_iou(boxes1, boxes2)
    enclosing = (torch.maximum(boxes1[:, 2:], boxes2[:, 2:]) - torch.minimum(boxes1[:, :2], boxes2[:, :2]))
    enclosing_area = enclosing.clamp(min=0).prod(-1)  # (N,)
    return iou - (enclosing_area - union) / enclosing_area.clamp(min=1e-9)


def box_loss(
    pred_boxes: torch.Tensor,
    target_boxes: torch.Tensor,
    l1_weight: float = L1_WEIGHT,
    giou_weight: float = GIOU_WEIGHT,
) -> torch.Tensor:
    """`l1_weight * L1 + giou_weight * (1 - GIoU)` per box, averaged over the boxes.

    Args:
        pred_boxes: (N, 4) predicted `(cx, cy, w, h)` in [0, 1].
        target_boxes: (N, 4) gold `(cx, cy, w, h)` in [0, 1].

    Returns:
        The scalar loss; the L1 term sums the four coordinates of a box, as DETR's does.
    """
    if pred_boxes.shape != target_boxes.shape or pred_boxes.shape[-1] != 4:
        raise ValueError(f"box_loss needs (N, 4) boxes of one shape; got {tuple(pred_boxes.shape)} predicted and "
                         f"{tuple(target_boxes.shape)} gold.")
    l1 = (pred_boxes - target_boxes).abs().sum(-1)  # (N,)
    giou = generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(target_boxes))  # (N,)
    return (l1_weight * l1 + giou_weight * (1 - giou)).mean()


def box_cell_coverage(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Share of each cell of a `height` x `width` grid over the unit square that a box covers.

    Args:
        boxes: (N, 4) `(x0, y0, x1, y1)` in [0, 1].

    Returns:
        (N, height * width) in [0, 1], rows of the grid first.
    """
    def overlap(low: torch.Tensor, high: torch.Tensor, cells: int) -> torch.Tensor:
        edges = torch.arange(cells + 1, device=boxes.device, dtype=boxes.dtype) / cells  # (cells + 1,)
        covered = torch.minimum(high[:, None], edges[None, 1:]) - torch.maximum(low[:, None], edges[None, :-1])
        return covered.clamp(min=0) * cells  # (N, cells), share of each cell's side

    rows = overlap(boxes[:, 1], boxes[:, 3], height)  # (N, H)
    cols = overlap(boxes[:, 0], boxes[:, 2], width)  # (N, W)
    return (rows[:, :, None] * cols[:, None, :]).flatten(1)  # (N, H, W) -> (N, H*W)


def attention_iou(attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Soft IoU `sum(min(a, m)) / sum(max(a, m))` of attention maps and soft masks, the map first scaled to a peak
    of 1 (so a map shaped like the mask scores 1, whatever its total).

    Args:
        attention: (N, L) non-negative maps over L cells (e.g. a softmax over the feature map).
        mask: (N, L) soft masks in [0, 1] (e.g. [`box_cell_coverage`]).

    Returns:
        (N,) soft IoU in [0, 1]; 1 when the scaled map equals the mask.
    """
    scaled = attention / attention.amax(dim=-1, keepdim=True).clamp(min=1e-9)  # (N, L)
    return torch.minimum(scaled, mask).sum(-1) / torch.maximum(scaled, mask).sum(-1).clamp(min=1e-9)


def attention_iou_loss(attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`1 - attention_iou(attention, mask)`, averaged over the N maps."""
    return (1 - attention_iou(attention, mask)).mean()


def positive_pairs(text_ids: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
    """(b, B) True where text i and image j share an image id (any caption of an image is its positive)."""
    return text_ids[:, None] == image_ids[None, :]


def sample_hard_negatives(
    similarity: torch.Tensor, positive: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draws one negative column per row with probability softmax(similarity) over the row's non-positives.

    Args:
        similarity: (N, M) scores (e.g. scaled cosine similarities).
        positive: (N, M) True for the pairs that must never be drawn.
        generator: source of randomness; the same generator state gives the same draws.

    Returns:
        (N,) column indices, none of them positive.
    """
    if similarity.shape != positive.shape:
        raise ValueError(f"similarity {tuple(similarity.shape)} and positive {tuple(positive.shape)} must match.")
    no_negative = positive.all(dim=1)
    if no_negative.any():
        row = int(no_negative.nonzero()[0])
        raise ValueError(f"row {row} of the batch has no negative (every column shares its image id); batches for "
                         "image-text matching need at least two distinct images.")
    weights = F.softmax(similarity.detach().float().masked_fill(positive, float("-inf")), dim=1)  # (N, M)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def hard_negative_indices(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    image_ids: torch.Tensor,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard negatives of this process's pairs, drawn from the global batch.

    Every process gathers the embeddings of all processes and draws for all B rows with the same generator state,
    then keeps its own b rows: the draws equal those of one process holding the whole batch.

    Args:
        image_embeds: (b, D) this process's normalised image embeddings; row i pairs with text i.
        text_embeds: (b, D) this process's normalised text embeddings.
        image_ids: (b,) integer image ids (texts of one image are positives of each other's image).
        generator: seeded equally in every process.

    Returns:
        `(negative_image_of_text, negative_text_of_image)`: (b,) indices into the global batch of B pairs.
    """
    rank, _ = distributed()
    b = image_embeds.shape[0]
    all_images = gather_no_grad(image_embeds.detach())  # (B, D)
    all_texts = gather_no_grad(text_embeds.detach())  # (B, D)
    all_ids = gather_no_grad(image_ids)  # (B,)
    similarity = all_texts.float() @ all_images.float().T  # (B_text, B_image)
    positive = positive_pairs(all_ids, all_ids)  # (B, B), symmetric
    negative_image = sample_hard_negatives(similarity, positive, generator)  # (B,)
    negative_text = sample_hard_negatives(similarity.T, positive, generator)  # (B,)
    rows = slice(rank * b, (rank + 1) * b)
    return negative_image[rows], negative_text[rows]


def itm_loss(positive_logits: torch.Tensor, negative_logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of matching logits: positives labelled 1, negatives 0, averaged over all pairs.

    Args:
        positive_logits: (P,) matching logits of true pairs.
        negative_logits: (N,) matching logits of negative pairs (ALBEF draws 2 per positive).

    Returns:
        The scalar loss.
    """
    logits = torch.cat([positive_logits, negative_logits]).float()
    labels = torch.cat([torch.ones_like(positive_logits), torch.zeros_like(negative_logits)]).float()
    return F.binary_cross_entropy_with_logits(logits, labels)


__all__ = [
    "attention_iou",
    "attention_iou_loss",
    "box_cell_coverage",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_loss",
    "box_xyxy_to_cxcywh",
    "generalized_box_iou",
    "hard_negative_indices",
    "itm_loss",
    "positive_pairs",
    "sample_hard_negatives",
]
