"""Cross-lingual retrieval evaluation: the tiled recall kernel, its `evaluate` metric, the evaluator and reports."""

from pathlib import Path

from .retrieval import bidirectional_topk, recall_from_topk, retrieval_recall

RETRIEVAL_METRIC_PATH = str(Path(__file__).parent / "metrics" / "retrieval_recall")
"""Folder of the `retrieval_recall` metric script: `evaluate.load(RETRIEVAL_METRIC_PATH)` works offline."""

__all__ = ["RETRIEVAL_METRIC_PATH", "bidirectional_topk", "recall_from_topk", "retrieval_recall"]
