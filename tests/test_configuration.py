import json
import math

import pytest
from transformers import AutoConfig, BertConfig, ResNetConfig, ViTConfig, XLMRobertaConfig

import seeyou_ml  # noqa: F401  (registers the Auto classes)
from seeyou_ml import SeeYouConfig, SeeYouGroundingConfig


def test_defaults_are_resnet50_xlmr_base_512():
    config = SeeYouConfig()
    assert isinstance(config.vision_config, ResNetConfig)
    assert config.vision_config.hidden_sizes == [256, 512, 1024, 2048]
    assert list(config.vision_config.depths) == [3, 4, 6, 3]
    assert isinstance(config.text_config, XLMRobertaConfig)
    assert (config.text_config.vocab_size, config.text_config.hidden_size) == (250002, 768)
    assert config.projection_dim == 512
    assert config.logit_scale_init_value == pytest.approx(math.log(1 / 0.07))
    assert round(config.logit_scale_init_value, 4) == 2.6593
    assert config.max_logit_scale == 100


def test_json_round_trip_keeps_every_field(tmp_path):
    config = SeeYouConfig(
        vision_config=ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=30),
        text_config=BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2),
        projection_dim=24,
        projection="mlp",
        text_pooling="cls",
        grounding_config={"num_hidden_layers": 3, "hidden_size": 48, "reference_window": 1},
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "seeyou" and saved["vision_config"]["model_type"] == "vit"
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is SeeYouConfig
    assert loaded.to_diff_dict() == config.to_diff_dict()
    assert isinstance(loaded.text_config, BertConfig) and loaded.text_config.vocab_size == 99
    assert isinstance(loaded.grounding_config, SeeYouGroundingConfig)
    assert (loaded.grounding_config.num_hidden_layers, loaded.grounding_config.hidden_size) == (3, 48)
    assert saved["grounding_config"]["num_hidden_layers"] == 3
    assert loaded.grounding_config.reference_window == 1


def test_a_config_without_a_head_round_trips_to_none(tmp_path):
    SeeYouConfig(projection_dim=24).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["grounding_config"] is None
    assert AutoConfig.from_pretrained(tmp_path).grounding_config is None


@pytest.mark.parametrize(
    "grounding, message",
    [
        ({"hidden_size": 30, "num_attention_heads": 4}, "not a multiple of num_attention_heads"),
        ({"num_hidden_layers": 0}, "grounding_config=None"),
        ({"feature_stage": 1}, "counts stages from the end"),
        ({"reference_window": -1}, "reference_window must be >= 0, got -1"),
    ],
)
def test_bad_grounding_settings_name_the_field(grounding, message):
    with pytest.raises(ValueError, match=message):
        SeeYouConfig(grounding_config=grounding)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"text_pooling": "max"}, "text_pooling='max' is not one of"),
        ({"projection": "conv"}, "projection='conv' is not one of"),
        ({"max_logit_scale": 5.0}, "max_logit_scale=5.0 is below the initial scale"),
    ],
)
def test_invalid_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SeeYouConfig(**kwargs)
