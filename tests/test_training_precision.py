"""`mixed_precision: auto` and the precedence of command line, recipe and launcher."""

import warnings

import pytest
import torch

from seeyou_ml.training import precision
from seeyou_ml.training.config import TrainingRecipe
from seeyou_ml.training.overrides import load_yaml
from seeyou_ml.training.precision import PrecisionWarning, resolve_mixed_precision
from seeyou_ml.training.trainer import make_accelerator


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Sets what the capability probe reports: `cpu_bf16(True)` for a CPU with AVX512-BF16, False for AVX2 only."""

    def set_native(native: bool):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512" if native else "AVX2")

    monkeypatch.delenv(precision.LAUNCHER_ENV, raising=False)
    return set_native


def test_auto_is_bf16_on_a_cpu_with_native_bf16(cpu_bf16):
    cpu_bf16(True)
    choice = resolve_mixed_precision("auto", device="cpu")
    assert choice.mixed_precision == "bf16"
    assert "native bf16" in choice.reason


def test_auto_is_fp32_on_an_avx2_cpu(cpu_bf16):
    cpu_bf16(False)
    choice = resolve_mixed_precision("auto", device="cpu")
    assert choice.mixed_precision == "no"
    assert choice.reason.startswith("fp32 (auto)") and "AVX2" in choice.reason


def test_avx512_without_bf16_units_is_not_native(cpu_bf16, monkeypatch):
    cpu_bf16(True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert resolve_mixed_precision("auto", device="cpu").mixed_precision == "no"


def test_explicit_bf16_on_an_avx2_cpu_warns_and_names_auto(cpu_bf16):
    cpu_bf16(False)
    with pytest.warns(PrecisionWarning, match=r"3-4x slower.*mixed_precision: auto"):
        choice = resolve_mixed_precision("bf16", device="cpu")
    assert choice.mixed_precision == "bf16"


def test_explicit_bf16_on_a_native_cpu_does_not_warn(cpu_bf16):
    cpu_bf16(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_mixed_precision("bf16", device="cpu").mixed_precision == "bf16"


@pytest.mark.parametrize("text", ["mixed_precision: no", "mixed_precision: 'no'"])
def test_yaml_no_gives_fp32(cpu_bf16, text):
    cpu_bf16(True)
    recipe = TrainingRecipe.from_dict(load_yaml(text))
    assert recipe.mixed_precision == "no"
    assert resolve_mixed_precision(recipe.mixed_precision, device="cpu").mixed_precision == "no"


def test_command_line_no_gives_fp32_over_the_recipe(cpu_bf16):
    cpu_bf16(True)
    recipe = TrainingRecipe.from_dict({"mixed_precision": "auto"}).with_overrides(["--mixed_precision", "no"])
    assert recipe.mixed_precision == "no"
    assert resolve_mixed_precision(recipe.mixed_precision, device="cpu").mixed_precision == "no"


def test_yaml_11_booleans_stay_strings_and_bool_fields_take_them():
    data = load_yaml("a: no\nb: off\nc: yes\nd: on\ne: true\nf: False")
    assert data == {"a": "no", "b": "off", "c": "yes", "d": "on", "e": True, "f": False}
    recipe = TrainingRecipe.from_dict(load_yaml("model: {channels_last: on, gradient_checkpointing: off}"))
    assert recipe.model.channels_last is True and recipe.model.gradient_checkpointing is False


def test_unknown_mode_names_the_field_and_the_choices():
    with pytest.raises(ValueError, match=r"mixed_precision='fp8' is unknown; use one of auto, no, bf16, fp16"):
        TrainingRecipe.from_dict({"mixed_precision": "fp8"})


def test_null_follows_the_launcher(cpu_bf16, monkeypatch):
    cpu_bf16(False)
    monkeypatch.setenv(precision.LAUNCHER_ENV, "bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choice = resolve_mixed_precision(None, device="cpu")
    assert choice.mixed_precision == "bf16" and "accelerate launch" in choice.reason
    monkeypatch.setenv(precision.LAUNCHER_ENV, "no")
    assert resolve_mixed_precision(None, device="cpu").mixed_precision == "no"


def test_a_recipe_value_that_differs_from_the_launcher_wins_with_a_warning(cpu_bf16, monkeypatch):
    cpu_bf16(False)
    monkeypatch.setenv(precision.LAUNCHER_ENV, "bf16")
    with pytest.warns(PrecisionWarning, match=r"overrides accelerate launch's bf16"):
        choice = resolve_mixed_precision("auto", device="cpu")
    assert choice.mixed_precision == "no"


def test_a_recipe_value_equal_to_the_launcher_does_not_warn(cpu_bf16, monkeypatch):
    cpu_bf16(True)
    monkeypatch.setenv(precision.LAUNCHER_ENV, "bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_mixed_precision("auto", device="cpu").mixed_precision == "bf16"


def test_make_accelerator_trains_in_the_resolved_precision(cpu_bf16, tmp_path):
    cpu_bf16(False)
    recipe = TrainingRecipe.from_dict({"mixed_precision": "auto", "output_dir": str(tmp_path),
                                       "monitor": {"report_to": None}})
    assert make_accelerator(recipe, cpu=True).mixed_precision == "no"


def test_every_shipped_recipe_chooses_precision_by_hardware():
    from pathlib import Path

    recipes = sorted(Path(__file__).resolve().parents[1].joinpath("recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        assert TrainingRecipe.from_yaml(path).mixed_precision == "auto", path.name
