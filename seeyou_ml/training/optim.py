"""AdamW parameter groups per tower and the staged warmup-cosine learning-rate schedule.

Towers are found through the documented attributes of a dual encoder, `model.vision_model` and `model.text_model`;
every other parameter (projections, logit scale, heads) belongs to the `head` group. Weight decay is applied only
to matrices and convolution kernels: norms, biases and the logit scale are left undecayed (Loshchilov & Hutter 2019;
CLIP and OpenCLIP do the same).

The schedule is a table of stages. In each stage the rate of a tower rises linearly over the stage's warmup steps to
that stage's peak and then follows a half cosine down to `min_lr_ratio` of the peak at the stage's end (Loshchilov &
Hutter 2017, "SGDR"). A tower frozen in a stage has rate 0 there. The grounding head may instead hold its peak after the
warmup and fall in a straight line over the stage's last `optim.grounding_decay_steps` steps (warmup-stable-decay, as
in Hu et al. 2024, "MiniCPM"): a head whose loss terms start late then learns at its full rate, not on the towers'
cosine tail.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from .config import TOWERS, OptimConfig, StageConfig

TOWER_ATTRIBUTES = {"vision": "vision_model", "text": "text_model"}


def tower_parameters(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Splits the named parameters of `model` into its `vision`, `text`, `head` and `grounding` parts.

    Args:
        model: a dual encoder exposing `vision_model` and `text_model` (e.g. `SeeYouModel`); the parameters of its
            `grounding_head`, where it has one, are the `grounding` part, the rest outside the towers the `head`.

    Returns:
        `{"vision": [...], "text": [...], "head": [...], "grounding": [...]}` of `(name, parameter)` pairs; shared
        parameters appear once.
    """
    owner: dict[int, str] = {}
    for tower, attribute in TOWER_ATTRIBUTES.items():
        module = getattr(model, attribute, None)
        if not isinstance(module, nn.Module):
            raise ValueError(
                f"{type(model).__name__} has no `{attribute}` module; per-tower parameter groups need a dual encoder "
                f"exposing `vision_model` and `text_model` (as SeeYouModel does)."
            )
        for parameter in module.parameters():
            owner.setdefault(id(parameter), tower)
    grounding = getattr(model, "grounding_head", None)
    if isinstance(grounding, nn.Module):
        for parameter in grounding.parameters():
            owner.setdefault(id(parameter), "grounding")
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {tower: [] for tower in TOWERS}
    for name, parameter in model.named_parameters():
        groups[owner.get(id(parameter), "head")].append((name, parameter))
    return groups


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters that take no weight decay: those of norm layers, biases, and scalars/vectors."""
    names = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)) or type(
            module
        ).__name__.endswith("Norm")
        for name, parameter in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            # ndim < 2 covers biases, norm scales and the logit scale of any architecture.
            if is_norm or name.endswith("bias") or parameter.ndim < 2:
                names.add(full)
    return names


def build_param_groups(model: nn.Module, config: OptimConfig) -> list[dict]:
    """AdamW parameter groups: one per (tower, decay) pair, each tagged with its `tower` for the schedule.

    Args:
        model: a dual encoder exposing `vision_model` and `text_model`.
        config: the recipe's optimiser section (peak rates per tower, weight decay).

    Returns:
        Non-empty groups with keys `params`, `lr`, `weight_decay`, `tower` and `name` (e.g. `"text/no_decay"`).
    """
    undecayed = no_decay_names(model)
    groups = []
    for tower, named in tower_parameters(model).items():
        weight_decay = config.weight_decay
        if tower == "grounding" and config.grounding_weight_decay is not None:
            weight_decay = config.grounding_weight_decay
        for decay in (True, False):
            params = [p for n, p in named if (n not in undecayed) == decay]
            if params:
                groups.append({
                    "params": params,
                    "lr": peak_lr(config, None, tower),
                    "weight_decay": weight_decay if decay else 0.0,
                    "tower": tower,
                    "name": f"{tower}/{'decay' if decay else 'no_decay'}",
                })
    return groups


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over [`build_param_groups`]: the fused kernel (one pass over all tensors, as transformers' Trainer
    uses by default) unless `config.fused` is false or a parameter lives where it has none."""
    groups = build_param_groups(model, config)
    fused = config.fused
    if fused is None:
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps, fused=fused)


def peak_lr(config: OptimConfig, stage: StageConfig | None, tower: str) -> float:
    """Peak rate of `tower` in `stage`: the stage's own, else the optim section's per-tower rate, else `lr`; the
    grounding head without a rate of its own takes the head's."""
    if stage is not None and tower in stage.freeze:
        return 0.0
    for name in (f"{tower}_lr", "head_lr") if tower == "grounding" else (f"{tower}_lr",):
        for source in (stage, config):
            value = getattr(source, name, None) if source is not None else None
            if value is not None:
                return float(value)
    return float(config.lr)


def stage_table(config: OptimConfig, stages: Iterable[StageConfig]) -> list[dict]:
    """The stages as plain data: per stage its first step, length, warmup, frozen towers, peak rate per tower and the
    towers whose rate holds its peak and decays over the stage's last steps (`{tower: steps}`)."""
    table, start = [], 0
    for stage in stages:
        if stage.steps <= 0:
            raise ValueError(f"Stage {stage.name!r} has steps={stage.steps}; every stage needs at least one step.")
        unknown = sorted(set(stage.freeze) - set(TOWER_ATTRIBUTES))
        if unknown:
            raise ValueError(f"Stage {stage.name!r} freezes {unknown}; `freeze` lists towers among "
                             f"{sorted(TOWER_ATTRIBUTES)}.")
        warmup = config.warmup_steps if stage.warmup_steps is None else stage.warmup_steps
        table.append({
            "name": stage.name,
            "start": start,
            "steps": stage.steps,
            "warmup": min(max(int(warmup), 0), stage.steps),
            "freeze": list(stage.freeze),
            "peak": {tower: peak_lr(config, stage, tower) for tower in TOWERS},
            "decay": {"grounding": min(config.grounding_decay_steps, stage.steps)}
            if config.grounding_decay_steps is not None else {},
        })
        start += stage.steps
    if not table:
        raise ValueError("The recipe has no stages; give at least one under `stages:`.")
    return table


def stage_index(table: list[dict], step: float) -> int:
    """Index of the stage that runs optimizer step `step` (the last stage after the end)."""
    for i, stage in enumerate(table):
        if step < stage["start"] + stage["steps"]:
            return i
    return len(table) - 1


def lr_factor(
    step_in_stage: float, steps: int, warmup: int, min_lr_ratio: float, decay_steps: int | None = None
) -> float:
    """Multiplier of the peak rate: linear warmup to 1 over `warmup` steps, then cosine to `min_lr_ratio`; with
    `decay_steps`, 1 after the warmup and a straight line to `min_lr_ratio` over the last `decay_steps` steps instead
    (warmup-stable-decay)."""
    if step_in_stage < warmup:
        # The cap only matters between integer steps (a time-scheduled position just before the warmup's end).
        return min((step_in_stage + 1) / warmup, 1.0)
    if decay_steps is not None:
        remaining = min(max(steps - step_in_stage, 0.0) / max(1, decay_steps), 1.0)
        return min_lr_ratio + (1.0 - min_lr_ratio) * remaining
    progress = min((step_in_stage - warmup) / max(1, steps - warmup), 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class StagedCosineSchedule(LRScheduler):
    """Sets the rate of every parameter group (tagged with its `tower`) from a [`stage_table`].

    Args:
        optimizer: an optimizer whose groups carry a `tower` key (see [`build_param_groups`]).
        table: the output of [`stage_table`].
        min_lr_ratio: cosine floor as a fraction of each stage's peak.

    Example:

    ```python
    >>> from seeyou_ml.training.config import OptimConfig, StageConfig
    >>> config = OptimConfig(lr=1.0, warmup_steps=2)
    >>> table = stage_table(config, [StageConfig(steps=6)])
    >>> opt = torch.optim.AdamW([{"params": [nn.Parameter(torch.zeros(1))], "tower": "head"}])
    >>> schedule = StagedCosineSchedule(opt, table)
    >>> rates = [opt.param_groups[0]["lr"]] + [(opt.step(), schedule.step(), opt.param_groups[0]["lr"])[2] for _ in range(5)]
    >>> [round(r, 3) for r in rates]
    [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]

    ```
    """

    def __init__(self, optimizer: torch.optim.Optimizer, table: list[dict], min_lr_ratio: float = 0.0):
        missing = [i for i, group in enumerate(optimizer.param_groups) if group.get("tower") not in TOWERS]
        if missing:
            raise ValueError(f"Optimizer groups {missing} have no `tower` key in {TOWERS}; build the optimizer with "
                             "seeyou_ml.training.optim.build_param_groups.")
        self.table = table
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer)

    def lr_at(self, step: float, tower: str) -> float:
        """The rate of `tower` at optimizer step `step` (which may be fractional)."""
        stage = self.table[stage_index(self.table, step)]
        local = min(step - stage["start"], stage["steps"])
        factor = lr_factor(local, stage["steps"], stage["warmup"], self.min_lr_ratio, stage["decay"].get(tower))
        return stage["peak"][tower] * factor

    def get_lr(self) -> list[float]:
        return [self.lr_at(self.last_epoch, group["tower"]) for group in self.optimizer.param_groups]

    def set_position(self, position: float) -> None:
        """Sets every group's rate to its value at `position`, in optimizer steps (fractional when the trainer
        schedules by time); `step()` is the same as `set_position(last_epoch + 1)`."""
        self.last_epoch = position
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(position, group["tower"])
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def build_schedule(
    optimizer: torch.optim.Optimizer, config: OptimConfig, stages: Iterable[StageConfig]
) -> StagedCosineSchedule:
    """The schedule of a recipe's optim section and stages."""
    return StagedCosineSchedule(optimizer, stage_table(config, stages), config.min_lr_ratio)


__all__ = [
    "StagedCosineSchedule",
    "build_optimizer",
    "build_param_groups",
    "build_schedule",
    "lr_factor",
    "no_decay_names",
    "peak_lr",
    "stage_index",
    "stage_table",
    "tower_parameters",
]
