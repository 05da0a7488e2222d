"""Contrastive image-text losses: symmetric InfoNCE with hard or soft (MixUp) targets.

Symmetric InfoNCE as in CLIP (Radford et al. 2021). Across processes the features of every rank are gathered with
their gradient and each rank scores only its own b rows against all B columns, with its labels offset by its rank
(OpenCLIP's `gather_with_grad` + `local_loss`): memory per rank is O(b·B), not O(B²), and the gradients equal those
of one process holding the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import distributed, gather_no_grad, gather_with_grad


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


__all__ = ["contrastive_loss", "soft_contrastive_loss"]
