"""Language tags: the ISO 639-1 codes the record schema uses, and the mapping of other tags onto them.

A module of its own, importing nothing from the package, so the modeling files saved beside a model (remote code)
can use it.
"""

from __future__ import annotations

from typing import Optional

# ISO 639-1: the two-letter language codes of the record schema.
ISO_639_1 = frozenset(
    """
    aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz ee el
    en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is it iu ja
    jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd
    ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss
    st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
    """.split()
)

def normalize_lang(code: object) -> Optional[str]:
    """Maps a language tag to its ISO 639-1 code, or `None` when it is not one.

    Case and surrounding space are ignored and a region or script subtag is dropped (`"pt-BR"` → `"pt"`,
    `"zh_Hans"` → `"zh"`), because the record schema groups captions by language only.
    """
    if not isinstance(code, str):
        return None
    primary = code.strip().lower().replace("_", "-").split("-", 1)[0]
    return primary if primary in ISO_639_1 else None


__all__ = ["ISO_639_1", "normalize_lang"]
