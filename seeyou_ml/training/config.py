"""Training recipes: the schema, dataclasses that round-trip to YAML and take `--key value` overrides.

A recipe is one YAML file with the sections of [`TrainingRecipe`]. Overrides name a field by its dotted path
(`--optim.lr 1e-4`, `--stages.0.steps 200`, `--losses.contrastive_loss.start_step 50`) or, when the name is unique
across sections, by its bare name (`--lr 1e-4`, `--save_every 100`). Values are parsed as YAML and coerced to the
field's declared type, so `3e-5` is a float even though YAML 1.1 reads it as a string. Reading and overriding are
done by the schema-agnostic engine in [`seeyou_ml.training.overrides`]; this module only declares the sections.
Only `true` and `false` are booleans (as in YAML 1.2): `no`, `off`, `yes` and `on` stay the strings they were written
as, so `mixed_precision: no` means fp32, and boolean fields accept them as words.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from ..data.augment import AugmentationConfig
from .overrides import apply_overrides, build_config, load_layered_yaml
from .precision import MIXED_PRECISION

TOWERS = ("vision", "text", "head", "grounding")
SCHEDULE_BY = ("steps", "time")


@dataclass
class HardNegativesConfig:
    """Batches with groups of similar images as hard negatives for one another (`NeighbourBatchSampler`)."""

    columns: list = field(
        default_factory=list,
        metadata={"help": "Columns whose values describe an image: list columns are zipped into objects (e.g. "
                          "[colours, shapes]), text columns give their words. Empty = random batches."},
    )
    hard_fraction: float = field(default=0.5, metadata={"ge": 0, "le": 1,
                                                        "help": "Share of each batch filled with neighbour groups."})
    group_size: int = field(default=4, metadata={"ge": 2, "help": "Images per group (an anchor and its neighbours)."})
    num_neighbours: int = field(
        default=16, metadata={"ge": 1, "help": "Nearest images each group draws its neighbours from."}
    )

    def __post_init__(self):
        tuned = [f.name for f in dataclasses.fields(self) if f.name != "columns" and getattr(self, f.name) != f.default]
        if tuned and not self.columns:
            raise ValueError(f"{', '.join(tuned)} set without `columns`, the columns describing an image, e.g. "
                             "{columns: [colours, shapes]} for the scenes corpus or {columns: [caption]}.")


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
        default=64, metadata={"ge": 1,
                              "help": "Global batch: pairs per optimizer step over all processes (the negatives)."}
    )
    sub_batch_size: Optional[int] = field(
        default=None,
        metadata={"ge": 1, "help": "Pairs per forward pass on one process; below the per-process batch it turns on "
                          "GradCache accumulation (same gradients, less memory). null = the whole per-process batch."},
    )
    image_unique_batches: bool = field(
        default=True, metadata={"help": "Never put two captions of one image into a batch (no false negatives)."}
    )
    sampler_kwargs: dict = field(
        default_factory=dict,
        metadata={"help": "Further UniqueImageBatchSampler arguments (group_by_language, max_captions_per_image)."},
    )
    hard_negatives: HardNegativesConfig = field(
        default_factory=HardNegativesConfig,
        metadata={"help": "Batches with groups of similar images (NeighbourBatchSampler); no columns: random ones."},
    )
    max_length: Optional[int] = field(default=None, metadata={"ge": 1,
                                                              "help": "Longest caption in tokens; null = tokenizer's."})
    augment: AugmentationConfig = field(
        default_factory=AugmentationConfig,
        metadata={"help": "The collator's augmentations (seeyou_ml.data.augment.AugmentationConfig); all off by "
                          "default. Back-translation draws from the training split's captions of the same image."},
    )
    num_workers: int = field(
        default=0, metadata={"ge": 0,
                             "help": "DataLoader worker processes (augmentations are seeded per batch, so resumed "
                                     "runs stay exact with workers too)."}
    )
    background_collate: bool = field(
        default=True,
        metadata={"help": "With num_workers 0 in a one-process run, collate the next batch in a background thread "
                          "while the model steps. Only for collators that draw no random numbers (no augmentations): "
                          "augmenting ones draw from the global RNG, which the step shares, and collate in turn."},
    )
    cache_images: bool = field(
        default=False,
        metadata={"help": "Keep every training image's processed pixels in memory (4 * 3 * H * W bytes per image in "
                          "each process that collates) and load, decode and process each image once; for small "
                          "images with several captions each. Not with image augmentations."},
    )
    cache_text: bool = field(
        default=False,
        metadata={"help": "Keep every training caption's token ids in memory and tokenise each caption once; for "
                          "corpora whose captions come back epoch after epoch. Not with text augmentations."},
    )
    return_phrases: bool = field(
        default=False,
        metadata={"help": "Also collate each record's referring expression (`phrase`) and its box, for a model with "
                          "a grounding head (model.config_overrides.grounding_config) and its loss terms."},
    )
    return_mentions: bool = field(
        default=False,
        metadata={"help": "Also collate which caption tokens name each object (`mention_spans`) and its box "
                          "(`mention_boxes`), for the grounding head's mention_attention_loss."},
    )
    return_negative_captions: bool = field(
        default=False,
        metadata={"help": "Also collate each record's captions that are false of its image (`negative_captions`); "
                          "itm_rank_loss ranks each image's caption against them."},
    )

    def load_split(self, split: str) -> Any:
        """One split of the corpus in the common record schema (`split_kwargs` merged over `corpus_kwargs`)."""
        from ..data.splits import load_split

        kwargs = {**self.corpus_kwargs, **self.split_kwargs.get(split, {})}
        return load_split(self.corpus, split, languages=self.languages, **kwargs)


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
        metadata={"ge": 1,
                  "help": "`tiny` preset only: train a SentencePiece tokenizer of this size on the training captions "
                          "(kept in <output_dir>/tokenizer and reused on resume) instead of the scenes tokenizer."},
    )
    tokenizer_parallel_text: list = field(
        default_factory=list,
        metadata={"help": "With tokenizer_vocab_size: parallel-text files (`en-<lang>.jsonl`) whose translations, "
                          "training part only (the last 200 pairs are held out), join the captions the tokenizer "
                          "learns from, so it covers the scripts of languages that have few captions."},
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

    lr: float = field(default=3e-5, metadata={"gt": 0, "help": "Learning rate of both towers unless set per tower."})
    vision_lr: Optional[float] = field(default=None, metadata={"ge": 0,
                                                               "help": "Vision tower learning rate; null = lr."})
    text_lr: Optional[float] = field(default=None, metadata={"ge": 0, "help": "Text tower learning rate; null = lr."})
    head_lr: Optional[float] = field(
        default=None, metadata={"ge": 0, "help": "Projections and logit scale; null = lr."}
    )
    grounding_lr: Optional[float] = field(
        default=None, metadata={"ge": 0, "help": "Grounding head (model.grounding_head); null = head_lr, else lr."}
    )
    grounding_decay_steps: Optional[int] = field(
        default=None,
        metadata={"ge": 1, "help": "null: the grounding head's rate follows each stage's warmup and cosine, as the "
                                   "towers' do. N: after the warmup it holds its peak and falls in a straight line to "
                                   "the cosine's floor over each stage's last N steps (warmup-stable-decay), so a head "
                                   "whose loss terms start late learns at its full rate until near the end."},
    )
    weight_decay: float = field(
        default=0.1, metadata={"ge": 0,
                               "help": "Decoupled weight decay; never applied to norms, biases or the logit scale."}
    )
    grounding_weight_decay: Optional[float] = field(
        default=None, metadata={"ge": 0, "help": "The grounding head's weight decay; null = weight_decay."}
    )
    betas: list = field(default_factory=lambda: [0.9, 0.98], metadata={"ge": 0, "lt": 1, "help": "AdamW betas."})
    eps: float = field(default=1e-6, metadata={"gt": 0, "help": "AdamW epsilon."})
    warmup_steps: int = field(default=1000, metadata={"ge": 0,
                                                      "help": "Linear warmup steps at the start of every stage."})
    min_lr_ratio: float = field(default=0.0, metadata={"ge": 0, "le": 1,
                                                       "help": "Cosine floor as a fraction of the peak rate."})
    max_grad_norm: Optional[float] = field(default=1.0, metadata={"gt": 0,
                                                                  "help": "Gradient clipping norm; null = none."})
    fused: Optional[bool] = field(
        default=None,
        metadata={"help": "Fused AdamW kernel (one pass over all tensors); null = fused where the parameters' "
                          "device supports it, false = torch's per-tensor implementation."},
    )


@dataclass
class StageConfig:
    """One training stage: its length, frozen towers and learning rates (null = the optim section's)."""

    name: str = field(default="joint", metadata={"help": "Name shown in logs."})
    steps: int = field(
        default=1000, metadata={"ge": 1,
                                "help": "Optimizer steps in this stage (a share of the budget with schedule_by: time)."}
    )
    freeze: list = field(
        default_factory=list, metadata={"choices": TOWERS,
                                        "help": "Towers kept fixed and in eval mode: any of `vision`, `text`."}
    )
    vision_lr: Optional[float] = field(default=None, metadata={"ge": 0,
                                                               "help": "Vision tower learning rate in this stage."})
    text_lr: Optional[float] = field(default=None, metadata={"ge": 0,
                                                             "help": "Text tower learning rate in this stage."})
    head_lr: Optional[float] = field(default=None, metadata={"ge": 0, "help": "Head learning rate in this stage."})
    grounding_lr: Optional[float] = field(default=None, metadata={"ge": 0,
                                                                  "help": "Grounding head learning rate in this stage."})
    warmup_steps: Optional[int] = field(default=None, metadata={"ge": 0,
                                                                "help": "Warmup of this stage; null = optim's."})


@dataclass
class LossTermConfig:
    """One loss term; the training loss is the weighted sum of the active terms."""

    weight: float = field(default=1.0, metadata={"ge": 0, "help": "Multiplier of the term."})
    start_step: int = field(
        default=0, metadata={"ge": 0, "help": "First optimizer step at which the term counts (a schedule position with "
                                     "schedule_by: time, like the stages' steps)."}
    )
    every: int = field(
        default=1, metadata={"ge": 1, "help": "The term counts at every `every`-th step from its start (1: at every "
                                              "step). The trainer runs the grounding head only at the steps where "
                                              "one of its terms counts, so its terms `every: 2` halve its cost."}
    )


@dataclass
class MonitorConfig:
    """Logging, the collapse monitor and the non-finite loss guard."""

    log_every: int = field(default=10, metadata={"ge": 1, "help": "Steps between tracker logs."})
    report_to: Optional[str] = field(
        default="tensorboard", metadata={"help": "Accelerate tracker (`tensorboard`, `wandb`, ...); null for none."}
    )
    collapse_every: int = field(default=100, metadata={"ge": 0,
                                                       "help": "Steps between collapse checks; 0 turns them off."})
    collapse_max_cosine: float = field(
        default=0.9, metadata={"ge": -1, "le": 1,
                               "help": "Warn when the mean off-diagonal cosine of a tower's embeddings exceeds this."}
    )
    collapse_min_rank_fraction: float = field(
        default=0.05,
        metadata={"ge": 0, "le": 1,
                  "help": "Warn when the effective rank falls below this fraction of min(batch, embedding dim)."},
    )
    max_consecutive_nonfinite: int = field(
        default=5, metadata={"ge": 1, "help": "Stop after this many NaN/inf losses in a row (each one skips its step)."}
    )
    progress_bar: bool = field(default=True, metadata={"help": "Show a tqdm bar on the main process."})


@dataclass
class CheckpointConfig:
    """Periodic checkpoints under `<output_dir>/checkpoints/step-<N>`."""

    save_every: int = field(default=500, metadata={"ge": 0, "help": "Steps between checkpoints; 0 turns them off."})
    keep_last: int = field(default=3, metadata={"ge": 1, "help": "Checkpoints kept; older ones are deleted."})


@dataclass
class EvalConfig:
    """Retrieval evaluation on `data.eval_split`."""

    every: int = field(default=0, metadata={"ge": 0,
                                            "help": "Steps between evaluations during training; 0 = only at the end."})
    embed_batch_size: int = field(default=128, metadata={"ge": 1, "help": "Batch size of the embedding passes."})
    kwargs: dict = field(default_factory=dict, metadata={"help": "Further keyword arguments of evaluate_retrieval."})


@dataclass
class AdaptersConfig:
    """Per-language LoRA adapters trained on a frozen base model by distillation from parallel text
    (`seeyou_ml.training.adapters`): the teacher is the base model's embedding of the English side, the student the
    adapter-routed embedding of the translation. The loss terms are `distillation_mse_loss` and
    `distillation_contrastive_loss` in `losses:`."""

    base: str = field(
        default="outputs/flickr8k-multi",
        metadata={"help": "Folder of the trained model the adapters start from (a save_pretrained output with its "
                          "processor); it stays frozen."},
    )
    train_languages: list = field(
        default_factory=list, metadata={"help": "Languages (ISO 639-1) to train an adapter for, one each."}
    )
    parallel_text: str = field(
        default="../shared/data/flickr8k-multi/parallel/en-{lang}.jsonl",
        metadata={"help": "Parallel-text file of each language, `{lang}` standing for its code; JSON lines "
                          "{\"en\": ..., \"<lang>\": ...}."},
    )
    validation_pairs: int = field(
        default=200, metadata={"help": "Pairs at the end of every parallel file held out for the evaluation."}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (the update is scaled alpha/r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapters' input."})
    target_modules: list = field(
        default_factory=lambda: ["word_embeddings", "query", "key", "value", "dense"],
        metadata={"help": "Text-tower modules the adapters adapt."},
    )


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
    seed: int = field(default=0, metadata={"ge": 0, "help": "Seed of model initialisation, data order and dropout."})
    mixed_precision: Optional[str] = field(
        default=None,
        metadata={"help": "`auto` (bf16 where the hardware runs it natively: CUDA with bf16, CPUs with AVX512-BF16 or "
                          "AMX; fp32 elsewhere), `no` (fp32), `bf16` or `fp16`; null = the accelerate launch / "
                          "accelerate config setting. A value here overrides the launcher's, with a warning when they "
                          "differ (see seeyou_ml.training.precision)."},
    )
    keep_freed_memory: bool = field(
        default=False,
        metadata={"help": "Serve large CPU allocations from the process heap and keep freed memory there (glibc's "
                          "mallopt), so every training step reuses the pages of the last one instead of mapping and "
                          "zeroing new ones; about 10-15% faster CPU steps, the run's peak memory held until it ends. "
                          "Linux with glibc only (elsewhere a warning, no effect); see seeyou_ml.training.memory."},
    )
    resume_from: Optional[str] = field(
        default=None, metadata={"help": "Checkpoint directory to resume from, or `latest` under output_dir."}
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    stages: list = field(
        default_factory=lambda: [StageConfig()],
        metadata={"min_items": 1,
                  "help": "Stages run in order; their steps add up to the run's length (see schedule_by).",
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
    adapters: Optional[AdaptersConfig] = field(
        default=None,
        metadata={"help": "Train per-language adapters on a frozen base model instead of the model section's model; "
                          "null for ordinary training."},
    )

    def __post_init__(self):
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is unknown; use one of "
                             f"{', '.join(MIXED_PRECISION)}, or null to follow accelerate launch.")
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
        return build_config(cls, data)

    @classmethod
    def from_yaml(cls, path: Union[str, Path]) -> "TrainingRecipe":
        """Reads a recipe file. A recipe may build on another with a top-level `base: other.yaml` (relative to its own
        folder): it then gives only what it changes, mappings merging key by key and other values replacing."""
        return cls.from_dict(load_layered_yaml(path))

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
        return apply_overrides(TrainingRecipe, self.to_dict(), args)


__all__ = [
    "AdaptersConfig",
    "CheckpointConfig",
    "DataConfig",
    "EvalConfig",
    "HardNegativesConfig",
    "LossTermConfig",
    "ModelConfig",
    "MonitorConfig",
    "OptimConfig",
    "SCHEDULE_BY",
    "StageConfig",
    "TOWERS",
    "TrainingRecipe",
]
