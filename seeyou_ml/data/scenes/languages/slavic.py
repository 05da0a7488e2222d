"""Russian.

No articles; adjectives agree with the noun in gender and case. Captions use the nominative (большой красный
круг, зелёная звезда); relations govern the genitive ("слева от синего квадрата") or the instrumental ("над
синим квадратом", "под синей звездой"). Numerals take the genitive singular: две/три/четыре фигуры.
"""

from __future__ import annotations

from ..scene import Mention, Phrase
from .base import Language, capitalise, join_list


CASES = ("nom", "gen", "ins")


def _forms(masculine: str, feminine: str) -> dict[tuple[str, str], str]:
    """Adjective forms keyed by (case, gender), from the masculine nominative row of forms."""
    m_nom, m_gen, m_ins = masculine.split()
    f_nom, f_gen, f_ins = feminine.split()
    return {
        ("nom", "m"): m_nom, ("gen", "m"): m_gen, ("ins", "m"): m_ins,
        ("nom", "f"): f_nom, ("gen", "f"): f_gen, ("ins", "f"): f_ins,
    }


class Russian(Language):
    code = "ru"
    NOUNS = {  # shape -> ((nominative, genitive, instrumental), gender)
        "circle": (("круг", "круга", "кругом"), "m"),
        "square": (("квадрат", "квадрата", "квадратом"), "m"),
        "triangle": (("треугольник", "треугольника", "треугольником"), "m"),
        "star": (("звезда", "звезды", "звездой"), "f"),
        "cross": (("крест", "креста", "крестом"), "m"),
        "diamond": (("ромб", "ромба", "ромбом"), "m"),
    }
    ADJECTIVES = {
        "red": _forms("красный красного красным", "красная красной красной"),
        "orange": _forms("оранжевый оранжевого оранжевым", "оранжевая оранжевой оранжевой"),
        "yellow": _forms("жёлтый жёлтого жёлтым", "жёлтая жёлтой жёлтой"),
        "green": _forms("зелёный зелёного зелёным", "зелёная зелёной зелёной"),
        "blue": _forms("синий синего синим", "синяя синей синей"),
        "purple": _forms("фиолетовый фиолетового фиолетовым", "фиолетовая фиолетовой фиолетовой"),
        "brown": _forms("коричневый коричневого коричневым", "коричневая коричневой коричневой"),
        "black": _forms("чёрный чёрного чёрным", "чёрная чёрной чёрной"),
        "small": _forms("маленький маленького маленьким", "маленькая маленькой маленькой"),
        "large": _forms("большой большого большим", "большая большой большой"),
    }
    ORDER = {"lr": "слева направо", "rl": "справа налево", "tb": "сверху вниз", "bt": "снизу вверх"}
    NUMBERS = {2: "две", 3: "три", 4: "четыре"}  # "фигура" is feminine: две фигуры
    RELATION = {"left_of": ("слева от", "gen"), "right_of": ("справа от", "gen"), "above": ("над", "ins"), "below": ("под", "ins")}

    def _np(self, mention: Mention, case: str) -> str:
        forms, gender = self.NOUNS[mention.shape]
        words = [self.ADJECTIVES[w][(case, gender)] for w in (mention.size, mention.colour) if w]
        return " ".join([*words, forms[CASES.index(case)]])

    def indefinite(self, mention: Mention) -> str:
        return self._np(mention, "nom")

    def caption(self, order: str, counted: bool, mentions: list[Mention]) -> str:
        listed = join_list([self._np(m, "nom") for m in mentions], ", ", " и ")
        if counted:
            return f"{capitalise(self.NUMBERS[len(mentions)])} фигуры {self.ORDER[order]}: {listed}."
        return f"{capitalise(self.ORDER[order])}: {listed}."

    def phrase(self, phrase: Phrase) -> str:
        text = self._np(phrase.target, "nom")
        if phrase.relation is not None:
            words, case = self.RELATION[phrase.relation]
            text += f" {words} {self._np(phrase.landmark, case)}"
        return text

    def class_prompts(self) -> dict[str, list[str]]:
        return {
            shape: [
                self._np(Mention(shape, size="large"), "nom"),
                "изображение с " + self._np(Mention(shape, size="large"), "ins"),
                "самая большая фигура — " + self._np(Mention(shape), "nom"),
            ]
            for shape in self.NOUNS
        }

    def synonyms(self) -> dict[str, list[str]]:
        table: dict[str, list[str]] = {"фигуры": ["формы"]}
        pairs = (
            ("фиолетовый фиолетового фиолетовым фиолетовая фиолетовой", "лиловый лилового лиловым лиловая лиловой"),
            ("маленький маленького маленьким маленькая маленькой", "небольшой небольшого небольшим небольшая небольшой"),
        )
        for words, replacements in pairs:
            for word, replacement in zip(words.split(), replacements.split()):
                table[word] = [replacement]
        return table
