"""Caption languages of the scenes corpus, one grammar per language, registered by ISO 639-1 code."""

from __future__ import annotations

from .arabic import Arabic
from .base import ORDERS, TEMPLATES, Language
from .cjk import Chinese, Japanese
from .germanic import English, German
from .romance import French, Italian, Portuguese, Spanish
from .slavic import Russian


LANGUAGES: dict[str, Language] = {
    lang.code: lang
    for lang in (English(), German(), French(), Spanish(), Italian(), Portuguese(), Russian(), Chinese(), Japanese(), Arabic())
}


def get_language(code: str) -> Language:
    """The grammar of `code`; raises a `ValueError` naming the supported codes otherwise."""
    if code not in LANGUAGES:
        raise ValueError(f"language {code!r} is not in the scenes corpus; choose from {sorted(LANGUAGES)}")
    return LANGUAGES[code]


__all__ = ["LANGUAGES", "ORDERS", "TEMPLATES", "Language", "get_language"]
