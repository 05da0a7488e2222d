"""Readers for the corpus layouts that `load_corpus` understands.

Each reader turns one layout into a stream of `ImageEntry`s (one image and its captions, with the file and line they
came from) and reports lines it cannot read to a `SkipLog`. Checking captions, languages and images, and building
the dataset, happen once for all layouts in `seeyou_ml.data.corpus`.

Layouts:
    captions-jsonl: `<split>.jsonl`, one image per line: `{"image_id", "image", "captions": {lang: [...]}}`.
    karpathy: `dataset_coco.json` / `dataset_flickr30k.json` (Karpathy & Fei-Fei 2015 splits).
    multi30k: `image_splits/<split>.txt` with line-aligned `raw/<split>.<lang>.gz` (Elliott et al. 2016); a line's
        `#id` suffix (`COCO_val2014_000000117071.jpg#367178` in the COCO test split) is not part of the file name.
    imagefolder: images with `metadata.jsonl` / `metadata.csv`, read by the `datasets` imagefolder builder.
    webdataset: `.tar` shards of `<key>.jpg|png` with `<key>.json` or `<key>.txt` (the caption when the `.json`
        holds only metadata).
    datasets: anything `datasets.load_dataset` or `datasets.load_from_disk` opens.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import datasets

from .validation import MALFORMED_LINE, MISSING_IMAGE, SkipLog


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


@dataclass
class CaptionEntry:
    """One caption of an image; `file`/`line` are set when it lives elsewhere than its image's line (Multi30K)."""

    lang: Any
    caption: Any
    boxes: Optional[list] = None
    phrase: Optional[str] = None
    file: Optional[str] = None
    line: Union[int, str, None] = None


@dataclass
class ImageEntry:
    """One image with its captions, as read from `file` at `line`.

    `image` is a file path, or `(name, encoded bytes)` for images stored inside archives or datasets.
    """

    image: Union[str, tuple[str, bytes], None]
    image_id: str
    captions: list[CaptionEntry]
    file: str
    line: Union[int, str]


class MalformedRecord(ValueError):
    """A record that lacks required keys or holds values of the wrong type."""


def rename_keys(record: dict, column_mapping: Optional[dict[str, str]]) -> dict:
    """Applies `column_mapping` (source name → schema name) to one record."""
    if not column_mapping:
        return record
    return {column_mapping.get(key, key): value for key, value in record.items()}


def expand_captions(record: dict, default_lang: str) -> list[CaptionEntry]:
    """The captions of one record, whichever of the accepted shapes it uses.

    Accepted: `captions` as `{lang: str | [str, ...]}`, as a list of strings or of `{"caption", "lang"}` objects, or
    as a string; or `caption` (string or list of strings) with an optional `lang`. `boxes` and `phrase` are taken
    from the record for a single caption. A record without a language gets `default_lang`.

    Raises:
        MalformedRecord: when no caption key is present or a value has the wrong type.
    """
    lang = record.get("lang") or default_lang
    key = "captions" if "captions" in record else "caption"
    if key not in record:
        raise MalformedRecord(f"no 'caption' or 'captions' key (keys: {sorted(record)})")
    captions = record[key]
    if isinstance(captions, dict):
        pairs = [(key, text) for key, texts in captions.items() for text in _as_list(texts, f"captions[{key!r}]")]
        return [CaptionEntry(key, _as_text(text)) for key, text in pairs]
    entries = []
    for text in _as_list(captions, key):
        if isinstance(text, dict):
            boxes, phrase = _as_boxes(text.get("boxes")), text.get("phrase")
            entries.append(CaptionEntry(text.get("lang") or lang, _as_text(text.get("caption")), boxes, phrase))
        else:
            entries.append(CaptionEntry(lang, _as_text(text)))
    if len(entries) == 1 and entries[0].boxes is None:
        entries[0].boxes = _as_boxes(record.get("boxes"))
        entries[0].phrase = entries[0].phrase or record.get("phrase")
    return entries


def _as_list(value: Any, name: str) -> list:
    if isinstance(value, (str, dict)) or value is None:
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise MalformedRecord(f"{name} is of type {type(value).__name__}, expected a string or a list of strings")


def _as_text(value: Any) -> str:
    # A missing caption counts as empty (a skip with its own reason), anything else that is not text is malformed.
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedRecord(f"caption {value!r} is of type {type(value).__name__}, expected a string")
    return value


def _as_boxes(value: Any) -> Optional[list[list[float]]]:
    if value is None:
        return None
    try:
        boxes = [[float(coord) for coord in box] for box in value]
    except (TypeError, ValueError):
        raise MalformedRecord(f"boxes {value!r} are not a list of [x0, y0, x1, y1] lists") from None
    if any(len(box) != 4 for box in boxes):
        raise MalformedRecord(f"boxes {value!r} are not a list of [x0, y0, x1, y1] lists")
    return boxes


def _resolve(root: Path, relative: str) -> str:
    return str(Path(relative) if os.path.isabs(relative) else root / relative)


def read_captions_jsonl(
    file: Path, image_root: Path, column_mapping: Optional[dict], default_lang: str, log: SkipLog
) -> Iterator[ImageEntry]:
    """Reads one image per line: `{"image_id", "image", "captions": {lang: [...]}}` (see `expand_captions`)."""
    fix = 'Each line must be a JSON object like {"image_id": "1", "image": "images/1.jpg", "captions": {"en": ["..."]}}'
    with open(file, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
                if not isinstance(record, dict):
                    raise MalformedRecord(f"the line holds a JSON {type(record).__name__}, not an object")
                record = rename_keys(record, column_mapping)
                if not isinstance(record.get("image"), str):
                    raise MalformedRecord(f"no 'image' path (keys: {sorted(record)})")
                captions = expand_captions(record, default_lang)
            except (json.JSONDecodeError, MalformedRecord) as error:
                log.skip(MALFORMED_LINE, file, number, f"malformed line ({error})", fix, captions=0)
                continue
            image = _resolve(image_root, record["image"])
            image_id = str(record["image_id"]) if record.get("image_id") is not None else Path(record["image"]).stem
            yield ImageEntry(image, image_id, captions, str(file), number)


KARPATHY_SPLITS = {"train": ("train", "restval"), "restval": ("restval",), "val": ("val",), "test": ("test",)}


def read_karpathy(file: Path, split: str, image_root: Path, default_lang: str, log: SkipLog) -> Iterator[ImageEntry]:
    """Reads a Karpathy split file; `split="train"` includes `restval`, as in the usual 113k-image COCO train."""
    if split not in KARPATHY_SPLITS:
        raise ValueError(
            f"split {split!r} is not in the Karpathy splits of {file}; use one of {list(KARPATHY_SPLITS)}."
        )
    with open(file, encoding="utf-8") as handle:
        try:
            content = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{file}, line {error.lineno}: not valid JSON ({error.msg}); repair or re-download the file."
            ) from None
    if not isinstance(content, dict) or not isinstance(content.get("images"), list):
        raise ValueError(f"{file} has no 'images' list; a Karpathy split file looks like {{'images': [...]}}.")
    fix = 'Each image needs "filename", "split" and "sentences": [{"raw": "..."}]'
    wanted = KARPATHY_SPLITS[split]
    for index, image in enumerate(content["images"]):
        locator = f"images[{index}]"
        try:
            if not isinstance(image, dict) or not isinstance(image.get("filename"), str):
                raise MalformedRecord("no 'filename'")
            if image.get("split") not in wanted:
                continue
            sentences = image.get("sentences")
            if not isinstance(sentences, list) or not all(isinstance(s, dict) and "raw" in s for s in sentences):
                raise MalformedRecord("no 'sentences' list of {'raw': ...} objects")
            captions = [CaptionEntry(default_lang, _as_text(s["raw"])) for s in sentences]
        except MalformedRecord as error:
            log.skip(MALFORMED_LINE, file, locator, f"malformed entry ({error})", fix, captions=0)
            continue
        path = image_root / image.get("filepath", "") / image["filename"]
        image_id = str(image["cocoid"]) if "cocoid" in image else Path(image["filename"]).stem
        yield ImageEntry(str(path), image_id, captions, str(file), locator)


def multi30k_files(root: Path, split: str) -> tuple[Path, dict[str, Path]]:
    """The image list of a Multi30K split and its caption file per language."""
    image_list = root / "image_splits" / f"{split}.txt"
    if not image_list.is_file():
        found = sorted(p.stem for p in (root / "image_splits").glob("*.txt"))
        raise ValueError(f"{image_list} does not exist; the Multi30K splits here are {found}.")
    captions = {}
    for path in sorted((root / "raw").glob(f"{split}.*")):
        lang = path.name[len(split) + 1 :].removesuffix(".gz")
        if "." not in lang:
            captions[lang] = path
    if not captions:
        raise ValueError(f"{root / 'raw'} holds no {split}.<lang>.gz caption files for split {split!r}.")
    return image_list, captions


def read_multi30k(
    root: Path, split: str, image_root: Path, languages: Optional[set[str]], log: SkipLog
) -> Iterator[ImageEntry]:
    """Reads Multi30K: line i of every `raw/<split>.<lang>.gz` describes the image on line i of the image list."""
    image_list, caption_files = multi30k_files(root, split)
    names = image_list.read_text(encoding="utf-8").splitlines()
    columns = {}
    for lang, path in caption_files.items():
        if languages is not None and lang.lower() not in languages:
            continue
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as handle:
            columns[lang] = (path, handle.read().splitlines())
        if len(columns[lang][1]) != len(names):
            raise ValueError(
                f"{path} has {len(columns[lang][1])} lines but {image_list} lists {len(names)} images; "
                "Multi30K files must be line-aligned, so re-extract or trim the file."
            )
    for number, name in enumerate(names, start=1):
        # The COCO split lists `COCO_val2014_000000117071.jpg#367178`: the `#id` names the entry, not the file.
        file_name = name.split("#", 1)[0].strip()
        if not file_name:
            log.skip(MALFORMED_LINE, image_list, number, "empty image name", "Give one image file name per line",
                     captions=len(columns))
            continue
        captions = [
            CaptionEntry(lang, lines[number - 1], file=str(path), line=number)
            for lang, (path, lines) in columns.items()
        ]
        yield ImageEntry(str(image_root / file_name), Path(file_name).stem, captions, str(image_list), number)


def webdataset_samples(shard: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Groups the members of one tar shard into WebDataset samples: key (name up to the first dot) → {ext: bytes}."""
    key, parts = None, {}
    with tarfile.open(shard) as archive:
        for member in archive:
            if not member.isfile():
                continue
            directory, base = os.path.split(member.name)
            if "." not in base:
                continue
            stem, ext = base.split(".", 1)
            member_key = f"{directory}/{stem}" if directory else stem
            if member_key != key and key is not None:
                yield key, parts
                parts = {}
            key = member_key
            parts[ext.lower()] = archive.extractfile(member).read()
    if key is not None:
        yield key, parts


def read_webdataset(
    shards: list[Path], column_mapping: Optional[dict], default_lang: str, log: SkipLog
) -> Iterator[ImageEntry]:
    """Reads WebDataset shards: `<key>.jpg|png` with `<key>.json` (caption/captions/lang) and/or `<key>.txt`.

    The caption comes from the `.json` when it has one, else from the `.txt`; the `.json` supplies the rest
    (`lang`, `image_id`, ...), as in the shards img2dataset writes (`.txt` caption, `.json` metadata).
    """
    fix = "Each sample needs an image member (<key>.jpg or .png) and <key>.json with a caption, or <key>.txt"
    for shard in shards:
        for key, parts in webdataset_samples(shard):
            locator = f"sample {key}"
            try:
                record = {}
                if "json" in parts:
                    record = json.loads(parts["json"].decode("utf-8"))
                    if not isinstance(record, dict):
                        raise MalformedRecord(f"{key}.json holds a JSON {type(record).__name__}, not an object")
                    record = rename_keys(record, column_mapping)
                if "txt" in parts and not ({"caption", "captions"} & set(record)):
                    record["caption"] = parts["txt"].decode("utf-8").strip()
                if "json" not in parts and "txt" not in parts:
                    raise MalformedRecord(f"no {key}.json or {key}.txt")
                captions = expand_captions(record, default_lang)
            except (UnicodeDecodeError, json.JSONDecodeError, MalformedRecord) as error:
                log.skip(MALFORMED_LINE, shard, locator, f"malformed sample ({error})", fix, captions=0)
                continue
            ext = next((e for e in parts if "." + e in IMAGE_EXTENSIONS), None)
            if ext is None:
                log.skip(MISSING_IMAGE, shard, locator, f"sample {key} has no image member", fix, len(captions))
                continue
            image_id = str(record["image_id"]) if record.get("image_id") is not None else key
            yield ImageEntry((f"{key}.{ext}", parts[ext]), image_id, captions, str(shard), locator)


def read_hf_dataset(
    dataset: Union[datasets.Dataset, datasets.IterableDataset],
    name: str,
    column_mapping: Optional[dict],
    default_lang: str,
    log: SkipLog,
    image_root: Optional[Path] = None,
    locators: Optional[list[tuple[str, int]]] = None,
) -> Iterator[ImageEntry]:
    """Reads rows of a `datasets` dataset whose columns map to the schema (`column_mapping` renames them first).

    Args:
        dataset: rows with an `image` column (an `Image` feature or a path string) and `caption` or `captions`.
        name: what to call the source in warnings.
        locators: `(file, line)` per row, when the rows come from a line-based file such as `metadata.jsonl`.
    """
    if column_mapping:
        dataset = dataset.rename_columns({k: v for k, v in column_mapping.items() if k in dataset.column_names})
    columns = dataset.column_names or list(dataset.features or {})
    if "image" not in columns or not ({"caption", "captions"} & set(columns)):
        raise ValueError(
            f"{name} has columns {columns}; the corpus needs 'image' and 'caption' (or 'captions'). "
            "Pass column_mapping={'<your image column>': 'image', '<your caption column>': 'caption'}."
        )
    if isinstance(dataset.features.get("image") if dataset.features else None, datasets.Image):
        dataset = dataset.cast_column("image", datasets.Image(decode=False))
    fix = "Give every row an 'image' and a string 'caption'"
    for index, row in enumerate(dataset):
        file, line = locators[index] if locators else (name, f"row {index}")
        try:
            captions = expand_captions(row, default_lang)
        except MalformedRecord as error:
            log.skip(MALFORMED_LINE, file, line, f"malformed row ({error})", fix, captions=0)
            continue
        image = row["image"]
        if isinstance(image, dict):
            path = image.get("path")
            image = (path or f"row-{index}", image["bytes"]) if image.get("bytes") else path
        elif isinstance(image, str) and image_root is not None:
            image = _resolve(image_root, image)
        stem = Path(image[0] if isinstance(image, tuple) else image or f"row-{index}").stem
        image_id = str(row["image_id"]) if row.get("image_id") is not None else stem
        yield ImageEntry(image, image_id, captions, file, line)
