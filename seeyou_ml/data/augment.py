"""Augmentations chosen in config: `AugmentationConfig` and the factory that builds them for `SeeYouCollator`.

The augmentations themselves live in `augment_image` (RandAugment, MixUp) and
`augment_text` (synonym replacement, back-translation); this module re-exports them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .augment_image import GEOMETRIC_OPS, PHOTOMETRIC_OPS, RANDAUGMENT_OPS, MixUp, RandAugment
from .augment_text import (
    BackTranslation,
    SequentialTextAugment,
    SynonymReplacement,
    TextAugment,
    build_caption_index,
)

__all__ = [
    "GEOMETRIC_OPS",
    "PHOTOMETRIC_OPS",
    "RANDAUGMENT_OPS",
    "AugmentationConfig",
    "Augmentations",
    "BackTranslation",
    "MixUp",
    "RandAugment",
    "SequentialTextAugment",
    "SynonymReplacement",
    "TextAugment",
    "build_augmentations",
    "build_caption_index",
]


@dataclass
class AugmentationConfig:
    """Which augmentations a run uses; every one is off by default. Round-trips through `to_dict`/`from_dict`.

    Example:

    ```python
    >>> from seeyou_ml.data.augment import AugmentationConfig, build_augmentations

    >>> config = AugmentationConfig(randaugment_num_ops=2, randaugment_magnitude=9, mixup_alpha=0.2)
    >>> augmentations = build_augmentations(config)
    >>> augmentations.image_augment.num_ops, augmentations.mixup
    (2, MixUp(alpha=0.2, p=1.0))
    ```
    """

    randaugment_num_ops: int = field(
        default=0, metadata={"ge": 0, "help": "RandAugment's N: operations per image; 0 turns RandAugment off."}
    )
    randaugment_magnitude: float = field(
        default=9.0,
        metadata={"ge": 0, "le": 10, "help": "RandAugment's M, the strength of every operation, in [0, 10]."},
    )
    randaugment_ops: list[str] | None = field(
        default=None,
        metadata={
            "help": "Subset of RandAugment operations (names in RANDAUGMENT_OPS); all when unset. "
            "'photometric' selects the operations that keep boxes valid."
        },
    )
    mixup_alpha: float = field(
        default=0.0, metadata={"help": "MixUp's Beta(alpha, alpha) concentration; 0 turns MixUp off."}
    )
    mixup_prob: float = field(default=1.0, metadata={"help": "Probability that a batch is mixed."})
    synonym_prob: float = field(
        default=0.0,
        metadata={"help": "Probability that each word found in the language's synonym table is replaced; 0 is off."},
    )
    back_translation_prob: float = field(
        default=0.0, metadata={"help": "Probability that a caption is back-translated; 0 turns it off."}
    )
    back_translation_source_langs: list[str] | None = field(
        default=None,
        metadata={"help": "Languages the other caption of the image may come from; all when unset."},
    )

    def __post_init__(self):
        if self.randaugment_ops == "photometric" or self.randaugment_ops == ["photometric"]:
            self.randaugment_ops = list(PHOTOMETRIC_OPS)
        for name in ("mixup_prob", "synonym_prob", "back_translation_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentationConfig.{name}={value} must lie in [0, 1].")
        if self.mixup_alpha < 0:
            raise ValueError(f"AugmentationConfig.mixup_alpha={self.mixup_alpha} must be >= 0 (0 turns MixUp off).")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON/YAML-serialisable values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AugmentationConfig:
        """Builds a config from `to_dict`'s output (unknown keys are an error, naming the valid ones)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown augmentation settings {unknown}; valid ones are {sorted(known)}.")
        return cls(**dict(values))


@dataclass
class Augmentations:
    """What `build_augmentations` returns: the collator's augmentation arguments, `None` where off.

    `SeeYouCollator(processor, **vars(augmentations))` wires all of them in.
    """

    image_augment: RandAugment | None = None
    text_augment: TextAugment | None = None
    mixup: MixUp | None = None


def _default_synonym_tables() -> Callable[[str], Mapping[str, list[str]]]:
    try:
        from .scenes import synonym_table
    except ImportError as error:
        raise ValueError(
            "synonym_prob > 0 needs synonym tables: pass synonym_tables={lang: {word: [synonyms]}} to "
            f"build_augmentations (the scenes corpus's tables are unavailable: {error})."
        ) from error
    return synonym_table


def build_augmentations(
    config: AugmentationConfig,
    synonym_tables: Mapping[str, Mapping[str, list[str]]] | Callable[[str], Mapping[str, list[str]]] | None = None,
    caption_index: Mapping[str, Mapping[str, list[str]]] | None = None,
    translator: Callable[..., Any] | None = None,
) -> Augmentations:
    """Builds the augmentations a config turns on.

    Args:
        config ([`AugmentationConfig`]): What to build.
        synonym_tables (*optional*): Per-language synonym tables or a function of the language; the scenes
            corpus's `synonym_table` when omitted.
        caption_index (*optional*): `build_caption_index(train_dataset)`, the source of back-translations.
        translator (*optional*): `translator(text, src_lang=..., tgt_lang=...)`, see [`BackTranslation`].

    Returns:
        [`Augmentations`]: `image_augment`, `text_augment` (back-translation first, then synonyms, so synonyms
        follow the caption's final language) and `mixup`.
    """
    image_augment = None
    if config.randaugment_num_ops > 0:
        image_augment = RandAugment(
            num_ops=config.randaugment_num_ops, magnitude=config.randaugment_magnitude, ops=config.randaugment_ops
        )
    text_augments: list[TextAugment] = []
    if config.back_translation_prob > 0:
        if caption_index is None and translator is None:
            raise ValueError(
                "back_translation_prob > 0 needs caption_index=build_caption_index(train_dataset) or a translator."
            )
        text_augments.append(
            BackTranslation(
                caption_index=caption_index,
                translator=translator,
                p=config.back_translation_prob,
                source_langs=config.back_translation_source_langs,
            )
        )
    if config.synonym_prob > 0:
        tables = synonym_tables if synonym_tables is not None else _default_synonym_tables()
        text_augments.append(SynonymReplacement(tables, p=config.synonym_prob))
    text_augment = None
    if len(text_augments) == 1:
        text_augment = text_augments[0]
    elif text_augments:
        text_augment = SequentialTextAugment(text_augments)
    mixup = MixUp(alpha=config.mixup_alpha, p=config.mixup_prob) if config.mixup_alpha > 0 else None
    return Augmentations(image_augment=image_augment, text_augment=text_augment, mixup=mixup)
