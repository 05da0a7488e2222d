"""Grounding evaluation and pictures: how well a model's head finds what a referring expression points at.

Metrics, per language and pooled over groups of images:
- Acc@0.5: share of expressions whose predicted box has IoU >= 0.5 with the gold box;
- mean IoU of predicted and gold boxes;
- pointing accuracy: share of expressions whose attention map, upsampled bilinearly to the image, peaks inside the
  gold box.
Groups: images with a colour-shape combination held out of training (`held_out`) vs the others, and relational
expressions ("the star left of the red circle") vs plain ones; the relational ones are told apart by the English
expression of the same image (the scenes corpus words every language's expression from one scene).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..grounding import GroundingResult, ground
from ..geometry import box_iou

METRICS = ("acc@0.5", "mean_iou", "pointing")


def relational_images(dataset: Any) -> dict[str, bool] | None:
    """image_id -> whether its English referring expression names a landmark; None without English rows."""
    from ..data.scenes.languages import LANGUAGES

    relations = tuple(LANGUAGES["en"].RELATION.values())
    rows = dataset.select_columns(["lang", "image_id", "phrase"])
    found = {r["image_id"]: any(f" {word} " in r["phrase"] for word in relations) for r in rows if r["lang"] == "en"}
    return found or None


def grounding_scores(result: GroundingResult, gold_boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-expression IoU, hit at IoU 0.5 and pointing hit of a [`GroundingResult`] against (N, 4) gold boxes."""
    iou, _ = box_iou(result.boxes.float(), gold_boxes.float())
    x, y = result.points.unbind(-1)
    inside = (x >= gold_boxes[:, 0]) & (x <= gold_boxes[:, 2]) & (y >= gold_boxes[:, 1]) & (y <= gold_boxes[:, 3])
    return {"iou": iou, "acc@0.5": (iou >= 0.5).float(), "pointing": inside.float()}


def _summary(rows: list[dict[str, float]]) -> dict[str, float]:
    count = max(len(rows), 1)
    return {
        "acc@0.5": 100 * sum(r["acc@0.5"] for r in rows) / count,
        "mean_iou": 100 * sum(r["iou"] for r in rows) / count,
        "pointing": 100 * sum(r["pointing"] for r in rows) / count,
        "count": len(rows),
    }


def evaluate_grounding(model: Any, processor: Any, dataset: Any, batch_size: int = 128) -> dict[str, Any]:
    """Grounds every record's `phrase` in its image and scores the boxes and attention peaks against `boxes[0]`.

    Args:
        model: a [`SeeYouModel`] with a grounding head.
        processor: its processor.
        dataset: records with `image`, `phrase`, `boxes`, `lang`, `image_id` and optionally `held_out` (the scenes
            corpus has them all).
        batch_size: expressions per forward pass.

    Returns:
        `{"per_language": {lang: metrics}, "mean": metrics (the mean over languages), "groups": {group: metrics}}`,
        metrics being Acc@0.5, mean IoU and pointing accuracy in percent and the number of expressions.
    """
    missing = [c for c in ("image", "phrase", "boxes", "lang", "image_id") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"evaluate_grounding needs the columns {missing}; the scenes corpus has referring "
                         "expressions with boxes.")
    relational = relational_images(dataset)
    model.eval()
    rows: list[dict[str, Any]] = []
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start : start + batch_size]
        result = ground(model, processor, batch["image"], batch["phrase"])
        gold = torch.tensor([boxes[0] for boxes in batch["boxes"]], dtype=torch.float32)  # (N, 4)
        scores = grounding_scores(result, gold)
        for i in range(len(gold)):
            row = {k: float(v[i]) for k, v in scores.items()}
            row.update(lang=batch["lang"][i], image_id=batch["image_id"][i])
            row["held_out"] = bool(batch["held_out"][i]) if "held_out" in batch else None
            rows.append(row)

    by_language: dict[str, list] = defaultdict(list)
    groups: dict[str, list] = defaultdict(list)
    for row in rows:
        by_language[row["lang"]].append(row)
        if row["held_out"] is not None:
            groups["held-out images" if row["held_out"] else "other images"].append(row)
        if relational is not None and row["image_id"] in relational:
            groups["relational" if relational[row["image_id"]] else "plain"].append(row)
    per_language = {lang: _summary(r) for lang, r in sorted(by_language.items())}
    mean = {m: sum(v[m] for v in per_language.values()) / len(per_language) for m in METRICS}
    return {"per_language": per_language, "mean": mean, "groups": {g: _summary(r) for g, r in sorted(groups.items())}}


def evaluate_scenes(model: Any, processor: Any, dataset: Any, batch_size: int = 64, **kwargs) -> dict[str, Any]:
    """Retrieval ([`evaluate_retrieval`], with `kwargs`) of a scenes split, and grounding ([`evaluate_grounding`])
    under `"grounding"` when the model has a grounding head: the main job's final report, and `seeyou evaluate`'s on
    the scenes corpus."""
    from .evaluator import evaluate_retrieval

    results = evaluate_retrieval(model, processor, dataset, batch_size=batch_size, **kwargs)
    if getattr(model, "grounding_head", None) is not None:
        results["grounding"] = evaluate_grounding(model, processor, dataset, batch_size=2 * batch_size)
    return results


def corpus_evaluation(corpus: str, dataset: Any) -> Callable[..., dict[str, Any]]:
    """How a split of `corpus` is evaluated, as the trainer's final report and `seeyou evaluate` do it:
    [`evaluate_scenes`] on the scenes corpus (retrieval, zero-shot with its labels and prompts, and grounding),
    else [`evaluate_retrieval`] (with zero-shot where [`zero_shot_arguments`] finds labels and prompts).

    Returns:
        `fn(model, processor, dataset, **kwargs) -> results`, the corpus's zero-shot arguments bound.
    """
    from ..data.splits import SCENES, zero_shot_arguments
    from .evaluator import evaluate_retrieval

    evaluate = evaluate_scenes if corpus == SCENES else evaluate_retrieval
    zero_shot = zero_shot_arguments(corpus, dataset)
    return functools.partial(evaluate, **zero_shot) if zero_shot else evaluate


def format_grounding_table(results: dict[str, Any]) -> str:
    """A plain-text table of [`evaluate_grounding`]'s results: one row per language, the mean, then the groups."""
    header = f"{'grounding':<16}{'Acc@0.5':>9}{'mean IoU':>10}{'pointing':>10}{'n':>7}"
    lines = [header, "-" * len(header)]

    def line(name: str, m: dict[str, float]) -> str:
        count = f"{m['count']:>7}" if "count" in m else " " * 7
        return f"{name:<16}{m['acc@0.5']:>9.1f}{m['mean_iou']:>10.1f}{m['pointing']:>10.1f}{count}"

    lines += [line(lang, m) for lang, m in results["per_language"].items()]
    lines.append(line("mean", results["mean"]))
    lines.append("-" * len(header))
    lines += [line(group, m) for group, m in results["groups"].items()]
    return "\n".join(lines)


def draw_grounding(
    image: Image.Image,
    result: GroundingResult,
    index: int,
    label: str,
    gold_box: list[float] | None = None,
    scale: int = 4,
) -> Image.Image:
    """The image enlarged `scale` times with the attention map overlaid in red, the predicted box (red) labelled
    with `label`, and the gold box (green) when given."""
    image = image.convert("RGB")
    width, height = image.size
    big = image.resize((width * scale, height * scale), Image.Resampling.NEAREST)
    attention = result.attention[index][None, None].float()  # (1, 1, h, w)
    heat = F.interpolate(attention, size=(big.height, big.width), mode="bilinear", align_corners=False)[0, 0]
    heat = (heat / heat.max().clamp(min=1e-9) * 160).to(torch.uint8).numpy()
    overlay = Image.new("RGB", big.size, (255, 0, 0))
    big = Image.composite(overlay, big, Image.fromarray(heat, mode="L"))
    draw = ImageDraw.Draw(big)
    if gold_box is not None:
        draw.rectangle([v * scale for v in gold_box], outline=(0, 200, 0), width=2)
    box = [float(v) * scale for v in result.boxes[index]]
    draw.rectangle(box, outline=(255, 40, 40), width=2)
    draw.text((box[0] + 2, max(box[1] - 12, 0)), label, fill=(255, 255, 255))
    return big


def ground_picture(model: Any, processor: Any, image: Any, text: str, path: str | Path) -> GroundingResult:
    """Grounds `text` in `image` and writes the picture of [`draw_grounding`] to `path` (PNG)."""
    from ..images import load_image

    image = load_image(image)
    result = ground(model, processor, [image], [text])
    draw_grounding(image, result, 0, text).save(path)
    return result


def grounding_grid(
    model: Any, processor: Any, dataset: Any, path: str | Path, num_images: int = 16, lang: str = "en"
) -> Path:
    """Writes a 4-column grid of `num_images` images of `dataset` (their `lang` rows) with gold (green) and predicted
    (red) boxes, the attention overlaid and each expression under its image."""
    rows = [i for i, code in enumerate(dataset["lang"]) if code == lang][:num_images]
    if not rows:
        raise ValueError(f"the dataset has no rows in language {lang!r} to draw.")
    records = dataset.select(rows)
    result = ground(model, processor, records["image"], records["phrase"])
    from ..images import load_image

    cells = [draw_grounding(load_image(records[i]["image"]), result, i, "", records[i]["boxes"][0])
             for i in range(len(rows))]
    cell_w, cell_h = cells[0].size
    columns = 4
    grid = Image.new("RGB", (columns * cell_w, -(-len(cells) // columns) * (cell_h + 28)), "white")
    draw = ImageDraw.Draw(grid)
    for i, cell in enumerate(cells):
        x, y = (i % columns) * cell_w, (i // columns) * (cell_h + 28)
        grid.paste(cell, (x, y))
        phrase = records[i]["phrase"]
        draw.text((x + 2, y + cell_h + 2), phrase[:42], fill="black")
        draw.text((x + 2, y + cell_h + 14), phrase[42:84], fill="black")
    path = Path(path)
    grid.save(path)
    return path


__all__ = [
    "corpus_evaluation",
    "draw_grounding",
    "evaluate_grounding",
    "evaluate_scenes",
    "format_grounding_table",
    "ground_picture",
    "grounding_grid",
    "grounding_scores",
    "relational_images",
]
