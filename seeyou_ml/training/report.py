"""The closing summary of a training run: steps, loss, and the retrieval table per language."""

from __future__ import annotations

import math
from typing import Any, Mapping

from .trainer import RESULTS_NAME, TrainOutput


def metric_rows(metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The rows of a results mapping that hold numbers: `{row name: {metric: value}}`, nested names joined by `/`."""
    rows: dict[str, dict[str, float]] = {}

    def visit(node: Mapping[str, Any], prefix: str) -> None:
        numbers = {k: float(v) for k, v in node.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numbers and prefix:
            rows[prefix] = numbers
        for key, value in node.items():
            if isinstance(value, Mapping):
                visit(value, f"{prefix}/{key}" if prefix else str(key))

    visit(metrics, "")
    return rows


def format_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """A plain-text table with one line per row and one column per metric (first-seen order)."""
    columns: list[str] = []
    for values in rows.values():
        columns += [c for c in values if c not in columns]
    width = max([len(name) for name in rows] + [4])
    header = " ".join([f"{'':<{width}}"] + [f"{c:>{max(len(c), 8)}}" for c in columns])
    lines = [header]
    for name, values in rows.items():
        cells = [f"{values[c]:>{max(len(c), 8)}.4f}" if c in values else " " * max(len(c), 8) for c in columns]
        lines.append(" ".join([f"{name:<{width}}"] + cells))
    return "\n".join(lines)


def print_summary(output: TrainOutput) -> None:
    """Prints the run's length, last finite loss, skipped steps and the retrieval results."""
    finite = [loss for _, loss in output.losses if math.isfinite(loss)]
    last = f"{finite[-1]:.4f}" if finite else "n/a"
    print(f"Trained {output.step} steps; last loss {last}; {output.skipped_steps} non-finite steps skipped.")
    print(f"Model, processor and recipe in {output.output_dir}")
    if output.metrics:
        rows = metric_rows(output.metrics)
        if rows:
            print(format_table(rows))
        print(f"Retrieval results: {output.output_dir / RESULTS_NAME}")


__all__ = ["format_table", "metric_rows", "print_summary"]
