"""Training with Accelerate: recipes, optimiser and schedule, GradCache accumulation, checkpoints and monitoring."""

from .build import build_trainer
from .checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainingRecipe
from .grad_cache import cache_embeddings
from .monitor import (
    CollapseMonitor,
    EmbeddingCollapseWarning,
    NonFiniteLossGuard,
    NonFiniteStepWarning,
    TrainingDivergedError,
    TrainingWarning,
)
from ..losses import register_loss_term
from .optim import StagedCosineSchedule, build_optimizer, build_param_groups, build_schedule
from .trainer import StepOutput, TrainOutput, Trainer

__all__ = [
    "CollapseMonitor",
    "EmbeddingCollapseWarning",
    "NonFiniteLossGuard",
    "NonFiniteStepWarning",
    "StagedCosineSchedule",
    "StepOutput",
    "TrainOutput",
    "Trainer",
    "TrainingDivergedError",
    "TrainingRecipe",
    "TrainingWarning",
    "build_optimizer",
    "build_param_groups",
    "build_schedule",
    "build_trainer",
    "cache_embeddings",
    "latest_checkpoint",
    "load_checkpoint",
    "register_loss_term",
    "save_checkpoint",
]
