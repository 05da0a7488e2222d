"""`load_corpus`: any supported image-caption corpus as a `datasets.Dataset` in the record schema of seeyou-ml.

Every corpus becomes one row per caption with the columns

    image      datasets.Image()  decoded lazily from its file (or from the bytes kept for archives)
    caption    str               surrounding space stripped, never empty
    lang       str               ISO 639-1 code
    image_id   str               groups the captions of one image (retrieval is scored per image_id)
    boxes      list[list[float]] optional: [x0, y0, x1, y1] pixel boxes of the referred object
    phrase     str               optional: the referring span of the caption

Records with a missing or undecodable image, an empty caption, a language code outside ISO 639-1 or a malformed
line are skipped with a warning naming the file and line, and counted in a `CorpusReport`; with `strict=True` the
first one raises a `ValueError` instead. Images are decoded once at load time, so training never meets a bad one.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import datasets
import pyarrow as pa

from ..languages import normalize_lang
from .formats import (
    CaptionEntry,
    ImageEntry,
    read_captions_jsonl,
    read_hf_dataset,
    read_karpathy,
    read_multi30k,
    read_webdataset,
)
from .validation import (
    EMPTY_CAPTION,
    MISSING_IMAGE,
    UNKNOWN_LANGUAGE,
    CorpusReport,
    SkipLog,
    check_image,
    check_images,
    logger,
)


CORPUS_FORMATS = {
    "captions-jsonl": "a folder with <split>.jsonl, one image per line: "
    '{"image_id", "image": "<path relative to the folder>", "captions": {"<lang>": ["...", ...]}}',
    "karpathy": "a Karpathy split file dataset_coco.json / dataset_flickr30k.json (or a folder holding one); "
    "images under image_root",
    "multi30k": "a folder with image_splits/<split>.txt and raw/<split>.<lang>.gz; images under image_root "
    "(default <folder>/images)",
    "imagefolder": "a folder of images with metadata.jsonl or metadata.csv (file_name, caption or text, lang "
    "columns), optionally in <split>/ subfolders",
    "webdataset": "a .tar shard, a folder of .tar shards (<folder>/<split>/*.tar or <folder>/<split>*.tar) or a glob; "
    "samples <key>.jpg|png with <key>.json (caption/captions/lang) or <key>.txt",
    "datasets": "a dataset name or local path that datasets.load_dataset or datasets.load_from_disk opens, "
    "with column_mapping onto image/caption/lang/image_id",
}

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
SAVED_DATASET_FILES = ("dataset_dict.json", "state.json", "dataset_info.json")


def corpus_features(with_boxes: bool = False) -> datasets.Features:
    """The `datasets.Features` of the record schema; `with_boxes` adds the `boxes` and `phrase` columns."""
    features = {
        "image": datasets.Image(),
        "caption": datasets.Value("string"),
        "lang": datasets.Value("string"),
        "image_id": datasets.Value("string"),
    }
    if with_boxes:
        features["boxes"] = datasets.List(datasets.List(datasets.Value("float32"), length=4))
        features["phrase"] = datasets.Value("string")
    return datasets.Features(features)


def _karpathy_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("dataset_*.json") if p.name not in SAVED_DATASET_FILES)


def detect_format(path_or_name: Union[str, os.PathLike]) -> str:
    """Names the corpus format of a path (a key of `CORPUS_FORMATS`).

    A string that is not a local path is taken for a `datasets` dataset name.

    Raises:
        ValueError: when a local path matches none of the formats; the message lists what each one expects.
    """
    path = Path(path_or_name)
    if path.is_file():
        if path.suffix == ".jsonl":
            return "captions-jsonl"
        if path.suffix == ".json":
            return "karpathy"
        if path.suffix == ".tar":
            return "webdataset"
    elif path.is_dir():
        if any((path / name).is_file() for name in SAVED_DATASET_FILES):
            return "datasets"
        if any(path.glob("*.jsonl")) and not any((path / name).is_file() for name in METADATA_FILES):
            return "captions-jsonl"
        if _karpathy_files(path):
            return "karpathy"
        if (path / "image_splits").is_dir() and (path / "raw").is_dir():
            return "multi30k"
        if any(path.glob("metadata.*")) or any(path.glob("*/metadata.*")):
            return "imagefolder"
        if any(path.glob("*.tar")) or any(path.glob("*/*.tar")):
            return "webdataset"
        if any(path.glob("*.parquet")) or any(path.glob("*.arrow")) or any(path.glob("data/*")):
            return "datasets"
    elif any(char in str(path_or_name) for char in "*?[") and Path(str(path_or_name)).suffix == ".tar":
        return "webdataset"
    elif not str(path_or_name).startswith((".", "/", "~")) and str(path_or_name).count("/") <= 1:
        return "datasets"
    known = "\n".join(f"  {name}: {layout}" for name, layout in CORPUS_FORMATS.items())
    reason = "does not exist" if not path.exists() else "matches none of the corpus formats"
    raise ValueError(f"{path_or_name} {reason}. Pass format= one of these, with the layout it expects:\n{known}")


def load_corpus(
    path_or_name: Union[str, os.PathLike],
    split: str = "train",
    format: Optional[str] = None,
    streaming: bool = False,
    languages: Optional[list[str]] = None,
    column_mapping: Optional[dict[str, str]] = None,
    strict: bool = False,
    image_root: Optional[Union[str, os.PathLike]] = None,
    default_lang: str = "en",
    verify_images: bool = True,
    num_threads: int = 4,
    return_report: bool = False,
    **load_dataset_kwargs,
) -> Union[datasets.Dataset, datasets.IterableDataset, tuple]:
    """Loads an image-caption corpus as one row per caption in the seeyou-ml record schema.

    `image_id` comes from the record (`image_id`, Karpathy's `cocoid`) or else from the image file name or
    WebDataset key; give a `datasets` corpus an `image_id` column when several rows share an image. Files on disk stay
    on disk (the `image` column holds their absolute paths); images held as bytes (tar shards, Hub parquet) are
    copied into the in-memory dataset, so read large ones with `streaming=True`. A streamed corpus has `boxes` and
    `phrase` columns when its first record carries them.

    Args:
        path_or_name: a corpus folder or file, a glob of tar shards, or a `datasets` dataset name.
        split: the split to read (`"train"`, `"val"`, `"test"`, ...). For Karpathy files `"train"` includes
            `"restval"`.
        format: one of `CORPUS_FORMATS`; detected from the path when `None`.
        streaming: return a `datasets.IterableDataset` that reads, checks and yields rows lazily. The report then
            fills in as the dataset is iterated.
        languages: keep only captions in these ISO 639-1 languages (all when `None`).
        column_mapping: renames source columns or JSON keys onto the schema, e.g. `{"sentence": "caption"}`.
        strict: raise a `ValueError` at the first bad record instead of skipping it.
        image_root: where image paths are relative to; defaults to the corpus folder (`<folder>/images` for
            Multi30K).
        default_lang: the language of captions whose record names none (Karpathy files, `.txt` samples).
        verify_images: decode every image once at load time; `False` only checks that image files exist.
        num_threads: threads for the image check.
        return_report: also return the `CorpusReport`.
        **load_dataset_kwargs: passed to `datasets.load_dataset` for the `datasets` and `imagefolder` formats.

    Returns:
        The dataset, or `(dataset, report)` when `return_report=True`.

    Raises:
        ValueError: for an undetectable format, an unknown split or language, or (with `strict=True`) a bad record.
        FileNotFoundError: for a name that is neither a local path nor reachable (Hub offline and not cached).

    Example:
        ```python
        >>> from seeyou_ml.data import load_corpus
        >>> corpus, report = load_corpus("../shared/data/flickr8k-multi", split="val", return_report=True)
        >>> corpus.column_names
        ['image', 'caption', 'lang', 'image_id']
        >>> report.captions_per_language["nl"]
        1209
        ```
    """
    format = format or detect_format(path_or_name)
    if format not in CORPUS_FORMATS:
        raise ValueError(f"format={format!r} is not a corpus format; use one of {list(CORPUS_FORMATS)}.")
    wanted = _normalize_languages(languages)
    report = CorpusReport(source=os.fspath(path_or_name), format=format, split=split)
    log = SkipLog(report, strict=strict)
    open_entries = _entry_reader(
        format, path_or_name, split, streaming, wanted, column_mapping, image_root, default_lang, load_dataset_kwargs
    )
    if streaming:
        dataset = _stream(open_entries, log, wanted, verify_images)
    else:
        dataset = _collect(open_entries(log), log, wanted, verify_images, num_threads)
    return (dataset, report) if return_report else dataset


def _normalize_languages(languages: Optional[list[str]]) -> Optional[set[str]]:
    if languages is None:
        return None
    if isinstance(languages, str):
        languages = [languages]
    wanted = set()
    for code in languages:
        if normalize_lang(code) is None:
            raise ValueError(f"languages contains {code!r}, which is not an ISO 639-1 code; use e.g. 'en', 'de', 'zh'.")
        wanted.add(normalize_lang(code))
    return wanted


def _entry_reader(
    format: str,
    path_or_name,
    split: str,
    streaming: bool,
    languages: Optional[set[str]],
    column_mapping: Optional[dict],
    image_root,
    default_lang: str,
    load_dataset_kwargs: dict,
) -> Callable[[SkipLog], Iterator[ImageEntry]]:
    """Resolves the files of one format and split (errors surface here, before any row is read)."""
    # Absolute paths keep the dataset's image column valid from any working directory.
    path = Path(path_or_name).expanduser()
    path = path.absolute() if path.exists() else path
    root = path.parent if path.is_file() else path
    images = Path(image_root).expanduser().absolute() if image_root is not None else None
    if format == "captions-jsonl":
        file = path if path.is_file() else path / f"{split}.jsonl"
        if not file.is_file():
            splits = sorted(p.stem for p in root.glob("*.jsonl"))
            raise ValueError(f"{file} does not exist; the splits here are {splits}.")
        return lambda log: read_captions_jsonl(file, images or root, column_mapping, default_lang, log)
    if format == "karpathy":
        file = path if path.is_file() else next(iter(_karpathy_files(path)), path / "dataset_coco.json")
        return lambda log: read_karpathy(file, split, images or root, default_lang, log)
    if format == "multi30k":
        return lambda log: read_multi30k(path, split, images or path / "images", languages, log)
    if format == "webdataset":
        shards = _webdataset_shards(path_or_name, split)
        return lambda log: read_webdataset(shards, column_mapping, default_lang, log)
    if format == "imagefolder":
        return _imagefolder_reader(path, split, column_mapping, default_lang, streaming, load_dataset_kwargs)
    dataset = _open_hf_dataset(path_or_name, split, streaming, load_dataset_kwargs)
    local_root = images or (path if path.is_dir() else None)
    return lambda log: read_hf_dataset(dataset, os.fspath(path_or_name), column_mapping, default_lang, log, local_root)


def _webdataset_shards(path_or_name, split: str) -> list[Path]:
    path = Path(path_or_name)
    if path.is_file():
        return [path]
    if path.is_dir():
        shards = sorted((path / split).glob("*.tar")) or sorted(path.glob(f"{split}*.tar"))
        if not shards:
            found = sorted(str(p.relative_to(path)) for p in path.glob("**/*.tar"))
            raise ValueError(
                f"no shards for split {split!r} under {path} (looked for {split}/*.tar and {split}*.tar); "
                f"the shards here are {found}."
            )
        return shards
    shards = sorted(Path(p) for p in glob.glob(os.fspath(path_or_name)))
    if not shards:
        raise ValueError(f"the shard pattern {path_or_name} matches no files.")
    return shards


def _imagefolder_reader(path: Path, split: str, column_mapping, default_lang, streaming, load_dataset_kwargs):
    metadata = [path / split / name for name in METADATA_FILES] + [path / name for name in METADATA_FILES]
    metadata = next((file for file in metadata if file.is_file()), None)
    locators = _metadata_locators(metadata) if metadata is not None else None
    dataset = datasets.load_dataset(
        "imagefolder", data_dir=os.fspath(path), split=split, streaming=streaming, **load_dataset_kwargs
    )
    column_mapping = dict(column_mapping or {})
    columns = set(dataset.column_names or dataset.features or ())
    if "text" in columns and "text" not in column_mapping and not (
        {"caption", "captions"} & {column_mapping.get(column, column) for column in columns}
    ):
        # The captioning layout of the `datasets` docs names the caption column `text`.
        column_mapping["text"] = "caption"
    return lambda log: read_hf_dataset(dataset, os.fspath(path), column_mapping, default_lang, log, None, locators)


def _metadata_locators(metadata: Path) -> list[tuple[str, int]]:
    """`(file, line)` of every row of an imagefolder metadata file, in the order the builder reads them.

    The imagefolder builder cannot skip an unreadable line, so a line that is not JSON is an error, not a skip.
    """
    locators = []
    with open(metadata, encoding="utf-8", newline="") as handle:
        if metadata.suffix == ".csv":
            reader = csv.reader(handle)
            next(reader, None)
            return [(str(metadata), reader.line_num) for row in reader if row]
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{metadata}, line {number}: not a JSON object ({error.msg}). Repair or delete the line; "
                    "the imagefolder builder cannot skip it."
                ) from None
            if not isinstance(record, dict):
                raise ValueError(f"{metadata}, line {number}: not a JSON object. Write one object per line.")
            locators.append((str(metadata), number))
    return locators


def _open_hf_dataset(path_or_name, split: str, streaming: bool, load_dataset_kwargs: dict):
    path = Path(path_or_name)
    if (path / "dataset_dict.json").is_file():
        saved = datasets.load_from_disk(os.fspath(path))
        if split not in saved:
            raise ValueError(f"{path} has splits {list(saved)}, not {split!r}.")
        return saved[split]
    if (path / "state.json").is_file():
        return datasets.load_from_disk(os.fspath(path))
    try:
        return datasets.load_dataset(os.fspath(path_or_name), split=split, streaming=streaming, **load_dataset_kwargs)
    except ConnectionError as error:
        if not path.exists() and datasets.config.HF_HUB_OFFLINE:
            # Offline, `load_dataset` reports a name that is neither local nor cached as a failed connection.
            raise FileNotFoundError(
                f"{path_or_name}: no such file or directory, and not reachable on the Hub offline (HF_HUB_OFFLINE=1) "
                "nor in the datasets cache. Give the path of a local corpus folder or file (formats: "
                f"{', '.join(CORPUS_FORMATS)}), or load it once with network access so that it is cached."
            ) from error
        raise


def _accepted_captions(entry: ImageEntry, languages: Optional[set[str]], log: SkipLog) -> list[CaptionEntry]:
    """The captions of an entry that pass the text checks, with normalized language and stripped text."""
    kept = []
    for caption in entry.captions:
        file, line = caption.file or entry.file, caption.line or entry.line
        lang = normalize_lang(caption.lang)
        if lang is None:
            log.skip(UNKNOWN_LANGUAGE, file, line, f"language code {caption.lang!r} is not ISO 639-1",
                     "Use a two-letter ISO 639-1 code such as 'en', 'de' or 'zh'")
            continue
        if languages is not None and lang not in languages:
            continue
        text = caption.caption.strip()
        if not text:
            log.skip(EMPTY_CAPTION, file, line, f"empty {lang} caption of image {entry.image_id}",
                     "Remove the empty caption or write one")
            continue
        kept.append(CaptionEntry(lang, text, caption.boxes, caption.phrase))
    return kept


def _image_verdict(image, verify: bool):
    if image is None:
        return MISSING_IMAGE, "the record names no image"
    if not verify:
        exists = isinstance(image, tuple) or os.path.isfile(image)
        return None if exists else (MISSING_IMAGE, f"image file {image} does not exist")
    return check_image(image[1] if isinstance(image, tuple) else image)


def _skip_image(log: SkipLog, entry: ImageEntry, verdict: tuple[str, str], captions: int) -> None:
    reason, detail = verdict
    log.skip(reason, entry.file, entry.line, detail, "Restore or re-encode the image, or remove its record",
             captions=captions)


def _collect(
    entries: Iterator[ImageEntry], log: SkipLog, languages, verify: bool, num_threads: int
) -> datasets.Dataset:
    accepted = [(entry, captions) for entry in entries if (captions := _accepted_captions(entry, languages, log))]
    paths = sorted({entry.image for entry, _ in accepted if isinstance(entry.image, str)})
    if verify:
        # Decoding distinct files in threads first makes the per-entry verdicts below cache hits.
        check_images(paths, num_threads=num_threads)
    kept = []
    for entry, captions in accepted:
        verdict = _image_verdict(entry.image, verify)
        if verdict is not None:
            _skip_image(log, entry, verdict, len(captions))
        else:
            kept.append((entry, captions))
    dataset = _to_dataset(kept)
    if not kept:
        logger.warning("%s, split %r: no captions kept", log.report.source, log.report.split)
    log.report.captions = dataset.num_rows
    log.report.images = len({entry.image_id for entry, _ in kept})
    log.report.captions_per_language = dict(Counter(caption.lang for _, captions in kept for caption in captions))
    log.finish()
    return dataset


def _has_boxes(captions: list[CaptionEntry]) -> bool:
    return any(caption.boxes is not None or caption.phrase is not None for caption in captions)


def _to_dataset(kept: list[tuple[ImageEntry, list[CaptionEntry]]]) -> datasets.Dataset:
    # Arrow columns straight from lists: encoding example by example through Features costs seconds on 100k rows.
    with_boxes = any(_has_boxes(captions) for _, captions in kept)
    columns = {"path": [], "bytes": [], "caption": [], "lang": [], "image_id": [], "boxes": [], "phrase": []}
    for entry, captions in kept:
        path, data = entry.image if isinstance(entry.image, tuple) else (entry.image, None)
        for caption in captions:
            columns["path"].append(path)
            columns["bytes"].append(data)
            columns["caption"].append(caption.caption)
            columns["lang"].append(caption.lang)
            columns["image_id"].append(entry.image_id)
            columns["boxes"].append(caption.boxes)
            columns["phrase"].append(caption.phrase)
    features = corpus_features(with_boxes)
    image = pa.StructArray.from_arrays(
        [pa.array(columns["bytes"], pa.binary()), pa.array(columns["path"], pa.string())], names=["bytes", "path"]
    )
    arrays = {"image": image, **{name: pa.array(columns[name], features[name].pa_type) for name in list(features)[1:]}}
    table = pa.table(arrays).cast(features.arrow_schema)
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features))


def _stream(open_entries: Callable[[SkipLog], Iterator[ImageEntry]], log: SkipLog, languages, verify: bool):
    probe = SkipLog(CorpusReport(log.report.source, log.report.format, log.report.split))
    first = next(iter(open_entries(probe)), None)
    with_boxes = first is not None and _has_boxes(first.captions)

    def generate():
        report = log.report
        # Each pass over the stream reports afresh.
        report.skipped.clear()
        report.dropped_captions.clear()
        report.issues.clear()
        langs, image_ids = Counter(), set()
        for entry in open_entries(log):
            captions = _accepted_captions(entry, languages, log)
            if not captions:
                continue
            verdict = _image_verdict(entry.image, verify)
            if verdict is not None:
                _skip_image(log, entry, verdict, len(captions))
                continue
            path, data = entry.image if isinstance(entry.image, tuple) else (entry.image, None)
            image_ids.add(entry.image_id)
            for caption in captions:
                langs[caption.lang] += 1
                report.captions, report.images = sum(langs.values()), len(image_ids)
                report.captions_per_language = dict(langs)
                row = {"image": {"path": path, "bytes": data}, "caption": caption.caption, "lang": caption.lang,
                       "image_id": entry.image_id}
                if with_boxes:
                    row.update(boxes=caption.boxes, phrase=caption.phrase)
                yield row
        log.finish()

    return datasets.IterableDataset.from_generator(generate, features=corpus_features(with_boxes))
