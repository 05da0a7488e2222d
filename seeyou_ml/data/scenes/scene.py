"""Scene model of the embedded corpus: objects, their sampling, spatial relations and referring expressions.

A scene is 2-4 objects, each a (colour, shape, size) with a centre and a pixel diameter. Exactly one object is
`large` (it gives the image its classification `label`); the others are `small`. Sampling enforces what the
captions rely on:

- no two objects overlap (their boxes keep a one-pixel gap), so every object is fully visible;
- every pair of centres is at least `MIN_SEPARATION` of the image apart horizontally *and* vertically, so the
  left-to-right and top-to-bottom orders that captions state are unambiguous to the eye;
- no two objects share colour, shape *and* size, so each object has a description of its own.

Each shape's outline (`shape_polygon`) lives here too: an object's box is read from it, and `render` draws it.
Everything here is language-free; `languages/` turns `Mention`s and `Phrase`s into text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np


SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
"""Shape names; also the class names of the `label` column."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 15),
    "yellow": (240, 205, 10),
    "green": (35, 150, 50),
    "blue": (35, 75, 215),
    "purple": (140, 50, 180),
    "brown": (120, 72, 35),
    "black": (25, 25, 25),
}
"""Colour names and their RGB fill; chosen far apart in hue or lightness so a 64-pixel image keeps them distinct."""

SIZES: tuple[str, ...] = ("small", "large")

# Diameter ranges as fractions of the image side. The gap between them keeps small and large apart at a glance.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.19, 0.23), "large": (0.32, 0.37)}

HELD_OUT_COMBOS: tuple[tuple[str, str], ...] = (
    ("red", "cross"),
    ("orange", "square"),
    ("yellow", "circle"),
    ("green", "cross"),
    ("blue", "triangle"),
    ("purple", "triangle"),
    ("black", "circle"),
)
"""Colour-shape combinations that never occur in the train split (each colour and shape still occurs there).

Chosen so that every inflected word form of a held-out combination still occurs in training: a shape that is the only
one of its grammatical gender (the star in Russian, the diamond in German) is never held out, or its adjective forms
("красная", "blaue") would appear in test alone and reach the text tower untrained."""

RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below")

MIN_SEPARATION = 0.07
"""Least horizontal and vertical distance between two object centres, as a fraction of the image side."""

MAX_OBJECTS = 4


def _ring(cx: float, cy: float, radius: float, count: int, turn: float = 0.0) -> list[tuple[float, float]]:
    """`count` points evenly spaced on a circle, the first straight up, all turned by `turn` radians."""
    angles = [-math.pi / 2 + turn + 2 * math.pi * k / count for k in range(count)]
    return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in angles]


def shape_polygon(shape: str, cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    """Outline of `shape` centred on (cx, cy) whose extent is at most `radius` from the centre.

    Shapes whose outline is not symmetric top to bottom (triangle, star) are shifted so that their box is centred
    on (cx, cy), which keeps the stored centre the visual centre.
    """
    if shape == "circle":
        return _ring(cx, cy, radius, 48)
    if shape == "square":
        h = 0.82 * radius
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "diamond":
        return [(cx, cy - radius), (cx + 0.68 * radius, cy), (cx, cy + radius), (cx - 0.68 * radius, cy)]
    if shape == "triangle":
        h = 0.875 * radius
        return [(cx, cy - h), (cx + 0.95 * radius, cy + h), (cx - 0.95 * radius, cy + h)]
    if shape == "star":
        # Outer points span from -r to r*cos(36°) vertically; shift down by half the difference.
        dy = radius * (1 - math.cos(math.pi / 5)) / 2
        outer = _ring(cx, cy + dy, radius, 5)
        inner = _ring(cx, cy + dy, 0.45 * radius, 5, turn=math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "cross":
        a, t = 0.92 * radius, 0.3 * radius
        return [
            (cx - t, cy - a), (cx + t, cy - a), (cx + t, cy - t), (cx + a, cy - t), (cx + a, cy + t), (cx + t, cy + t),
            (cx + t, cy + a), (cx - t, cy + a), (cx - t, cy + t), (cx - a, cy + t), (cx - a, cy - t), (cx - t, cy - t),
        ]
    raise ValueError(f"unknown shape {shape!r}")


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene.

    Attributes:
        colour: A key of `COLOURS`.
        shape: One of `SHAPES`.
        size: `"small"` or `"large"`.
        cx: Centre x, as a fraction of the image side.
        cy: Centre y, as a fraction of the image side.
        diameter: Extent of the shape, as a fraction of the image side.
    """

    colour: str
    shape: str
    size: str
    cx: float
    cy: float
    diameter: float

    @property
    def combo(self) -> tuple[str, str]:
        return (self.colour, self.shape)

    def box(self, image_size: int) -> list[float]:
        """Tight `[x0, y0, x1, y1]` box of the drawn shape in pixels of an `image_size` image."""
        points = shape_polygon(self.shape, self.cx * image_size, self.cy * image_size, self.diameter * image_size / 2)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        return [round(min(xs), 2), round(min(ys), 2), round(max(xs), 2), round(max(ys), 2)]


@dataclass(frozen=True)
class Mention:
    """A noun phrase naming an object: a shape, optionally its colour and size."""

    shape: str
    colour: str | None = None
    size: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return (
            obj.shape == self.shape
            and (self.colour is None or obj.colour == self.colour)
            and (self.size is None or obj.size == self.size)
        )


@dataclass(frozen=True)
class Phrase:
    """A referring expression: `target`, optionally restricted by `relation` to the object named by `landmark`."""

    target: Mention
    relation: str | None = None
    landmark: Mention | None = None


@dataclass(frozen=True)
class Scene:
    """Objects of one image, the referent of its phrase, and the caption template it uses."""

    objects: tuple[SceneObject, ...]
    phrase: Phrase
    referent: int
    template: int

    @property
    def label(self) -> str:
        """Shape of the (single) large object: the class used for zero-shot classification."""
        return next(o.shape for o in self.objects if o.size == "large")

    def caption_objects(self, order: str) -> list[SceneObject]:
        """The objects in the order `order` (`"lr"`, `"rl"`, `"tb"` or `"bt"`), as a caption lists them."""
        key = {"lr": lambda o: o.cx, "rl": lambda o: -o.cx, "tb": lambda o: o.cy, "bt": lambda o: -o.cy}[order]
        return sorted(self.objects, key=key)

    def caption_mentions(self, order: str) -> list[Mention]:
        """Mentions of every object in the order `order` (`"lr"`, `"rl"`, `"tb"` or `"bt"`).

        The large object is always called large; a small one is called small only when a large object of the same
        colour and shape is present, the one case where size is what tells them apart.
        """
        mentions = []
        for obj in self.caption_objects(order):
            twin = any(o is not obj and o.combo == obj.combo for o in self.objects)
            size = obj.size if obj.size == "large" or twin else None
            mentions.append(Mention(obj.shape, obj.colour, size))
        return mentions


def relation_holds(relation: str, a: SceneObject, b: SceneObject) -> bool:
    """Whether `a` is `relation` of `b` (centres compared; sampling keeps them `MIN_SEPARATION` apart)."""
    if relation == "left_of":
        return a.cx < b.cx
    if relation == "right_of":
        return a.cx > b.cx
    if relation == "above":
        return a.cy < b.cy
    if relation == "below":
        return a.cy > b.cy
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


def resolve(phrase: Phrase, objects: tuple[SceneObject, ...] | list[SceneObject]) -> list[int]:
    """Indices of the objects that `phrase` can refer to.

    A relational phrase needs its landmark to name exactly one object; otherwise nothing resolves.
    """
    candidates = [i for i, o in enumerate(objects) if phrase.target.matches(o)]
    if phrase.relation is None:
        return candidates
    landmarks = [j for j, o in enumerate(objects) if phrase.landmark.matches(o)]
    if len(landmarks) != 1:
        return []
    anchor = objects[landmarks[0]]
    return [i for i in candidates if i != landmarks[0] and relation_holds(phrase.relation, objects[i], anchor)]


def _sample_objects(
    rng: np.random.Generator, combos: list[tuple[str, str]], forced: tuple[str, str] | None
) -> list[SceneObject] | None:
    """Draws attributes and non-overlapping positions; `None` when placement fails (the caller redraws)."""
    count = int(rng.integers(2, MAX_OBJECTS + 1))
    large_index = int(rng.integers(count))
    forced_index = int(rng.integers(count)) if forced is not None else -1
    attributes: list[tuple[str, str, str]] = []
    for i in range(count):
        colour, shape = forced if i == forced_index else combos[int(rng.integers(len(combos)))]
        size = "large" if i == large_index else "small"
        if (colour, shape, size) in attributes:
            return None
        attributes.append((colour, shape, size))

    placed: list[SceneObject] = []
    for colour, shape, size in attributes:
        low, high = SIZE_RANGES[size]
        diameter = float(rng.uniform(low, high))
        half = diameter / 2 + 0.02
        for _ in range(100):
            cx, cy = (float(v) for v in rng.uniform(half, 1 - half, size=2))
            if all(
                abs(cx - o.cx) >= MIN_SEPARATION
                and abs(cy - o.cy) >= MIN_SEPARATION
                and (abs(cx - o.cx) >= (diameter + o.diameter) / 2 + 0.02 or abs(cy - o.cy) >= (diameter + o.diameter) / 2 + 0.02)
                for o in placed
            ):
                placed.append(SceneObject(colour, shape, size, round(cx, 4), round(cy, 4), round(diameter, 4)))
                break
        else:
            return None
    return placed


def _sample_phrase(rng: np.random.Generator, objects: list[SceneObject]) -> tuple[Phrase, int]:
    """Picks a referent and a phrase that names exactly it, preferring relational phrases half the time."""

    def unique_mention(index: int) -> Mention | None:
        obj = objects[index]
        for mention in (Mention(obj.shape, obj.colour), Mention(obj.shape, obj.colour, obj.size)):
            if [i for i, o in enumerate(objects) if mention.matches(o)] == [index]:
                return mention
        return None

    referent = int(rng.integers(len(objects)))
    obj = objects[referent]
    plain: list[Phrase] = []
    mention = unique_mention(referent)
    if mention is not None:
        plain.append(Phrase(mention))
    if sum(o.shape == obj.shape for o in objects) == 1:
        plain.append(Phrase(Mention(obj.shape)))
    relational: list[Phrase] = []
    for j, other in enumerate(objects):
        landmark = unique_mention(j) if j != referent else None
        if landmark is None:
            continue
        for relation in RELATIONS:
            if relation_holds(relation, obj, other):
                candidate = Phrase(Mention(obj.shape, obj.colour), relation, landmark)
                if resolve(candidate, objects) == [referent]:
                    relational.append(candidate)
    pool = relational if relational and (not plain or rng.random() < 0.5) else plain
    return pool[int(rng.integers(len(pool)))], referent


def sample_scene(
    rng: np.random.Generator, held_out: str, num_templates: int, held_out_probability: float = 0.8
) -> Scene:
    """Draws one scene.

    Args:
        rng: The image's generator (seeded from seed, split and index).
        held_out: `"exclude"` keeps `HELD_OUT_COMBOS` out of the scene; `"include"` puts one held-out combo in it
            with probability `held_out_probability` (other objects are drawn from all combos).
        num_templates: Number of caption templates to choose from.
        held_out_probability: See `held_out`.

    Returns:
        A `Scene` whose phrase resolves to exactly its referent.
    """
    all_combos = [(c, s) for c in COLOURS for s in SHAPES]
    if held_out == "exclude":
        combos, forced_probability = [c for c in all_combos if c not in HELD_OUT_COMBOS], 0.0
    elif held_out == "include":
        combos, forced_probability = all_combos, held_out_probability
    else:
        raise ValueError(f"held_out={held_out!r}; expected 'exclude' or 'include'")
    while True:
        forced = None
        if rng.random() < forced_probability:
            forced = HELD_OUT_COMBOS[int(rng.integers(len(HELD_OUT_COMBOS)))]
        objects = _sample_objects(rng, combos, forced)
        if objects is not None:
            break
    phrase, referent = _sample_phrase(rng, objects)
    return Scene(tuple(objects), phrase, referent, int(rng.integers(num_templates)))


COUNTERFACTUAL_KINDS: tuple[str, ...] = ("positions", "colours", "large", "attribute")
"""The changes [`counterfactual_scenes`] makes: two objects trade places, two objects trade colours, the large object
becomes small and another large, one object gets another colour or shape."""


def counterfactual_scenes(scene: Scene, rng: np.random.Generator, held_out: str = "include") -> list[tuple[str, Scene]]:
    """Changed copies of a scene, each differing from it in one of the ways a pooled image vector cannot tell apart.

    One copy per kind of `COUNTERFACTUAL_KINDS` where the scene allows it (two objects of one colour cannot trade
    colours): among the changes of that kind, the first in a random order (drawn from `rng`) whose objects still differ
    in colour, shape or size, and, with `held_out="exclude"`, hold no combination of `HELD_OUT_COMBOS`. The copies are
    not drawn; a caption of one states what the scene's picture does not show: hard negative captions for image-text
    matching.

    Args:
        scene: the scene to change.
        rng: the generator that orders the candidate changes.
        held_out: `"exclude"` (train) or `"include"`, as the scene's split draws.

    Returns:
        `(kind, changed scene)` pairs in the order of `COUNTERFACTUAL_KINDS`.
    """
    objects = list(scene.objects)
    count = len(objects)

    def valid(changed: list[SceneObject]) -> bool:
        attributes = [(o.colour, o.shape, o.size) for o in changed]
        return len(set(attributes)) == len(attributes) and not (
            held_out == "exclude" and any(o.combo in HELD_OUT_COMBOS for o in changed)
        )

    def changed(edits: dict[int, SceneObject]) -> list[SceneObject]:
        return [edits.get(i, o) for i, o in enumerate(objects)]

    pairs = [(i, j) for i in range(count) for j in range(i + 1, count)]
    large = next(i for i, o in enumerate(objects) if o.size == "large")
    candidates: dict[str, list[list[SceneObject]]] = {
        "positions": [
            changed({i: replace(objects[i], cx=objects[j].cx, cy=objects[j].cy),
                     j: replace(objects[j], cx=objects[i].cx, cy=objects[i].cy)})
            for i, j in pairs
        ],
        "colours": [
            changed({i: replace(objects[i], colour=objects[j].colour), j: replace(objects[j], colour=objects[i].colour)})
            for i, j in pairs
            if objects[i].colour != objects[j].colour
        ],
        "large": [
            changed({large: replace(objects[large], size="small"), t: replace(objects[t], size="large")})
            for t in range(count)
            if t != large
        ],
        "attribute": [
            changed({t: replace(objects[t], colour=colour)}) for t in range(count) for colour in COLOURS
            if colour != objects[t].colour
        ] + [
            changed({t: replace(objects[t], shape=shape)}) for t in range(count) for shape in SHAPES
            if shape != objects[t].shape
        ],
    }
    copies = []
    for kind in COUNTERFACTUAL_KINDS:
        options = candidates[kind]
        for index in rng.permutation(len(options)):
            if valid(options[index]):
                copies.append((kind, replace(scene, objects=tuple(options[index]))))
                break
    return copies


def scene_rng(seed: int, split: str, index: int, attempt: int = 0, stream: int = 0) -> np.random.Generator:
    """The generator of one image: a pure function of seed, split, index and redraw attempt.

    `stream` separates independent uses: 0 draws the scene, 1 its background, 2 its counterfactual copies.
    """
    split_code = sum(ord(ch) * 31**k for k, ch in enumerate(split)) % (2**31)
    return np.random.default_rng([seed, split_code, index, attempt, stream])

