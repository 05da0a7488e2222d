"""`SeeYouProcessor`: one object that turns images and captions into the inputs of `SeeYouModel`."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from transformers import BatchFeature, ProcessorMixin

# Pillow's modes of one 16- or 32-bit integer channel (16-bit PNG and TIFF greyscale open as "I;16").
_WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """16-bit samples scaled to 8 bits (65535 → 255; 257 = 65535 / 255), rather than clipped at 255."""
    return np.round(np.clip(values.astype(np.float64), 0, 65535) / 257).astype(np.uint8)


def to_rgb(image: Any) -> Any:
    """An image as 8-bit RGB, the way CLIP's processor converts its input, with 16-bit images scaled to 8 bits.

    Greyscale, palette, CMYK, YCbCr, ... PIL images are converted to RGB; transparency (an alpha band or a palette's
    transparent colour) is composited onto white, as `transformers.image_transforms.convert_to_rgb` does. 16-bit
    greyscale (`I;16`, and `I` holding 16-bit samples) is divided by 257, so 65535 stays white and mid-grey stays
    mid-grey; a plain `convert("RGB")` would clip everything above 255 to white. NumPy arrays in (H, W), (H, W, 1),
    (H, W, 3) or (H, W, 4) layout get the same treatment (`uint16` scaled, one channel repeated, alpha composited);
    anything else (tensors, channels-first arrays) is returned unchanged for the image processor to judge.

    Args:
        image: a `PIL.Image.Image` or a NumPy array.

    Returns:
        A `PIL.Image.Image` in mode `RGB` for a PIL input, an (H, W, 3) `uint8` array for an array input.
    """
    if isinstance(image, Image.Image):
        if image.mode == "RGB":
            return image
        if image.mode in _WIDE_INTEGER_MODES:
            image = Image.fromarray(_to_uint8(np.asarray(image)), mode="L")
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        return image.convert("RGB")
    if isinstance(image, np.ndarray) and (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (1, 3, 4))):
        if image.dtype == np.uint16:
            image = _to_uint8(image)
        if image.ndim == 2:
            image = image[..., None]  # (H, W, 1)
        if image.shape[-1] == 1:
            return np.repeat(image, 3, axis=-1)  # (H, W, 3)
        if image.shape[-1] == 4 and image.dtype == np.uint8:
            alpha = image[..., 3:].astype(np.float64) / 255  # (H, W, 1)
            return np.round(alpha * image[..., :3] + (1 - alpha) * 255).astype(np.uint8)
        return image
    return image


class SeeYouProcessor(ProcessorMixin):
    r"""Wraps an image processor and a tokenizer into a single processor.

    `processor(text=..., images=..., return_tensors="pt")` returns exactly the keys `SeeYouModel.forward` takes:
    `input_ids`, `attention_mask` and `pixel_values` (either modality may be left out). Images of any mode
    (greyscale, palette, RGBA, CMYK, 16-bit) are converted to 8-bit RGB first, see [`to_rgb`].

    Args:
        image_processor: any transformers image processor (e.g. `ConvNextImageProcessor` for ResNet checkpoints).
        tokenizer: any transformers tokenizer (e.g. XLM-R's).

    Example:

    ```python
    >>> from seeyou_ml.presets import tiny_processor
    >>> from seeyou_ml.data.tokenizer import scenes_tokenizer
    >>> from PIL import Image
    >>> processor = tiny_processor(scenes_tokenizer(), image_size=32)
    >>> batch = processor(text=["a red circle"], images=[Image.new("RGB", (40, 40))], return_tensors="pt")
    >>> sorted(batch.keys()), tuple(batch["pixel_values"].shape)
    (['attention_mask', 'input_ids', 'pixel_values'], (1, 3, 32, 32))
    ```
    """

    model_input_names = ["input_ids", "attention_mask", "pixel_values"]

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer)

    def __call__(
        self,
        text: str | list[str] | None = None,
        images=None,
        return_tensors: str | None = "pt",
        padding: bool | str = True,
        truncation: bool = True,
        max_length: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Tokenises `text` and preprocesses `images`.

        Args:
            text: one caption or a list of them.
            images: one PIL image / array or a list of them, in any PIL mode (converted by [`to_rgb`]).
            return_tensors: `"pt"` for torch tensors.
            padding, truncation, max_length: as for the tokenizer; captions are padded to the longest and cut at
                `max_length` (the tokenizer's `model_max_length` when not given).
            **kwargs: passed to the image processor.

        Returns:
            `BatchFeature` with `input_ids` and `attention_mask` (B, T) for text and `pixel_values` (B, 3, H, W).
        """
        if text is None and images is None:
            raise ValueError("SeeYouProcessor needs `text`, `images` or both.")
        data = {}
        if text is not None:
            encoded = self.tokenizer(
                text,
                padding=padding,
                truncation=truncation,
                max_length=max_length,
                return_tensors=return_tensors,
                return_token_type_ids=False,
            )
            data["input_ids"] = encoded["input_ids"]
            data["attention_mask"] = encoded["attention_mask"]
        if images is not None:
            images = [to_rgb(image) for image in images] if isinstance(images, (list, tuple)) else to_rgb(images)
            data["pixel_values"] = self.image_processor(images, return_tensors=return_tensors, **kwargs)["pixel_values"]
        return BatchFeature(data=data, tensor_type=return_tensors)


__all__ = ["SeeYouProcessor", "to_rgb"]
