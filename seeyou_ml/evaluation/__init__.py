"""Cross-lingual retrieval evaluation: the tiled recall kernel, its `evaluate` metric, the evaluator and reports."""

from pathlib import Path

from .cache import CorpusEmbeddings, corpus_fingerprint, load_embeddings, save_embeddings
from .evaluator import (
    embed_corpus,
    embed_images,
    embed_texts,
    evaluate_retrieval,
    text_to_text_recall,
    zero_shot_accuracy,
)
from .parallel import compare_parallel_text, parallel_text_recall
from .report import format_adapter_table, format_results, format_table, save_plots
from .retrieval import bidirectional_topk, recall_from_topk, retrieval_recall

RETRIEVAL_METRIC_PATH = str(Path(__file__).parent / "metrics" / "retrieval_recall")
"""Folder of the `retrieval_recall` metric script: `evaluate.load(RETRIEVAL_METRIC_PATH)` works offline."""

__all__ = [
    "RETRIEVAL_METRIC_PATH",
    "CorpusEmbeddings",
    "bidirectional_topk",
    "compare_parallel_text",
    "corpus_fingerprint",
    "embed_corpus",
    "embed_images",
    "embed_texts",
    "evaluate_retrieval",
    "format_adapter_table",
    "format_results",
    "format_table",
    "load_embeddings",
    "parallel_text_recall",
    "recall_from_topk",
    "retrieval_recall",
    "save_embeddings",
    "save_plots",
    "text_to_text_recall",
    "zero_shot_accuracy",
]
