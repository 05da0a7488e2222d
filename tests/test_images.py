"""Tests for `seeyou_ml.data.images.load_image`: every kind of record image value opens as the same RGB pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from seeyou_ml.images import load_image


def test_paths_bytes_datasets_values_and_other_modes_open_as_the_same_rgb_pixels(tmp_path):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    path = tmp_path / "image.png"
    image.save(path)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    for value in (image, str(path), path, {"bytes": buffer.getvalue(), "path": None}, {"bytes": None, "path": str(path)},
                  image.convert("RGBA")):
        loaded = load_image(value)
        assert loaded.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(image))
    grey = load_image(image.convert("L"))
    assert grey.mode == "RGB" and np.array_equal(np.asarray(grey)[..., 0], np.asarray(image.convert("L")))


def test_unreadable_values_name_the_image_id(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read the image of image_id '42' .*No such file"):
        load_image(str(tmp_path / "nowhere.jpg"), image_id="42")
    with pytest.raises(ValueError, match=r"image_id '7' .*unsupported image value of type int"):
        load_image(3, image_id="7")
