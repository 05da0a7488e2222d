"""One split of a named corpus, the embedded scenes corpus included, and the zero-shot task that comes with it.

The command line and the training recipes name a corpus the same way: `scenes` for the embedded corpus, anything else
for [`load_corpus`] (a directory, a file, a `datasets` name). Only the scenes corpus has class labels and prompts for
zero-shot classification; both callers take them from here.
"""

from __future__ import annotations

from typing import Any, Optional

SCENES = "scenes"

__all__ = ["SCENES", "load_split", "zero_shot_arguments"]


def load_split(corpus: str, split: str, languages: Optional[list[str]] = None, **kwargs: Any) -> Any:
    """One split of `corpus` in the common record schema.

    Args:
        corpus: `scenes`, or a path or dataset name for `load_corpus`.
        split: the split to load (`train`, `val`, `test`, ...).
        languages: keep only captions in these ISO 639-1 codes; None keeps all.
        **kwargs: further arguments of `load_scenes` or `load_corpus`.
    """
    if languages is not None:
        kwargs["languages"] = list(languages)
    if corpus == SCENES:
        from .scenes import load_scenes

        return load_scenes(split, **kwargs)
    from .corpus import load_corpus

    return load_corpus(corpus, split=split, **kwargs)


def zero_shot_arguments(corpus: str, dataset: Any) -> dict[str, Any]:
    """The zero-shot arguments of `evaluate_retrieval` for `dataset`, a split of `corpus`: the scenes corpus's
    `label` column and its prompts in every language of the split; empty for other corpora (no labels)."""
    if corpus != SCENES:
        return {}
    from .columns import read_columns
    from .scenes import class_prompts

    languages = sorted(set(read_columns(dataset, ["lang"])["lang"]))
    return {"label_column": "label", "prompts": {lang: class_prompts(lang) for lang in languages}}
