"""The `retrieval_recall` metric; load it with `evaluate.load(seeyou_ml.evaluation.RETRIEVAL_METRIC_PATH)`."""
