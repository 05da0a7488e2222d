"""GradCache: contrastive batches larger than memory, with the gradients of one big batch.

A contrastive loss couples every pair of the batch, so plain gradient accumulation (a loss per sub-batch) loses the
negatives of the other sub-batches. GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under
Memory Limited Setup") splits the step in two:

1. embed every sub-batch without a graph and concatenate the embeddings;
2. compute the loss over the full batch from those embeddings (leaf tensors) and back-propagate to them only;
3. re-run every sub-batch with a graph and back-propagate the cached embedding gradients through it.

The parameter gradients equal those of one pass over the whole batch (up to float rounding) as long as a sample's
embedding does not depend on the other samples of its sub-batch. Dropout is replayed exactly: the random state before
each sub-batch's first pass is restored for its second. BatchNorm in training mode normalises with the statistics of
whichever rows it sees, so with ResNets set `model.freeze_batchnorm` (running statistics) when exactness matters.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Mapping

import torch
from torch import nn

IMAGE_INPUTS = ("pixel_values",)
TEXT_INPUTS = ("input_ids", "attention_mask")


def embed_pair(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Image and caption embeddings of a batch through the model's documented feature methods.

    Args:
        model: a dual encoder with `get_image_features` and `get_text_features` returning `pooler_output`.
        inputs: `pixel_values` (B, 3, H, W), `input_ids` (B, T) and optionally `attention_mask` (B, T).

    Returns:
        `{"image_embeds": (B, D), "text_embeds": (B, D)}`.
    """
    image = model.get_image_features(pixel_values=inputs["pixel_values"])
    text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
    return {"image_embeds": image.pooler_output, "text_embeds": text.pooler_output}


def split_inputs(batch: Mapping[str, Any], size: int) -> list[dict[str, torch.Tensor]]:
    """Cuts the model inputs of `batch` into consecutive row chunks of at most `size` rows."""
    if size <= 0:
        raise ValueError(f"sub_batch_size must be positive, got {size}.")
    keys = [k for k in IMAGE_INPUTS + TEXT_INPUTS if batch.get(k) is not None]
    missing = {"pixel_values", "input_ids"} - set(keys)
    if missing:
        raise ValueError(f"The batch lacks {sorted(missing)}; GradCache embeds images and captions.")
    rows = batch["input_ids"].shape[0]
    return [{k: batch[k][start:start + size] for k in keys} for start in range(0, rows, size)]


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@dataclass
class CachedEmbeddings:
    """Embeddings of a whole batch computed without a graph, and what is needed to replay them with one.

    `embeddings["image_embeds"]` and `embeddings["text_embeds"]` are (B, D) leaf tensors that require grad: compute
    the loss from them, back-propagate it, then call [`CachedEmbeddings.backward`].
    """

    model: nn.Module
    chunks: list[dict[str, torch.Tensor]]
    rng_states: list[tuple]
    embeddings: dict[str, torch.Tensor]
    autocast: Callable[[], ContextManager] = contextlib.nullcontext
    sizes: list[int] = field(default_factory=list)

    def backward(self) -> None:
        """Re-runs every sub-batch with a graph and back-propagates the cached embedding gradients through it."""
        grads = {}
        for key, value in self.embeddings.items():
            if value.grad is None:
                raise RuntimeError(
                    f"{key} has no gradient; back-propagate the loss computed from the cached embeddings before "
                    "calling CachedEmbeddings.backward()."
                )
            grads[key] = value.grad.split(self.sizes)
        device = self.embeddings["image_embeds"].device
        for i, (chunk, state) in enumerate(zip(self.chunks, self.rng_states)):
            _set_rng_state(state, device)
            with self.autocast():
                out = embed_pair(self.model, chunk)
            tensors = [out[key] for key in self.embeddings]
            torch.autograd.backward(tensors, [grads[key][i].to(t.dtype) for key, t in zip(self.embeddings, tensors)])


def cache_embeddings(
    model: nn.Module,
    batch: Mapping[str, Any],
    sub_batch_size: int,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
) -> CachedEmbeddings:
    """First GradCache pass: embeds `batch` sub-batch by sub-batch without building a graph.

    Args:
        model: a dual encoder with `get_image_features` / `get_text_features` (unwrapped from DDP).
        batch: a collated batch; only `pixel_values`, `input_ids` and `attention_mask` are read.
        sub_batch_size: rows per forward pass.
        autocast: context manager factory for mixed precision (e.g. `accelerator.autocast`).

    Returns:
        [`CachedEmbeddings`] holding fp32 (B, D) leaf embeddings that require grad.

    Example:

    ```python
    >>> cached = cache_embeddings(model, batch, sub_batch_size=8)  # doctest: +SKIP
    >>> loss = contrastive_loss(cached.embeddings["image_embeds"], cached.embeddings["text_embeds"], scale)  # doctest: +SKIP
    >>> loss.backward(); cached.backward()  # doctest: +SKIP
    ```
    """
    chunks = split_inputs(batch, sub_batch_size)
    device = chunks[0]["input_ids"].device
    states, parts = [], {"image_embeds": [], "text_embeds": []}
    with torch.no_grad():
        for chunk in chunks:
            states.append(_rng_state(device))
            with autocast():
                out = embed_pair(model, chunk)
            for key in parts:
                parts[key].append(out[key].float())
    embeddings = {key: torch.cat(values).requires_grad_(True) for key, values in parts.items()}  # (B, D)
    return CachedEmbeddings(
        model=model,
        chunks=chunks,
        rng_states=states,
        embeddings=embeddings,
        autocast=autocast,
        sizes=[chunk["input_ids"].shape[0] for chunk in chunks],
    )


__all__ = ["CachedEmbeddings", "cache_embeddings", "embed_pair", "split_inputs"]
