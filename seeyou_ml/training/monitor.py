"""Watching a contrastive run: embedding-collapse statistics and the guard against non-finite losses.

Collapse statistics of a batch of L2-normalised embeddings:
- mean off-diagonal cosine: near 1 when all embeddings point the same way;
- effective rank (Roy & Vetterli 2007): `exp` of the entropy of the normalised singular values, between 1 (all
  embeddings on one line) and min(B, D);
- uniformity `log E exp(-2 |x - y|²)` over distinct pairs and alignment `E |x_i - y_i|²` over matching pairs
  (Wang & Isola 2020, "Understanding Contrastive Representation Learning through Alignment and Uniformity").

What the user of a run must act on (collapsing embeddings, skipped steps) is raised with `warnings.warn` under a
[`TrainingWarning`] category: it shows whether or not logging was set up (a `Trainer` in a notebook or script as well
as `recipes/train.py`), can be silenced or turned into errors by category (`warnings.filterwarnings` or python's
`-W`), and reaches logging through `logging.captureWarnings(True)`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch

COLLAPSE_REMEDIES = (
    "lower the learning rate (optim.lr or the stage rates) or lengthen optim.warmup_steps",
    "raise data.batch_size (more negatives; data.sub_batch_size keeps memory flat)",
    "keep data.image_unique_batches on so captions of one image are not each other's negatives",
    "check that model.logit_scale is not pinned at its clamp (model.config.max_logit_scale)",
    "freeze the vision tower for a first stage (stages: [{freeze: [vision], ...}, ...])",
)


def mean_offdiagonal_cosine(embeds: torch.Tensor) -> float:
    """Mean cosine between distinct rows of `embeds` (B, D); rows are normalised here."""
    x = torch.nn.functional.normalize(embeds.float(), dim=-1)
    rows = x.shape[0]
    if rows < 2:
        return float("nan")
    sims = x @ x.T  # (B, B)
    return float((sims.sum() - sims.diagonal().sum()) / (rows * (rows - 1)))


def effective_rank(embeds: torch.Tensor) -> float:
    """Effective rank of `embeds` (B, D): exp of the entropy of its normalised singular values."""
    singular = torch.linalg.svdvals(embeds.float())
    p = singular / singular.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return float(torch.exp(entropy))


def uniformity(embeds: torch.Tensor, t: float = 2.0) -> float:
    """`log E exp(-t |x - y|²)` over distinct pairs of normalised rows; lower is more uniform."""
    x = torch.nn.functional.normalize(embeds.float(), dim=-1)
    if x.shape[0] < 2:
        return float("nan")
    squared = torch.pdist(x, p=2).pow(2)  # (B(B-1)/2,)
    return float(torch.logsumexp(-t * squared, dim=0) - math.log(squared.numel()))


def alignment(image_embeds: torch.Tensor, text_embeds: torch.Tensor, alpha: float = 2.0) -> float:
    """`E |x_i - y_i|^alpha` over matching (image, caption) rows; lower is better aligned."""
    x = torch.nn.functional.normalize(image_embeds.float(), dim=-1)
    y = torch.nn.functional.normalize(text_embeds.float(), dim=-1)
    return float((x - y).norm(dim=-1).pow(alpha).mean())


def embedding_stats(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> dict[str, float]:
    """Collapse statistics of a batch of paired embeddings.

    Args:
        image_embeds: (B, D) image embeddings.
        text_embeds: (B, D) caption embeddings; row i pairs with image row i.

    Returns:
        `{"image/mean_cosine", "image/effective_rank", "image/uniformity", "text/...", "alignment"}`.
    """
    stats = {}
    for name, embeds in (("image", image_embeds), ("text", text_embeds)):
        stats[f"{name}/mean_cosine"] = mean_offdiagonal_cosine(embeds)
        stats[f"{name}/effective_rank"] = effective_rank(embeds)
        stats[f"{name}/uniformity"] = uniformity(embeds)
    stats["alignment"] = alignment(image_embeds, text_embeds)
    return stats


class TrainingWarning(UserWarning):
    """Base of the warnings a training run raises about itself."""


class EmbeddingCollapseWarning(TrainingWarning):
    """A tower's batch embeddings are clustering (see [`CollapseMonitor`])."""


class NonFiniteStepWarning(TrainingWarning):
    """A step's loss or gradient norm was NaN or infinite; the step was skipped (see [`NonFiniteLossGuard`])."""


@dataclass
class CollapseMonitor:
    """Warns, with remedies, when a tower's batch embeddings cluster.

    Args:
        max_cosine: warn when a tower's mean off-diagonal cosine exceeds this.
        min_rank_fraction: warn when a tower's effective rank is below this fraction of min(B, D).

    Example:

    ```python
    >>> monitor = CollapseMonitor()
    >>> stats, messages = monitor.check(torch.ones(8, 4), torch.eye(8, 4), step=100)
    >>> round(stats["image/mean_cosine"], 3), len(messages)
    (1.0, 1)

    ```
    """

    max_cosine: float = 0.9
    min_rank_fraction: float = 0.05

    def check(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, step: int
    ) -> tuple[dict[str, float], list[str]]:
        """Computes [`embedding_stats`] and warns ([`EmbeddingCollapseWarning`]) once per collapsed tower.

        Returns:
            The statistics and the warning messages (empty when nothing collapsed).
        """
        stats = embedding_stats(image_embeds, text_embeds)
        min_rank = self.min_rank_fraction * min(image_embeds.shape)
        messages = []
        for tower in ("image", "text"):
            cosine, rank = stats[f"{tower}/mean_cosine"], stats[f"{tower}/effective_rank"]
            if cosine > self.max_cosine or rank < min_rank:
                remedies = "; ".join(COLLAPSE_REMEDIES)
                messages.append(
                    f"Step {step}: the {tower} embeddings are collapsing (mean off-diagonal cosine {cosine:.3f}, "
                    f"threshold {self.max_cosine}; effective rank {rank:.1f} of at most {min(image_embeds.shape)}, "
                    f"threshold {min_rank:.1f}). Remedies: {remedies}."
                )
        for message in messages:
            warnings.warn(message, EmbeddingCollapseWarning, stacklevel=2)
        return stats, messages


class TrainingDivergedError(RuntimeError):
    """Raised when the loss stays non-finite for too many steps in a row."""


@dataclass
class NonFiniteLossGuard:
    """Counts NaN/inf losses (whose steps are skipped) and stops the run after `max_consecutive` in a row.

    Example:

    ```python
    >>> guard = NonFiniteLossGuard(max_consecutive=2)
    >>> guard.update(float("nan"), step=0), guard.skipped
    (False, 1)
    >>> guard.update(float("inf"), step=1)
    Traceback (most recent call last):
    ...
    seeyou_ml.training.monitor.TrainingDivergedError: The loss was NaN or infinite in 2 consecutive steps ...

    ```
    """

    max_consecutive: int = 5
    skipped: int = 0
    consecutive: int = 0
    last_finite_loss: float | None = None
    last_finite_step: int | None = None
    skipped_steps: list = field(default_factory=list)

    def update(self, loss: float, step: int) -> bool:
        """Records the loss of `step`; returns whether it is finite (False means: skip the optimizer update).

        Raises:
            TrainingDivergedError: when this is the `max_consecutive`-th non-finite loss in a row.
        """
        if math.isfinite(loss):
            self.consecutive = 0
            self.last_finite_loss, self.last_finite_step = loss, step
            return True
        self.skipped += 1
        self.consecutive += 1
        self.skipped_steps = (self.skipped_steps + [step])[-100:]
        warnings.warn(f"Step {step}: loss is {loss}; skipping the optimizer update ({self.consecutive} in a row, "
                      f"{self.skipped} in this run).", NonFiniteStepWarning, stacklevel=2)
        if self.consecutive >= self.max_consecutive:
            last = (f"the last finite loss was {self.last_finite_loss:.4f} at step {self.last_finite_step}"
                    if self.last_finite_loss is not None else "no step had a finite loss")
            raise TrainingDivergedError(
                f"The loss was NaN or infinite in {self.consecutive} consecutive steps "
                f"({step - self.consecutive + 1} to {step}); each was skipped without an optimizer update "
                f"({self.skipped} skipped in this run) and {last}. The run stops here. Try a lower learning rate "
                "(optim.lr or the stage rates), a longer optim.warmup_steps, mixed_precision bf16 or no instead of "
                "fp16, check the corpus for empty captions or corrupt images, or resume from an earlier checkpoint "
                "with --resume_from. Raise monitor.max_consecutive_nonfinite to tolerate longer streaks."
            )
        return False

    def state_dict(self) -> dict:
        """Plain-data state for checkpoints."""
        return {
            "skipped": self.skipped,
            "consecutive": self.consecutive,
            "last_finite_loss": self.last_finite_loss,
            "last_finite_step": self.last_finite_step,
            "skipped_steps": list(self.skipped_steps),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores [`NonFiniteLossGuard.state_dict`]."""
        for key, value in state.items():
            setattr(self, key, value)


__all__ = [
    "COLLAPSE_REMEDIES",
    "CollapseMonitor",
    "EmbeddingCollapseWarning",
    "NonFiniteLossGuard",
    "NonFiniteStepWarning",
    "TrainingDivergedError",
    "TrainingWarning",
    "alignment",
    "effective_rank",
    "embedding_stats",
    "mean_offdiagonal_cosine",
    "uniformity",
]
