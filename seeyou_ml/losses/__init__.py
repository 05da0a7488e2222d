"""Every loss of the package, and the registry of loss terms a training recipe switches on.

- `contrastive`: symmetric InfoNCE (hard targets across processes, soft targets for MixUp);
- `grounding`: box L1 + GIoU, attention IoU, image-text matching with hard negatives;
- `terms`: the named terms (`contrastive_loss`, `itm_loss`, `box_loss`, `attention_iou_loss`) and
  [`register_loss_term`], the one way to add another;
- `distributed`: the all-gathers the losses share.
"""

from .contrastive import contrastive_loss, soft_contrastive_loss
from .distributed import gather_no_grad, gather_padded, gather_with_grad, image_ids_to_tensor
from .grounding import (
    attention_iou,
    attention_iou_loss,
    box_cell_coverage,
    box_cxcywh_to_xyxy,
    box_iou,
    box_loss,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    hard_negative_indices,
    itm_loss,
    sample_hard_negatives,
)
from .terms import (
    LOSS_TERMS,
    LossTerm,
    active_weights,
    check_loss_terms,
    compute_losses,
    logit_scale_of,
    register_loss_term,
)

__all__ = [
    "LOSS_TERMS",
    "LossTerm",
    "active_weights",
    "attention_iou",
    "attention_iou_loss",
    "box_cell_coverage",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_loss",
    "box_xyxy_to_cxcywh",
    "check_loss_terms",
    "compute_losses",
    "contrastive_loss",
    "gather_no_grad",
    "gather_padded",
    "gather_with_grad",
    "generalized_box_iou",
    "hard_negative_indices",
    "image_ids_to_tensor",
    "itm_loss",
    "logit_scale_of",
    "register_loss_term",
    "sample_hard_negatives",
    "soft_contrastive_loss",
]
