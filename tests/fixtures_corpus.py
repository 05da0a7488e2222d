"""Small corpora in every layout `load_corpus` reads, written into a temporary folder."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import datasets
from PIL import Image


COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def write_image(path: Path, index: int = 0, size: tuple[int, int] = (24, 16), format: str = "JPEG") -> Path:
    """A solid-colour image, so a decoded pixel tells which file it came from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, COLORS[index % len(COLORS)]).save(path, format=format)
    return path


def image_bytes(index: int = 0, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), COLORS[index % len(COLORS)]).save(buffer, format=format)
    return buffer.getvalue()


def write_lines(path: Path, lines: list) -> Path:
    """One line per item: dicts as JSON, strings verbatim (so a test can plant a broken line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((json.dumps(x, ensure_ascii=False) if isinstance(x, dict) else x) + "\n" for x in lines),
                    encoding="utf-8")
    return path


def captions_jsonl(root: Path) -> Path:
    """Train: 3 images, 2 en + 1 de captions each (9 rows); val: 1 image with en and nl."""
    for index in range(4):
        write_image(root / "images" / f"{index}.jpg", index)
    write_lines(root / "train.jsonl", [
        {"image_id": str(i), "image": f"images/{i}.jpg",
         "captions": {"en": [f"a photo {i}", f"another photo {i}"], "de": [f"ein Foto {i}"]}}
        for i in range(3)
    ])
    write_lines(root / "val.jsonl", [
        {"image_id": "3", "image": "images/3.jpg", "captions": {"en": ["a val photo"], "nl": ["een foto"]}}
    ])
    return root


def karpathy(root: Path) -> Path:
    """One train, one restval, one val and one test image, 2 sentences each, under <root>/coco/<filepath>/."""
    entries = []
    for index, split in enumerate(["train", "restval", "val", "test"]):
        write_image(root / "coco" / f"{split}2014" / f"COCO_{index}.jpg", index)
        entries.append({
            "filepath": f"{split}2014", "filename": f"COCO_{index}.jpg", "cocoid": 100 + index, "split": split,
            "sentences": [{"raw": f"sentence {s} of {index}", "tokens": []} for s in range(2)],
        })
    (root / "dataset_coco.json").write_text(json.dumps({"images": entries, "dataset": "coco"}), encoding="utf-8")
    return root


def multi30k(root: Path, de_lines: int = 3) -> Path:
    """Three train images with en, de and fr captions, line-aligned; `de_lines` < 3 breaks the alignment."""
    names = [f"{1000 + i}.jpg" for i in range(3)]
    for index, name in enumerate(names):
        write_image(root / "images" / name, index)
    (root / "image_splits").mkdir(parents=True)
    (root / "image_splits" / "train.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    (root / "raw").mkdir()
    for lang, count in (("en", 3), ("de", de_lines), ("fr", 3)):
        with gzip.open(root / "raw" / f"train.{lang}.gz", "wt", encoding="utf-8") as handle:
            handle.write("".join(f"{lang} caption {i}\n" for i in range(count)))
    return root


def multi30k_coco(root: Path) -> Path:
    """Multi30K's COCO test split: `image_splits/test_2017_mscoco.txt` lines `COCO_val2014_<12 digits>.jpg#<id>`
    with line-aligned `raw/test_2017_mscoco.{en,de,fr}.gz`; the COCO images under `images/`."""
    cocoids = [117071, 42, 391895]
    names = [f"COCO_val2014_{cocoid:012d}.jpg" for cocoid in cocoids]
    for index, name in enumerate(names):
        write_image(root / "images" / name, index)
    (root / "image_splits").mkdir(parents=True)
    lines = [f"{name}#{annotation}" for name, annotation in zip(names, [367178, 1055, 770337])]
    (root / "image_splits" / "test_2017_mscoco.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "raw").mkdir()
    for lang in ("en", "de", "fr"):
        with gzip.open(root / "raw" / f"test_2017_mscoco.{lang}.gz", "wt", encoding="utf-8") as handle:
            handle.write("".join(f"{lang} coco caption {i}\n" for i in range(len(names))))
    return root


def imagefolder(root: Path, csv: bool = False) -> Path:
    """Three images in train/ with metadata; the csv variant names its columns `text` and `language`."""
    for index in range(3):
        write_image(root / "train" / f"img{index}.png", index, format="PNG")
    if csv:
        rows = "".join(f"img{i}.png,picture {i},fr\n" for i in range(3))
        (root / "train" / "metadata.csv").write_text("file_name,text,language\n" + rows, encoding="utf-8")
    else:
        write_lines(root / "train" / "metadata.jsonl",
                    [{"file_name": f"img{i}.png", "caption": f"picture {i}", "lang": "es"} for i in range(3)])
    return root


def imagefolder_text_column(root: Path) -> Path:
    """The image-captioning layout of the `datasets` docs: `train/metadata.jsonl` rows `{"file_name", "text"}`."""
    for index in range(2):
        write_image(root / "train" / f"{index:04d}.png", index, format="PNG")
    write_lines(root / "train" / "metadata.jsonl",
                [{"file_name": f"{i:04d}.png", "text": f"a golden retriever {i}"} for i in range(2)])
    return root


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for key, parts in samples:
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def webdataset(root: Path) -> Path:
    """train/000.tar: a JPEG with json captions in two languages and a PNG with a .txt caption."""
    caption = json.dumps({"captions": {"en": ["a dog"], "ja": ["犬"]}, "image_id": "dog"}).encode()
    write_shard(root / "train" / "000.tar", [
        ("s0", {"jpg": image_bytes(0, "JPEG"), "json": caption}),
        ("s1", {"png": image_bytes(1), "txt": b"a cat\n"}),
    ])
    return root


def saved_dataset(root: Path) -> Path:
    """A `DatasetDict` saved to disk with an `Image` column and captions under `text`/`language`."""
    def split(n: int, offset: int) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {"picture": [{"bytes": image_bytes(i + offset), "path": None} for i in range(n)],
             "text": [f"row {i + offset}" for i in range(n)], "language": ["de"] * n},
            features=datasets.Features({"picture": datasets.Image(), "text": datasets.Value("string"),
                                        "language": datasets.Value("string")}),
        )
    datasets.DatasetDict({"train": split(3, 0), "test": split(2, 3)}).save_to_disk(str(root))
    return root


def webdataset_txt_with_metadata(root: Path) -> Path:
    """img2dataset's layout: `<key>.jpg`, `<key>.txt` (the caption) and `<key>.json` (metadata without a caption)."""
    samples = []
    for index in range(2):
        key = f"{index:09d}"
        metadata = {"url": f"https://example.com/{index}.jpg", "key": key, "status": "success", "width": 20,
                    "height": 20, "sha256": "0" * 64}
        if index == 1:
            metadata["lang"] = "de"
        samples.append((key, {"jpg": image_bytes(index, "JPEG"), "txt": f"caption {index}\n".encode(),
                              "json": json.dumps(metadata).encode()}))
    write_shard(root / "00000.tar", samples)
    return root
