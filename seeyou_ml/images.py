"""Opening a record's `image` value (a PIL image, a path, or an undecoded `datasets.Image` value) as RGB."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

from PIL import Image

from .processing import to_rgb

__all__ = ["load_image"]


def load_image(image: Any, image_id: str | None = None) -> Image.Image:
    """Opens a record's `image` as an RGB PIL image.

    Args:
        image (`PIL.Image.Image`, `str`, `os.PathLike` or `dict`):
            A decoded image, a file path, or an undecoded `datasets.Image` value (`{"bytes": ..., "path": ...}`).
        image_id (`str`, *optional*): Named in the error when the image cannot be read.

    Returns:
        `PIL.Image.Image`: The image in 8-bit RGB mode (converted by `seeyou_ml.processing.to_rgb`).
    """
    try:
        if isinstance(image, Image.Image):
            pil = image
        elif isinstance(image, (str, os.PathLike)):
            with Image.open(image) as opened:
                pil = to_rgb(opened)
                pil.load()  # read before the file closes: an RGB file comes back as itself
        elif isinstance(image, Mapping) and (image.get("bytes") or image.get("path")):
            source = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
            with Image.open(source) as opened:
                pil = to_rgb(opened)
                pil.load()  # read before the file closes: an RGB file comes back as itself
        else:
            raise TypeError(f"unsupported image value of type {type(image).__name__}")
    except (OSError, TypeError) as error:
        raise ValueError(
            f"cannot read the image of image_id {image_id!r} ({image!r:.120}): {error}. Records need a PIL image, an "
            "existing image path, or a datasets Image value; load_corpus(..., strict=False) skips unreadable ones."
        ) from error
    return to_rgb(pil)
