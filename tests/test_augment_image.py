"""Tests for `seeyou_ml.data.augment_image`: RandAugment, MixUp and the soft contrastive loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from seeyou_ml.data.augment_image import (
    GEOMETRIC_OPS,
    PHOTOMETRIC_OPS,
    RANDAUGMENT_OPS,
    MixUp,
    RandAugment,
)

MAGNITUDE_FREE_OPS = ("autocontrast", "equalize")


def noise_image(width: int = 48, height: int = 40, seed: int = 0, low: int = 0, high: int = 256) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(low, high, (height, width, 3), dtype=np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int64)


BACKGROUND, SQUARE = (40, 90, 160), (220, 60, 30)


def square_image() -> Image.Image:
    """A 12x12 square off the centre of a 48x40 image, so that every geometric operation moves it."""
    image = Image.new("RGB", (48, 40), BACKGROUND)
    ImageDraw.Draw(image).rectangle([6, 4, 17, 15], fill=SQUARE)
    return image


def nearer_first(image: Image.Image, first, second) -> np.ndarray:
    """(H, W) mask of the pixels whose colour is nearer `first` than `second`."""
    values = pixels(image)
    return np.abs(values - np.array(first)).sum(-1) < np.abs(values - np.array(second)).sum(-1)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("op", RANDAUGMENT_OPS)
def test_photometric_ops_keep_objects_in_place_and_geometric_ops_move_them(op, sign):
    # PHOTOMETRIC_OPS is what the collator allows with boxes: an op misfiled there would silently corrupt them.
    image = square_image()
    square = nearer_first(image, SQUARE, BACKGROUND)
    out = RandAugment(magnitude=10, fill=BACKGROUND).apply_op(image, op, sign)
    assert (op in PHOTOMETRIC_OPS) != (op in GEOMETRIC_OPS)
    if op in PHOTOMETRIC_OPS:
        # Colours may change: compare with the output colours at the square's centre and at a far corner.
        values = pixels(out)
        np.testing.assert_array_equal(nearer_first(out, values[10, 12], values[39, 47]), square)
    else:
        assert not np.array_equal(nearer_first(out, SQUARE, BACKGROUND), square)


@pytest.mark.parametrize("op", [op for op in RANDAUGMENT_OPS if op not in MAGNITUDE_FREE_OPS])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_magnitude_zero_is_the_identity(op, sign):
    image = noise_image()
    out = RandAugment(magnitude=0).apply_op(image, op, sign)
    np.testing.assert_array_equal(pixels(out), pixels(image))


@pytest.mark.parametrize("op", [op for op in RANDAUGMENT_OPS if op != "identity"])
def test_full_magnitude_changes_pixels_and_keeps_size(op):
    # Mid-range values, so autocontrast has a range to stretch.
    image = noise_image(low=60, high=180)
    out = RandAugment(magnitude=10).apply_op(image, op)
    assert out.size == image.size and out.mode == "RGB"
    assert not np.array_equal(pixels(out), pixels(image))


def test_solarize_and_posterize_at_full_magnitude():
    image = noise_image()
    augment = RandAugment(magnitude=10)
    np.testing.assert_array_equal(pixels(augment.apply_op(image, "solarize")), 255 - pixels(image))
    assert (pixels(augment.apply_op(image, "posterize")) % 16 == 0).all()


def test_translate_x_shifts_by_the_expected_columns():
    # At full magnitude the shift is 150/331 of the width: exactly 150 columns for a 331-pixel-wide image.
    image = noise_image(width=331, height=4)
    out = pixels(RandAugment(magnitude=10, fill=(0, 0, 0)).apply_op(image, "translate_x", sign=1.0))
    # Output column x samples input column x + 150; the uncovered right edge is filled.
    np.testing.assert_array_equal(out[:, :181], pixels(image)[:, 150:])
    assert (out[:, 181:] == 0).all()


def test_randaugment_is_deterministic_given_a_generator():
    image = noise_image()
    augment = RandAugment(num_ops=3, magnitude=9)
    first = augment(image, generator=torch.Generator().manual_seed(11))
    again = augment(image, generator=torch.Generator().manual_seed(11))
    np.testing.assert_array_equal(pixels(first), pixels(again))
    outputs = [pixels(augment(image, generator=torch.Generator().manual_seed(s))) for s in range(6)]
    assert any(not np.array_equal(outputs[0], other) for other in outputs[1:])
    assert any(not np.array_equal(out, pixels(image)) for out in outputs)


def test_randaugment_draws_from_the_given_ops_only():
    image = noise_image()
    augment = RandAugment(num_ops=4, magnitude=10, ops=["solarize"])
    out = augment(image.convert("L"), generator=torch.Generator().manual_seed(0))
    # Four full solarizations invert the image an even number of times.
    np.testing.assert_array_equal(pixels(out), pixels(image.convert("L").convert("RGB")))
    assert not augment.is_geometric and RandAugment(ops=["rotate"]).is_geometric


def test_randaugment_rejects_bad_settings():
    with pytest.raises(ValueError, match=r"\['blur'\] are unknown"):
        RandAugment(ops=["rotate", "blur"])
    with pytest.raises(ValueError, match="magnitude=12"):
        RandAugment(magnitude=12)


def test_mixup_mixes_pixels_as_a_convex_combination():
    pixel_values = torch.randn(5, 3, 8, 8)
    mixup = MixUp(alpha=0.4)
    mixed, targets = mixup(pixel_values, generator=torch.Generator().manual_seed(3))
    lam, perm = mixup.sample(5, generator=torch.Generator().manual_seed(3))
    assert 0.0 < lam < 1.0 and sorted(perm.tolist()) == list(range(5))
    torch.testing.assert_close(mixed, lam * pixel_values + (1 - lam) * pixel_values[perm])
    torch.testing.assert_close(targets.sum(-1), torch.ones(5))
    torch.testing.assert_close(targets.sum(0), torch.ones(5))
    for i in range(5):
        expected = torch.zeros(5)
        expected[i] += lam
        expected[perm[i]] += 1 - lam
        torch.testing.assert_close(targets[i], expected)


def test_mixup_with_p_zero_leaves_the_batch_alone():
    pixel_values = torch.randn(4, 3, 8, 8)
    mixed, targets = MixUp(alpha=1.0, p=0.0)(pixel_values)
    torch.testing.assert_close(mixed, pixel_values)
    torch.testing.assert_close(targets, torch.eye(4))
