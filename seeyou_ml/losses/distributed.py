"""Collective helpers of the losses: which process this is, all-gathers with and without a gradient path, and image
ids that compare equal in every process."""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist


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


__all__ = ["distributed", "gather_no_grad", "gather_padded", "gather_with_grad", "image_ids_to_tensor"]
