"""English and German.

German declines the adjectives of a noun phrase by gender, case and article: strong-ish endings after the
indefinite article in the nominative (ein roter Kreis, eine rote Raute, ein rotes Dreieck), weak `-e` after the
definite article in the nominative (der rote Kreis) and `-en` in the dative (links vom roten Kreis, über der
roten Raute). "orange" and "lila" do not decline in standard German, so the declinable "orangefarben" and
"violett" are used.
"""

from __future__ import annotations

from ..scene import SHAPES, Mention, Phrase
from .base import Language, capitalise, join_list


class English(Language):
    code = "en"
    ORDER = {"lr": "from left to right", "rl": "from right to left", "tb": "from top to bottom", "bt": "from bottom to top"}
    NUMBERS = {2: "two", 3: "three", 4: "four"}
    RELATION = {"left_of": "to the left of", "right_of": "to the right of", "above": "above", "below": "below"}

    def _bare(self, mention: Mention) -> str:
        return " ".join(w for w in (mention.size, mention.colour, mention.shape) if w)

    def indefinite(self, mention: Mention) -> str:
        bare = self._bare(mention)
        return ("an " if bare[0] in "aeiou" else "a ") + bare

    def caption(self, order: str, counted: bool, mentions: list[Mention]) -> str:
        listed = join_list([self.indefinite(m) for m in mentions], ", ", " and ")
        if counted:
            return f"{capitalise(self.NUMBERS[len(mentions)])} shapes {self.ORDER[order]}: {listed}."
        return f"{capitalise(self.ORDER[order])}: {listed}."

    def phrase(self, phrase: Phrase) -> str:
        text = "the " + self._bare(phrase.target)
        if phrase.relation is not None:
            text += f" {self.RELATION[phrase.relation]} the {self._bare(phrase.landmark)}"
        return text

    def class_prompts(self) -> dict[str, list[str]]:
        return {s: [f"a large {s}", f"a picture with a large {s}", f"the largest shape is a {s}"] for s in SHAPES}

    def synonyms(self) -> dict[str, list[str]]:
        return {
            "large": ["big"],
            "small": ["little"],
            "purple": ["violet"],
            "diamond": ["rhombus", "lozenge"],
            "cross": ["plus sign"],
            "shapes": ["objects", "figures"],
            "above": ["over"],
            "below": ["under", "beneath"],
            "to the left of": ["left of"],
            "to the right of": ["right of"],
        }


class German(Language):
    code = "de"
    NOUNS = {
        "circle": ("Kreis", "m"),
        "square": ("Quadrat", "n"),
        "triangle": ("Dreieck", "n"),
        "star": ("Stern", "m"),
        "cross": ("Kreuz", "n"),
        "diamond": ("Raute", "f"),
    }
    STEMS = {
        "red": "rot", "orange": "orangefarben", "yellow": "gelb", "green": "grün", "blue": "blau",
        "purple": "violett", "brown": "braun", "black": "schwarz", "small": "klein", "large": "groß",
    }
    # Adjective endings by (article, case) and gender.
    ENDINGS = {
        ("indefinite", "nom"): {"m": "er", "f": "e", "n": "es"},
        ("definite", "nom"): {"m": "e", "f": "e", "n": "e"},
        ("definite", "dat"): {"m": "en", "f": "en", "n": "en"},
        ("indefinite", "dat"): {"m": "en", "f": "en", "n": "en"},
    }
    ARTICLES = {
        ("indefinite", "nom"): {"m": "ein", "f": "eine", "n": "ein"},
        ("definite", "nom"): {"m": "der", "f": "die", "n": "das"},
        ("definite", "dat"): {"m": "dem", "f": "der", "n": "dem"},
        ("indefinite", "dat"): {"m": "einem", "f": "einer", "n": "einem"},
    }
    ORDER = {"lr": "von links nach rechts", "rl": "von rechts nach links", "tb": "von oben nach unten", "bt": "von unten nach oben"}
    NUMBERS = {2: "zwei", 3: "drei", 4: "vier"}
    # The preposition before a dative article; "von dem" contracts to "vom".
    RELATION = {"left_of": "links von", "right_of": "rechts von", "above": "über", "below": "unter"}

    def _np(self, mention: Mention, article: str, case: str) -> str:
        noun, gender = self.NOUNS[mention.shape]
        ending = self.ENDINGS[(article, case)][gender]
        adjectives = [self.STEMS[w] + ending for w in (mention.size, mention.colour) if w]
        return " ".join([self.ARTICLES[(article, case)][gender], *adjectives, noun])

    def indefinite(self, mention: Mention) -> str:
        return self._np(mention, "indefinite", "nom")

    def caption(self, order: str, counted: bool, mentions: list[Mention]) -> str:
        listed = join_list([self.indefinite(m) for m in mentions], ", ", " und ")
        if counted:
            return f"{capitalise(self.NUMBERS[len(mentions)])} Formen {self.ORDER[order]}: {listed}."
        return f"{capitalise(self.ORDER[order])}: {listed}."

    def phrase(self, phrase: Phrase) -> str:
        text = self._np(phrase.target, "definite", "nom")
        if phrase.relation is not None:
            landmark = f"{self.RELATION[phrase.relation]} {self._np(phrase.landmark, 'definite', 'dat')}"
            text += " " + landmark.replace("von dem ", "vom ")
        return text

    def class_prompts(self) -> dict[str, list[str]]:
        return {
            shape: [
                self._np(Mention(shape, size="large"), "indefinite", "nom"),
                "ein Bild mit " + self._np(Mention(shape, size="large"), "indefinite", "dat"),
                "die größte Form ist " + self._np(Mention(shape), "indefinite", "nom"),
            ]
            for shape in self.NOUNS
        }

    def synonyms(self) -> dict[str, list[str]]:
        table = {"Formen": ["Figuren"], "Quadrat": ["Viereck"], "Kreuz": ["Pluszeichen"]}
        # Declined forms keep their ending, so agreement survives the replacement.
        for stem, other in (("violett", "lilafarben"), ("klein", "winzig")):
            for ending in ("e", "er", "es", "en"):
                table[stem + ending] = [other + ending]
        return table
