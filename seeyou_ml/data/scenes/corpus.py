"""Generating, caching and loading the scenes corpus as a `datasets.Dataset`.

Splits (`SPLITS`): train draws only colour-shape combinations outside `HELD_OUT_COMBOS`; val and test draw from all
combinations and force one held-out combination into 80 % of their images, so both measure compositional
generalisation (val is a smaller test, fit for model selection without touching test).

Within a split every caption identifies its image: no two images share a caption in any language, and no caption is
true of another image of the split (a caption states an order along one axis and the objects in it; another image
with the same objects in the same order along that axis would fit it as well, whatever its template). Image `i` is
drawn from the generator of (seed, split, i, attempt) with attempt 0, 1, ... until both hold. Generation is therefore
sequential, while rendering and the rest of each record are parallel. The first `n` images of a split are the same
for every `num_images >= n`.

Rows are image x language, image-major. The images are PNG files in the cache folder, referenced by path from the
`image` column (an `Image()` feature), so the ten captions of an image share one file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import ClassLabel, Dataset, DatasetInfo, Features, Image, List, NamedSplit, Value
from tqdm.auto import tqdm

from .languages import LANGUAGES, ORDERS, TEMPLATES, get_language
from .render import render_scene
from .scene import HELD_OUT_COMBOS, SHAPES, Mention, Scene, counterfactual_scenes, sample_scene, scene_rng


CORPUS_VERSION = 4
"""Bumped whenever generation changes, so caches of older corpora are not reused."""


@dataclass(frozen=True)
class SplitSpec:
    """How a split is drawn: its default number of images and whether held-out combinations are excluded."""

    num_images: int
    held_out: str  # "exclude" or "include"

    def image_count(self, num_images: int | None) -> int:
        """The number of images to draw: `num_images` when given, else the split's default."""
        return self.num_images if num_images is None else num_images


SPLITS: dict[str, SplitSpec] = {
    "train": SplitSpec(10_000, "exclude"),
    "val": SplitSpec(500, "include"),
    "test": SplitSpec(1_000, "include"),
}

FEATURES = Features(
    {
        "image": Image(),
        "caption": Value("string"),
        "lang": Value("string"),
        "image_id": Value("string"),
        "boxes": List(List(Value("float32"))),
        "phrase": Value("string"),
        "shapes": List(Value("string")),
        "colours": List(Value("string")),
        "sizes": List(Value("string")),
        "object_boxes": List(List(Value("float32"))),
        "label": ClassLabel(names=list(SHAPES)),
        "held_out": Value("bool"),
        "mention_spans": List(List(Value("int32"))),
        "mention_boxes": List(List(Value("float32"))),
        "negative_captions": List(Value("string")),
    }
)
"""Columns of every scenes dataset. `boxes` holds the box of the object `phrase` refers to; `shapes`, `colours`,
`sizes` and `object_boxes` describe every object; `label` is the shape of the large object (zero-shot class);
`held_out` says whether the image contains a colour-shape combination held out of training. `mention_spans` are the
`[start, end)` characters of the caption that name each object, in the caption's order, and `mention_boxes` those
objects' boxes (as Flickr30k Entities gives for photos); `negative_captions` are captions, in the caption's template, of
changed copies of the scene (see `scene.counterfactual_scenes`), each false of the image."""


def _check_split(split: str) -> SplitSpec:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not a scenes split; choose from {sorted(SPLITS)}")
    return SPLITS[split]


@dataclass(frozen=True)
class DrawnScene:
    """A scene with its captions per language and the redraw attempt that produced it (it seeds the background)."""

    scene: Scene
    attempt: int
    captions: dict[str, str]


def generate_scenes(split: str, num_images: int | None = None, seed: int = 0) -> list[DrawnScene]:
    """Draws the scenes of a split whose captions identify their images (see the module docstring)."""
    return list(draw_scenes(split, num_images, seed))


def draw_scenes(split: str, num_images: int | None = None, seed: int = 0) -> Iterator[DrawnScene]:
    """[`generate_scenes`] one scene at a time, each as soon as it is drawn (a scene depends on those before it)."""
    spec = _check_split(split)
    num_images = spec.image_count(num_images)
    languages = list(LANGUAGES.values())
    seen: dict[str, set[str]] = {lang.code: set() for lang in languages}
    # A caption's meaning is (order, mentions): what it says, whatever its template or language. `stated` holds the
    # meanings of the captions drawn so far; `fitting` every meaning that an image drawn so far fits.
    stated: set[tuple[str, tuple[Mention, ...]]] = set()
    fitting: set[tuple[str, tuple[Mention, ...]]] = set()
    for index in range(num_images):
        for attempt in range(1000):
            scene = sample_scene(scene_rng(seed, split, index, attempt), spec.held_out, len(TEMPLATES))
            mentions = {axis: tuple(scene.caption_mentions(axis)) for axis in ORDERS}
            fits = set(mentions.items())
            order = TEMPLATES[scene.template][0]
            meaning = (order, mentions[order])
            captions = {lang.code: lang.render_caption(scene.template, list(mentions[order])) for lang in languages}
            if (
                meaning not in fitting
                and stated.isdisjoint(fits)
                and all(captions[code] not in seen[code] for code in seen)
            ):
                break
        else:
            raise RuntimeError(f"image {index} of split {split!r} found no caption of its own in 1000 draws")
        for code, caption in captions.items():
            seen[code].add(caption)
        stated.add(meaning)
        fitting |= fits
        yield DrawnScene(scene, attempt, captions)


def scene_record(drawn: DrawnScene, image_size: int, rng: np.random.Generator, held_out: str) -> dict:
    """Language-independent columns of one image, plus its captions, phrases, mention spans and negative captions
    per language; `rng` orders the counterfactual changes and `held_out` is the split's (see `SplitSpec`)."""
    scene = drawn.scene
    order = TEMPLATES[scene.template][0]
    mentions = scene.caption_mentions(order)
    copies = [copy.caption_mentions(order) for _, copy in counterfactual_scenes(scene, rng, held_out)]
    copies = [copy for copy in copies if copy != mentions]  # a caption that reads the same would be true of the image
    return {
        "captions": drawn.captions,
        "mention_spans": {code: lang.mention_spans(drawn.captions[code], mentions) for code, lang in LANGUAGES.items()},
        "mention_boxes": [o.box(image_size) for o in scene.caption_objects(order)],
        "negative_captions": {code: [lang.render_caption(scene.template, copy) for copy in copies]
                              for code, lang in LANGUAGES.items()},
        "phrases": {code: lang.phrase(scene.phrase) for code, lang in LANGUAGES.items()},
        "boxes": [scene.objects[scene.referent].box(image_size)],
        "shapes": [o.shape for o in scene.objects],
        "colours": [o.colour for o in scene.objects],
        "sizes": [o.size for o in scene.objects],
        "object_boxes": [o.box(image_size) for o in scene.objects],
        "label": scene.label,
        "held_out": any(o.combo in HELD_OUT_COMBOS for o in scene.objects),
    }


def _build_chunk(job: tuple[list[tuple[int, DrawnScene]], int, int, str, str]) -> list[dict]:
    """Renders and saves one chunk of images and returns their records (runs in a worker process)."""
    items, image_size, seed, split, folder = job
    held_out = SPLITS[split].held_out
    records = []
    for index, drawn in items:
        image = render_scene(drawn.scene, image_size, scene_rng(seed, split, index, drawn.attempt, stream=1))
        image.save(os.path.join(folder, f"{index:05d}.png"), compress_level=1)
        rng = scene_rng(seed, split, index, drawn.attempt, stream=2)
        records.append(scene_record(drawn, image_size, rng, held_out))
    return records


def _build_all(
    scenes: Iterable[DrawnScene], num_images: int, image_size: int, seed: int, split: str, folder: str, num_proc: int
) -> list[dict]:
    """Renders every image into `folder` and returns the records, in the scenes' order. Chunks run in parallel, each
    from the moment its scenes are drawn: the drawing is sequential, and the workers render while it goes on."""
    chunk = 250
    numbered = enumerate(scenes)
    chunks = iter(lambda: list(islice(numbered, chunk)), [])  # (index, scene) lists until the scenes run out
    jobs = ((items, image_size, seed, split, folder) for items in chunks)
    progress = tqdm(total=num_images, desc=f"rendering scenes/{split}", unit="img", disable=num_images < 2000)
    records: list[dict] = []

    def collect(done: list[dict]) -> None:
        records.extend(done)
        progress.update(len(done))

    if num_proc > 1 and num_images > chunk:
        with ProcessPoolExecutor(max_workers=num_proc) as pool:
            pending: deque = deque()
            for job in jobs:
                pending.append(pool.submit(_build_chunk, job))
                while pending and pending[0].done():
                    collect(pending.popleft().result())
            while pending:
                collect(pending.popleft().result())
    else:
        for job in jobs:
            collect(_build_chunk(job))
    progress.close()
    return records


def default_cache_root() -> Path:
    """`$SEEYOU_CACHE/scenes` when set, else `~/.cache/seeyou_ml/scenes`."""
    root = os.environ.get("SEEYOU_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "seeyou_ml") / "scenes"


def _build(folder: Path, split: str, num_images: int | None, image_size: int, seed: int, num_proc: int) -> None:
    """Generates a split into `folder` atomically: built beside it, then renamed into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        count = _check_split(split).image_count(num_images)
        (staging / "images").mkdir()
        scenes = draw_scenes(split, count, seed)
        records = _build_all(scenes, count, image_size, seed, split, str(staging / "images"), num_proc)
        corpus = {"version": CORPUS_VERSION, "split": split, "seed": seed, "image_size": image_size, "records": records}
        with open(staging / "records.json", "w", encoding="utf-8") as f:
            # One string: `json.dumps` runs the C encoder, `json.dump` the pure-Python one (several times slower).
            f.write(json.dumps(corpus, ensure_ascii=False))
        try:
            os.rename(staging, folder)
        except OSError:  # another process finished first; its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_scenes(
    split: str = "train",
    num_images: int | None = None,
    image_size: int = 64,
    languages: list[str] | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
) -> Dataset:
    """The embedded multilingual scenes corpus, generated on first use and cached on disk.

    Args:
        split: `"train"`, `"val"` or `"test"`.
        num_images: Images in the split; defaults to 10,000 / 500 / 1,000. A smaller number gives the first images
            of the larger split.
        image_size: Side of the square images in pixels, 64 to 128.
        languages: ISO 639-1 codes to keep (default: all ten, en de fr es it pt ru zh ja ar).
        seed: Seed of the corpus; everything is a pure function of it.
        cache_dir: Folder holding generated corpora (default `$SEEYOU_CACHE/scenes` or `~/.cache/seeyou_ml/scenes`).
        num_proc: Processes that render images (default: the CPU count, at most 4).

    Returns:
        A `Dataset` with one row per image and language and the columns of `FEATURES`.

    Example:

    ```python
    >>> from seeyou_ml.data.scenes import load_scenes
    >>> ds = load_scenes("test", num_images=8, languages=["en", "de"])
    >>> ds[1]["lang"], ds[1]["image"].size
    ('de', (64, 64))
    ```
    """
    _check_split(split)
    if not 64 <= image_size <= 128:
        raise ValueError(f"image_size={image_size} is outside 64-128; the shapes are sized for that range")
    if num_images is not None and num_images < 1:
        raise ValueError(f"num_images={num_images}; ask for at least one image")
    languages = list(LANGUAGES) if languages is None else list(languages)
    for code in languages:
        get_language(code)
    key = json.dumps([CORPUS_VERSION, split, num_images, image_size, seed])
    folder = Path(cache_dir) if cache_dir is not None else default_cache_root()
    folder = folder / f"{split}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"
    if not (folder / "records.json").exists():
        _build(folder, split, num_images, image_size, seed, num_proc or min(os.cpu_count() or 1, 4))
    with open(folder / "records.json", encoding="utf-8") as f:
        records = json.load(f)["records"]

    columns: dict[str, list] = {name: [] for name in FEATURES}
    label_index = {name: i for i, name in enumerate(SHAPES)}
    for index, record in enumerate(records):
        image = {"bytes": None, "path": str(folder / "images" / f"{index:05d}.png")}
        for code in languages:
            columns["image"].append(image)
            columns["caption"].append(record["captions"][code])
            columns["lang"].append(code)
            columns["image_id"].append(f"scenes-{split}-{index:05d}")
            columns["phrase"].append(record["phrases"][code])
            columns["label"].append(label_index[record["label"]])
            columns["mention_spans"].append(record["mention_spans"][code])
            columns["negative_captions"].append(record["negative_captions"][code])
            for name in ("boxes", "shapes", "colours", "sizes", "object_boxes", "mention_boxes", "held_out"):
                columns[name].append(record[name])
    # Columns are already in their Arrow form (image as {bytes, path}), so the table is built without per-row
    # feature encoding, which dominates loading time at 100,000 rows.
    table = pa.Table.from_pydict(columns, schema=FEATURES.arrow_schema)
    # The content is a pure function of the cache folder and the languages: naming it so spares `datasets` hashing the
    # whole table (2 s for the main job's 200,000 rows).
    fingerprint = hashlib.sha1(json.dumps([str(folder.resolve()), languages]).encode()).hexdigest()[:16]
    return Dataset(table, info=DatasetInfo(features=FEATURES), split=NamedSplit(split), fingerprint=fingerprint)
