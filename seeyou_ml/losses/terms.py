"""Loss terms of a training run, by name, and which of them count at a given step: the one way to add a loss.

As in OpenCLIP, every term is an entry whose name ends in `_loss` and the training loss is the weighted sum of the
entries. A term is a function `term(outputs, batch, model) -> scalar` registered with [`register_loss_term`]:
`outputs` maps `image_embeds` / `text_embeds` (B, D) (the model's output, or the cached embeddings of a GradCache step)
and whatever else the model returned, and `batch` is the collated batch. Terms marked `embeddings_only=False` need the
model's full output and cannot run with GradCache sub-batching. The recipe's `losses:` section gives every term a
weight and the step at which it starts (any object with `weight` and `start_step`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .contrastive import contrastive_loss, soft_contrastive_loss
from .distributed import gather_no_grad, gather_padded, gather_with_grad, image_ids_to_tensor
from .grounding import (
    attention_iou_loss,
    box_cell_coverage,
    box_cxcywh_to_xyxy,
    box_loss,
    hard_negative_indices,
    itm_loss,
)

LossTermConfig = Any  # a recipe's loss section: anything with `weight` and `start_step`

LossFn = Callable[[Mapping[str, torch.Tensor], Mapping[str, Any], nn.Module], torch.Tensor]


@dataclass(frozen=True)
class LossTerm:
    """A registered loss term; `embeddings_only` says it reads nothing but `image_embeds` and `text_embeds`."""

    name: str
    fn: LossFn
    embeddings_only: bool = True


LOSS_TERMS: dict[str, LossTerm] = {}


def register_loss_term(name: str, embeddings_only: bool = True) -> Callable[[LossFn], LossFn]:
    """Registers `fn(outputs, batch, model) -> scalar tensor` as the loss term `name` (which must end in `_loss`)."""
    if not name.endswith("_loss"):
        raise ValueError(f"Loss term {name!r} must end in `_loss` (the trainer sums the entries named so).")

    def decorator(fn: LossFn) -> LossFn:
        LOSS_TERMS[name] = LossTerm(name, fn, embeddings_only)
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
                         "collator the referring expressions (data.return_phrases), or drop the term from `losses:`.")


@register_loss_term("itm_loss", embeddings_only=False)
def itm_term(outputs: Mapping[str, Any], batch: Mapping[str, Any], model: nn.Module) -> torch.Tensor:
    """Image-text matching with hard negatives from the global batch (ALBEF): each caption with its own image, with
    an image drawn by similarity, and each image with a caption drawn likewise.

    The draws come from a generator seeded by the global batch's image ids, so every process draws the same.
    """
    _require(outputs, batch, "itm_loss", ("itm_logits", "grounding_regions", "grounding_text", "image_id"))
    ids = image_ids_to_tensor(batch["image_id"], outputs["image_embeds"].device)  # (b,)
    all_ids = gather_no_grad(ids)  # (B,)
    generator = torch.Generator().manual_seed(int(all_ids.remainder(2**31).sum()))
    negative_image, negative_text = hard_negative_indices(
        outputs["image_embeds"], outputs["text_embeds"], ids, generator
    )
    regions = gather_with_grad(outputs["grounding_regions"])  # (B, L, d)
    text = outputs["grounding_text"]
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones(text.shape[:2], dtype=torch.long, device=text.device)
    all_text = gather_padded(text)  # (B, T_max, d)
    all_mask = gather_padded(mask.to(text.device)).detach()  # (B, T_max)
    head, size = model.grounding_head, outputs["region_size"]
    negative_image, negative_text = negative_image.to(text.device), negative_text.to(text.device)
    with_other_image = head.fuse(text, mask, regions[negative_image], size).itm_logits  # (b,)
    with_other_text = head.fuse(
        all_text[negative_text], all_mask[negative_text], outputs["grounding_regions"], size
    ).itm_logits  # (b,)
    return itm_loss(outputs["itm_logits"], torch.cat([with_other_image, with_other_text]))


def _phrase_boxes(batch: Mapping[str, Any], like: torch.Tensor) -> torch.Tensor:
    return batch["phrase_boxes"].to(device=like.device, dtype=torch.float32)  # (b, 4) cx, cy, w, h


@register_loss_term("box_loss", embeddings_only=False)
def box_term(outputs: Mapping[str, Any], batch: Mapping[str, Any], model: nn.Module) -> torch.Tensor:
    """L1 (weight 5) + GIoU (weight 2) between the referring expression's predicted and gold boxes."""
    _require(outputs, batch, "box_loss", ("pred_boxes", "phrase_boxes"))
    pred = outputs["pred_boxes"].float()
    return box_loss(pred, _phrase_boxes(batch, pred))


@register_loss_term("attention_iou_loss", embeddings_only=False)
def attention_iou_term(outputs: Mapping[str, Any], batch: Mapping[str, Any], model: nn.Module) -> torch.Tensor:
    """One minus the soft IoU of the expression's last-layer attention (heads averaged) and its gold box's cells."""
    _require(outputs, batch, "attention_iou_loss", ("expression_attention", "phrase_boxes"))
    attention = outputs["expression_attention"].float()  # (b, H*W)
    mask = box_cell_coverage(box_cxcywh_to_xyxy(_phrase_boxes(batch, attention)), *outputs["region_size"])
    return attention_iou_loss(attention, mask)


def check_loss_terms(losses: Mapping[str, LossTermConfig], sub_batching: bool) -> None:
    """Fails early, naming the fix, for unknown terms or terms that cannot run with GradCache sub-batching."""
    unknown = sorted(set(losses) - set(LOSS_TERMS))
    if unknown:
        raise ValueError(f"Unknown loss term(s) {unknown} in the recipe's `losses:`; registered terms: "
                         f"{sorted(LOSS_TERMS)} (add one with seeyou_ml.losses.register_loss_term).")
    if not losses:
        raise ValueError("The recipe's `losses:` is empty; give at least `contrastive_loss: {}`.")
    if min(term.start_step for term in losses.values()) > 0:
        raise ValueError("No loss term starts at step 0; give at least one term `start_step: 0` in `losses:`.")
    if sub_batching:
        full = sorted(name for name in losses if not LOSS_TERMS[name].embeddings_only)
        if full:
            raise ValueError(f"Loss term(s) {full} need the model's full output and cannot run with "
                             "data.sub_batch_size (GradCache); remove sub_batch_size or those terms.")


def active_weights(losses: Mapping[str, LossTermConfig], step: int) -> dict[str, float]:
    """Weights of the terms that count at optimizer step `step` (those whose `start_step` has come)."""
    return {name: term.weight for name, term in losses.items() if step >= term.start_step}


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
    "check_loss_terms",
    "compute_losses",
    "contrastive_term",
    "logit_scale_of",
    "register_loss_term",
]
