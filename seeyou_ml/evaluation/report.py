"""Tables and figures of `evaluate_retrieval` results."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

TEXT_TO_TEXT_PNG = "text_to_text_r1.png"
RECALL_BARS_PNG = "recall_per_language.png"
ZERO_SHOT_PNG = "zero_shot_accuracy.png"
ADAPTERS_PNG = "adapters_r1.png"


def _cut_offs(results: dict[str, Any]) -> list[str]:
    first = next(iter(results["per_language"].values()))
    return [key.split("/")[1] for key in first if key.startswith("image_to_text/")]


def format_table(results: dict[str, Any]) -> str:
    """The results of `evaluate_retrieval` as aligned text: recall per language, text→text R@1, zero-shot."""
    cuts = _cut_offs(results)
    header = ["lang", "images", "captions"] + [f"I→T {c}" for c in cuts] + [f"T→I {c}" for c in cuts] + ["rsum"]
    rows = []
    for lang, scores in list(results["per_language"].items()) + [("mean", results["mean"])]:
        row = [lang, str(scores.get("num_images", "")), str(scores.get("num_captions", ""))]
        row += [f"{scores[f'{direction}/{c}']:.1f}" for direction in ("image_to_text", "text_to_image") for c in cuts]
        rows.append(row + [f"{scores['rsum']:.1f}"])
    lines = [_align([header] + rows)]
    matrix = results.get("text_to_text", {}).get("R@1")
    if matrix:
        langs = results["languages"]
        grid = [["T→T R@1 query\\target"] + langs]
        grid += [[a] + [f"{matrix[a][b]:.1f}" if b in matrix.get(a, {}) else "-" for b in langs] for a in langs]
        lines += ["", _align(grid)]
    reranked = results.get("reranked")
    if reranked:
        grid = [["re-ranked R@1", "I→T before", "I→T after", "T→I before", "T→I after"]]
        for lang, scores in list(reranked.items()) + [("mean", results["reranked_mean"])]:
            before = results["per_language"][lang] if lang != "mean" else results["mean"]
            grid.append([lang] + [f"{table[f'{direction}/R@1']:.1f}" for direction in ("image_to_text", "text_to_image")
                                  for table in (before, scores)])
        lines += ["", _align(grid)]
    zero_shot = results.get("zero_shot")
    if zero_shot:
        grid = [["zero-shot", "accuracy"]] + [[lang, f"{r['accuracy']:.1f}"] for lang, r in zero_shot.items()]
        lines += ["", _align(grid)]
    if results.get("without_adapters"):
        grid = [["R@1 adapter vs base", "I→T base", "I→T adapter", "T→I base", "T→I adapter"]]
        for lang, base in results["without_adapters"]["per_language"].items():
            adapted = results["per_language"][lang]
            grid.append([lang] + [f"{scores[f'{d}/R@1']:.1f}" for d in ("image_to_text", "text_to_image")
                                  for scores in (base, adapted)])
        lines += ["", _align(grid)]
    return "\n".join(lines)


def format_results(results: dict[str, Any]) -> str:
    """[`format_table`], then the grounding table where the results carry one (`evaluate_scenes` of a model with a
    grounding head): what the main job and `seeyou evaluate` print."""
    text = format_table(results)
    if results.get("grounding"):
        from .grounding import format_grounding_table

        text += "\n\n" + format_grounding_table(results["grounding"])
    return text


def _adapter_pairs(results: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """`{label: (without, with)}` R@1 of the languages with an adapter: image–text retrieval (`without_adapters`)
    and parallel text (`compare_parallel_text` results under `parallel_text`)."""
    pairs = {}
    for lang, base in results.get("without_adapters", {}).get("per_language", {}).items():
        adapted = results["per_language"][lang]
        for direction, short in (("image_to_text", "I→T"), ("text_to_image", "T→I")):
            pairs[f"{lang} {short}"] = (base[f"{direction}/R@1"], adapted[f"{direction}/R@1"])
    for lang, entry in results.get("parallel_text", {}).get("per_language", {}).items():
        if entry["adapter"]:
            for direction, short in (("en_to_xx", f"en→{lang}"), ("xx_to_en", f"{lang}→en")):
                pairs[short] = (entry["base"][f"{direction}/R@1"], entry["adapter_scores"][f"{direction}/R@1"])
    return pairs


def format_adapter_table(results: dict[str, Any]) -> str:
    """R@1 without and with each language's adapter, one row per language and direction."""
    grid = [["R@1", "base", "adapter", "gain"]]
    grid += [[label, f"{base:.1f}", f"{adapted:.1f}", f"{adapted - base:+.1f}"]
             for label, (base, adapted) in _adapter_pairs(results).items()]
    return _align(grid)


def _align(grid: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in grid) for i in range(len(grid[0]))]
    return "\n".join("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                     for row in grid)


def save_plots(results: dict[str, Any], directory: str | os.PathLike) -> list[Path]:
    """Saves PNG figures of `evaluate_retrieval` results into `directory`.

    Figures: per-language R@k bars for both directions (`recall_per_language.png`), the text→text R@1 heatmap over
    language pairs (`text_to_text_r1.png`, when computed), zero-shot accuracy per prompt language
    (`zero_shot_accuracy.png`, when computed) and R@1 without and with each language adapter (`adapters_r1.png`,
    for a model with adapters).

    Returns:
        The paths written.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    written = [_recall_bars(plt, results, folder / RECALL_BARS_PNG)]
    if results.get("text_to_text", {}).get("R@1"):
        written.append(_text_to_text_heatmap(plt, results, folder / TEXT_TO_TEXT_PNG))
    if results.get("zero_shot"):
        written.append(_zero_shot_bars(plt, results, folder / ZERO_SHOT_PNG))
    if _adapter_pairs(results):
        written.append(_adapter_bars(plt, results, folder / ADAPTERS_PNG))
    return written


def _save(plt, figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _adapter_bars(plt, results: dict[str, Any], path: Path) -> Path:
    pairs = _adapter_pairs(results)
    labels = list(pairs)
    figure, axis = plt.subplots(figsize=(max(6.0, 0.7 * len(labels) + 2.0), 3.8))
    for offset, (index, name) in zip((-0.2, 0.2), enumerate(("base", "adapter"))):
        bars = axis.bar([x + offset for x in range(len(labels))], [pairs[k][index] for k in labels], 0.4, label=name)
        axis.bar_label(bars, fmt="%.0f", fontsize=7)
    axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axis.set_ylim(0, 105)
    axis.set_ylabel("R@1 (%)")
    axis.set_title("Without and with each language's adapter")
    axis.legend(fontsize=8)
    return _save(plt, figure, path)


def _recall_bars(plt, results: dict[str, Any], path: Path) -> Path:
    cuts = _cut_offs(results)
    langs = list(results["per_language"])
    width = 0.8 / len(cuts)
    figure, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.2 * len(langs) * 2), 4.0), sharey=True)
    for axis, (direction, title) in zip(axes, (("image_to_text", "image → text"), ("text_to_image", "text → image"))):
        for i, cut in enumerate(cuts):
            values = [results["per_language"][lang][f"{direction}/{cut}"] for lang in langs]
            positions = [x + (i - (len(cuts) - 1) / 2) * width for x in range(len(langs))]
            bars = axis.bar(positions, values, width, label=cut)
            axis.bar_label(bars, fmt="%.0f", fontsize=7)
        axis.set_xticks(range(len(langs)), langs)
        axis.set_title(title)
        axis.set_ylim(0, 118)  # headroom for the legend above 100 %
        axis.grid(axis="y", alpha=0.3)
        axis.legend(loc="upper center", ncol=len(cuts), fontsize=8)
    axes[0].set_ylabel("recall (%)")
    figure.suptitle("Retrieval recall per language")
    return _save(plt, figure, path)


def _text_to_text_heatmap(plt, results: dict[str, Any], path: Path) -> Path:
    langs = results["languages"]
    matrix = results["text_to_text"]["R@1"]
    values = [[matrix.get(a, {}).get(b, math.nan) for b in langs] for a in langs]
    size = max(4.0, 0.7 * len(langs) + 2.0)
    figure, axis = plt.subplots(figsize=(size + 1.0, size))
    image = axis.imshow(values, vmin=0, vmax=100, cmap="viridis")
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if not math.isnan(value):
                axis.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8,
                          color="white" if value < 60 else "black")
    axis.set_xticks(range(len(langs)), langs)
    axis.set_yticks(range(len(langs)), langs)
    axis.set_xlabel("target language (captions searched)")
    axis.set_ylabel("query language")
    axis.set_title("Text → text R@1 (%)")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    return _save(plt, figure, path)


def _zero_shot_bars(plt, results: dict[str, Any], path: Path) -> Path:
    langs = [lang for lang in results["zero_shot"] if lang != "mean"]
    values = [results["zero_shot"][lang]["accuracy"] for lang in langs]
    figure, axis = plt.subplots(figsize=(max(5.0, 0.8 * len(langs) + 2.0), 3.5))
    bars = axis.bar(langs, values, color="tab:green")
    axis.bar_label(bars, fmt="%.0f", fontsize=8)
    classes = results["zero_shot"][langs[0]]["classes"]
    axis.axhline(100.0 / classes, color="grey", linestyle="--", linewidth=1, label=f"chance (1/{classes})")
    axis.set_ylim(0, 105)
    axis.set_ylabel("top-1 accuracy (%)")
    axis.set_title("Zero-shot classification per prompt language")
    axis.legend(fontsize=8)
    return _save(plt, figure, path)


__all__ = ["ADAPTERS_PNG", "RECALL_BARS_PNG", "TEXT_TO_TEXT_PNG", "ZERO_SHOT_PNG", "format_adapter_table",
           "format_results", "format_table", "save_plots"]
