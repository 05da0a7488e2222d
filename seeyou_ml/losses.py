"""Every loss of the package, and the registry of loss terms a training recipe switches on.

- collective helpers: which process this is, all-gathers with and without a gradient path, image ids equal in every
  process;
- contrastive: symmetric InfoNCE (hard targets across processes, soft targets for MixUp);
- grounding: box L1 + GIoU, attention IoU, image-text matching with hard negatives;
- terms: the named terms (`contrastive_loss`, `itm_loss`, `box_loss`, `attention_iou_loss`) and
  [`register_loss_term`], the one way to add another.

One file that imports nothing from the package but [`seeyou_ml.geometry`] (boxes, grid cells, listing directions; as
flat), so the modeling files saved beside a model (remote code) carry it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .geometry import ORDER_DIRECTIONS, box_cell_coverage, box_cxcywh_to_xyxy, generalized_box_iou


# ---- Collective helpers ----------------------------------------------------------------------------------------------
# Collective helpers of the losses: which process this is, all-gathers with and without a gradient path, and image
# ids that compare equal in every process.


def distributed() -> tuple[int, int]:
    """(rank, world size), (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the gradient of the gathered tensor over ranks and returns this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, world_size = distributed()
        ctx.batch = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)  # (B, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank's loss depends on every rank's features: this rank's gradient is the sum of their pulls.
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates `tensor` (b, ...) of every rank into (B, ...), keeping the gradient path to every rank's input.

    Every rank must hold the same b.
    """
    _, world_size = distributed()
    if world_size == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates `tensor` (b, ...) of every rank into (B, ...) without a gradient (labels, ids)."""
    _, world_size = distributed()
    if world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def image_ids_to_tensor(image_id: list[str], device: torch.device) -> torch.Tensor:
    """Stable 63-bit integer ids for image id strings, equal in every process (Python's `hash` is salted)."""
    ids = [int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little") >> 1 for i in image_id]
    return torch.tensor(ids, dtype=torch.long, device=device)


def gather_padded(tensor: torch.Tensor, pad_value: float = 0) -> torch.Tensor:
    """[`gather_with_grad`] of (b, T, ...) tensors whose T differs between processes: each is padded to the
    largest T first."""
    _, world_size = distributed()
    if world_size == 1:
        return tensor
    length = torch.tensor([tensor.shape[1]], device=tensor.device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX)
    padding = [0, 0] * (tensor.dim() - 2) + [0, int(length) - tensor.shape[1]]
    return gather_with_grad(torch.nn.functional.pad(tensor, padding, value=pad_value))


# ---- Contrastive losses ----------------------------------------------------------------------------------------------
# Contrastive image-text losses: symmetric InfoNCE with hard or soft (MixUp) targets.
#
# Symmetric InfoNCE as in CLIP (Radford et al. 2021). Across processes the features of every rank are gathered with
# their gradient and each rank scores only its own b rows against all B columns, with its labels offset by its rank
# (OpenCLIP's `gather_with_grad` + `local_loss`): memory per rank is O(b·B), not O(B²), and the gradients equal those
# of one process holding the whole batch.


def contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    image_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over this rank's pairs against the pairs of all ranks.

    Args:
        image_embeds: (b, D) L2-normalised image embeddings of this rank; row i pairs with `text_embeds[i]`.
        text_embeds: (b, D) L2-normalised caption embeddings of this rank.
        logit_scale: scalar inverse temperature (already exponentiated and clamped).
        image_ids: optional (b,) integer ids of the images. Pairs that share an image id are not negatives of each
            other (their logits are masked out), so several captions of one image in a batch are not penalised.

    Returns:
        The scalar loss `(CE(image→text) + CE(text→image)) / 2`, averaged over this rank's b rows. Averaged over
        ranks (as DDP does with gradients) it equals the loss of one process holding all B pairs.
    """
    rank, _ = distributed()
    all_images = gather_with_grad(image_embeds)  # (B, D)
    all_texts = gather_with_grad(text_embeds)  # (B, D)
    logits_per_image = logit_scale * image_embeds @ all_texts.T  # (b, B)
    logits_per_text = logit_scale * text_embeds @ all_images.T  # (b, B)
    labels = torch.arange(image_embeds.shape[0], device=image_embeds.device) + rank * image_embeds.shape[0]
    if image_ids is not None:
        all_ids = gather_no_grad(image_ids)  # (B,)
        same_image = image_ids[:, None] == all_ids[None, :]  # (b, B)
        same_image[torch.arange(len(labels)), labels] = False
        logits_per_image = logits_per_image.masked_fill(same_image, float("-inf"))
        logits_per_text = logits_per_text.masked_fill(same_image, float("-inf"))
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def soft_contrastive_loss(logits_per_image: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with soft targets, for MixUp batches.

    Image-to-text cross-entropy uses `targets`; text-to-image uses `targets.T` (the rows of `targets.T` sum to 1
    when the targets come from `MixUp`). With `targets = eye(B)` this equals the usual CLIP loss. The `contrastive_loss`
    term uses it when the collator mixed the batch (`mixup_targets`); with several processes it gathers the
    embeddings of the global batch and passes the matching block-diagonal `(N, N)` targets.

    Args:
        logits_per_image (`torch.FloatTensor` of shape `(N, N)`): Scaled image-text similarities.
        targets (`torch.FloatTensor` of shape `(N, N)`): Row-stochastic image-to-text targets.

    Returns:
        `torch.FloatTensor`: Scalar loss, the mean of the two directions.
    """
    if logits_per_image.ndim != 2 or logits_per_image.shape[0] != logits_per_image.shape[1]:
        raise ValueError(
            f"soft_contrastive_loss needs square (N, N) logits, one caption per image; got "
            f"{tuple(logits_per_image.shape)}. Gather images and texts over the global batch first."
        )
    if targets.shape != logits_per_image.shape:
        raise ValueError(
            f"targets {tuple(targets.shape)} must match logits_per_image {tuple(logits_per_image.shape)}."
        )
    targets = targets.to(logits_per_image.dtype)
    image_loss = -(targets * F.log_softmax(logits_per_image, dim=-1)).sum(-1).mean()
    text_loss = -(targets.T * F.log_softmax(logits_per_image.T, dim=-1)).sum(-1).mean()
    return (image_loss + text_loss) / 2


# ---- Grounding losses ------------------------------------------------------------------------------------------------
# Losses of the grounding head: box regression, attention localisation and image-text matching.
#
# - Box regression: L1 plus generalised IoU on `(cx, cy, w, h)` boxes in [0, 1], weighted 5 and 2 as DETR (Carion et
#   al. 2020) and MDETR (Kamath et al. 2021) weight them; GIoU after Rezatofighi et al. (2019).
# - Attention localisation: one minus the soft IoU (`sum(min) / sum(max)`, the fuzzy Jaccard index) between a
#   phrase's cross-attention map, scaled to a peak of 1, and the share of each feature-map cell that the gold box
#   covers.
# - Image-text matching with hard negatives (ALBEF, Li et al. 2021): for every text one negative image and for every
#   image one negative text, drawn with probability softmax(similarity) over the non-positives of the global batch,
#   then binary cross-entropy over the positive and the negative pairs.


L1_WEIGHT = 5.0
GIOU_WEIGHT = 2.0


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


def attention_mass_loss(attention: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cross-entropy of attention maps against soft masks normalised to distributions, averaged over the N maps.

    `-sum(m / sum(m) * log(a))`: least when the whole map lies inside the mask, spread as the mask covers the cells.
    Unlike [`attention_iou_loss`], whose gradient through the peak-scaled map is weak while a map is still spread
    over the image, it pulls mass into the box from the first step, as a classification over cells does.

    Args:
        attention: (N, L) maps over L cells, each summing to 1 (e.g. a softmax over the feature map).
        mask: (N, L) soft masks in [0, 1] (e.g. [`box_cell_coverage`]), each covering at least part of a cell.

    Returns:
        The scalar loss.
    """
    target = mask / mask.sum(-1, keepdim=True).clamp(min=eps)  # (N, L)
    return -(target * attention.clamp(min=eps).log()).sum(-1).mean()


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


def _row_similarities(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, image_ids: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cosines of some rows of the global batch (every process's pairs gathered, without a gradient): the rows' texts
    to every image and the rows' images to every text, (R, B) float32 each, and (R, B) True where a pair shares an
    image id (positives are symmetric)."""
    all_images = gather_no_grad(image_embeds.detach()).float()  # (B, D)
    all_texts = gather_no_grad(text_embeds.detach()).float()  # (B, D)
    all_ids = gather_no_grad(image_ids)  # (B,)
    rows = rows.to(all_ids.device)
    return all_texts[rows] @ all_images.T, all_images[rows] @ all_texts.T, positive_pairs(all_ids[rows], all_ids)


def hard_negative_indices(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    image_ids: torch.Tensor,
    generator: torch.Generator,
    logit_scale: torch.Tensor | float = 1.0,
    num_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard negatives of this process's pairs, drawn from the global batch.

    Every process gathers the embeddings of all processes and draws for the rows of all processes with the same
    generator state, then keeps its own: the draws equal those of one process holding the whole batch.

    Args:
        image_embeds: (b, D) this process's normalised image embeddings; row i pairs with text i.
        text_embeds: (b, D) this process's normalised text embeddings.
        image_ids: (b,) integer image ids (texts of one image are positives of each other's image).
        generator: seeded equally in every process.
        logit_scale: the contrastive loss's inverse temperature. Negatives are drawn with probability
            softmax(logit_scale * cosine), the in-batch similarities the contrastive loss sees (ALBEF): over bare
            cosines in [-1, 1] the softmax is nearly uniform and the negatives are random, not hard.
        num_rows: draw for the first `num_rows` pairs of each process only (the pairs the matching head fused);
            `None` draws for all b.

    Returns:
        `(negative_image_of_text, negative_text_of_image)`: (n,) indices into the global batch of B pairs, for this
        process's first n = `num_rows` (or b) pairs.
    """
    rank, world = distributed()
    b = image_embeds.shape[0]
    n = b if num_rows is None else min(num_rows, b)
    rows = (torch.arange(world)[:, None] * b + torch.arange(n)).flatten()  # (P * n,) the drawing rows
    text_to_image, image_to_text, positive = _row_similarities(image_embeds, text_embeds, image_ids, rows)
    negative_image = sample_hard_negatives(float(logit_scale) * text_to_image, positive, generator)  # (P * n,)
    negative_text = sample_hard_negatives(float(logit_scale) * image_to_text, positive, generator)  # (P * n,)
    own = slice(rank * n, (rank + 1) * n)
    return negative_image[own], negative_text[own]


def hardest_negative_indices(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    image_ids: torch.Tensor,
    num_negatives: int,
    num_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The hardest negatives of this process's pairs in the global batch: for each caption the `num_negatives` images
    of other image ids that the dual encoder scores highest, and for each image such captions.

    Args:
        image_embeds: (b, D) this process's normalised image embeddings; row i pairs with text i.
        text_embeds: (b, D) this process's normalised text embeddings.
        image_ids: (b,) integer image ids (texts of one image are positives of each other's image).
        num_negatives: k, the negatives per row.
        num_rows: the first `num_rows` pairs of each process only; `None` all b.

    Returns:
        `(negative_images_of_text, negative_texts_of_image)`: (n, k) indices into the global batch of B pairs, the
        highest-scoring first, for this process's first n = `num_rows` (or b) pairs.

    Raises:
        ValueError: when a row has fewer than k negatives in the global batch.
    """
    rank, _ = distributed()
    b = image_embeds.shape[0]
    n = b if num_rows is None else min(num_rows, b)
    rows = torch.arange(rank * b, rank * b + n)  # (n,) this process's rows in the batch
    text_to_image, image_to_text, positive = _row_similarities(image_embeds, text_embeds, image_ids, rows)
    fewest = int((~positive).sum(dim=1).min())
    if fewest < num_negatives:
        raise ValueError(f"a pair of the batch has {fewest} negatives (captions of other images), fewer than the "
                         f"{num_negatives} that grounding_config.rank_negatives asks itm_rank_loss to rank it "
                         "against; lower rank_negatives or train with larger batches.")
    text_to_image = text_to_image.masked_fill(positive, float("-inf"))  # (n, B)
    image_to_text = image_to_text.masked_fill(positive, float("-inf"))  # (n, B)
    return text_to_image.topk(num_negatives, dim=1).indices, image_to_text.topk(num_negatives, dim=1).indices


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


# ---- Loss terms ------------------------------------------------------------------------------------------------------
# Loss terms of a training run, by name, and which of them count at a given step: the one way to add a loss.
#
# As in OpenCLIP, every term is an entry whose name ends in `_loss` and the training loss is the weighted sum of the
# entries. A term is a function `term(outputs, batch, model) -> scalar` registered with [`register_loss_term`]:
# `outputs` maps `image_embeds` / `text_embeds` (B, D) (the model's output, or the cached embeddings of a GradCache
# step)
# and whatever else the model returned, and `batch` is the collated batch. Terms marked `embeddings_only=False` need the
# model's full output and cannot run with GradCache sub-batching. The recipe's `losses:` section gives every term a
# weight and the step at which it starts (any object with `weight` and `start_step`, and optionally `every`).


LossTermConfig = Any  # a recipe's loss section: anything with `weight` and `start_step`

LossFn = Callable[[Mapping[str, torch.Tensor], Mapping[str, Any], nn.Module], torch.Tensor]


@dataclass(frozen=True)
class LossTerm:
    """A registered loss term; `embeddings_only` says it reads nothing but `image_embeds` and `text_embeds`, `needs`
    names what else the run must provide (`grounding_head`: a model with one; `phrases`: `data.return_phrases`;
    `mentions`: `data.return_mentions`), and `uses` what it reads where the run provides it
    (`negative_captions`: `data.return_negative_captions`)."""

    name: str
    fn: LossFn
    embeddings_only: bool = True
    needs: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()


LOSS_TERMS: dict[str, LossTerm] = {}


def register_loss_term(
    name: str, embeddings_only: bool = True, needs: tuple[str, ...] = (), uses: tuple[str, ...] = ()
) -> Callable[[LossFn], LossFn]:
    """Registers `fn(outputs, batch, model) -> scalar tensor` as the loss term `name` (which must end in `_loss`);
    `needs` lists what the run must provide for it (see [`LossTerm`]), checked before training starts, and `uses`
    what it reads when provided."""
    if not name.endswith("_loss"):
        raise ValueError(f"Loss term {name!r} must end in `_loss` (the trainer sums the entries named so).")

    def decorator(fn: LossFn) -> LossFn:
        LOSS_TERMS[name] = LossTerm(name, fn, embeddings_only, tuple(needs), tuple(uses))
        return fn

    return decorator


def logit_scale_of(model: nn.Module) -> torch.Tensor:
    """The model's inverse temperature: `model.scale()` when it has one (clamped), else `exp(model.logit_scale)`."""
    scale = getattr(model, "scale", None)
    return scale() if callable(scale) else model.logit_scale.exp()


@register_loss_term("contrastive_loss")
def contrastive_term(outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any], model: nn.Module) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch; soft targets when the collator mixed the batch (MixUp).

    Captions of one image in a batch are not negatives of each other (`image_id` masking). With MixUp every process
    scores the whole gathered batch against block-diagonal targets; averaged over processes (as the gradient sync
    does) this is the single-process loss.
    """
    image_embeds = outputs["image_embeds"].float()  # (b, D)
    text_embeds = outputs["text_embeds"].float()  # (b, D)
    scale = logit_scale_of(model)
    targets = batch.get("mixup_targets")
    if targets is not None:
        all_images = gather_with_grad(image_embeds)  # (B, D)
        all_texts = gather_with_grad(text_embeds)  # (B, D)
        blocks = gather_no_grad(targets.float().to(image_embeds.device))  # (B, b)
        rows = targets.shape[0]
        full_targets = torch.block_diag(*blocks.split(rows))  # (B, B)
        return soft_contrastive_loss(scale * all_images @ all_texts.T, full_targets)
    ids = batch.get("image_id")
    ids = image_ids_to_tensor(ids, image_embeds.device) if ids is not None else None
    return contrastive_loss(image_embeds, text_embeds, scale, ids)


def _require(outputs: Mapping[str, Any], batch: Mapping[str, Any], term: str, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if outputs.get(k) is None and batch.get(k) is None]
    if missing:
        raise ValueError(f"{term} needs {missing}: give the model a grounding head (model.grounding_config) and the "
                         "collator what the term reads (data.return_phrases for the referring expressions, "
                         "data.return_mentions for the objects a caption names), or drop the term from `losses:`.")


def _matching_logits(
    outputs: Mapping[str, Any], batch: Mapping[str, Any], model: nn.Module, negative_image: torch.Tensor,
    negative_text: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Matching logits of this process's first n captions with their own images, with the (n, k) images found for
    them, and of their images with the (n, k') captions found for them (indices into the global batch), from one
    pass of the head.

    Returns:
        `(own_pair, caption_with_image, image_with_caption)`: (n,), (n, k) and (n, k').
    """
    n, k = negative_image.shape
    k_text = negative_text.shape[1]
    rank, _ = distributed()
    text = outputs["grounding_text"]
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones(text.shape[:2], dtype=torch.long, device=text.device)
    all_text = gather_padded(text)  # (B, T_max, d)
    all_mask = gather_padded(mask.to(text.device)).detach()  # (B, T_max)
    # This process's captions with their own images, with the images found for them, and the captions found for
    # their images with those images: n + n * k + n * k' pairs, each caption and image indexed in the global batch, so
    # the head attends over each caption and projects each image's regions once however many pairs use it.
    own = rank * text.shape[0] + torch.arange(n, device=text.device)  # (n,)
    own_k, own_k_text = own.repeat_interleave(k), own.repeat_interleave(k_text)  # row i's pairs together
    negative_image, negative_text = negative_image.to(text.device).flatten(), negative_text.to(text.device).flatten()
    logits = model.grounding_head.fuse(
        all_text,
        all_mask,
        gather_with_grad(outputs["grounding_regions"]),  # (B, L, d)
        outputs["region_size"],
        locate=False,
        pairs=(torch.cat([own, own_k, negative_text]), torch.cat([own, negative_image, own_k_text])),
    ).itm_logits  # (n + n * k + n * k',)
    return logits[:n], logits[n : n + n * k].view(n, k), logits[n + n * k :].view(n, k_text)


def _negative_caption_logits(outputs: Mapping[str, Any], batch: Mapping[str, Any], model: nn.Module) -> torch.Tensor:
    """(n, N) matching logits of this process's first n images with their own N negative captions (the batch's
    `negative_caption_mask` marks the padding, whose logits are -inf)."""
    text = outputs["grounding_negative_text"]  # (n * N, T, d)
    present = batch["negative_caption_mask"].to(text.device)  # (b, N)
    count = present.shape[1]
    n = text.shape[0] // count
    images = torch.arange(n, device=text.device).repeat_interleave(count)  # (n * N,) negative caption -> its image
    logits = model.grounding_head.fuse(
        text,
        outputs["negative_attention_mask"],
        outputs["grounding_regions"],  # (b, L, d), this process's images
        outputs["region_size"],
        locate=False,
        pairs=(torch.arange(n * count, device=text.device), images),
    ).itm_logits.view(n, count)
    return logits.float().masked_fill(~present[:n], float("-inf"))


@register_loss_term("itm_loss", embeddings_only=False, needs=("grounding_head",))
def itm_term(outputs: Mapping[str, Any], batch: Mapping[str, Any], model: nn.Module) -> torch.Tensor:
    """Image-text matching with hard negatives from the global batch (ALBEF): each caption with its own image, with
    an image drawn by similarity, and each image with a caption drawn likewise, all in one pass of the head.

    The draws come from a generator seeded by the global batch's image ids, so every process draws the same. Where
    the head matches only this process's first n captions in training (`grounding_config.itm_train_pairs`), those n
    captions and their images get negatives, still drawn from the whole global batch.
    """
    _require(outputs, batch, "itm_loss", ("grounding_regions", "grounding_text", "image_id"))
    ids = image_ids_to_tensor(batch["image_id"], outputs["image_embeds"].device)  # (b,)
    all_ids = gather_no_grad(ids)  # (B,)
    generator = torch.Generator().manual_seed(int(all_ids.remainder(2**31).sum()))
    n = model.grounding_head.config.matched_captions(ids.shape[0], model.training)
    negative_image, negative_text = hard_negative_indices(
        outputs["image_embeds"], outputs["text_embeds"], ids, generator, logit_scale_of(model).detach(), n
    )
    positive, with_image, with_text = _matching_logits(
        outputs, batch, model, negative_image[:, None], negative_text[:, None]
    )  # (n,), (n, 1), (n, 1)
    return itm_loss(positive, torch.cat([with_image[:, 0], with_text[:, 0]]))


@register_loss_term("itm_rank_loss", embeddings_only=False, needs=("grounding_head",), uses=("negative_captions",))
def itm_rank_term(outputs: Mapping[str, Any], batch: Mapping[str, Any], model: nn.Module) -> torch.Tensor:
    """Listwise image-text matching, the task of re-ranking: each caption the head matches ranks its own image among
    it and the k images of the global batch the dual encoder scores highest for it, and each of their images ranks
    its caption likewise (k = `grounding_config.rank_negatives`); the cross-entropy of each softmax over the head's
    logits with the true pair as the target, the two directions averaged.

    Beside `itm_loss`'s one drawn negative per pair and direction, every step shows the head the k near misses the
    dual encoder confuses most, the candidates a top-k re-ranking must order. Where the batch carries negative
    captions (`data.return_negative_captions`: captions of changed copies of each image, e.g. two objects swapped),
    each image ranks its caption against its N negative captions and the k - N hardest captions of the batch: the
    near misses the batch rarely holds.
    """
    _require(outputs, batch, "itm_rank_loss", ("grounding_regions", "grounding_text", "image_id"))
    ids = image_ids_to_tensor(batch["image_id"], outputs["image_embeds"].device)  # (b,)
    k = model.grounding_head.config.rank_negatives
    counterfactual = outputs.get("grounding_negative_text") is not None
    count = batch["negative_caption_mask"].shape[1] if counterfactual else 0
    if count > k:
        raise ValueError(f"the batch carries {count} negative captions per image, more than the {k} candidates "
                         "grounding_config.rank_negatives gives itm_rank_loss; raise rank_negatives to at least "
                         f"{count}.")
    negative_image, negative_text = hardest_negative_indices(
        outputs["image_embeds"], outputs["text_embeds"], ids, k,
        model.grounding_head.config.matched_captions(ids.shape[0], model.training),
    )
    positive, with_image, with_text = _matching_logits(outputs, batch, model, negative_image,
                                                      negative_text[:, : k - count])
    if counterfactual:
        with_text = torch.cat([with_text.float(), _negative_caption_logits(outputs, batch, model)], dim=1)
    target = torch.zeros(positive.shape[0], dtype=torch.long, device=positive.device)
    caption_side = F.cross_entropy(torch.cat([positive[:, None], with_image], dim=1).float(), target)
    image_side = F.cross_entropy(torch.cat([positive[:, None].float(), with_text.float()], dim=1), target)
    return (caption_side + image_side) / 2


def _phrase_boxes(batch: Mapping[str, Any], like: torch.Tensor) -> torch.Tensor:
    # (n, 4) cx, cy, w, h of the n expressions the head grounded: all b, or the first expression_train_pairs
    return batch["phrase_boxes"][: like.shape[0]].to(device=like.device, dtype=torch.float32)


def _expression_map_and_mask(
    outputs: Mapping[str, Any], batch: Mapping[str, Any], term: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The expression's (b, H*W) last-layer attention and the share of each cell its gold box covers."""
    _require(outputs, batch, term, ("expression_attention", "phrase_boxes"))
    attention = outputs["expression_attention"].float()  # (b, H*W)
    mask = box_cell_coverage(box_cxcywh_to_xyxy(_phrase_boxes(batch, attention)), *outputs["region_size"])
    return attention, mask


@register_loss_term("box_loss", embeddings_only=False, needs=("grounding_head", "phrases"))
def box_term(outputs: Mapping[str, Any], batch: Mapping[str, Any], model: nn.Module) -> torch.Tensor:
    """L1 (weight 5) + GIoU (weight 2) between the referring expression's predicted and gold boxes."""
    _require(outputs, batch, "box_loss", ("pred_boxes", "phrase_boxes"))
    pred = outputs["pred_boxes"].float()
    return box_loss(pred, _phrase_boxes(batch, pred))


@register_loss_term("attention_iou_loss", embeddings_only=False, needs=("grounding_head", "phrases"))
def attention_iou_term(outputs: Mapping[str, Any], batch: Mapping[str, Any], model: nn.Module) -> torch.Tensor:
    """One minus the soft IoU of the expression's last-layer attention (heads averaged) and its gold box's cells."""
    return attention_iou_loss(*_expression_map_and_mask(outputs, batch, "attention_iou_loss"))


@register_loss_term("attention_mass_loss", embeddings_only=False, needs=("grounding_head", "phrases"))
def attention_mass_term(outputs: Mapping[str, Any], batch: Mapping[str, Any], model: nn.Module) -> torch.Tensor:
    """Cross-entropy of the expression's last-layer attention (heads averaged) against its gold box's cells."""
    return attention_mass_loss(*_expression_map_and_mask(outputs, batch, "attention_mass_loss"))


@register_loss_term("mention_attention_loss", embeddings_only=False, needs=("grounding_head", "mentions"))
def mention_attention_term(outputs: Mapping[str, Any], batch: Mapping[str, Any], model: nn.Module) -> torch.Tensor:
    """Cross-entropy of the first-layer attention of each object a matched caption names (heads and the mention's
    tokens averaged) against that object's box cells, over the mentions the collator found tokens for.

    Matching alone does not teach the head which region each word is about (on the scenes corpus a head trained by
    matching alone bound colours to shapes no better than the dual encoder); this term does, from the corpus's
    mention spans and boxes (Flickr30k Entities gives the same for photos).
    """
    _require(outputs, batch, "mention_attention_loss", ("mention_attention", "mention_boxes", "mention_token_mask"))
    attention = outputs["mention_attention"].float()  # (n, M, L)
    n = attention.shape[0]
    valid = batch["mention_token_mask"][:n].any(-1).to(attention.device)  # (n, M)
    if not bool(valid.any()):
        return attention.sum() * 0.0
    boxes = box_cxcywh_to_xyxy(batch["mention_boxes"][:n].to(device=attention.device, dtype=torch.float32))
    mask = box_cell_coverage(boxes[valid], *outputs["region_size"])  # (V, L)
    return attention_mass_loss(attention[valid], mask)


def listed_directions(mention_token_mask: torch.Tensor, mention_boxes: torch.Tensor) -> torch.Tensor:
    """Which of [`~seeyou_ml.geometry.ORDER_DIRECTIONS`] each text lists its named objects in, from where they lie.

    Args:
        mention_token_mask: (B, M, T), the tokens that name each of up to M objects (all False for no object).
        mention_boxes: (B, M, 4) their boxes, `(cx, cy, w, h)`.

    Returns:
        (B, K) bool: direction k is True where every object's centre lies strictly further along it than the centre
        of the object named before it. A text that names fewer than two objects has no direction (all False); two
        objects lie in more than one direction (right and down, say), so more than one can be True.
    """
    named = mention_token_mask.any(-1)  # (B, M)
    length = mention_token_mask.shape[-1]
    positions = torch.arange(length, device=mention_token_mask.device)
    first = torch.where(mention_token_mask, positions, length).amin(-1)  # (B, M): first token of each object
    order = torch.where(named, first, length + 1).argsort(dim=1)  # named objects in the text's order, then the rest
    named = named.gather(1, order)
    centres = mention_boxes[..., :2].float().gather(1, order[:, :, None].expand(-1, -1, 2))  # (B, M, 2)
    directions = torch.tensor(ORDER_DIRECTIONS, device=centres.device)  # (K, 2)
    steps = (centres[:, 1:] - centres[:, :-1]) @ directions.T  # (B, M - 1, K)
    counted = (named[:, 1:] & named[:, :-1])[:, :, None]  # steps between two named objects
    return ((steps > 0) | ~counted).all(1) & counted.any(1)


@register_loss_term("order_loss", embeddings_only=False, needs=("grounding_head", "mentions", "order_readout"))
def order_term(outputs: Mapping[str, Any], batch: Mapping[str, Any], model: nn.Module) -> torch.Tensor:
    """What the order readout ([`~seeyou_ml.grounding.OrderReadout`]) reads from a text, taught from the corpus's
    mentions: which words name an object (binary cross-entropy of each word's gate against whether it lies in a
    mention span) plus which direction the text lists them in (minus the log of the probability the readout gives
    the directions the named objects' boxes lie in, [`listed_directions`]: two objects lie in two directions at
    once, and only the text tells which it meant, so the readout learns to put the mass on the one the text names).
    Texts that name fewer than two objects count for the gates only.
    """
    _require(outputs, batch, "order_loss",
             ("order_gate_logits", "order_direction_logits", "mention_boxes", "mention_token_mask"))
    gate_logits = outputs["order_gate_logits"].float()  # (n, T)
    n = gate_logits.shape[0]
    mentions = batch["mention_token_mask"][:n].to(gate_logits.device)  # (n, M, T)
    words = batch["attention_mask"][:n].to(gate_logits.device).bool()  # (n, T)
    gate_loss = F.binary_cross_entropy_with_logits(gate_logits[words], mentions.any(1)[words].float())
    listed = listed_directions(mentions, batch["mention_boxes"][:n].to(gate_logits.device))  # (n, K)
    stated = listed.any(-1)
    if not bool(stated.any()):
        return gate_loss
    log_probability = outputs["order_direction_logits"].float()[stated].log_softmax(-1)
    direction_loss = -torch.logsumexp(log_probability.masked_fill(~listed[stated], float("-inf")), dim=-1).mean()
    return gate_loss + direction_loss


def check_loss_terms(
    losses: Mapping[str, LossTermConfig], sub_batching: bool, provided: set[str] | None = None
) -> None:
    """Fails early, naming the fix, for unknown terms, terms that cannot run with GradCache sub-batching, and (when
    `provided` says what the run has, e.g. `{"grounding_head", "phrases"}`) terms whose needs are not met, so a term
    that starts late does not stop the run halfway."""
    unknown = sorted(set(losses) - set(LOSS_TERMS))
    if unknown:
        raise ValueError(f"Unknown loss term(s) {unknown} in the recipe's `losses:`; registered terms: "
                         f"{sorted(LOSS_TERMS)} (add one with seeyou_ml.losses.register_loss_term).")
    if not losses:
        raise ValueError("The recipe's `losses:` is empty; give at least `contrastive_loss: {}`.")
    if min(term.start_step for term in losses.values()) > 0:
        raise ValueError("No loss term starts at step 0; give at least one term `start_step: 0` in `losses:`.")
    fixes = {"grounding_head": "a grounding head (model.config_overrides.grounding_config)",
             "phrases": "the referring expressions in each batch (data.return_phrases: true)",
             "mentions": "the objects each caption names, with their boxes, in each batch (data.return_mentions: true)",
             "order_readout": "the head's order readout (grounding_config.order_readout: true)"}
    for name in sorted(losses):
        missing = [need for need in LOSS_TERMS[name].needs if provided is not None and need not in provided]
        if missing:
            raise ValueError(f"Loss term {name} needs {' and '.join(fixes.get(m, m) for m in missing)}; give the "
                             f"run that, or drop {name} from `losses:`.")
    if sub_batching:
        full = sorted(name for name in losses if not LOSS_TERMS[name].embeddings_only)
        if full:
            raise ValueError(f"Loss term(s) {full} need the model's full output and cannot run with "
                             "data.sub_batch_size (GradCache); remove sub_batch_size or those terms.")


def active_weights(losses: Mapping[str, LossTermConfig], step: float) -> dict[str, float]:
    """Weights of the terms that count at schedule position `step` (the optimizer step, or a fractional position with
    `schedule_by: time`): those whose `start_step` has come, at every `every`-th whole step from it where a term has
    `every` (every step where it has not)."""
    return {
        name: term.weight
        for name, term in losses.items()
        if step >= term.start_step and int(step - term.start_step) % getattr(term, "every", 1) == 0
    }


def compute_losses(
    outputs: Mapping[str, torch.Tensor],
    batch: Mapping[str, Any],
    model: nn.Module,
    weights: Mapping[str, float],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum of the active terms and each term's value.

    Args:
        outputs: `image_embeds` and `text_embeds` (b, D) of this process, plus whatever the model returned.
        batch: the collated batch.
        model: the unwrapped model (its temperature is read by the contrastive term).
        weights: term name -> weight, from [`active_weights`].

    Returns:
        `(total, terms)`: the scalar to back-propagate and `{name: scalar}` of the unweighted terms.
    """
    terms = {name: LOSS_TERMS[name].fn(outputs, batch, model) for name in weights}
    if not terms:
        raise ValueError("No loss term is active at this step; give one term `start_step: 0`.")
    total = sum(weights[name] * value for name, value in terms.items())
    return total, terms


__all__ = [
    "LOSS_TERMS",
    "LossTerm",
    "active_weights",
    "attention_iou",
    "attention_iou_loss",
    "attention_mass_loss",
    "box_loss",
    "check_loss_terms",
    "compute_losses",
    "contrastive_loss",
    "gather_no_grad",
    "gather_padded",
    "gather_with_grad",
    "hard_negative_indices",
    "hardest_negative_indices",
    "image_ids_to_tensor",
    "itm_loss",
    "listed_directions",
    "logit_scale_of",
    "register_loss_term",
    "sample_hard_negatives",
    "soft_contrastive_loss",
]
