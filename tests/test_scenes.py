"""Tests of the embedded scenes corpus: determinism, caption uniqueness, held-out combinations, referring phrases,
grammar per language and the dataset schema."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
from datasets import Image

from seeyou_ml.data.scenes import (
    FEATURES,
    HELD_OUT_COMBOS,
    LANGUAGES,
    SHAPES,
    Mention,
    Phrase,
    class_prompts,
    generate_scenes,
    load_scenes,
    resolve,
    synonym_table,
)
from seeyou_ml.data.scenes.languages import ORDERS, TEMPLATES
from seeyou_ml.data.scenes.render import object_masks


@pytest.fixture(scope="module")
def train_scenes():
    return generate_scenes("train", 1500, seed=0)


@pytest.fixture(scope="module")
def test_scenes():
    return generate_scenes("test", 400, seed=0)


def test_generation_is_deterministic_and_prefix_stable():
    first = generate_scenes("val", 30, seed=3)
    assert first == generate_scenes("val", 30, seed=3)
    assert generate_scenes("val", 12, seed=3) == first[:12]
    assert [d.captions["en"] for d in generate_scenes("val", 30, seed=4)] != [d.captions["en"] for d in first]


def test_rendered_images_are_deterministic(tmp_path):
    a = load_scenes("test", num_images=5, languages=["en"], cache_dir=tmp_path / "a")
    b = load_scenes("test", num_images=5, languages=["en"], cache_dir=tmp_path / "b")
    for row_a, row_b in zip(a, b):
        assert np.array_equal(np.asarray(row_a["image"]), np.asarray(row_b["image"]))
        assert row_a["caption"] == row_b["caption"]


def test_captions_are_unique_per_split_and_language(train_scenes, test_scenes):
    for scenes in (train_scenes, test_scenes):
        for code in LANGUAGES:
            captions = [d.captions[code] for d in scenes]
            assert len(set(captions)) == len(captions), code


def test_every_caption_fits_its_own_image_only(train_scenes, test_scenes):
    # A caption says an order and the objects in it; any image whose objects read the same in that order fits it,
    # whichever template or language the caption uses.
    for scenes in (train_scenes, test_scenes):
        fitting_images = defaultdict(list)
        for index, drawn in enumerate(scenes):
            for order in ORDERS:
                fitting_images[order, tuple(drawn.scene.caption_mentions(order))].append(index)
        for index, drawn in enumerate(scenes):
            order = TEMPLATES[drawn.scene.template][0]
            assert fitting_images[order, tuple(drawn.scene.caption_mentions(order))] == [index]


def test_held_out_combos_absent_from_train_and_in_most_test_images(train_scenes, test_scenes):
    train_combos = {o.combo for d in train_scenes for o in d.scene.objects}
    assert not train_combos & set(HELD_OUT_COMBOS)
    # Every colour and every shape of a held-out combination is still seen in training.
    assert {c for c, _ in HELD_OUT_COMBOS} <= {c for c, _ in train_combos}
    assert {s for _, s in HELD_OUT_COMBOS} <= {s for _, s in train_combos}
    with_held_out = [any(o.combo in HELD_OUT_COMBOS for o in d.scene.objects) for d in test_scenes]
    assert sum(with_held_out) / len(with_held_out) > 0.7
    assert {o.combo for d in test_scenes for o in d.scene.objects} >= set(HELD_OUT_COMBOS)


def test_every_phrase_has_exactly_one_referent(train_scenes, test_scenes):
    relational = 0
    for drawn in train_scenes + test_scenes:
        scene = drawn.scene
        assert resolve(scene.phrase, scene.objects) == [scene.referent]
        relational += scene.phrase.relation is not None
    assert relational / len(train_scenes + test_scenes) > 0.3


def test_resolve_rejects_ambiguous_phrases(train_scenes):
    twins = next(d.scene for d in train_scenes if len({o.combo for o in d.scene.objects}) < len(d.scene.objects))
    colour, shape = Counter(o.combo for o in twins.objects).most_common(1)[0][0]
    assert len(resolve(Phrase(Mention(shape, colour)), twins.objects)) == 2
    assert len(resolve(Phrase(Mention(shape, colour, "large")), twins.objects)) == 1


@pytest.mark.parametrize("image_size", [64, 128])
def test_boxes_match_rendered_objects(test_scenes, image_size):
    for drawn in test_scenes[:40]:
        for obj in drawn.scene.objects:
            (rows, cols), fill, _ = object_masks(obj, image_size)
            ys, xs = np.nonzero(fill > 0.5)
            drawn_box = [cols.start + xs.min(), rows.start + ys.min(), cols.start + xs.max() + 1, rows.start + ys.max() + 1]
            assert np.allclose(obj.box(image_size), drawn_box, atol=1.0), (obj, drawn_box)


def test_objects_do_not_overlap_and_orders_are_unambiguous(train_scenes):
    for drawn in train_scenes:
        objects = drawn.scene.objects
        assert 2 <= len(objects) <= 4 and sum(o.size == "large" for o in objects) == 1
        for i, a in enumerate(objects):
            for b in objects[i + 1 :]:
                assert abs(a.cx - b.cx) >= 0.07 and abs(a.cy - b.cy) >= 0.07
                ax, bx = a.box(100), b.box(100)
                assert ax[2] <= bx[0] or bx[2] <= ax[0] or ax[3] <= bx[1] or bx[3] <= ax[1]


RED_CIRCLE, RED_DIAMOND, RED_STAR = Mention("circle", "red"), Mention("diamond", "red"), Mention("star", "red")
BLUE_SQUARE, BLUE_STAR, BLUE_DIAMOND = Mention("square", "blue"), Mention("star", "blue"), Mention("diamond", "blue")


@pytest.mark.parametrize(
    "lang, mention, expected",
    [
        ("en", Mention("star", "orange"), "an orange star"),
        ("de", RED_CIRCLE, "ein roter Kreis"),
        ("de", RED_DIAMOND, "eine rote Raute"),
        ("de", Mention("triangle", "red", "small"), "ein kleines rotes Dreieck"),
        ("fr", RED_CIRCLE, "un cercle rouge"),
        ("fr", RED_STAR, "une étoile rouge"),
        ("fr", Mention("star", "green", "small"), "une petite étoile verte"),
        ("es", Mention("circle", "red", "large"), "un gran círculo rojo"),
        ("es", RED_STAR, "una estrella roja"),
        ("it", Mention("star", "red", "small"), "una piccola stella rossa"),
        ("pt", RED_STAR, "uma estrela vermelha"),
        ("ru", RED_CIRCLE, "красный круг"),
        ("ru", RED_STAR, "красная звезда"),
        ("ru", Mention("star", "blue", "small"), "маленькая синяя звезда"),
        ("zh", RED_CIRCLE, "一个红色的圆形"),
        ("zh", Mention("circle", "red", "large"), "一个红色的大圆形"),
        ("ja", Mention("circle", "red", "large"), "大きな赤い円"),
        ("ar", RED_CIRCLE, "دائرة حمراء"),
        ("ar", Mention("square", "red"), "مربع أحمر"),
    ],
)
def test_noun_phrase_agreement(lang, mention, expected):
    assert LANGUAGES[lang].indefinite(mention) == expected


@pytest.mark.parametrize(
    "lang, phrase, expected",
    [
        ("en", Phrase(RED_CIRCLE, "left_of", BLUE_SQUARE), "the red circle to the left of the blue square"),
        ("de", Phrase(RED_CIRCLE, "left_of", BLUE_SQUARE), "der rote Kreis links vom blauen Quadrat"),
        ("de", Phrase(RED_STAR, "above", BLUE_DIAMOND), "der rote Stern über der blauen Raute"),
        ("fr", Phrase(RED_STAR, "left_of", BLUE_SQUARE), "l'étoile rouge à gauche du carré bleu"),
        ("fr", Phrase(RED_CIRCLE, "above", BLUE_STAR), "le cercle rouge au-dessus de l'étoile bleue"),
        ("es", Phrase(RED_CIRCLE, "left_of", BLUE_STAR), "el círculo rojo a la izquierda de la estrella azul"),
        ("it", Phrase(RED_CIRCLE, "above", BLUE_SQUARE), "il cerchio rosso sopra il quadrato blu"),
        ("it", Phrase(RED_CIRCLE, "left_of", BLUE_STAR), "il cerchio rosso a sinistra della stella blu"),
        ("pt", Phrase(RED_CIRCLE, "right_of", BLUE_STAR), "o círculo vermelho à direita da estrela azul"),
        ("ru", Phrase(RED_CIRCLE, "left_of", BLUE_STAR), "красный круг слева от синей звезды"),
        ("ru", Phrase(RED_STAR, "above", BLUE_SQUARE), "красная звезда над синим квадратом"),
        ("zh", Phrase(RED_CIRCLE, "left_of", BLUE_SQUARE), "蓝色正方形左边的红色圆形"),
        ("ja", Phrase(RED_CIRCLE, "left_of", BLUE_SQUARE), "青い正方形の左にある赤い円"),
        ("ar", Phrase(RED_CIRCLE, "left_of", BLUE_SQUARE), "الدائرة الحمراء على يسار المربع الأزرق"),
    ],
)
def test_referring_phrases(lang, phrase, expected):
    assert LANGUAGES[lang].phrase(phrase) == expected


@pytest.mark.parametrize(
    "lang, expected",
    [
        ("en", "Two shapes from left to right: a large red circle and a blue star."),
        ("de", "Zwei Formen von links nach rechts: ein großer roter Kreis und ein blauer Stern."),
        ("fr", "Deux formes de gauche à droite : un grand cercle rouge et une étoile bleue."),
        ("pt", "Duas formas da esquerda para a direita: um grande círculo vermelho e uma estrela azul."),
        ("ru", "Две фигуры слева направо: большой красный круг и синяя звезда."),
        ("zh", "图中有两个图形，从左到右依次是一个红色的大圆形和一个蓝色的星形。"),
        ("ja", "図形が二つあります。左から順に、大きな赤い円と青い星です。"),
        ("ar", "شكلان من اليسار إلى اليمين: دائرة حمراء كبيرة ونجمة زرقاء."),
    ],
)
def test_counted_captions(lang, expected):
    mentions = [Mention("circle", "red", "large"), BLUE_STAR]
    assert LANGUAGES[lang].caption("lr", True, mentions) == expected


def test_dataset_schema_and_rows(tmp_path):
    ds = load_scenes("test", num_images=4, image_size=96, languages=["en", "zh"], cache_dir=tmp_path)
    assert ds.features == FEATURES and len(ds) == 8
    assert ds["lang"] == ["en", "zh"] * 4
    assert ds["image_id"][:2] == ["scenes-test-00000"] * 2 and ds["image_id"][2] == "scenes-test-00001"
    row = ds[0]
    assert row["image"].size == (96, 96)
    large = row["sizes"].index("large")
    assert ds.features["label"].int2str(row["label"]) == row["shapes"][large]
    assert row["boxes"][0] in row["object_boxes"] and all(0 <= v <= 96 for v in row["boxes"][0])
    paths = ds.cast_column("image", Image(decode=False))["image"]
    assert paths[0]["path"] == paths[1]["path"] and paths[0]["bytes"] is None  # one file per image, not per caption


def test_load_scenes_reuses_its_cache(tmp_path):
    load_scenes("val", num_images=3, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    assert len(load_scenes("val", num_images=3, languages=["ar"], cache_dir=tmp_path)) == 3
    assert len(list(tmp_path.iterdir())) == 1


def test_rendering_in_parallel_while_drawing_writes_what_one_process_writes(tmp_path):
    # 510 images: three chunks (250, 250, 10), rendered by two workers while the main process still draws the rest.
    serial = load_scenes("val", num_images=510, languages=["en"], cache_dir=tmp_path / "serial", num_proc=1)
    parallel = load_scenes("val", num_images=510, languages=["en"], cache_dir=tmp_path / "parallel", num_proc=2)
    (a,), (b,) = (tmp_path / "serial").iterdir(), (tmp_path / "parallel").iterdir()
    assert (a / "records.json").read_bytes() == (b / "records.json").read_bytes()
    images = sorted(p.name for p in (a / "images").iterdir())
    assert len(images) == 510 and images == sorted(p.name for p in (b / "images").iterdir())
    assert all((a / "images" / name).read_bytes() == (b / "images" / name).read_bytes() for name in images)
    assert serial["caption"] == parallel["caption"]


def test_a_loaded_split_is_named_by_its_folder_and_languages(tmp_path):
    first = load_scenes("val", num_images=3, cache_dir=tmp_path)._fingerprint
    assert load_scenes("val", num_images=3, cache_dir=tmp_path)._fingerprint == first
    others = {
        load_scenes("val", num_images=3, languages=["ar"], cache_dir=tmp_path)._fingerprint,
        load_scenes("val", num_images=4, cache_dir=tmp_path)._fingerprint,
        load_scenes("val", num_images=3, cache_dir=tmp_path / "elsewhere")._fingerprint,  # other image paths
    }
    assert first not in others and len(others) == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split": "dev"}, "split 'dev'"),
        ({"languages": ["xx"]}, "language 'xx'"),
        ({"image_size": 32}, "image_size=32"),
    ],
)
def test_load_scenes_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_scenes(num_images=2, cache_dir=tmp_path, **kwargs)


def test_class_prompts_cover_every_label_in_every_language():
    for code in LANGUAGES:
        prompts = class_prompts(code)
        assert sorted(prompts) == sorted(SHAPES)
        assert all(len(p) >= 2 and len(set(p)) == len(p) for p in prompts.values())
    assert class_prompts("de")["diamond"][:2] == ["eine große Raute", "ein Bild mit einer großen Raute"]


def test_synonym_keys_are_words_of_the_corpus(test_scenes):
    for code in LANGUAGES:
        text = " ".join(d.captions[code] + " " + LANGUAGES[code].phrase(d.scene.phrase) for d in test_scenes)
        text += " ".join(p for ps in class_prompts(code).values() for p in ps)
        table = synonym_table(code)
        assert table and all(values and key not in values for key, values in table.items())
        found = sum(key in text for key in table)
        assert found / len(table) >= 0.5, (code, [k for k in table if k not in text])


def test_mention_spans_name_each_object_of_the_caption_in_order(test_scenes):
    for drawn in test_scenes[:60]:
        order = TEMPLATES[drawn.scene.template][0]
        mentions = drawn.scene.caption_mentions(order)
        for code, language in LANGUAGES.items():
            caption = drawn.captions[code]
            spans = language.mention_spans(caption, mentions)
            assert [caption[a:b] for a, b in spans] == [language.indefinite(m) for m in mentions], code
            assert all(b <= a2 for (_, b), (a2, _) in zip(spans, spans[1:]))  # in the caption's order, apart


def test_mention_spans_name_a_caption_that_lists_other_mentions():
    english = LANGUAGES["en"]
    with pytest.raises(ValueError, match="'a blue square' does not occur in 'Left to right: a red circle.'"):
        english.mention_spans("Left to right: a red circle.", [Mention("circle", "red"), Mention("square", "blue")])


def _scene(*objects, template=0):
    from seeyou_ml.data.scenes import Scene, SceneObject

    placed = tuple(SceneObject(c, s, z, x, y, 0.3 if z == "large" else 0.2) for c, s, z, x, y in objects)
    return Scene(placed, Phrase(Mention(placed[0].shape)), 0, template)


def test_counterfactual_copies_change_one_thing_each():
    from seeyou_ml.data.scenes.scene import COUNTERFACTUAL_KINDS, counterfactual_scenes

    scene = _scene(("red", "circle", "large", 0.2, 0.3), ("blue", "square", "small", 0.7, 0.6),
                   ("green", "star", "small", 0.4, 0.8))
    copies = dict(counterfactual_scenes(scene, np.random.default_rng(0)))
    assert list(copies) == list(COUNTERFACTUAL_KINDS)
    before = scene.objects
    moved = [(a, b) for a, b in zip(before, copies["positions"].objects) if (a.cx, a.cy) != (b.cx, b.cy)]
    assert len(moved) == 2 and {(b.cx, b.cy) for _, b in moved} == {(a.cx, a.cy) for a, _ in moved}
    assert all((a.colour, a.shape, a.size) == (b.colour, b.shape, b.size) for a, b in moved)
    recoloured = [(a, b) for a, b in zip(before, copies["colours"].objects) if a != b]
    assert len(recoloured) == 2 and {b.colour for _, b in recoloured} == {a.colour for a, _ in recoloured}
    assert [o.size for o in copies["large"].objects].count("large") == 1
    assert copies["large"].objects[0].size == "small"
    changed = [(a, b) for a, b in zip(before, copies["attribute"].objects) if a != b]
    assert len(changed) == 1 and (changed[0][0].colour != changed[0][1].colour) != (
        changed[0][0].shape != changed[0][1].shape)
    # Every copy's caption (in the scene's template) says something the scene's picture does not show.
    order = TEMPLATES[scene.template][0]
    assert all(copy.caption_mentions(order) != scene.caption_mentions(order) for copy in copies.values())


def test_counterfactual_copies_skip_what_the_scene_cannot_change_and_keep_train_free_of_held_out_combos():
    from seeyou_ml.data.scenes.scene import counterfactual_scenes

    # Two red objects cannot trade colours; replacing an attribute in train never makes a held-out combination
    # (red cross, orange square, ...), whatever the draw.
    scene = _scene(("red", "circle", "large", 0.2, 0.3), ("red", "square", "small", 0.7, 0.6))
    for seed in range(30):
        copies = counterfactual_scenes(scene, np.random.default_rng(seed), held_out="exclude")
        assert [kind for kind, _ in copies] == ["positions", "large", "attribute"]
        assert all(o.combo not in HELD_OUT_COMBOS for _, copy in copies for o in copy.objects)


def test_the_dataset_carries_mention_spans_their_boxes_and_negative_captions(tmp_path):
    ds = load_scenes("val", num_images=6, languages=["en", "ar"], cache_dir=tmp_path)
    drawn = generate_scenes("val", 6)
    for row in ds:
        scene = drawn[int(row["image_id"][-5:])].scene
        order = TEMPLATES[scene.template][0]
        language = LANGUAGES[row["lang"]]
        names = [language.indefinite(m) for m in scene.caption_mentions(order)]
        assert [row["caption"][a:b] for a, b in row["mention_spans"]] == names
        assert row["mention_boxes"] == [pytest.approx(o.box(64)) for o in scene.caption_objects(order)]
        assert sorted(map(tuple, row["mention_boxes"])) == sorted(map(tuple, row["object_boxes"]))
        assert 1 <= len(row["negative_captions"]) <= 4 and row["caption"] not in row["negative_captions"]
        assert len(set(row["negative_captions"])) == len(row["negative_captions"])
