"""French, Spanish, Italian and Portuguese.

All four put the size adjective before the noun and the colour after it, and make both agree with the noun's
gender (un petit cercle rouge / une petite étoile rouge; una pequeña estrella roja; una piccola stella rossa; uma
pequena estrela vermelha). What differs is tabulated per language: articles and their contractions with "de"/"di"
(du, de la, de l'; del; del, della; do, da), French elision (l'étoile), Spanish apocope of prenominal "grande"
(un gran círculo), and which relations take "de" (Italian "sopra il" takes the article directly).
"""

from __future__ import annotations

from ..scene import Mention, Phrase
from .base import Language, capitalise, join_list


class Romance(Language):
    """Shared grammar; subclasses fill in the tables."""

    NOUNS: dict[str, tuple[str, str]]  # shape -> (noun, gender)
    COLOURS: dict[str, tuple[str, str]]  # colour -> (masculine, feminine)
    SIZES: dict[str, tuple[str, str]]  # size -> (masculine, feminine), placed before the noun
    INDEFINITE: dict[str, str]
    DEFINITE: dict[str, str]
    RELATION: dict[str, tuple[str, bool]]  # relation -> (words, whether "de" and a definite article follow)
    ORDER: dict[str, str]
    NUMBERS: dict[int, str]
    SHAPES_WORD: str  # plural of "shape"
    COLON = ": "
    CONJUNCTION: str
    PROMPTS: tuple[str, str]  # "a picture with {}", "the largest shape is {}"

    def _body(self, mention: Mention) -> tuple[str, str]:
        noun, gender = self.NOUNS[mention.shape]
        g = 0 if gender == "m" else 1
        words = [self.SIZES[mention.size][g]] if mention.size else []
        words.append(noun)
        if mention.colour:
            words.append(self.COLOURS[mention.colour][g])
        return " ".join(words), gender

    def _definite(self, gender: str, body: str) -> str:
        return f"{self.DEFINITE[gender]} {body}"

    def _of_definite(self, gender: str, body: str) -> str:
        """"de" followed by the definite noun phrase, contracted as the language requires."""
        return f"de {self._definite(gender, body)}"

    def indefinite(self, mention: Mention) -> str:
        body, gender = self._body(mention)
        return f"{self.INDEFINITE[gender]} {body}"

    def caption(self, order: str, counted: bool, mentions: list[Mention]) -> str:
        listed = join_list([self.indefinite(m) for m in mentions], ", ", self.CONJUNCTION)
        if counted:
            return f"{capitalise(self.NUMBERS[len(mentions)])} {self.SHAPES_WORD} {self.ORDER[order]}{self.COLON}{listed}."
        return f"{capitalise(self.ORDER[order])}{self.COLON}{listed}."

    def phrase(self, phrase: Phrase) -> str:
        text = self._definite(*reversed(self._body(phrase.target)))
        if phrase.relation is not None:
            words, takes_de = self.RELATION[phrase.relation]
            body, gender = self._body(phrase.landmark)
            landmark = self._of_definite(gender, body) if takes_de else self._definite(gender, body)
            text += f" {words} {landmark}"
        return text

    def class_prompts(self) -> dict[str, list[str]]:
        prompts = {}
        for shape in self.NOUNS:
            large = self.indefinite(Mention(shape, size="large"))
            prompts[shape] = [large, self.PROMPTS[0].format(large), self.PROMPTS[1].format(self.indefinite(Mention(shape)))]
        return prompts


class French(Romance):
    code = "fr"
    NOUNS = {
        "circle": ("cercle", "m"), "square": ("carré", "m"), "triangle": ("triangle", "m"),
        "star": ("étoile", "f"), "cross": ("croix", "f"), "diamond": ("losange", "m"),
    }
    COLOURS = {
        "red": ("rouge", "rouge"), "orange": ("orange", "orange"), "yellow": ("jaune", "jaune"),
        "green": ("vert", "verte"), "blue": ("bleu", "bleue"), "purple": ("violet", "violette"),
        "brown": ("marron", "marron"), "black": ("noir", "noire"),
    }
    SIZES = {"small": ("petit", "petite"), "large": ("grand", "grande")}
    INDEFINITE = {"m": "un", "f": "une"}
    DEFINITE = {"m": "le", "f": "la"}
    RELATION = {
        "left_of": ("à gauche", True), "right_of": ("à droite", True),
        "above": ("au-dessus", True), "below": ("en dessous", True),
    }
    ORDER = {"lr": "de gauche à droite", "rl": "de droite à gauche", "tb": "de haut en bas", "bt": "de bas en haut"}
    NUMBERS = {2: "deux", 3: "trois", 4: "quatre"}
    SHAPES_WORD = "formes"
    COLON = " : "  # French sets a space before the colon
    CONJUNCTION = " et "
    PROMPTS = ("une image avec {}", "la plus grande forme est {}")

    def _definite(self, gender: str, body: str) -> str:
        if body[0] in "aeiouhéè":  # elision: l'étoile
            return f"l'{body}"
        return f"{self.DEFINITE[gender]} {body}"

    def _of_definite(self, gender: str, body: str) -> str:
        definite = self._definite(gender, body)
        return "du " + definite[3:] if definite.startswith("le ") else "de " + definite

    def synonyms(self) -> dict[str, list[str]]:
        return {"formes": ["figures"], "grand": ["gros"], "grande": ["grosse"], "en dessous": ["au-dessous"]}


class Spanish(Romance):
    code = "es"
    NOUNS = {
        "circle": ("círculo", "m"), "square": ("cuadrado", "m"), "triangle": ("triángulo", "m"),
        "star": ("estrella", "f"), "cross": ("cruz", "f"), "diamond": ("rombo", "m"),
    }
    COLOURS = {
        "red": ("rojo", "roja"), "orange": ("naranja", "naranja"), "yellow": ("amarillo", "amarilla"),
        "green": ("verde", "verde"), "blue": ("azul", "azul"), "purple": ("morado", "morada"),
        "brown": ("marrón", "marrón"), "black": ("negro", "negra"),
    }
    SIZES = {"small": ("pequeño", "pequeña"), "large": ("gran", "gran")}  # "grande" shortens before a noun
    INDEFINITE = {"m": "un", "f": "una"}
    DEFINITE = {"m": "el", "f": "la"}
    RELATION = {
        "left_of": ("a la izquierda", True), "right_of": ("a la derecha", True),
        "above": ("encima", True), "below": ("debajo", True),
    }
    ORDER = {"lr": "de izquierda a derecha", "rl": "de derecha a izquierda", "tb": "de arriba abajo", "bt": "de abajo arriba"}
    NUMBERS = {2: "dos", 3: "tres", 4: "cuatro"}
    SHAPES_WORD = "figuras"
    CONJUNCTION = " y "
    PROMPTS = ("una imagen con {}", "la figura más grande es {}")

    def _of_definite(self, gender: str, body: str) -> str:
        return f"del {body}" if gender == "m" else f"de la {body}"

    def synonyms(self) -> dict[str, list[str]]:
        return {
            "figuras": ["formas"], "morado": ["violeta"], "morada": ["violeta"], "marrón": ["café"],
            "rombo": ["diamante"], "encima": ["por encima"], "debajo": ["por debajo"],
        }


class Italian(Romance):
    code = "it"
    NOUNS = {
        "circle": ("cerchio", "m"), "square": ("quadrato", "m"), "triangle": ("triangolo", "m"),
        "star": ("stella", "f"), "cross": ("croce", "f"), "diamond": ("rombo", "m"),
    }
    COLOURS = {
        "red": ("rosso", "rossa"), "orange": ("arancione", "arancione"), "yellow": ("giallo", "gialla"),
        "green": ("verde", "verde"), "blue": ("blu", "blu"), "purple": ("viola", "viola"),
        "brown": ("marrone", "marrone"), "black": ("nero", "nera"),
    }
    SIZES = {"small": ("piccolo", "piccola"), "large": ("grande", "grande")}
    INDEFINITE = {"m": "un", "f": "una"}
    DEFINITE = {"m": "il", "f": "la"}
    RELATION = {
        "left_of": ("a sinistra", True), "right_of": ("a destra", True),
        "above": ("sopra", False), "below": ("sotto", False),
    }
    ORDER = {"lr": "da sinistra a destra", "rl": "da destra a sinistra", "tb": "dall'alto in basso", "bt": "dal basso in alto"}
    NUMBERS = {2: "due", 3: "tre", 4: "quattro"}
    SHAPES_WORD = "forme"
    CONJUNCTION = " e "
    PROMPTS = ("un'immagine con {}", "la forma più grande è {}")

    def _of_definite(self, gender: str, body: str) -> str:
        return f"del {body}" if gender == "m" else f"della {body}"

    def synonyms(self) -> dict[str, list[str]]:
        return {"forme": ["figure"], "piccolo": ["piccolino"], "piccola": ["piccolina"]}


class Portuguese(Romance):
    code = "pt"
    NOUNS = {
        "circle": ("círculo", "m"), "square": ("quadrado", "m"), "triangle": ("triângulo", "m"),
        "star": ("estrela", "f"), "cross": ("cruz", "f"), "diamond": ("losango", "m"),
    }
    COLOURS = {
        "red": ("vermelho", "vermelha"), "orange": ("laranja", "laranja"), "yellow": ("amarelo", "amarela"),
        "green": ("verde", "verde"), "blue": ("azul", "azul"), "purple": ("roxo", "roxa"),
        "brown": ("marrom", "marrom"), "black": ("preto", "preta"),
    }
    SIZES = {"small": ("pequeno", "pequena"), "large": ("grande", "grande")}
    INDEFINITE = {"m": "um", "f": "uma"}
    DEFINITE = {"m": "o", "f": "a"}
    RELATION = {
        "left_of": ("à esquerda", True), "right_of": ("à direita", True),
        "above": ("acima", True), "below": ("abaixo", True),
    }
    ORDER = {
        "lr": "da esquerda para a direita", "rl": "da direita para a esquerda",
        "tb": "de cima para baixo", "bt": "de baixo para cima",
    }
    NUMBERS = {2: "duas", 3: "três", 4: "quatro"}  # "formas" is feminine: duas formas
    SHAPES_WORD = "formas"
    CONJUNCTION = " e "
    PROMPTS = ("uma imagem com {}", "a maior forma é {}")

    def _of_definite(self, gender: str, body: str) -> str:
        return f"do {body}" if gender == "m" else f"da {body}"

    def synonyms(self) -> dict[str, list[str]]:
        return {"formas": ["figuras"], "roxo": ["violeta"], "roxa": ["violeta"], "losango": ["rombo"]}
