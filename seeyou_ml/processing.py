"""`SeeYouProcessor`: one object that turns images and captions into the inputs of `SeeYouModel`; and
`processed_frame`, where a point of an input image lands in the processed one (boxes follow images through it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
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


def _size_field(size: Any, name: str) -> int | None:
    return size.get(name) if isinstance(size, Mapping) else getattr(size, name, None)


def processed_frame(image_processor: Any, width: int, height: int) -> tuple[float, float, float, float, int, int]:
    """The affine map from an input image's pixel frame to the processed image's, for the usual processors.

    Covers resizing to `height`/`width`, to a `shortest_edge` (optionally capped by `longest_edge`), into
    `max_height`/`max_width`, ConvNeXT/ResNet's `crop_pct` resize-then-crop, and a following centre crop.

    Args:
        image_processor: A transformers image processor.
        width (`int`), height (`int`): Size of the input image.

    Returns:
        `tuple`: `(scale_x, scale_y, offset_x, offset_y, out_width, out_height)`; a point `(x, y)` of the input
        lands at `(x * scale_x - offset_x, y * scale_y - offset_y)`.
    """
    from transformers.image_transforms import get_size_with_aspect_ratio
    from transformers.image_utils import get_image_size_for_max_height_width

    new_h, new_w = height, width
    crop: tuple[int, int] | None = None
    size = getattr(image_processor, "size", None)
    if getattr(image_processor, "do_resize", False) and size is not None:
        shortest, longest = _size_field(size, "shortest_edge"), _size_field(size, "longest_edge")
        crop_pct = getattr(image_processor, "crop_pct", None)
        if shortest and not longest and crop_pct:
            # ConvNeXT / ResNet checkpoints: below 384 px, resize the short side to shortest/crop_pct and crop a
            # shortest x shortest square; at 384 px and above, warp straight to the square.
            if shortest < 384:
                short, long = min(height, width), max(height, width)
                resized_short = int(shortest / crop_pct)
                resized_long = int(resized_short * long / short)
                new_h, new_w = (resized_short, resized_long) if height <= width else (resized_long, resized_short)
                crop = (shortest, shortest)
            else:
                new_h = new_w = shortest
        elif shortest and longest:
            new_h, new_w = get_size_with_aspect_ratio((height, width), shortest, longest)
        elif shortest:
            short, long = min(height, width), max(height, width)
            resized_long = int(shortest * long / short)
            new_h, new_w = (shortest, resized_long) if height <= width else (resized_long, shortest)
        elif _size_field(size, "max_height") and _size_field(size, "max_width"):
            new_h, new_w = get_image_size_for_max_height_width(
                (height, width), _size_field(size, "max_height"), _size_field(size, "max_width")
            )
        elif _size_field(size, "height") and _size_field(size, "width"):
            new_h, new_w = _size_field(size, "height"), _size_field(size, "width")
        else:
            raise ValueError(f"{type(image_processor).__name__}.size={size!r} has no resize rule the collator knows.")
    crop_size = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop_size is not None:
        crop = (_size_field(crop_size, "height"), _size_field(crop_size, "width"))
    offset_x = offset_y = 0.0
    out_h, out_w = new_h, new_w
    if crop is not None:
        out_h, out_w = crop
        # Same integer centring as transformers' center_crop.
        offset_y, offset_x = float((new_h - out_h) // 2), float((new_w - out_w) // 2)
    return new_w / width, new_h / height, offset_x, offset_y, out_w, out_h


def _frame_tensors(image_processor: Any, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[`processed_frame`] as `(scale, offset, size)`, each repeated over `(x0, y0, x1, y1)`."""
    scale_x, scale_y, offset_x, offset_y, out_w, out_h = processed_frame(image_processor, width, height)
    return (torch.tensor([scale_x, scale_y, scale_x, scale_y]), torch.tensor([offset_x, offset_y, offset_x, offset_y]),
            torch.tensor([out_w, out_h, out_w, out_h], dtype=torch.float32))


def boxes_to_processed(
    image_processor: Any, boxes: Any, width: int, height: int, normalized: bool = False
) -> torch.Tensor:
    """Boxes of an input image in the processed image's pixels (see [`processed_frame`]), clipped to its frame.

    Args:
        image_processor: A transformers image processor.
        boxes: (n, 4) `(x0, y0, x1, y1)` in the input image's pixels (anything `torch.as_tensor` takes; None = none).
        width (`int`), height (`int`): Size of the input image.
        normalized (`bool`, *optional*, defaults to `False`): Return them in [0, 1] of the processed image instead.

    Returns:
        `torch.FloatTensor` of shape `(n, 4)`: the boxes in the processed image's pixels (or in [0, 1] of it).
    """
    boxes = torch.as_tensor(boxes if boxes is not None else [], dtype=torch.float32).reshape(-1, 4)  # (n, 4)
    scale, offset, size = _frame_tensors(image_processor, width, height)
    processed = torch.minimum((boxes * scale - offset).clamp(min=0.0), size)
    return processed / size if normalized else processed


def boxes_from_processed(image_processor: Any, boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The inverse of [`boxes_to_processed`] with `normalized=True`, unclipped: (n, 4) `(x0, y0, x1, y1)` in [0, 1]
    of the processed image -> the input image's pixels (a box may reach past the part a centre crop kept)."""
    scale, offset, size = _frame_tensors(image_processor, width, height)
    return (boxes.float().cpu() * size + offset) / scale


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

        Raises:
            ValueError: with `truncation=False`, when a caption has more tokens than `max_length` or the tokenizer's
                `model_max_length` (the text tower's positions), naming the caption and the limit.
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
            if not truncation:
                self._check_lengths([text] if isinstance(text, str) else list(text), encoded["attention_mask"],
                                    max_length)
            data["input_ids"] = encoded["input_ids"]
            data["attention_mask"] = encoded["attention_mask"]
        if images is not None:
            images = [to_rgb(image) for image in images] if isinstance(images, (list, tuple)) else to_rgb(images)
            data["pixel_values"] = self.image_processor(images, return_tensors=return_tensors, **kwargs)["pixel_values"]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _check_lengths(self, captions: list[str], attention_mask, max_length: int | None) -> None:
        limit = max_length if max_length is not None else self.tokenizer.model_max_length
        # Tokenizers without a known limit report a huge sentinel.
        if limit is None or limit >= 1_000_000:
            return
        for index, mask in enumerate(attention_mask):
            length = int(sum(mask))
            if length > limit:
                shown = captions[index] if len(captions[index]) <= 60 else captions[index][:57] + "..."
                raise ValueError(f"caption {index} ({shown!r}) has {length} tokens, more than the {limit} the text "
                                 "tower has positions for; pass truncation=True to cut it there, or shorten it.")


# Saved folders carry this file and an `auto_map` entry, so `AutoProcessor` loads them through remote code.
SeeYouProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["SeeYouProcessor", "boxes_from_processed", "boxes_to_processed", "processed_frame", "to_rgb"]
