"""From a recipe to a ready [`Trainer`]: model and processor, corpora, collator and batch sampler.

The model section names either the `tiny` preset (tiny ResNet + tiny XLM-R with the scenes SentencePiece tokenizer;
the embedded default) or two Hub checkpoints (e.g. `microsoft/resnet-50` + `xlm-roberta-base`) joined by
`SeeYouModel.from_vision_text_pretrained`. The data section names `scenes` (the embedded corpus) or anything
`seeyou_ml.data.load_corpus` opens.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any, Optional

from accelerate import Accelerator
from accelerate.utils import set_seed

from ..modeling import SeeYouModel
from ..processing import SeeYouProcessor
from .config import DataConfig, ModelConfig, TrainingRecipe
from .trainer import Trainer, make_accelerator

logger = logging.getLogger(__name__)


def build_model_and_processor(config: ModelConfig, tokenizer: Any = None) -> tuple[SeeYouModel, SeeYouProcessor]:
    """The model and processor a recipe's model section names (call `set_seed` first for a reproducible init).

    Args:
        config: the recipe's model section.
        tokenizer: for the `tiny` preset, a tokenizer to use instead of `config.tokenizer` or the scenes one.
    """
    if config.preset is not None:
        if config.preset != "tiny":
            raise ValueError(f"model.preset={config.preset!r} is unknown; use `tiny`, or null with model.vision and "
                             "model.text naming checkpoints.")
        from ..presets import tiny_config, tiny_processor

        if tokenizer is None and config.tokenizer:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
        elif tokenizer is None:
            from ..data.tokenizer import scenes_tokenizer

            tokenizer = scenes_tokenizer()
        preset = dict(config.preset_kwargs)
        # The text tower has positions for this many tokens; the saved tokenizer truncates there for every user.
        limit = preset.get("max_text_length", inspect.signature(tiny_config).parameters["max_text_length"].default)
        tokenizer.model_max_length = min(tokenizer.model_max_length or limit, limit)
        model_config = tiny_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **preset,
                                   **config.config_overrides)
        if config.attn_implementation is not None:
            model_config.text_config._attn_implementation = config.attn_implementation
        processor = tiny_processor(tokenizer, image_size=preset.get("image_size", 64))
        return _with_memory_format(SeeYouModel(model_config), config), processor
    if not config.vision or not config.text:
        raise ValueError("With model.preset null, name both towers: model.vision (e.g. microsoft/resnet-50) and "
                         "model.text (e.g. xlm-roberta-base).")
    from transformers import AutoImageProcessor, AutoTokenizer

    overrides = dict(config.config_overrides)
    if config.attn_implementation is not None:
        overrides["text_attn_implementation"] = config.attn_implementation
    model = SeeYouModel.from_vision_text_pretrained(config.vision, config.text, **overrides)
    processor = SeeYouProcessor(
        image_processor=AutoImageProcessor.from_pretrained(config.image_processor or config.vision),
        tokenizer=AutoTokenizer.from_pretrained(config.tokenizer or config.text),
    )
    return _with_memory_format(model, config), processor


def _with_memory_format(model: SeeYouModel, config: ModelConfig) -> SeeYouModel:
    """The model with its vision tower's weights in channels-last layout when the recipe asks for it."""
    if config.channels_last:
        import torch

        model.vision_model.to(memory_format=torch.channels_last)
    return model


def load_split(config: DataConfig, split: str) -> Any:
    """One split of the recipe's corpus in the common record schema."""
    kwargs = {**config.corpus_kwargs, **config.split_kwargs.get(split, {})}
    if config.languages is not None:
        kwargs["languages"] = list(config.languages)
    if config.corpus == "scenes":
        from ..data.scenes import load_scenes

        return load_scenes(split, **kwargs)
    from ..data import load_corpus

    return load_corpus(config.corpus, split=split, **kwargs)


def build_collator(config: DataConfig, processor: SeeYouProcessor, channels_last: bool = False) -> Any:
    """`SeeYouCollator` with the augmentations of `data.augment` (an `AugmentationConfig` as a mapping).

    `channels_last` (the model section's) makes the collator hand out channels-last images.
    """
    from ..data.collator import SeeYouCollator

    augmentations = {}
    if config.augment:
        from ..data.augment import AugmentationConfig, build_augmentations

        augmentations = vars(build_augmentations(AugmentationConfig.from_dict(config.augment)))
    return SeeYouCollator(processor, max_length=config.max_length, channels_last=channels_last,
                          cache_images=config.cache_images, return_phrases=config.return_phrases, **augmentations)


def build_batch_sampler(config: DataConfig, dataset: Any, seed: int) -> Any:
    """Full global batches, reshuffled every epoch; without two captions of one image when asked, and with groups of
    similar images when `data.hard_negatives` names the columns that describe them."""
    from ..data.samplers import NeighbourBatchSampler, UniqueImageBatchSampler, read_columns

    hard = dict(config.hard_negatives)
    feature_columns = list(hard.pop("columns", []))
    if hard and not feature_columns:
        raise ValueError("data.hard_negatives needs `columns`, the columns describing an image, e.g. "
                         "{columns: [colours, shapes]} for the scenes corpus or {columns: [caption]}.")
    if hasattr(dataset, "column_names"):
        columns = read_columns(dataset, ["image_id", "lang", *feature_columns])
    else:
        missing = sorted({name for row in dataset for name in feature_columns if name not in row})
        if missing:
            raise KeyError(f"columns {missing} are missing from some records; data.hard_negatives.columns must name "
                           "fields every record has.")
        columns = {"image_id": [row["image_id"] for row in dataset], "lang": [row.get("lang", "") for row in dataset],
                   **{name: [row[name] for row in dataset] for name in feature_columns}}
    image_ids, langs = columns["image_id"], columns["lang"]
    if not config.image_unique_batches:
        if feature_columns:
            raise ValueError("data.hard_negatives groups images within batches; it needs image_unique_batches: true.")
        image_ids = [str(i) for i in range(len(image_ids))]
    if feature_columns:
        features = row_features([columns[name] for name in feature_columns])
        sampler = NeighbourBatchSampler(image_ids, features, config.batch_size, langs=langs, drop_last=True,
                                        seed=seed, **hard, **config.sampler_kwargs)
    else:
        sampler = UniqueImageBatchSampler(image_ids, config.batch_size, langs=langs, drop_last=True, seed=seed,
                                          **config.sampler_kwargs)
    if len(sampler) == 0:
        raise ValueError(f"data.batch_size={config.batch_size} exceeds what one epoch of {len(image_ids)} captions "
                         "can fill without repeating an image; lower data.batch_size.")
    return sampler


def row_features(columns: list[list[Any]]) -> list[list[Any]]:
    """The features of every row from the `data.hard_negatives` columns.

    List-valued columns are zipped element by element into objects (`colours` + `shapes` give `("red", "cross")`);
    a text column gives its lower-cased words.
    """
    features = []
    for values in zip(*columns):
        lists = [v for v in values if isinstance(v, (list, tuple))]
        words = [w for v in values if isinstance(v, str) for w in v.lower().split()]
        features.append([tuple(parts) for parts in zip(*lists)] + words if lists else words)
    return features


def corpus_tokenizer(recipe: TrainingRecipe, train: Any, accelerator: Accelerator) -> Any:
    """The SentencePiece tokenizer of `model.tokenizer_vocab_size` trained on `train`'s captions, or None.

    The main process trains it (deterministically) into `<output_dir>/tokenizer`; the others, and resumed runs, load
    it from there, so every process and every restart uses the same vocabulary.
    """
    if recipe.model.tokenizer_vocab_size is None:
        return None
    from transformers import AutoTokenizer

    from ..data.samplers import read_columns
    from ..data.tokenizer import train_sentencepiece_tokenizer

    folder = Path(recipe.output_dir) / "tokenizer"
    with accelerator.main_process_first():
        if not (folder / "tokenizer_config.json").exists():
            captions = read_columns(train, ["caption"])["caption"]
            logger.warning(f"Training a {recipe.model.tokenizer_vocab_size}-piece SentencePiece tokenizer on "
                           f"{len(captions)} captions into {folder}.")
            train_sentencepiece_tokenizer(captions, vocab_size=recipe.model.tokenizer_vocab_size).save_pretrained(
                folder)
        return AutoTokenizer.from_pretrained(folder)


def build_trainer(recipe: TrainingRecipe, accelerator: Optional[Accelerator] = None) -> Trainer:
    """A [`Trainer`] with everything the recipe names built (model, processor, corpora, collator, sampler)."""
    accelerator = accelerator if accelerator is not None else make_accelerator(recipe)
    with accelerator.main_process_first():
        # The scenes corpus renders into a shared cache on first use; one process builds it, the others read it.
        train = load_split(recipe.data, recipe.data.train_split)
        evaluation = load_split(recipe.data, recipe.data.eval_split) if recipe.data.eval_split else None
    tokenizer = corpus_tokenizer(recipe, train, accelerator)
    set_seed(recipe.seed)
    model, processor = build_model_and_processor(recipe.model, tokenizer)
    return Trainer(
        recipe,
        model=model,
        processor=processor,
        train_dataset=encoded_images(train) if recipe.data.cache_images else train,
        collate_fn=build_collator(recipe.data, processor, channels_last=recipe.model.channels_last),
        batch_sampler=build_batch_sampler(recipe.data, train, recipe.seed),
        eval_dataset=evaluation,
        evaluate_fn=build_evaluate_fn(recipe.data, evaluation) if evaluation is not None else None,
        accelerator=accelerator,
    )


def encoded_images(dataset: Any) -> Any:
    """`dataset` with a decoding `image` column (a `datasets.Image` feature) cast to hand out the encoded file
    (`{"bytes", "path"}`), which the collator decodes itself: with `data.cache_images`, once per image."""
    from datasets import Image

    feature = getattr(dataset, "features", {}).get("image")
    if isinstance(feature, Image) and feature.decode:
        return dataset.cast_column("image", Image(decode=False))
    return dataset


def build_evaluate_fn(config: DataConfig, dataset: Any) -> Any:
    """`evaluate_retrieval`, with zero-shot classification over the scenes corpus's labels and prompts."""
    import functools

    from ..evaluation import evaluate_retrieval

    if config.corpus != "scenes":
        return evaluate_retrieval
    from ..data.scenes import class_prompts

    languages = sorted(set(dataset["lang"]))
    return functools.partial(evaluate_scenes, label_column="label",
                             prompts={lang: class_prompts(lang) for lang in languages})


def evaluate_scenes(model: Any, processor: Any, dataset: Any, batch_size: int = 64, **kwargs) -> dict:
    """Retrieval (`evaluate_retrieval`), and grounding under `"grounding"` when the model has a grounding head."""
    from ..evaluation import evaluate_retrieval
    from ..evaluation.grounding import evaluate_grounding

    results = evaluate_retrieval(model, processor, dataset, batch_size=batch_size, **kwargs)
    if getattr(model, "grounding_head", None) is not None:
        results["grounding"] = evaluate_grounding(model, processor, dataset, batch_size=2 * batch_size)
    return results


__all__ = [
    "build_batch_sampler",
    "build_collator",
    "build_evaluate_fn",
    "build_model_and_processor",
    "build_trainer",
    "corpus_tokenizer",
    "encoded_images",
    "evaluate_scenes",
    "load_split",
    "row_features",
]
