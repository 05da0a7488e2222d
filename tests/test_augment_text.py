"""Tests for `seeyou_ml.data.augment_text`: synonym replacement, back-translation and the caption index."""

from __future__ import annotations

import warnings

import datasets
import pytest
import torch

from seeyou_ml.data.augment_text import (
    BackTranslation,
    SequentialTextAugment,
    SynonymReplacement,
    build_caption_index,
)

TABLES = {
    "en": {"dog": ["puppy", "hound"], "little girl": ["small child"], "red": ["crimson"]},
    "de": {"Hund": ["Köter"]},
    "zh": {"狗": ["犬"], "小狗": ["幼犬"]},
    "ja": {"犬": ["ワンちゃん"]},
}

INDEX = {
    "img1": {"en": ["A dog runs.", "A puppy is running."], "de": ["Ein Hund rennt."], "fr": ["Un chien court."]},
    "img2": {"en": ["Two cats sleep."]},
}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_synonyms_replace_whole_table_words_only():
    augment = SynonymReplacement(TABLES, p=1.0)
    caption, lang = augment("The dog chased a hotdog and dogma; Dog, dog.", "en", generator=seeded(0))
    assert lang == "en"
    words = caption.replace(",", "").replace(".", "").replace(";", "").split()
    assert words[0] == "The" and words[3:6] == ["a", "hotdog", "and"] and words[6] == "dogma"
    assert words[1] in {"puppy", "hound"} and words[7] in {"Puppy", "Hound"} and words[8] in {"puppy", "hound"}


def test_synonyms_prefer_the_longest_entry():
    caption, _ = SynonymReplacement(TABLES, p=1.0)("A little girl in red.", "en")
    assert caption == "A small child in crimson."


def test_synonyms_use_the_captions_language_table():
    augment = SynonymReplacement(TABLES, p=1.0)
    assert augment("Ein Hund und ein dog.", "de") == ("Ein Köter und ein dog.", "de")
    assert augment("A dog and a Hund.", "fr") == ("A dog and a Hund.", "fr")


def test_synonyms_match_substrings_in_languages_without_spaces():
    augment = SynonymReplacement(TABLES, p=1.0)
    assert augment("一只小狗和一只狗", "zh") == ("一只幼犬和一只犬", "zh")
    assert augment("犬が走る", "ja") == ("ワンちゃんが走る", "ja")


def test_synonym_probability_is_per_word_and_seeded():
    augment = SynonymReplacement(TABLES, p=0.5)
    caption = " ".join(["dog"] * 40)
    first, _ = augment(caption, "en", generator=seeded(1))
    assert first == augment(caption, "en", generator=seeded(1))[0]
    replaced = sum(word != "dog" for word in first.split())
    assert 5 < replaced < 35
    assert SynonymReplacement(TABLES, p=0.0)(caption, "en") == (caption, "en")


def test_synonym_tables_can_be_a_function_of_the_language():
    def synonym_table(lang):
        if lang not in TABLES:
            raise KeyError(lang)
        return TABLES[lang]

    augment = SynonymReplacement(synonym_table, p=1.0)
    assert augment("Ein Hund.", "de") == ("Ein Köter.", "de")
    with pytest.warns(UserWarning, match="no synonym table for lang 'fr'"):
        assert augment("Un chien.", "fr") == ("Un chien.", "fr")
    # The missing table is remembered: no second warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert augment("Un chien.", "fr") == ("Un chien.", "fr")


def test_scenes_synonym_tables_plug_in():
    from seeyou_ml.data.scenes import synonym_table

    en = synonym_table("en")
    word, synonyms = next(iter(en.items()))
    caption, lang = SynonymReplacement(synonym_table, p=1.0)(f"a {word} thing", "en")
    assert lang == "en" and caption in {f"a {s} thing" for s in synonyms}
    with pytest.warns(UserWarning, match="'cs'"):
        assert SynonymReplacement(synonym_table, p=1.0)("pes", "cs") == ("pes", "cs")


def test_back_translation_picks_a_caption_of_the_same_image_in_another_language():
    augment = BackTranslation(INDEX, p=1.0)
    others = {(c, lang) for lang in ("de", "fr") for c in INDEX["img1"][lang]}
    outputs = {augment("A dog is running.", "en", image_id="img1", generator=seeded(s)) for s in range(20)}
    assert outputs == others


def test_back_translation_respects_source_langs_and_falls_back_unchanged():
    augment = BackTranslation(INDEX, p=1.0, source_langs=["fr"])
    assert augment("Ein Hund.", "de", image_id="img1") == ("Un chien court.", "fr")
    # img2 has no caption in another language and no translator is given.
    assert augment("Two cats sleep.", "en", image_id="img2") == ("Two cats sleep.", "en")
    assert BackTranslation(INDEX, p=0.0)("A dog.", "en", image_id="img1") == ("A dog.", "en")


def test_back_translation_warns_once_for_an_unknown_image():
    augment = BackTranslation(INDEX, p=1.0)
    with pytest.warns(UserWarning, match="'img9' is not in the caption index"):
        assert augment("A cat.", "en", image_id="img9") == ("A cat.", "en")


class FakeTranslator:
    """Records calls; answers in the transformers pipeline output format."""

    def __init__(self):
        self.calls = []

    def __call__(self, text, src_lang, tgt_lang):
        self.calls.append((text, src_lang, tgt_lang))
        return [{"translation_text": f"<{tgt_lang}>{text}"}]


def test_back_translation_translates_the_other_caption_into_the_captions_language():
    translator = FakeTranslator()
    augment = BackTranslation(INDEX, translator=translator, p=1.0, source_langs=["de"])
    assert augment("A dog is running.", "en", image_id="img1") == ("<en>Ein Hund rennt.", "en")
    assert translator.calls == [("Ein Hund rennt.", "de", "en")]


def test_back_translation_round_trips_through_a_pivot_without_other_captions():
    translator = FakeTranslator()
    augment = BackTranslation(translator=translator, p=1.0)
    assert augment("Two cats.", "en", image_id="img2") == ("<en><de>Two cats.", "en")
    assert augment("Deux chats.", "fr") == ("<fr><en>Deux chats.", "fr")
    assert translator.calls[:2] == [("Two cats.", "en", "de"), ("<de>Two cats.", "de", "en")]


def test_back_translation_reads_chat_pipeline_outputs():
    def chat_translator(text, src_lang, tgt_lang):
        return [{"generated_text": [{"role": "user", "content": text}, {"role": "assistant", "content": "Hallo"}]}]

    assert BackTranslation(translator=chat_translator, p=1.0)("Hello", "en") == ("Hallo", "en")
    with pytest.raises(TypeError, match="return a str"):
        BackTranslation(translator=lambda text, src_lang, tgt_lang: 3, p=1.0)("Hello", "en")


def test_back_translation_needs_a_source():
    with pytest.raises(ValueError, match="caption_index"):
        BackTranslation()


def test_caption_index_groups_by_image_and_language():
    dataset = datasets.Dataset.from_dict(
        {
            "image": ["a.jpg", "a.jpg", "b.jpg", "a.jpg"],
            "caption": ["A dog.", "Ein Hund.", "A cat.", "Dog runs."],
            "lang": ["en", "de", "en", "en"],
            "image_id": ["a", "a", "b", "a"],
        }
    )
    expected = {"a": {"en": ["A dog.", "Dog runs."], "de": ["Ein Hund."]}, "b": {"en": ["A cat."]}}
    assert build_caption_index(dataset) == expected
    assert build_caption_index(dataset.to_dict()) == expected


def test_sequential_augments_see_the_new_language():
    chain = SequentialTextAugment([BackTranslation(INDEX, p=1.0, source_langs=["de"]), SynonymReplacement(TABLES, 1.0)])
    assert chain("A dog is running.", "en", image_id="img1") == ("Ein Köter rennt.", "de")
