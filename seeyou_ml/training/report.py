"""The closing summary of a training run: steps, loss, and the retrieval table per language."""

from __future__ import annotations

import math

from ..hub import RESULTS_NAME
from .trainer import TrainOutput


def print_summary(output: TrainOutput) -> None:
    """Prints the run's length, last finite loss, skipped steps and the retrieval results."""
    finite = [loss for _, loss in output.losses if math.isfinite(loss)]
    last = f"{finite[-1]:.4f}" if finite else "n/a"
    print(f"Trained {output.step} steps in {output.train_seconds:.0f} s; last loss {last}; {output.skipped_steps} "
          "non-finite steps skipped.")
    print(f"Model, processor and recipe in {output.output_dir}")
    if output.metrics:
        from ..evaluation import format_adapter_table, format_results

        if "per_language" in output.metrics:
            print(format_results(output.metrics))
        if "parallel_text" in output.metrics or "without_adapters" in output.metrics:
            print(format_adapter_table(output.metrics))
        print(f"Retrieval results: {output.output_dir / RESULTS_NAME}")


__all__ = ["print_summary"]
