"""Corpora in one record schema, the embedded scenes corpus, tokenizer, batching and augmentations."""

from .corpus import CORPUS_FORMATS, corpus_features, detect_format, load_corpus
from .validation import ISO_639_1, CorpusIssue, CorpusReport
