"""Corpora in one record schema, the embedded scenes corpus, tokenizer, batching and augmentations."""

from ..languages import ISO_639_1, normalize_lang
from .augment import (
    AugmentationConfig,
    Augmentations,
    BackTranslation,
    MixUp,
    RandAugment,
    SequentialTextAugment,
    SynonymReplacement,
    build_augmentations,
    build_caption_index,
)
from .collator import SeeYouCollator
from .corpus import CORPUS_FORMATS, corpus_features, detect_format, load_corpus
from .samplers import NeighbourBatchSampler, UniqueImageBatchSampler
from .scenes import class_prompts, load_scenes, synonym_table
from .tokenizer import scenes_tokenizer, train_sentencepiece_tokenizer
from .validation import CorpusIssue, CorpusReport
