"""Training stages: which towers learn, and in which mode every module runs, at a given step.

The default two-stage recipe follows LiT (Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text
Tuning"): first the text tower and the projections learn while the vision tower stays locked, then both towers train
jointly. A frozen tower has `requires_grad=False` (no gradients are computed for it) and runs in eval mode (its
BatchNorm statistics and dropout stay fixed); its rate in the schedule is 0.
"""

from __future__ import annotations

from torch import nn

from .optim import TOWER_ATTRIBUTES, stage_index


class StageController:
    """Applies the stage of each step to a model, remembering which parameters were trainable to begin with.

    Parameters that were frozen before training (e.g. the base weights under LoRA adapters) stay frozen when a stage
    unfreezes their tower.

    Args:
        model: a dual encoder exposing `vision_model` and `text_model`.
        table: the stages as [`stage_table`] lays them out.
        freeze_batchnorm: keep every BatchNorm layer in eval mode.
    """

    def __init__(self, model: nn.Module, table: list[dict], freeze_batchnorm: bool = False):
        self.model = model
        self.table = table
        self.freeze_batchnorm = freeze_batchnorm
        self.trainable = {id(p): p.requires_grad for p in model.parameters()}
        self.current: int | None = None

    def apply(self, step: int) -> bool:
        """Sets `requires_grad` for the stage of `step`; returns whether the stage changed."""
        index = stage_index(self.table, step)
        if index == self.current:
            return False
        self.current = index
        frozen = set(self.table[index]["freeze"])
        for tower, attribute in TOWER_ATTRIBUTES.items():
            for parameter in getattr(self.model, attribute).parameters():
                parameter.requires_grad_(self.trainable[id(parameter)] and tower not in frozen)
        return True

    def train_mode(self) -> None:
        """Puts the model in training mode, with frozen towers (and BatchNorm when asked) in eval mode."""
        self.model.train()
        if self.current is not None:
            for tower in self.table[self.current]["freeze"]:
                getattr(self.model, TOWER_ATTRIBUTES[tower]).eval()
        if self.freeze_batchnorm:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    @property
    def name(self) -> str:
        """Name of the current stage."""
        return self.table[self.current or 0]["name"]


__all__ = ["StageController"]
