"""What every caption language provides, and the caption templates they share.

A language turns language-free `Mention`s and `Phrase`s into grammatical text. Captions list every object in a
stated order; `TEMPLATES` are the (order, counted) pairs, e.g. ("lr", False) renders as "From left to right: a
large red circle and a blue square." and ("tb", True) as "Two shapes from top to bottom: ...". One template index
is drawn per image and shared by all languages, so the captions of an image are translations of each other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from ..scene import Mention, Phrase


ORDERS: tuple[str, ...] = ("lr", "rl", "tb", "bt")
TEMPLATES: tuple[tuple[str, bool], ...] = tuple((order, counted) for counted in (False, True) for order in ORDERS)


class Language(ABC):
    """Grammar of one caption language.

    Subclasses set `code` (ISO 639-1) and implement the noun phrases, the caption templates, the referring
    phrases, zero-shot prompts and a synonym table.
    """

    code: str

    @abstractmethod
    def indefinite(self, mention: Mention) -> str:
        """An indefinite noun phrase in the nominative ("a large red circle")."""

    @abstractmethod
    def caption(self, order: str, counted: bool, mentions: list[Mention]) -> str:
        """A full caption listing `mentions` in `order`, with the object count when `counted`."""

    @abstractmethod
    def phrase(self, phrase: Phrase) -> str:
        """A definite referring expression ("the red circle left of the blue square")."""

    @abstractmethod
    def class_prompts(self) -> dict[str, list[str]]:
        """Zero-shot prompts per shape label, for the shape of the large object."""

    @abstractmethod
    def synonyms(self) -> dict[str, list[str]]:
        """Surface word or phrase -> replacements with the same meaning and the same grammatical form."""

    def words(self, text: str) -> list[str]:
        """`text` cut into words; languages written without spaces override this (tokenizer training uses it)."""
        return text.split()

    def render_caption(self, template: int, mentions: list[Mention]) -> str:
        order, counted = TEMPLATES[template]
        return self.caption(order, counted, mentions)

    def mention_spans(self, caption: str, mentions: list[Mention]) -> list[tuple[int, int]]:
        """The `[start, end)` characters of `caption` that name each of `mentions`, which it lists in this order.

        Raises:
            ValueError: when a mention's indefinite noun phrase does not follow the previous one in `caption`.
        """
        spans, position = [], 0
        for mention in mentions:
            text = self.indefinite(mention)
            start = caption.find(text, position)
            if start < 0:
                raise ValueError(f"{text!r} does not occur in {caption!r} after character {position}; the caption "
                                 "does not list these mentions in this order.")
            spans.append((start, start + len(text)))
            position = start + len(text)
        return spans


class UnspacedLanguage(Language):
    """A language written without spaces between words; `words` cuts text at the words of its own tables."""

    FUNCTION_WORDS: tuple[str, ...] = ()

    def lexicon(self) -> set[str]:
        """Every word the language's tables and function words contain."""
        words = set(self.FUNCTION_WORDS)
        for table in (getattr(self, name) for name in ("NOUNS", "COLOURS", "SIZES", "ORDER", "NUMBERS", "RELATION")):
            words.update(table.values())
        return words

    def words(self, text: str) -> list[str]:
        """Greedy longest match against `lexicon()`; characters outside it stay together as one word."""
        lexicon = self.lexicon()
        longest = max(map(len, lexicon))
        words, pending, i = [], "", 0
        while i < len(text):
            match = next((text[i : i + n] for n in range(longest, 0, -1) if text[i : i + n] in lexicon), None)
            if match is None:
                pending += text[i]
                i += 1
                continue
            if pending:
                words.append(pending)
                pending = ""
            words.append(match)
            i += len(match)
        return words + ([pending] if pending else [])


def join_list(items: list[str], comma: str, conjunction: str) -> str:
    """`a, b and c` with a language's comma and final conjunction (both given with their spacing)."""
    if len(items) == 1:
        return items[0]
    return comma.join(items[:-1]) + conjunction + items[-1]


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]
