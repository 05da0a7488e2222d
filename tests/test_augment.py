"""Tests for `seeyou_ml.data.augment`: the augmentation config and the factory building it."""

from __future__ import annotations

import json

import pytest

from seeyou_ml.data.augment import (
    PHOTOMETRIC_OPS,
    AugmentationConfig,
    Augmentations,
    BackTranslation,
    MixUp,
    RandAugment,
    SequentialTextAugment,
    SynonymReplacement,
    build_augmentations,
)


def test_default_config_builds_nothing():
    assert build_augmentations(AugmentationConfig()) == Augmentations(None, None, None)


def test_config_turns_each_augmentation_on():
    config = AugmentationConfig(
        randaugment_num_ops=3,
        randaugment_magnitude=5,
        mixup_alpha=0.3,
        mixup_prob=0.5,
        synonym_prob=0.2,
        back_translation_prob=0.4,
        back_translation_source_langs=["de"],
    )
    built = build_augmentations(config, synonym_tables={"en": {"dog": ["puppy"]}}, caption_index={"a": {"de": ["x"]}})
    assert isinstance(built.image_augment, RandAugment)
    assert (built.image_augment.num_ops, built.image_augment.magnitude) == (3, 5)
    assert isinstance(built.mixup, MixUp) and (built.mixup.alpha, built.mixup.p) == (0.3, 0.5)
    chain = built.text_augment
    assert isinstance(chain, SequentialTextAugment)
    back_translation, synonyms = chain.augments
    assert isinstance(back_translation, BackTranslation) and back_translation.p == 0.4
    assert back_translation.source_langs == {"de"}
    assert isinstance(synonyms, SynonymReplacement) and synonyms.p == 0.2


def test_text_chain_back_translates_before_replacing_synonyms():
    config = AugmentationConfig(synonym_prob=1.0, back_translation_prob=1.0)
    built = build_augmentations(config, synonym_tables={"de": {"Hund": ["Köter"]}}, caption_index={"a": {"de": ["Ein Hund."]}})
    # Synonyms are drawn in the language the back-translation ends in.
    assert built.text_augment("A dog.", "en", image_id="a") == ("Ein Köter.", "de")


def test_a_single_text_augmentation_is_not_wrapped():
    built = build_augmentations(AugmentationConfig(synonym_prob=1.0), synonym_tables={"en": {"dog": ["puppy"]}})
    assert isinstance(built.text_augment, SynonymReplacement)
    assert built.text_augment("A dog.", "en") == ("A puppy.", "en")


def test_photometric_shorthand_selects_box_safe_ops():
    config = AugmentationConfig(randaugment_num_ops=2, randaugment_ops="photometric")
    assert config.randaugment_ops == list(PHOTOMETRIC_OPS)
    assert not build_augmentations(config).image_augment.is_geometric


def test_config_round_trips_through_json():
    config = AugmentationConfig(randaugment_num_ops=2, mixup_alpha=0.2, back_translation_source_langs=["de", "fr"])
    restored = AugmentationConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match=r"unknown augmentation settings \['mixup'\]"):
        AugmentationConfig.from_dict({"mixup": 0.2})
    with pytest.raises(ValueError, match="synonym_prob=1.5"):
        AugmentationConfig(synonym_prob=1.5)
    with pytest.raises(ValueError, match="back_translation_prob > 0 needs caption_index"):
        build_augmentations(AugmentationConfig(back_translation_prob=0.5))


def test_every_field_documents_itself():
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(AugmentationConfig))
