"""Arabic (written right to left; the strings are in logical order).

Adjectives follow the noun and agree with it in gender and definiteness: دائرة حمراء / مربع أحمر, and with the
article on every word, الدائرة الحمراء الكبيرة. Lists join with و attached to each following item. Numerals
3-10 take the opposite gender of the (masculine) singular شكل: ثلاثة أشكال; two is the dual شكلان.
"""

from __future__ import annotations

from ..scene import Mention, Phrase
from .base import Language


class Arabic(Language):
    code = "ar"
    NOUNS = {
        "circle": ("دائرة", "f"), "square": ("مربع", "m"), "triangle": ("مثلث", "m"),
        "star": ("نجمة", "f"), "cross": ("صليب", "m"), "diamond": ("معين", "m"),
    }
    ADJECTIVES = {
        "red": ("أحمر", "حمراء"), "orange": ("برتقالي", "برتقالية"), "yellow": ("أصفر", "صفراء"),
        "green": ("أخضر", "خضراء"), "blue": ("أزرق", "زرقاء"), "purple": ("بنفسجي", "بنفسجية"),
        "brown": ("بني", "بنية"), "black": ("أسود", "سوداء"),
        "small": ("صغير", "صغيرة"), "large": ("كبير", "كبيرة"),
    }
    ORDER = {
        "lr": "من اليسار إلى اليمين", "rl": "من اليمين إلى اليسار",
        "tb": "من الأعلى إلى الأسفل", "bt": "من الأسفل إلى الأعلى",
    }
    NUMBERS = {2: "شكلان", 3: "ثلاثة أشكال", 4: "أربعة أشكال"}
    RELATION = {"left_of": "على يسار", "right_of": "على يمين", "above": "فوق", "below": "تحت"}

    def _np(self, mention: Mention, definite: bool) -> str:
        noun, gender = self.NOUNS[mention.shape]
        words = [noun] + [self.ADJECTIVES[w][gender == "f"] for w in (mention.colour, mention.size) if w]
        return " ".join("ال" + w for w in words) if definite else " ".join(words)

    def indefinite(self, mention: Mention) -> str:
        return self._np(mention, definite=False)

    def caption(self, order: str, counted: bool, mentions: list[Mention]) -> str:
        listed = " و".join(self.indefinite(m) for m in mentions)
        if counted:
            return f"{self.NUMBERS[len(mentions)]} {self.ORDER[order]}: {listed}."
        return f"{self.ORDER[order]}: {listed}."

    def phrase(self, phrase: Phrase) -> str:
        text = self._np(phrase.target, definite=True)
        if phrase.relation is not None:
            text += f" {self.RELATION[phrase.relation]} {self._np(phrase.landmark, definite=True)}"
        return text

    def class_prompts(self) -> dict[str, list[str]]:
        return {
            shape: [
                self._np(Mention(shape, size="large"), definite=False),
                "صورة فيها " + self._np(Mention(shape, size="large"), definite=False),
                "أكبر شكل هو " + self._np(Mention(shape), definite=True),
            ]
            for shape in self.NOUNS
        }

    def synonyms(self) -> dict[str, list[str]]:
        table = {"فوق": ["أعلى"], "تحت": ["أسفل"]}
        for word, replacement in (("كبير", "ضخم"), ("كبيرة", "ضخمة"), ("بنفسجي", "أرجواني"), ("بنفسجية", "أرجوانية")):
            table[word] = [replacement]
            table["ال" + word] = ["ال" + replacement]
        return table
