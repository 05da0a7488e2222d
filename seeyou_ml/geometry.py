"""Geometry of the unit image square that the grounding head, its losses, its evaluation and the corpora share.

Boxes are `(cx, cy, w, h)` or `(x0, y0, x1, y1)` in [0, 1] of the image (x to the right, y down); a grid of H x W
cells tiles the square, rows first, as a vision tower's feature map does.

- box formats, IoU and generalised IoU of paired boxes;
- the share of each cell of a grid that a box covers, and the cells' centres;
- the directions a text can list things in ([`ORDER_DIRECTIONS`]).

A module with no imports from the package, so the modeling files saved beside a model (remote code) carry it.
"""

from __future__ import annotations

import torch


#: The directions a text can list things in, as unit steps in the image (x to the right, y down): left to right,
#: right to left, top to bottom, bottom to top.
ORDER_DIRECTIONS = ((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0))


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


def cell_centres(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(H*W, 2) `(x, y)` centres of the cells of an H x W grid over the unit square, rows first."""
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
    return torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1)


__all__ = [
    "ORDER_DIRECTIONS",
    "box_cell_coverage",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_xyxy_to_cxcywh",
    "cell_centres",
    "generalized_box_iou",
]
