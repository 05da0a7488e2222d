"""Contrastive image-text losses.

Symmetric InfoNCE as in CLIP (Radford et al. 2021). Across processes the features of every rank are gathered with
their gradient and each rank scores only its own b rows against all B columns, with its labels offset by its rank
(OpenCLIP's `gather_with_grad` + `local_loss`): memory per rank is O(b·B), not O(B²), and the gradients equal those
of one process holding the whole batch.

Loss modules return dicts whose keys end in `_loss`; a training task sums them, so more losses slot in beside.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed() -> tuple[int, int]:
    """(rank, world size), (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the gradient of the gathered tensor over ranks and returns this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, world_size = _distributed()
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
    _, world_size = _distributed()
    if world_size == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates `tensor` (b, ...) of every rank into (B, ...) without a gradient (labels, ids)."""
    _, world_size = _distributed()
    if world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


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
    rank, _ = _distributed()
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


class ContrastiveLoss(nn.Module):
    """Module form of [`contrastive_loss`], returning `{"contrastive_loss": loss}`."""

    def forward(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        logit_scale: torch.Tensor,
        image_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        return {"contrastive_loss": contrastive_loss(image_embeds, text_embeds, logit_scale, image_ids)}


__all__ = ["ContrastiveLoss", "contrastive_loss", "gather_no_grad", "gather_with_grad"]
