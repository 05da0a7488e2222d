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

from ..losses import check_loss_terms
from ..modeling import SeeYouModel
from ..processing import SeeYouProcessor
from .checkpointing import resume_candidates
from .config import DataConfig, ModelConfig, TrainingRecipe
from .memory import paused_gc
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


def build_collator(config: DataConfig, processor: SeeYouProcessor, channels_last: bool = False,
                   train: Any = None) -> Any:
    """`SeeYouCollator` with the augmentations of `data.augment`.

    `channels_last` (the model section's) makes the collator hand out channels-last images. `train`, the training
    split, is where back-translation draws the other captions of an image from; it is needed when
    `data.augment.back_translation_prob > 0`.
    """
    from ..data.augment import build_augmentations, build_caption_index
    from ..data.collator import SeeYouCollator

    caption_index = None
    if config.augment.back_translation_prob > 0:
        if train is None:
            raise ValueError("data.augment.back_translation_prob > 0 draws captions from the training split; pass "
                             "build_collator(..., train=<training split>).")
        caption_index = build_caption_index(train)
    augmentations = build_augmentations(config.augment, caption_index=caption_index)
    return SeeYouCollator(processor, max_length=config.max_length, channels_last=channels_last,
                          cache_images=config.cache_images, cache_text=config.cache_text,
                          return_phrases=config.return_phrases, return_mentions=config.return_mentions,
                          return_negative_captions=config.return_negative_captions,
                          **vars(augmentations))


def build_batch_sampler(config: DataConfig, dataset: Any, seed: int) -> Any:
    """Full global batches, reshuffled every epoch; without two captions of one image when asked, and with groups of
    similar images when `data.hard_negatives` names the columns that describe them."""
    from ..data.columns import read_columns
    from ..data.samplers import NeighbourBatchSampler, UniqueImageBatchSampler

    hard = config.hard_negatives
    feature_columns = list(hard.columns)
    columns = read_columns(dataset, ["image_id", "lang", *feature_columns])
    image_ids, langs = columns["image_id"], columns["lang"]
    if not config.image_unique_batches:
        if feature_columns:
            raise ValueError("data.hard_negatives groups images within batches; it needs image_unique_batches: true.")
        image_ids = [str(i) for i in range(len(image_ids))]
    if feature_columns:
        features = row_features([columns[name] for name in feature_columns])
        sampler = NeighbourBatchSampler(image_ids, features, config.batch_size, langs=langs, drop_last=True,
                                        seed=seed, hard_fraction=hard.hard_fraction, group_size=hard.group_size,
                                        num_neighbours=hard.num_neighbours, **config.sampler_kwargs)
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

    from ..data.columns import read_columns
    from ..data.parallel import load_parallel_text
    from ..data.tokenizer import train_sentencepiece_tokenizer

    folder = Path(recipe.output_dir) / "tokenizer"
    with accelerator.main_process_first():
        if not (folder / "tokenizer_config.json").exists():
            captions = list(read_columns(train, ["caption"])["caption"])
            for path in recipe.model.tokenizer_parallel_text:
                captions += load_parallel_text(path, split="train").translation
            logger.warning(f"Training a {recipe.model.tokenizer_vocab_size}-piece SentencePiece tokenizer on "
                           f"{len(captions)} captions into {folder}.")
            train_sentencepiece_tokenizer(captions, vocab_size=recipe.model.tokenizer_vocab_size).save_pretrained(
                folder)
        return AutoTokenizer.from_pretrained(folder)


@paused_gc()  # the corpus's columns, the sampler's plan: many objects, all kept
def build_trainer(recipe: TrainingRecipe, accelerator: Optional[Accelerator] = None) -> Trainer:
    """A [`Trainer`] with everything the recipe names built (model, processor, corpora, collator, sampler)."""
    from ..evaluation.grounding import corpus_evaluation

    if recipe.resume_from:
        # A wrong or damaged checkpoint is reported before the corpus is loaded and the model built.
        resume_candidates(recipe.resume_from, recipe.output_dir)
    accelerator = accelerator if accelerator is not None else make_accelerator(recipe)
    if recipe.adapters is not None:
        from .adapters import build_adapter_trainer

        return build_adapter_trainer(recipe, accelerator)
    with accelerator.main_process_first():
        # The scenes corpus renders into a shared cache on first use; one process builds it, the others read it.
        train = recipe.data.load_split(recipe.data.train_split)
        evaluation = recipe.data.load_split(recipe.data.eval_split) if recipe.data.eval_split else None
    tokenizer = corpus_tokenizer(recipe, train, accelerator)
    set_seed(recipe.seed)
    model, processor = build_model_and_processor(recipe.model, tokenizer)
    # Loss terms that start late are checked against what this run provides now, not when they start.
    provided = {name for name, on in (("phrases", recipe.data.return_phrases),
                                      ("mentions", recipe.data.return_mentions)) if on}
    head = getattr(model, "grounding_head", None)
    if head is not None:
        provided.add("grounding_head")
        if head.order is not None:
            provided.add("order_readout")
    check_loss_terms(recipe.losses, sub_batching=False, provided=provided)
    collator = build_collator(recipe.data, processor, channels_last=recipe.model.channels_last, train=train)
    train_dataset = encoded_images(train) if recipe.data.cache_images else train
    return Trainer(
        recipe,
        model=model,
        processor=processor,
        train_dataset=only_columns(train_dataset, collator.columns),
        collate_fn=collator,
        batch_sampler=build_batch_sampler(recipe.data, train, recipe.seed),
        eval_dataset=evaluation,
        evaluate_fn=corpus_evaluation(recipe.data.corpus, evaluation) if evaluation is not None else None,
        accelerator=accelerator,
    )


def only_columns(dataset: Any, columns: list[str]) -> Any:
    """`dataset` without the columns a collator does not read: a batch of rows is then formatted from those alone
    (the scenes corpus's object lists cost more to format than the captions and images a step uses). Datasets
    without named columns (a list of records) are returned as they are."""
    names = getattr(dataset, "column_names", None)
    if not names or not hasattr(dataset, "select_columns"):
        return dataset
    kept = [name for name in names if name in columns]
    return dataset if len(kept) == len(names) else dataset.select_columns(kept)


def encoded_images(dataset: Any) -> Any:
    """`dataset` with a decoding `image` column (a `datasets.Image` feature) cast to hand out the encoded file
    (`{"bytes", "path"}`), which the collator decodes itself: with `data.cache_images`, once per image."""
    from datasets import Image

    feature = getattr(dataset, "features", {}).get("image")
    if isinstance(feature, Image) and feature.decode:
        return dataset.cast_column("image", Image(decode=False))
    return dataset


__all__ = [
    "build_batch_sampler",
    "build_collator",
    "build_model_and_processor",
    "build_trainer",
    "corpus_tokenizer",
    "encoded_images",
    "only_columns",
    "row_features",
]
