"""Training recipes: dataclasses that round-trip to YAML and take `--key value` overrides from the command line.

A recipe is one YAML file with the sections of [`TrainingRecipe`]. Overrides name a field by its dotted path
(`--optim.lr 1e-4`, `--stages.0.steps 200`, `--losses.contrastive_loss.start_step 50`) or, when the name is unique
across sections, by its bare name (`--lr 1e-4`, `--save_every 100`). Values are parsed as YAML and coerced to the
field's declared type, so `3e-5` is a float even though YAML 1.1 reads it as a string.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

TOWERS = ("vision", "text", "head")
SCHEDULE_BY = ("steps", "time")


@dataclass
class DataConfig:
    """Which corpus to train and evaluate on, and how batches are formed."""

    corpus: str = field(
        default="scenes",
        metadata={"help": "`scenes` for the embedded scenes corpus; anything else is passed to "
                          "`seeyou_ml.data.load_corpus` (a directory, a Karpathy JSON, a `datasets` name)."},
    )
    corpus_kwargs: dict = field(default_factory=dict, metadata={"help": "Keyword arguments of the corpus loader."})
    split_kwargs: dict = field(
        default_factory=dict,
        metadata={"help": "Per-split keyword arguments merged over corpus_kwargs, e.g. `{train: {num_images: 20000}}` "
                          "to train on more scenes than the test split holds."},
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: Optional[str] = field(default="test", metadata={"help": "Split evaluated at the end; null for none."})
    languages: Optional[list] = field(
        default=None, metadata={"help": "Keep only captions in these languages (ISO 639-1); null keeps all."}
    )
    batch_size: int = field(
        default=64, metadata={"help": "Global batch: pairs per optimizer step over all processes (the negatives)."}
    )
    sub_batch_size: Optional[int] = field(
        default=None,
        metadata={"help": "Pairs per forward pass on one process; below the per-process batch it turns on "
                          "GradCache accumulation (same gradients, less memory). null = the whole per-process batch."},
    )
    image_unique_batches: bool = field(
        default=True, metadata={"help": "Never put two captions of one image into a batch (no false negatives)."}
    )
    sampler_kwargs: dict = field(
        default_factory=dict,
        metadata={"help": "Further UniqueImageBatchSampler arguments (group_by_language, max_captions_per_image)."},
    )
    hard_negatives: dict = field(
        default_factory=dict,
        metadata={"help": "Batches with groups of similar images (NeighbourBatchSampler): `columns` whose values "
                          "describe an image (list columns are zipped into objects, e.g. [colours, shapes]; text "
                          "columns give their words), and optionally `hard_fraction`, `group_size`, "
                          "`num_neighbours`. Empty = random batches."},
    )
    max_length: Optional[int] = field(default=None, metadata={"help": "Longest caption in tokens; null = tokenizer's."})
    augment: dict = field(
        default_factory=dict, metadata={"help": "Keyword arguments of the collator's augmentations (see its docs)."}
    )
    num_workers: int = field(
        default=0, metadata={"help": "DataLoader worker processes (augmentations are seeded per batch, so resumed "
                                     "runs stay exact with workers too)."}
    )
    cache_images: bool = field(
        default=False,
        metadata={"help": "Keep every training image's processed pixels in memory (4 * 3 * H * W bytes per image in "
                          "each process that collates) and load, decode and process each image once; for small "
                          "images with several captions each. Not with image augmentations."},
    )
    return_phrases: bool = field(
        default=False,
        metadata={"help": "Also collate each record's referring expression (`phrase`) and its box, for a model with "
                          "a grounding head (model.config_overrides.grounding_config) and its loss terms."},
    )


@dataclass
class ModelConfig:
    """The model to train: a tiny preset of the real architectures, or two pretrained Hub towers."""

    preset: Optional[str] = field(
        default="tiny",
        metadata={"help": "`tiny`: `seeyou_ml.presets.tiny_config` with the scenes SentencePiece tokenizer. "
                          "null: build from the `vision` and `text` checkpoints."},
    )
    preset_kwargs: dict = field(
        default_factory=dict, metadata={"help": "Keyword arguments of the preset (image_size, projection_dim, ...)."}
    )
    vision: Optional[str] = field(default=None, metadata={"help": "Vision checkpoint, e.g. microsoft/resnet-50."})
    text: Optional[str] = field(default=None, metadata={"help": "Text checkpoint, e.g. xlm-roberta-base."})
    tokenizer: Optional[str] = field(
        default=None,
        metadata={"help": "Tokenizer to load; null = the text checkpoint's (the scenes tokenizer for `tiny`)."},
    )
    tokenizer_vocab_size: Optional[int] = field(
        default=None,
        metadata={"help": "`tiny` preset only: train a SentencePiece tokenizer of this size on the training captions "
                          "(kept in <output_dir>/tokenizer and reused on resume) instead of the scenes tokenizer."},
    )
    image_processor: Optional[str] = field(
        default=None, metadata={"help": "Image processor to load; null = the vision checkpoint."}
    )
    config_overrides: dict = field(
        default_factory=dict, metadata={"help": "SeeYouConfig fields (projection_dim, text_pooling, ...)."}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass to save memory."}
    )
    freeze_batchnorm: bool = field(
        default=False,
        metadata={"help": "Keep BatchNorm layers in eval mode (running statistics), as is usual when fine-tuning "
                          "pretrained CNNs with small per-device batches; makes sub-batching exact for ResNets."},
    )
    channels_last: bool = field(
        default=False,
        metadata={"help": "Keep the vision tower's weights and the images in channels-last layout, which oneDNN (CPU) "
                          "and cuDNN (GPU, mixed precision) run convolutions faster in; for convolutional towers."},
    )
    attn_implementation: Optional[str] = field(
        default=None,
        metadata={"help": "Attention kernel of the text tower (`eager`, `sdpa`, ...); null = transformers' choice. "
                          "For short captions on CPU, `eager` trains faster than `sdpa`."},
    )


@dataclass
class OptimConfig:
    """AdamW with a learning rate per tower, linear warmup and cosine decay."""

    lr: float = field(default=3e-5, metadata={"help": "Learning rate of both towers unless set per tower."})
    vision_lr: Optional[float] = field(default=None, metadata={"help": "Vision tower learning rate; null = lr."})
    text_lr: Optional[float] = field(default=None, metadata={"help": "Text tower learning rate; null = lr."})
    head_lr: Optional[float] = field(
        default=None, metadata={"help": "Projections, logit scale and heads; null = lr."}
    )
    weight_decay: float = field(
        default=0.1, metadata={"help": "Decoupled weight decay; never applied to norms, biases or the logit scale."}
    )
    betas: list = field(default_factory=lambda: [0.9, 0.98], metadata={"help": "AdamW betas."})
    eps: float = field(default=1e-6, metadata={"help": "AdamW epsilon."})
    warmup_steps: int = field(default=1000, metadata={"help": "Linear warmup steps at the start of every stage."})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "Cosine floor as a fraction of the peak rate."})
    max_grad_norm: Optional[float] = field(default=1.0, metadata={"help": "Gradient clipping norm; null = none."})


@dataclass
class StageConfig:
    """One training stage: its length, frozen towers and learning rates (null = the optim section's)."""

    name: str = field(default="joint", metadata={"help": "Name shown in logs."})
    steps: int = field(
        default=1000, metadata={"help": "Optimizer steps in this stage (a share of the budget with schedule_by: time)."}
    )
    freeze: list = field(
        default_factory=list, metadata={"help": "Towers kept fixed and in eval mode: any of `vision`, `text`."}
    )
    vision_lr: Optional[float] = field(default=None, metadata={"help": "Vision tower learning rate in this stage."})
    text_lr: Optional[float] = field(default=None, metadata={"help": "Text tower learning rate in this stage."})
    head_lr: Optional[float] = field(default=None, metadata={"help": "Head learning rate in this stage."})
    warmup_steps: Optional[int] = field(default=None, metadata={"help": "Warmup of this stage; null = optim's."})


@dataclass
class LossTermConfig:
    """One loss term; the training loss is the weighted sum of the active terms."""

    weight: float = field(default=1.0, metadata={"help": "Multiplier of the term."})
    start_step: int = field(
        default=0, metadata={"help": "First optimizer step at which the term counts (a schedule position with "
                                     "schedule_by: time, like the stages' steps)."}
    )


@dataclass
class MonitorConfig:
    """Logging, the collapse monitor and the non-finite loss guard."""

    log_every: int = field(default=10, metadata={"help": "Steps between tracker logs."})
    report_to: Optional[str] = field(
        default="tensorboard", metadata={"help": "Accelerate tracker (`tensorboard`, `wandb`, ...); null for none."}
    )
    collapse_every: int = field(default=100, metadata={"help": "Steps between collapse checks; 0 turns them off."})
    collapse_max_cosine: float = field(
        default=0.9, metadata={"help": "Warn when the mean off-diagonal cosine of a tower's embeddings exceeds this."}
    )
    collapse_min_rank_fraction: float = field(
        default=0.05,
        metadata={"help": "Warn when the effective rank falls below this fraction of min(batch, embedding dim)."},
    )
    max_consecutive_nonfinite: int = field(
        default=5, metadata={"help": "Stop after this many NaN/inf losses in a row (each one skips its step)."}
    )
    progress_bar: bool = field(default=True, metadata={"help": "Show a tqdm bar on the main process."})


@dataclass
class CheckpointConfig:
    """Periodic checkpoints under `<output_dir>/checkpoints/step-<N>`."""

    save_every: int = field(default=500, metadata={"help": "Steps between checkpoints; 0 turns them off."})
    keep_last: int = field(default=3, metadata={"help": "Checkpoints kept; older ones are deleted."})


@dataclass
class EvalConfig:
    """Retrieval evaluation on `data.eval_split`."""

    every: int = field(default=0, metadata={"help": "Steps between evaluations during training; 0 = only at the end."})
    embed_batch_size: int = field(default=128, metadata={"help": "Batch size of the embedding passes."})
    kwargs: dict = field(default_factory=dict, metadata={"help": "Further keyword arguments of evaluate_retrieval."})


@dataclass
class TrainingRecipe:
    """Everything a training run needs; written resolved to `<output_dir>/recipe.yaml`.

    Example:

    ```python
    >>> from seeyou_ml.training.config import TrainingRecipe
    >>> recipe = TrainingRecipe.from_dict({"optim": {"lr": "1e-4"}}).with_overrides(["--batch_size", "32"])
    >>> recipe.optim.lr, recipe.data.batch_size, recipe.total_steps
    (0.0001, 32, 1000)

    ```
    """

    name: str = field(default="run", metadata={"help": "Name of the run (tracker project name)."})
    output_dir: str = field(default="outputs/run", metadata={"help": "Where checkpoints, logs and the model go."})
    seed: int = field(default=0, metadata={"help": "Seed of model initialisation, data order and dropout."})
    mixed_precision: Optional[str] = field(
        default=None, metadata={"help": "`no`, `bf16` (or `fp16`); null = the accelerate launch setting."}
    )
    resume_from: Optional[str] = field(
        default=None, metadata={"help": "Checkpoint directory to resume from, or `latest` under output_dir."}
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    stages: list = field(
        default_factory=lambda: [StageConfig()],
        metadata={"help": "Stages run in order; their steps add up to the run's length (see schedule_by).",
                  "item": StageConfig},
    )
    max_train_seconds: Optional[float] = field(
        default=None,
        metadata={"help": "Wall-clock budget of the training loop in seconds: the loop ends after the step that "
                          "crosses it (or after the last stage, if sooner), then the model is saved and evaluated "
                          "as usual. Data loading, periodic evaluations and checkpoints count; setup and the final "
                          "save and evaluation do not. Checkpoints record the time spent, so a resumed run gets what "
                          "is left. null = no budget."},
    )
    schedule_by: str = field(
        default="steps",
        metadata={"help": "`steps`: stage lengths, warmups and loss-term start steps count optimizer steps. `time` "
                          "(needs max_train_seconds): they are shares of the budget, the schedule standing at "
                          "total_steps * elapsed / max_train_seconds, so the stages and the cosine end with the "
                          "budget whatever the step time, and only the budget ends the run. A time-scheduled run is "
                          "not bit-reproducible on resume (its schedule follows the clock)."},
    )
    losses: dict = field(
        default_factory=lambda: {"contrastive_loss": LossTermConfig()},
        metadata={"help": "Loss terms by name (ending in `_loss`) with weight and start step.",
                  "item": LossTermConfig},
    )
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        if self.schedule_by not in SCHEDULE_BY:
            raise ValueError(f"schedule_by={self.schedule_by!r} is unknown; use one of {', '.join(SCHEDULE_BY)}.")
        if self.max_train_seconds is not None and not self.max_train_seconds > 0:
            raise ValueError(f"max_train_seconds={self.max_train_seconds} leaves no time to train; give a positive "
                             "number of seconds, or null for no budget.")
        if self.schedule_by == "time" and self.max_train_seconds is None:
            raise ValueError("schedule_by=time spreads the stages over max_train_seconds, which is null; set "
                             "--max_train_seconds SECONDS, or use --schedule_by steps.")

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run (the stages' steps summed); with `schedule_by: time`, the length of the
        schedule that the budget spans."""
        return sum(stage.steps for stage in self.stages)

    # ---- dict / YAML round trip -------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict) -> "TrainingRecipe":
        """Builds a recipe from nested plain data (as read from YAML), coercing every value to its field's type."""
        return _build(cls, data or {}, "")

    @classmethod
    def from_yaml(cls, path: Union[str, Path]) -> "TrainingRecipe":
        """Reads a recipe file."""
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        if data is not None and not isinstance(data, dict):
            raise ValueError(f"{path} holds a {type(data).__name__}; a recipe is a YAML mapping of sections.")
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        """The recipe as nested plain data."""
        return dataclasses.asdict(self)

    def to_yaml(self, path: Optional[Union[str, Path]] = None) -> str:
        """The recipe as YAML text, also written to `path` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    # ---- command-line overrides -------------------------------------------------------------------------------

    def with_overrides(self, args: list[str]) -> "TrainingRecipe":
        """A copy with `--key value` pairs applied (see the module docstring for how keys are resolved)."""
        data = self.to_dict()
        for key, value in _pairs(args):
            path = _resolve_key(key, data)
            _set_path(data, path, yaml.safe_load(value) if value is not None else None)
        return TrainingRecipe.from_dict(data)


# ---- helpers ------------------------------------------------------------------------------------------------------


def _pairs(args: list[str]) -> list[tuple[str, Optional[str]]]:
    """Splits `["--a", "1", "--b=2"]` into `[("a", "1"), ("b", "2")]`."""
    pairs, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ValueError(f"Unexpected argument {arg!r}: overrides are `--key value` or `--key=value` pairs.")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 2
        else:
            raise ValueError(f"Override --{key} has no value; write `--{key} VALUE`.")
        pairs.append((key.replace("-", "_"), value))
    return pairs


def _node_paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Paths of every field and section of `data` (not descending into free-form mappings)."""
    paths = [prefix] if prefix else []
    if isinstance(data, dict) and (not prefix or not _is_open_mapping(prefix[-1]) or prefix[-1] == "losses"):
        for key, value in data.items():
            paths += _node_paths(value, prefix + (key,))
    return paths


def _walk(parts: tuple, data: dict) -> bool:
    """Whether `parts` is a path from the root of `data` (anything below a free-form mapping counts)."""
    node = data
    for part in parts:
        if isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
        if _is_open_mapping(part):
            # Keys below a free-form section may be new, so any path into it is accepted.
            return True
    return True


def _resolve_key(key: str, data: dict) -> tuple:
    """The path of `key` in `data`: its dotted form from the root, else with its first part the unique field or
    section of that name (`--lr`, `--corpus_kwargs.num_images`)."""
    parts = tuple(int(p) if p.isdigit() else p for p in key.split("."))
    if _walk(parts, data):
        return parts
    nodes = _node_paths(data)
    matches = [p + parts[1:] for p in nodes if p[-1] == parts[0] and _walk(p + parts[1:], data)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        options = ", ".join("--" + ".".join(map(str, m)) for m in matches)
        raise ValueError(f"Override --{key} is ambiguous; write one of: {options}.")
    names = sorted({".".join(map(str, p)) for p in nodes})
    close = difflib.get_close_matches(key, names, n=3) or difflib.get_close_matches(
        key, [n.split(".")[-1] for n in names], n=3
    )
    hint = f" Did you mean {', '.join('--' + c for c in close)}?" if close else ""
    raise ValueError(f"Override --{key} names no recipe field.{hint}")


def _is_open_mapping(name: Any) -> bool:
    """Sections whose keys are free (new keys may be added by an override)."""
    return name in ("corpus_kwargs", "preset_kwargs", "sampler_kwargs", "hard_negatives", "augment",
                    "config_overrides", "kwargs", "losses")


def _set_path(data: Any, path: tuple, value: Any) -> None:
    node = data
    for part in path[:-1]:
        if isinstance(node, dict) and part not in node:
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


def _build(cls: type, data: dict, where: str) -> Any:
    """Instantiates dataclass `cls` from `data`, naming the offending key on unknown fields or bad values."""
    if not isinstance(data, dict):
        raise ValueError(f"Recipe section {where or 'root'} must be a mapping, got {data!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where_ = f" in section {where!r}" if where else ""
        close = {u: difflib.get_close_matches(u, list(fields), n=1) for u in unknown}
        hints = "; ".join(f"{u!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for u, c in close.items())
        raise ValueError(f"Unknown recipe key(s){where_}: {hints}. Known keys: {', '.join(fields)}.")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        dotted = f"{where}.{name}" if where else name
        item = fields[name].metadata.get("item")
        if item is not None and isinstance(value, list):
            kwargs[name] = [_build(item, v or {}, f"{dotted}.{i}") for i, v in enumerate(value)]
        elif item is not None and isinstance(value, dict):
            kwargs[name] = {k: _build(item, v or {}, f"{dotted}.{k}") for k, v in value.items()}
        else:
            kwargs[name] = _coerce(value, hints[name], dotted)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Converts `value` to the type `hint` (a dataclass, a scalar type, Optional[...], list or dict)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            if type(None) in args:
                return None
        hint = next(a for a in args if a is not type(None))
        return _coerce(value, hint, where)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value or {}, where)
    try:
        if hint is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, bool):
                return value
            raise ValueError
        if hint in (int, float):
            if isinstance(value, bool):
                raise ValueError
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return hint(float(value)) if hint is int else float(value)
        if hint is str:
            if isinstance(value, (dict, list)) or value is None:
                raise ValueError
            return str(value)
        if hint is list or origin is list:
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return list(value)
        if hint is dict or origin is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError):
        name = getattr(hint, "__name__", str(hint))
        raise ValueError(f"Recipe field {where}={value!r} is not a valid {name}.") from None
    return value


__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "EvalConfig",
    "LossTermConfig",
    "ModelConfig",
    "MonitorConfig",
    "OptimConfig",
    "SCHEDULE_BY",
    "StageConfig",
    "TOWERS",
    "TrainingRecipe",
]
