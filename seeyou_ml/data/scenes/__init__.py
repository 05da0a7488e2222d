"""The embedded multilingual scenes corpus: rendered shapes with captions and referring expressions in ten languages.

Images show 2-4 coloured shapes on a light background; each image has one caption per language listing every
object in a stated spatial order, and one referring expression per language with the box of its referent. The
test and val splits hold out colour-shape combinations never seen in training. See `corpus.py` for the splits and
columns, `scene.py` for what a scene guarantees, and `languages/` for the grammar of each language.
"""

from __future__ import annotations

from .corpus import FEATURES, SPLITS, generate_scenes, load_scenes
from .languages import LANGUAGES, get_language
from .scene import COLOURS, HELD_OUT_COMBOS, SHAPES, Mention, Phrase, Scene, SceneObject, resolve


def class_prompts(lang: str) -> dict[str, list[str]]:
    """Zero-shot prompts in `lang` per class of the `label` column (the shape of the image's large object).

    Example:

    ```python
    >>> class_prompts("de")["diamond"][0]
    'eine große Raute'
    ```
    """
    return get_language(lang).class_prompts()


def synonym_table(lang: str) -> dict[str, list[str]]:
    """Words or phrases of the `lang` captions mapped to replacements of the same meaning and grammatical form.

    Keys are surface forms as they occur in the text (inflected forms listed separately), so a replacement keeps
    the sentence grammatical.
    """
    return get_language(lang).synonyms()


__all__ = [
    "COLOURS",
    "FEATURES",
    "HELD_OUT_COMBOS",
    "LANGUAGES",
    "SHAPES",
    "SPLITS",
    "Mention",
    "Phrase",
    "Scene",
    "SceneObject",
    "class_prompts",
    "generate_scenes",
    "load_scenes",
    "resolve",
    "synonym_table",
]
