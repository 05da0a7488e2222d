"""Checks applied to every corpus record before it reaches a dataset: language codes, captions and images.

A record that fails a check is either skipped and counted (the default) or rejected with a `ValueError` naming the
file, the line and the fix (`strict=True`). Images are decoded once at load time, so that a truncated or missing
file is found before training starts and never crashes an epoch halfway through.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

from PIL import Image
from tqdm.auto import tqdm


logger = logging.getLogger("seeyou_ml.data.corpus")

MISSING_IMAGE = "missing_image"
CORRUPT_IMAGE = "corrupt_image"
EMPTY_CAPTION = "empty_caption"
UNKNOWN_LANGUAGE = "unknown_language"
MALFORMED_LINE = "malformed_line"
SKIP_REASONS = (MISSING_IMAGE, CORRUPT_IMAGE, EMPTY_CAPTION, UNKNOWN_LANGUAGE, MALFORMED_LINE)

# Beyond this many warnings per reason only the summary speaks, so a badly broken corpus does not flood the log.
MAX_WARNINGS_PER_REASON = 20


@dataclass
class CorpusIssue:
    """One skipped record.

    Args:
        reason: one of `SKIP_REASONS`.
        file: the file that holds the record.
        line: its 1-based line number, or a locator such as `"images[12]"` or `"member 000003.json"` for files that
            are not read line by line.
        detail: what is wrong.
        captions: how many captions were dropped with it (0 when a line could not be read at all).
    """

    reason: str
    file: str
    line: Union[int, str]
    detail: str
    captions: int = 1

    @property
    def location(self) -> str:
        return f"{self.file}, line {self.line}" if isinstance(self.line, int) else f"{self.file}, {self.line}"


@dataclass
class CorpusReport:
    """What `load_corpus` kept and skipped.

    For `streaming=True` the report fills in as the dataset is iterated; it is complete after one full pass.

    Args:
        source: the path or name that was loaded.
        format: the corpus format that was read.
        split: the split that was read.
        captions: captions (rows) kept.
        images: distinct `image_id`s kept.
        captions_per_language: rows kept per language.
        skipped: skipped records per reason (one per file and line).
        dropped_captions: captions lost per reason.
        issues: every skipped record.
    """

    source: str
    format: str
    split: str
    captions: int = 0
    images: int = 0
    captions_per_language: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    dropped_captions: Counter = field(default_factory=Counter)
    issues: list[CorpusIssue] = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One line: what was kept and the skips per reason."""
        kept = (
            f"{self.source} [{self.format}, split {self.split!r}]: "
            f"kept {self.captions} captions of {self.images} images"
        )
        if not self.skipped:
            return kept + "; nothing skipped"
        reasons = ", ".join(
            f"{reason} {self.skipped[reason]} ({self.dropped_captions[reason]} captions)"
            for reason in SKIP_REASONS
            if self.skipped[reason]
        )
        return f"{kept}; skipped {self.num_skipped}: {reasons}"


class SkipLog:
    """Records skipped records in a `CorpusReport`, warning about each, or raises at the first one when strict."""

    def __init__(self, report: CorpusReport, strict: bool = False):
        self.report = report
        self.strict = strict
        self._lock = threading.Lock()

    def skip(self, reason: str, file: str, line: Union[int, str], detail: str, fix: str, captions: int = 1) -> None:
        """Skips one record, or raises `ValueError` when strict.

        Args:
            reason: one of `SKIP_REASONS`.
            file: the file that holds the record.
            line: its 1-based line number or a locator.
            detail: what is wrong with it.
            fix: how to repair the input (goes into the strict error).
            captions: how many captions the record carried.
        """
        issue = CorpusIssue(reason, os.fspath(file), line, detail, captions)
        if self.strict:
            raise ValueError(
                f"{issue.location}: {detail}. {fix} (or pass strict=False to skip such records with a warning)."
            )
        with self._lock:
            self.report.issues.append(issue)
            self.report.skipped[reason] += 1
            self.report.dropped_captions[reason] += captions
            shown = self.report.skipped[reason]
        if shown <= MAX_WARNINGS_PER_REASON:
            logger.warning("skipped %s (%s): %s", issue.location, reason, detail)
        elif shown == MAX_WARNINGS_PER_REASON + 1:
            logger.warning("further %s skips are not shown one by one; see the summary", reason)

    def finish(self) -> None:
        """Logs the one-line summary when anything was skipped."""
        if self.report.skipped:
            logger.warning(self.report.summary())


# Verdicts per image file, keyed by (path, size, mtime) so an edited file is checked again.
_IMAGE_VERDICTS: dict[tuple[str, int, int], Optional[tuple[str, str]]] = {}


def check_image(image: Union[str, bytes]) -> Optional[tuple[str, str]]:
    """Decodes an image file or encoded bytes to prove it is readable.

    A JPEG is decoded at reduced scale (the whole entropy-coded stream is still read, so truncation is found) to
    keep a pass over a corpus at a few seconds. Verdicts on files are cached per path, size and modification time.

    Args:
        image: a file path or the encoded image bytes.

    Returns:
        `None` when the image decodes, else `(reason, detail)` with reason `MISSING_IMAGE` or `CORRUPT_IMAGE`.
    """
    if isinstance(image, (bytes, bytearray)):
        return _decode_verdict(io.BytesIO(image), "image bytes")
    try:
        stat = os.stat(image)
    except OSError:
        return MISSING_IMAGE, f"image file {image} does not exist"
    key = (image, stat.st_size, stat.st_mtime_ns)
    if key not in _IMAGE_VERDICTS:
        _IMAGE_VERDICTS[key] = _decode_verdict(image, f"image file {image}")
    return _IMAGE_VERDICTS[key]


def _decode_verdict(source, name: str) -> Optional[tuple[str, str]]:
    try:
        with Image.open(source) as img:
            img.draft("RGB", (32, 32))
            img.load()
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
        return CORRUPT_IMAGE, f"{name} cannot be decoded ({type(error).__name__}: {error})"
    return None


def check_images(
    images: Iterable[Union[str, bytes]], num_threads: int = 4, desc: str = "Checking images"
) -> list[Optional[tuple[str, str]]]:
    """`check_image` over many images; threads overlap file reads with decoding (PIL releases the GIL)."""
    images = list(images)
    if len(images) < 64:
        return [check_image(image) for image in images]
    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        return list(
            tqdm(pool.map(check_image, images, chunksize=64), total=len(images), desc=desc, disable=len(images) < 5000)
        )
