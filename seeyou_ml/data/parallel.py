"""Parallel text: English sentences and their translations, the material language adapters distil from.

A parallel file is JSON lines, one pair per line, `{"en": "...", "<lang>": "..."}`, named `en-<lang>.jsonl`
(`../shared/data/flickr8k-multi/parallel/en-ja.jsonl`). The last `VALIDATION_PAIRS` pairs of each file are held out
for validation; everything that learns from the file (the tokenizer, the adapters) reads the `train` part only.

Reference: Reimers & Gurevych, "Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation"
(2020), for distillation from parallel text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from ..languages import normalize_lang

VALIDATION_PAIRS = 200
"""Pairs at the end of every parallel file held out for validation."""

PARALLEL_SPLITS = ("train", "validation", "all")


@dataclass(frozen=True)
class ParallelText:
    """Aligned English sentences and their translations into one language.

    Attributes:
        lang: ISO 639-1 code of the translations.
        english: the English side, one sentence per pair.
        translation: the other side, `translation[i]` translating `english[i]`.
    """

    lang: str
    english: list[str]
    translation: list[str]

    def __len__(self) -> int:
        return len(self.english)


def parallel_language(path: Union[str, Path]) -> str:
    """The language of a parallel file from its name `en-<lang>.jsonl`."""
    match = re.fullmatch(r"en-([A-Za-z]{2})\.jsonl", Path(path).name)
    lang = normalize_lang(match.group(1)) if match else None
    if lang is None:
        raise ValueError(f"{path} is not named en-<lang>.jsonl with <lang> an ISO 639-1 code; rename it, e.g. "
                         "en-ja.jsonl for English–Japanese pairs.")
    return lang


def load_parallel_text(
    path: Union[str, Path], split: str = "train", validation_pairs: int = VALIDATION_PAIRS
) -> ParallelText:
    """Reads one parallel file, or the part of it that `split` names.

    Args:
        path: an `en-<lang>.jsonl` file of `{"en": ..., "<lang>": ...}` lines.
        split: `train` (all but the last `validation_pairs` pairs), `validation` (the last `validation_pairs`) or
            `all`.
        validation_pairs: pairs held out at the end of the file.

    Returns:
        The pairs of that part, in file order.
    """
    if split not in PARALLEL_SPLITS:
        raise ValueError(f"split={split!r} is unknown; use one of {', '.join(PARALLEL_SPLITS)}.")
    lang = parallel_language(path)
    english, translation = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                pair = json.loads(line)
                source, target = pair["en"].strip(), pair[lang].strip()
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
                raise ValueError(f"{path}, line {number}: expected {{\"en\": \"...\", \"{lang}\": \"...\"}} with two "
                                 "strings; fix or delete the line.") from None
            if not source or not target:
                raise ValueError(f"{path}, line {number}: a side of the pair is empty; fix or delete the line.")
            english.append(source)
            translation.append(target)
    if len(english) <= validation_pairs and split != "all":
        raise ValueError(f"{path} holds {len(english)} pairs, no more than the {validation_pairs} held out for "
                         "validation; give a longer file or lower validation_pairs.")
    cut = len(english) - validation_pairs
    part = {"train": slice(0, cut), "validation": slice(cut, None), "all": slice(None)}[split]
    return ParallelText(lang, english[part], translation[part])


__all__ = ["PARALLEL_SPLITS", "VALIDATION_PAIRS", "ParallelText", "load_parallel_text", "parallel_language"]
