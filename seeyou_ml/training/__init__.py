"""Training with Accelerate: recipes, optimiser and schedule, GradCache accumulation, checkpoints and monitoring."""

from .config import TrainingRecipe
from .optim import StagedCosineSchedule, build_optimizer, build_param_groups, build_schedule

__all__ = ["StagedCosineSchedule", "TrainingRecipe", "build_optimizer", "build_param_groups", "build_schedule"]
