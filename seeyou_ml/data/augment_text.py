"""Caption-side augmentations: language-aware synonym replacement and back-translation.

Every text augmentation maps `(caption, lang, image_id, generator)` to a new `(caption, lang)`; the language can
change (back-translation without a translator swaps in a caption of the same image in another language), so the
collator takes both back. Randomness follows the image augmentations: an optional `torch.Generator`, else the
global torch RNG (seeded per DataLoader worker).

Back-translation as a paraphrase source follows Sennrich et al., "Improving Neural Machine Translation Models
with Monolingual Data" (2016); with multilingual corpora the parallel caption of the same image is already a
translation, so no model is needed unless the caption must stay in its language.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch

from .columns import read_columns

__all__ = [
    "LANGUAGES_WITHOUT_SPACES",
    "BackTranslation",
    "SequentialTextAugment",
    "SynonymReplacement",
    "TextAugment",
    "build_caption_index",
]

LANGUAGES_WITHOUT_SPACES: frozenset[str] = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo"})
"""Languages written without spaces between words: table entries match as substrings there."""

SynonymTable = Mapping[str, Sequence[str]]
CaptionIndex = Mapping[str, Mapping[str, Sequence[str]]]


class TextAugment(Protocol):
    """What the collator calls on every caption."""

    def __call__(
        self, caption: str, lang: str, image_id: str | None = None, generator: torch.Generator | None = None
    ) -> tuple[str, str]: ...


def _random_index(n: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(n, (), generator=generator))


def _random_unit(generator: torch.Generator | None) -> float:
    return torch.rand((), generator=generator).item()


def build_caption_index(dataset: Any, show_progress: bool = False) -> dict[str, dict[str, list[str]]]:
    """Groups the captions of a corpus by image and language, reading only the metadata columns.

    Args:
        dataset (`datasets.Dataset` or mapping of columns):
            A corpus in the common schema; only `image_id`, `lang` and `caption` are read (images are never decoded).
        show_progress (`bool`, *optional*, defaults to `False`): Show a progress bar over the rows.

    Returns:
        `dict[str, dict[str, list[str]]]`: `index[image_id][lang]` is the list of captions of that image in that
        language, in corpus order.
    """
    columns = read_columns(dataset, ["image_id", "lang", "caption"])
    rows = zip(columns["image_id"], columns["lang"], columns["caption"])
    if show_progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, total=len(columns["caption"]), desc="caption index")
    index: dict[str, dict[str, list[str]]] = {}
    for image_id, lang, caption in rows:
        index.setdefault(str(image_id), {}).setdefault(lang, []).append(caption)
    return index


class SynonymReplacement:
    """Replaces words found in a per-language synonym table, each with probability `p`.

    In languages with spaces, table entries (single words or phrases) match whole words only, case-insensitively;
    a capitalised match gets a capitalised synonym. In `LANGUAGES_WITHOUT_SPACES` (zh, ja, ...) entries match as
    substrings. Longer entries win over their prefixes. Captions in languages without a table are returned as they
    are.

    Args:
        tables (`Mapping[str, Mapping[str, Sequence[str]]]` or `Callable[[str], Mapping[str, Sequence[str]]]`):
            Synonyms per language, `tables[lang][word] -> [synonym, ...]`, or a function of the language such as
            `seeyou_ml.data.scenes.synonym_table` (languages it returns no table for, or raises `KeyError`/`ValueError`
            on, keep their captions, with one warning per language).
        p (`float`, *optional*, defaults to 0.3): Probability that each matched word is replaced.
        languages_without_spaces (`Collection[str]`, *optional*): Languages matched by substring.

    Example:

    ```python
    >>> import torch
    >>> from seeyou_ml.data.augment_text import SynonymReplacement

    >>> augment = SynonymReplacement({"en": {"dog": ["puppy"]}, "zh": {"狗": ["犬"]}}, p=1.0)
    >>> augment("A dog runs.", "en")
    ('A puppy runs.', 'en')
    >>> augment("一只狗在跑", "zh")
    ('一只犬在跑', 'zh')
    ```
    """

    def __init__(
        self,
        tables: Mapping[str, SynonymTable] | Callable[[str], SynonymTable],
        p: float = 0.3,
        languages_without_spaces: frozenset[str] | set[str] = LANGUAGES_WITHOUT_SPACES,
    ):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"SynonymReplacement p={p} must lie in [0, 1].")
        self.tables = tables
        self.p = p
        self.languages_without_spaces = frozenset(languages_without_spaces)
        self._compiled: dict[str, tuple[re.Pattern, dict[str, list[str]]] | None] = {}

    def _table(self, lang: str) -> SynonymTable:
        if callable(self.tables):
            try:
                return self.tables(lang) or {}
            except (KeyError, ValueError) as error:
                # A table source that does not cover a language (e.g. the scenes tables on a Flickr corpus) leaves
                # that language's captions as they are rather than stopping the epoch.
                warnings.warn(f"SynonymReplacement: no synonym table for lang {lang!r} ({error}); left unchanged.")
                return {}
        return self.tables.get(lang) or {}

    def _compile(self, lang: str) -> tuple[re.Pattern, dict[str, list[str]]] | None:
        if lang not in self._compiled:
            spaced = lang not in self.languages_without_spaces
            normalise = str.lower if spaced else (lambda word: word)
            synonyms: dict[str, list[str]] = {}
            for word, candidates in self._table(lang).items():
                # A word's own spelling is no synonym: drawing it would make p overstate the change rate.
                options = [c for c in candidates if normalise(c) != normalise(word)]
                if word and options:
                    synonyms.setdefault(normalise(word), []).extend(options)
            if not synonyms:
                self._compiled[lang] = None
            else:
                alternation = "|".join(re.escape(w) for w in sorted(synonyms, key=len, reverse=True))
                # Lookarounds rather than \b, so entries that start or end in punctuation still match.
                pattern = rf"(?<!\w)(?:{alternation})(?!\w)" if spaced else f"(?:{alternation})"
                self._compiled[lang] = (re.compile(pattern, re.IGNORECASE if spaced else 0), synonyms)
        return self._compiled[lang]

    def __call__(
        self, caption: str, lang: str, image_id: str | None = None, generator: torch.Generator | None = None
    ) -> tuple[str, str]:
        """Returns the caption with some table words replaced, and its (unchanged) language."""
        compiled = self._compile(lang)
        if compiled is None:
            return caption, lang
        pattern, synonyms = compiled
        spaced = lang not in self.languages_without_spaces

        def replace(match: re.Match) -> str:
            word = match.group(0)
            if _random_unit(generator) >= self.p:
                return word
            options = synonyms[word.lower() if spaced else word]
            synonym = options[_random_index(len(options), generator)]
            if word[:1].isupper() and synonym[:1].islower():
                synonym = synonym[:1].upper() + synonym[1:]
            return synonym

        return pattern.sub(replace, caption), lang

    def __repr__(self) -> str:
        return f"SynonymReplacement(p={self.p})"


def _translation_text(output: Any) -> str:
    """Reads the text out of a translator's output: a string or a transformers pipeline result."""
    if isinstance(output, str):
        return output
    if isinstance(output, Sequence) and output:
        return _translation_text(output[0])
    if isinstance(output, Mapping):
        for key in ("translation_text", "generated_text", "content"):
            if key in output:
                text = output[key]
                # Chat pipelines return the whole conversation; the reply is its last message.
                return _translation_text(text[-1] if isinstance(text, list) else text)
    raise TypeError(
        f"translator returned {type(output).__name__} ({output!r:.80}); return a str, or a pipeline output with "
        "'translation_text' or 'generated_text'."
    )


class BackTranslation:
    """Paraphrases a caption through another language.

    With a `caption_index`, a caption of the same image in another language is drawn (a language uniformly among
    those available, then one of its captions). Without a `translator` that caption is returned with its own
    language (a cross-lingual positive for the image); with one, it is translated into the caption's language, so
    the language is kept. Images without another language fall back to a round trip through `pivot_langs` when a
    translator is given, and are left unchanged otherwise.

    Note: without a translator the language changes, which mixes languages inside `group_by_language` batches;
    restrict `source_langs` or supply a translator when batches must stay single-language.

    Args:
        caption_index (`Mapping[str, Mapping[str, Sequence[str]]]`, *optional*):
            `index[image_id][lang] -> captions`, e.g. from `build_caption_index(dataset)`.
        translator (`Callable[[str, str, str], Any]`, *optional*):
            Called as `translator(text, src_lang=..., tgt_lang=...)`; returns a string or a transformers pipeline
            output (`[{"translation_text": ...}]` or `[{"generated_text": ...}]`). Wrap a `text-generation`
            pipeline with a chat model in a function that builds the translation prompt.
        p (`float`, *optional*, defaults to 0.5): Probability that a caption is back-translated.
        source_langs (`Sequence[str]`, *optional*): Languages the other caption may come from; all when omitted.
        pivot_langs (`Sequence[str]`, *optional*, defaults to `("en", "de")`):
            Round-trip languages for the translator; the first one differing from the caption's language is used.

    Example:

    ```python
    >>> import torch
    >>> from seeyou_ml.data.augment_text import BackTranslation

    >>> index = {"img1": {"en": ["A dog runs."], "de": ["Ein Hund rennt."]}}
    >>> BackTranslation(index, p=1.0)("A dog is running.", "en", image_id="img1")
    ('Ein Hund rennt.', 'de')
    ```
    """

    def __init__(
        self,
        caption_index: CaptionIndex | None = None,
        translator: Callable[..., Any] | None = None,
        p: float = 0.5,
        source_langs: Sequence[str] | None = None,
        pivot_langs: Sequence[str] = ("en", "de"),
    ):
        if caption_index is None and translator is None:
            raise ValueError(
                "BackTranslation needs a caption_index (build_caption_index(dataset)) or a translator callable."
            )
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"BackTranslation p={p} must lie in [0, 1].")
        if len(set(pivot_langs)) < 2:
            raise ValueError(f"BackTranslation pivot_langs={list(pivot_langs)} needs two different languages.")
        self.caption_index = caption_index
        self.translator = translator
        self.p = p
        self.source_langs = None if source_langs is None else frozenset(source_langs)
        self.pivot_langs = tuple(pivot_langs)
        self._warned_missing_image = False

    def _translate(self, text: str, src_lang: str, tgt_lang: str) -> str:
        return _translation_text(self.translator(text, src_lang=src_lang, tgt_lang=tgt_lang))

    def _other_language_captions(self, lang: str, image_id: str | None) -> dict[str, Sequence[str]]:
        if self.caption_index is None or image_id is None:
            return {}
        by_lang = self.caption_index.get(str(image_id))
        if by_lang is None:
            if not self._warned_missing_image:
                warnings.warn(
                    f"BackTranslation: image_id {image_id!r} is not in the caption index; build the index from the "
                    "same dataset the collator reads.",
                    stacklevel=3,
                )
                self._warned_missing_image = True
            return {}
        return {
            other: captions
            for other, captions in sorted(by_lang.items())
            if other != lang and captions and (self.source_langs is None or other in self.source_langs)
        }

    def __call__(
        self, caption: str, lang: str, image_id: str | None = None, generator: torch.Generator | None = None
    ) -> tuple[str, str]:
        """Returns the back-translated caption and its language (see the class docstring for when it changes)."""
        if _random_unit(generator) >= self.p:
            return caption, lang
        others = self._other_language_captions(lang, image_id)
        if others:
            source_lang = list(others)[_random_index(len(others), generator)]
            captions = others[source_lang]
            source = captions[_random_index(len(captions), generator)]
            if self.translator is None:
                return source, source_lang
            return self._translate(source, source_lang, lang), lang
        if self.translator is None:
            return caption, lang
        pivot = next(p for p in self.pivot_langs if p != lang)
        return self._translate(self._translate(caption, lang, pivot), pivot, lang), lang

    def __repr__(self) -> str:
        return f"BackTranslation(p={self.p}, index={self.caption_index is not None}, translator={self.translator is not None})"


class SequentialTextAugment:
    """Applies text augmentations in order, each seeing the previous one's caption and language.

    Args:
        augments (`Sequence[TextAugment]`): E.g. `[BackTranslation(...), SynonymReplacement(...)]`, so synonyms
            are drawn in the language the caption ends up in.
    """

    def __init__(self, augments: Sequence[TextAugment]):
        self.augments = list(augments)

    def __call__(
        self, caption: str, lang: str, image_id: str | None = None, generator: torch.Generator | None = None
    ) -> tuple[str, str]:
        for augment in self.augments:
            caption, lang = augment(caption, lang, image_id=image_id, generator=generator)
        return caption, lang

    def __repr__(self) -> str:
        return f"SequentialTextAugment({self.augments!r})"
