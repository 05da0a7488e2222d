"""Tiny in-memory corpora, models and recipes for the training tests."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from seeyou_ml import SeeYouModel
from seeyou_ml.data.collator import SeeYouCollator
from seeyou_ml.presets import tiny_config, tiny_processor
from seeyou_ml.training.build import build_batch_sampler
from seeyou_ml.training.config import TrainingRecipe
from seeyou_ml.training.trainer import Trainer, make_accelerator

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (220, 220, 30)}
SHAPES = ("circle", "square")
PLACES = ("left", "right", "above")
IMAGE_SIZE = 32
REPO_ROOT = Path(__file__).resolve().parent.parent


def make_records(num_images: int = 24, languages: tuple[str, ...] = ("en",)) -> list[dict]:
    """`num_images` distinct drawings of a coloured shape at a place, one caption per language each."""
    combos = list(itertools.product(COLOURS, SHAPES, PLACES))
    records = []
    for index in range(num_images):
        colour, shape, place = combos[index % len(combos)]
        image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (index * 7 % 255, 90, 160))
        x = {"left": 4, "right": 18, "above": 11}[place]
        y = 4 if place == "above" else 12
        draw = ImageDraw.Draw(image)
        box = [x, y, x + 10, y + 10]
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
        for lang in languages:
            records.append({
                "image": image,
                "caption": f"a {colour} {shape} {place}" + " a" * (index // len(combos)),
                "lang": lang,
                "image_id": f"img-{index}",
            })
    return records


def tiny_model(vocab_size: int, seed: int = 0, text_dropout: float = 0.0) -> SeeYouModel:
    """A tiny ResNet + XLM-R model with fixed weights; `text_dropout` > 0 makes steps draw random numbers."""
    torch.manual_seed(seed)
    config = tiny_config(vocab_size=vocab_size, projection_dim=16, vision_widths=(8, 16), vision_depths=(1, 1),
                         text_hidden_size=32, max_text_length=32)
    config.text_config.hidden_dropout_prob = text_dropout
    config.text_config.attention_probs_dropout_prob = text_dropout
    return SeeYouModel(config)


def tiny_recipe(output_dir: Path, **sections) -> TrainingRecipe:
    """A CPU fp32 recipe of a few steps without trackers, progress bar or periodic checkpoints."""
    data = {
        "name": "test",
        "output_dir": str(output_dir),
        "mixed_precision": "no",
        "data": {"batch_size": 8, "eval_split": None},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "stages": [{"name": "joint", "steps": 6}],
        "monitor": {"report_to": None, "progress_bar": False, "collapse_every": 0},
        "checkpoint": {"save_every": 0},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return TrainingRecipe.from_dict(data)


def make_trainer(recipe: TrainingRecipe, tokenizer, records: list[dict], model: SeeYouModel | None = None,
                 text_dropout: float = 0.0, **kwargs) -> Trainer:
    """A Trainer over in-memory `records` with the real collator and sampler."""
    processor = tiny_processor(tokenizer, image_size=IMAGE_SIZE)
    model = model if model is not None else tiny_model(len(tokenizer), recipe.seed, text_dropout)
    batch_sampler = kwargs.pop("batch_sampler", None)
    if batch_sampler is None:
        batch_sampler = build_batch_sampler(recipe.data, records, recipe.seed)
    return Trainer(
        recipe,
        model=model,
        processor=processor,
        train_dataset=records,
        collate_fn=kwargs.pop("collate_fn", None) or SeeYouCollator(processor),
        batch_sampler=batch_sampler,
        accelerator=kwargs.pop("accelerator", None) or make_accelerator(recipe),
        **kwargs,
    )


class StepClock:
    """A fake clock for `Trainer(clock=...)` that moves only when a training step runs, by `seconds_per_step`."""

    def __init__(self, seconds_per_step: float):
        self.seconds_per_step = seconds_per_step
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def attach(self, trainer: Trainer) -> Trainer:
        """Makes every `trainer.training_step` take `seconds_per_step` on this clock."""
        step = trainer.training_step

        def timed_step(batch):
            self.now += self.seconds_per_step
            return step(batch)

        trainer.training_step = timed_step
        return trainer


def write_corpus(folder: Path, records: list[dict], split: str = "train") -> Path:
    """Writes `records` as a captions-jsonl corpus (`<split>.jsonl` + PNG images) that `load_corpus` reads."""
    import json

    (folder / "images").mkdir(parents=True, exist_ok=True)
    by_image: dict[str, dict] = {}
    for record in records:
        entry = by_image.setdefault(record["image_id"], {"image_id": record["image_id"],
                                                         "image": f"images/{record['image_id']}.png",
                                                         "captions": {}})
        if not (folder / entry["image"]).exists():
            record["image"].save(folder / entry["image"])
        entry["captions"].setdefault(record["lang"], []).append(record["caption"])
    with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
        for entry in by_image.values():
            f.write(json.dumps(entry) + "\n")
    return folder


def file_recipe(tmp_path: Path, tokenizer, records: list[dict], **sections) -> dict:
    """A recipe as plain data whose corpus and tokenizer live in files, for `recipes/train.py`."""
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    corpus = write_corpus(tmp_path / "corpus", records)
    data = {
        "name": "test",
        "output_dir": str(tmp_path / "out"),
        "mixed_precision": "no",
        "data": {"corpus": str(corpus), "corpus_kwargs": {"format": "captions-jsonl", "num_threads": 1},
                 "batch_size": 8, "eval_split": None},
        "model": {"preset": "tiny", "tokenizer": str(tmp_path / "tokenizer"), "freeze_batchnorm": True,
                  "preset_kwargs": {"image_size": IMAGE_SIZE, "projection_dim": 16, "vision_widths": [8, 16],
                                    "vision_depths": [1, 1], "text_hidden_size": 32, "max_text_length": 32}},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "stages": [{"steps": 4}],
        "monitor": {"report_to": None, "progress_bar": False, "collapse_every": 0},
        "checkpoint": {"save_every": 0},
    }
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    return data
