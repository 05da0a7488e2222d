"""`python -m seeyou_ml.data.scenes --stats [--grid grid.png] [--captions 20]`: build the corpus and describe it.

--stats prints, per split, the images, the captions per language, the objects per image, the share of images
with a held-out colour-shape combination and the share of relational referring phrases. --grid writes a PNG of
sample images (enlarged) with the referent's box drawn and the English phrase under each. --captions N prints the
first N captions and phrases of the test split in every language.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from PIL import Image, ImageDraw

from . import LANGUAGES, load_scenes
from .corpus import SPLITS
from .languages.germanic import English


def split_stats(split: str, image_size: int, seed: int) -> dict:
    """Counts of one split; the language-free columns are read from the English rows."""
    rows = load_scenes(split, image_size=image_size, seed=seed).remove_columns("image")
    langs, captions = rows["lang"], rows["caption"]
    english = rows.select([i for i, code in enumerate(langs) if code == "en"])
    objects = Counter(len(s) for s in english["shapes"])
    relations = tuple(English.RELATION.values())
    relational = sum(any(f" {r} " in p for r in relations) for p in english["phrase"])
    distinct: dict[str, set[str]] = {}
    for code, caption in zip(langs, captions):
        distinct.setdefault(code, set()).add(caption)
    return {
        "images": len(english),
        "captions": dict(Counter(langs)),
        "objects": dict(sorted(objects.items())),
        "held_out": sum(english["held_out"]) / len(english),
        "relational": relational / len(english),
        "unique": {code: len(texts) for code, texts in distinct.items()},
    }


def print_stats(image_size: int, seed: int) -> None:
    for split in SPLITS:
        start = time.perf_counter()
        stats = split_stats(split, image_size, seed)
        seconds = time.perf_counter() - start
        objects = ", ".join(f"{k}: {v}" for k, v in stats["objects"].items())
        mean = sum(k * v for k, v in stats["objects"].items()) / stats["images"]
        print(f"[{split}] images: {stats['images']}  (built or loaded in {seconds:.1f} s)")
        print("  captions per language: " + ", ".join(f"{k} {v}" for k, v in stats["captions"].items()))
        print("  distinct captions per language: " + ", ".join(f"{k} {v}" for k, v in stats["unique"].items()))
        print(f"  objects per image: mean {mean:.2f}  ({objects})")
        print(f"  images with a held-out combination: {stats['held_out']:.1%}")
        print(f"  relational referring phrases: {stats['relational']:.1%}")


def write_grid(path: str, image_size: int, seed: int, columns: int = 6, rows_per_split: int = 2, scale: int = 3) -> None:
    """Samples of train and test, enlarged `scale` times, with the referent box and the English phrase."""
    cell_w, text_h = image_size * scale, 30
    splits = ["train", "test"]
    grid = Image.new("RGB", (columns * cell_w, len(splits) * rows_per_split * (cell_w + text_h)), "white")
    draw = ImageDraw.Draw(grid)
    for s, split in enumerate(splits):
        rows = load_scenes(split, num_images=columns * rows_per_split, image_size=image_size, seed=seed, languages=["en"])
        for k, row in enumerate(rows):
            x = (k % columns) * cell_w
            y = (s * rows_per_split + k // columns) * (cell_w + text_h)
            grid.paste(row["image"].resize((cell_w, cell_w), Image.Resampling.NEAREST), (x, y))
            x0, y0, x1, y1 = (v * scale for v in row["boxes"][0])
            draw.rectangle([x + x0 - 1, y + y0 - 1, x + x1 + 1, y + y1 + 1], outline=(255, 0, 255), width=2)
            phrase = f"{split}: {row['phrase']}"
            # Two short lines fit under a cell; longer phrases wrap at the last space before the limit.
            limit = cell_w // 6
            cut = phrase.rfind(" ", 0, limit) if len(phrase) > limit else len(phrase)
            draw.text((x + 2, y + cell_w + 2), phrase[:cut], fill="black")
            draw.text((x + 2, y + cell_w + 15), phrase[cut:].strip()[:limit], fill="black")
    grid.save(path)
    print(f"wrote {path}")


def print_captions(count: int, image_size: int, seed: int) -> None:
    rows = load_scenes("test", num_images=count, image_size=image_size, seed=seed)
    for code in LANGUAGES:
        print(f"--- {code}")
        for row in rows.remove_columns("image"):
            if row["lang"] == code:
                print(f"{row['image_id']}  {row['caption']}  ||  {row['phrase']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m seeyou_ml.data.scenes", description=__doc__.splitlines()[0])
    parser.add_argument("--stats", action="store_true", help="build every split and print its statistics")
    parser.add_argument("--grid", metavar="PNG", help="write a grid of samples with boxes and English phrases")
    parser.add_argument("--captions", type=int, default=0, metavar="N", help="print N test captions per language")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels (64-128)")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed")
    args = parser.parse_args(argv)
    if not (args.stats or args.grid or args.captions):
        parser.error("nothing to do: pass --stats, --grid PNG or --captions N")
    if args.stats:
        print_stats(args.image_size, args.seed)
    if args.grid:
        write_grid(args.grid, args.image_size, args.seed)
    if args.captions:
        print_captions(args.captions, args.image_size, args.seed)


if __name__ == "__main__":
    main()
