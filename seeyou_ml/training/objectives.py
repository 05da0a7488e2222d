"""Loss terms of a training run, by name, and which of them count at a given step.

As in OpenCLIP, every term is an entry whose name ends in `_loss` and the training loss is their weighted sum. A term
is a function `term(outputs, batch, model) -> scalar` registered with [`register_loss_term`]: `outputs` maps
`image_embeds` / `text_embeds` (B, D) (the model's output, or the cached embeddings of a GradCache step) and `batch`
is the collated batch. Terms marked `embeddings_only=False` need the model's full output and cannot run with
GradCache sub-batching. The recipe's `losses:` section gives every term a weight and the step at which it starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..data.augment_image import soft_contrastive_loss
from ..losses import contrastive_loss, gather_no_grad, gather_with_grad
from ..modeling import image_ids_to_tensor
from .config import LossTermConfig

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


def check_loss_terms(losses: Mapping[str, LossTermConfig], sub_batching: bool) -> None:
    """Fails early, naming the fix, for unknown terms or terms that cannot run with GradCache sub-batching."""
    unknown = sorted(set(losses) - set(LOSS_TERMS))
    if unknown:
        raise ValueError(f"Unknown loss term(s) {unknown} in the recipe's `losses:`; registered terms: "
                         f"{sorted(LOSS_TERMS)} (add one with seeyou_ml.training.objectives.register_loss_term).")
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
