"""Corpora in one record schema, the embedded scenes corpus, tokenizer, batching and augmentations."""

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
    soft_contrastive_loss,
)
from .collator import SeeYouCollator
from .corpus import CORPUS_FORMATS, corpus_features, detect_format, load_corpus
from .samplers import UniqueImageBatchSampler
from .validation import ISO_639_1, CorpusIssue, CorpusReport, normalize_lang
