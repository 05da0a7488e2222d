"""`SeeYouCollator`: turns a list of corpus records into a batch that `SeeYouModel.forward` takes as is.

Records follow the common schema (`image`, `caption`, `lang`, `image_id`, optional `boxes` + `phrase`). The
collator loads each image, applies the text and image augmentations, runs the processor (tokenise + pad, resize +
normalise) and, when asked, maps boxes into the processed image's pixel frame and mixes the batch with MixUp.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from ..processing import to_rgb
from .augment_image import MixUp
from .augment_text import TextAugment

__all__ = ["SeeYouCollator", "load_image", "processed_frame"]

_REQUIRED_KEYS = ("image", "caption", "lang", "image_id")


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
                pil.load()
        elif isinstance(image, Mapping) and (image.get("bytes") or image.get("path")):
            source = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
            with Image.open(source) as opened:
                pil = to_rgb(opened)
                pil.load()
        else:
            raise TypeError(f"unsupported image value of type {type(image).__name__}")
    except (OSError, TypeError) as error:
        raise ValueError(
            f"cannot read the image of image_id {image_id!r} ({image!r:.120}): {error}. Records need a PIL image, an "
            "existing image path, or a datasets Image value; load_corpus(..., strict=False) skips unreadable ones."
        ) from error
    return to_rgb(pil)


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


class SeeYouCollator:
    """Collates corpus records into `SeeYouModel` inputs, with optional augmentations.

    The batch's keys are `forward`'s arguments, so `model(**batch)` works: `input_ids` and `attention_mask`
    (B, T) padded to the longest caption, `pixel_values` (B, 3, H, W), `lang` and `image_id` (lists of B strings).
    Optional keys, which the trainer pops before calling the model:

    - `boxes` (with `return_boxes=True`): list of B float tensors (n_i, 4), `[x0, y0, x1, y1]` in the processed
      image's pixels (clipped to it); (0, 4) for records without boxes.
    - `mixup_targets` (with `mixup`): (B, B) soft image-to-text targets for `soft_contrastive_loss`; rows sum to 1.

    Augmentations draw from the global torch RNG, which `DataLoader` seeds per worker; pass `generator=` to the
    DataLoader for reproducible runs.

    Args:
        processor ([`SeeYouProcessor`]): Tokenizer + image processor.
        max_length (`int`, *optional*): Longest caption in tokens; the tokenizer's `model_max_length` when omitted.
        image_augment (`Callable[[PIL.Image.Image], PIL.Image.Image]`, *optional*): E.g. [`RandAugment`].
        text_augment ([`TextAugment`], *optional*): E.g. [`SynonymReplacement`], [`BackTranslation`] or a
            [`SequentialTextAugment`] of both; it may change a caption's language, and `lang` reports the new one.
        mixup ([`MixUp`], *optional*): Mixes the processed images and adds `mixup_targets`.
        return_boxes (`bool`, *optional*, defaults to `False`): Add `boxes` (the model's forward takes none yet).
        channels_last (`bool`, *optional*, defaults to `False`): Return `pixel_values` in channels-last memory
            layout (same values), for a vision tower whose weights are channels-last.
        cache_images (`bool`, *optional*, defaults to `False`): Keep every image's processed pixels, keyed by
            `image_id`, and reuse them when a caption of the same image comes again (a corpus with ten captions per
            image then loads and processes each image once instead of ten times). Holds `4 * 3 * H * W` bytes per
            image in each process that collates; not with `image_augment`, which draws new pixels every time.

    Example:

    ```python
    >>> from PIL import Image
    >>> from seeyou_ml.data.collator import SeeYouCollator
    >>> from seeyou_ml.data.tokenizer import scenes_tokenizer
    >>> from seeyou_ml.presets import tiny_processor

    >>> collator = SeeYouCollator(tiny_processor(scenes_tokenizer(), image_size=32))
    >>> records = [{"image": Image.new("RGB", (40, 40)), "caption": "a red circle", "lang": "en", "image_id": "0"}]
    >>> batch = collator(records)
    >>> tuple(batch["pixel_values"].shape), batch["lang"], batch["image_id"]
    ((1, 3, 32, 32), ['en'], ['0'])
    ```
    """

    def __init__(
        self,
        processor: Any,
        max_length: int | None = None,
        image_augment: Callable[[Image.Image], Image.Image] | None = None,
        text_augment: TextAugment | None = None,
        mixup: MixUp | None = None,
        return_boxes: bool = False,
        channels_last: bool = False,
        cache_images: bool = False,
    ):
        if cache_images and image_augment is not None:
            raise ValueError(
                f"cache_images=True with image_augment={image_augment!r}: cached pixels would repeat one augmented "
                "draw; drop one of them."
            )
        if return_boxes and image_augment is not None and getattr(image_augment, "is_geometric", True):
            raise ValueError(
                f"return_boxes=True with image_augment={image_augment!r}, which may move pixels and leave the boxes "
                "behind; use RandAugment(ops=PHOTOMETRIC_OPS), or give a custom augmentation is_geometric = False."
            )
        if return_boxes and mixup is not None:
            raise ValueError("return_boxes=True with mixup: a mixed image holds two images' objects; drop one of them.")
        self.processor = processor
        self.max_length = max_length
        self.image_augment = image_augment
        self.text_augment = text_augment
        self.mixup = mixup
        self.return_boxes = return_boxes
        self.channels_last = channels_last
        self.cache_images = cache_images
        # image_id -> (processed pixels (3, H, W), input size (width, height))
        self._cache: dict[str, tuple[torch.Tensor, tuple[int, int]]] = {}

    def _check(self, index: int, record: Mapping[str, Any]) -> None:
        missing = [key for key in _REQUIRED_KEYS if key not in record]
        if missing:
            raise KeyError(
                f"record {index} of the batch (image_id {record.get('image_id')!r}) lacks {missing}; records need "
                f"{list(_REQUIRED_KEYS)} (load corpora with load_corpus to get the common schema)."
            )

    def _scaled_boxes(self, boxes: Any, width: int, height: int) -> torch.Tensor:
        boxes = torch.as_tensor(boxes if boxes is not None else [], dtype=torch.float32).reshape(-1, 4)  # (n, 4)
        scale_x, scale_y, offset_x, offset_y, out_w, out_h = processed_frame(self.processor.image_processor, width, height)
        scale = torch.tensor([scale_x, scale_y, scale_x, scale_y])
        offset = torch.tensor([offset_x, offset_y, offset_x, offset_y])
        limit = torch.tensor([out_w, out_h, out_w, out_h], dtype=torch.float32)
        return torch.minimum((boxes * scale - offset).clamp(min=0.0), limit)

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Collates records.

        Args:
            records (`Sequence[Mapping[str, Any]]`): B records in the common schema.

        Returns:
            `dict[str, Any]`: `input_ids`, `attention_mask` (B, T), `pixel_values` (B, 3, H, W), `lang`,
            `image_id`, and `boxes` / `mixup_targets` when enabled (see the class docstring).
        """
        if not records:
            raise ValueError("SeeYouCollator got an empty batch; check the sampler's batch_size and drop_last.")
        images, sizes, captions, langs, image_ids, boxes = [], [], [], [], [], []
        for index, record in enumerate(records):
            self._check(index, record)
            image_id = str(record["image_id"])
            caption, lang = record["caption"], record["lang"]
            if self.text_augment is not None:
                caption, lang = self.text_augment(caption, lang, image_id=image_id)
            if self.cache_images and image_id in self._cache:
                image, size = None, self._cache[image_id][1]
            else:
                image = load_image(record["image"], image_id)
                size = image.size
                if self.image_augment is not None:
                    image = self.image_augment(image)
            if self.return_boxes:
                boxes.append(self._scaled_boxes(record.get("boxes"), *size))
            images.append(image)
            sizes.append(size)
            captions.append(caption)
            langs.append(lang)
            image_ids.append(image_id)
        encoded = self.processor(
            text=captions, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
        )
        batch: dict[str, Any] = {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "pixel_values": self._pixel_values(images, sizes, image_ids),
            "lang": langs,
            "image_id": image_ids,
        }
        if self.return_boxes:
            out_h, out_w = batch["pixel_values"].shape[-2:]
            expected = processed_frame(self.processor.image_processor, *sizes[0])[4:]
            if expected != (out_w, out_h):
                raise ValueError(
                    f"{type(self.processor.image_processor).__name__} produced {out_w}x{out_h} images where the box "
                    f"mapping expects {expected[0]}x{expected[1]}; its resize rule is not supported with return_boxes."
                )
            batch["boxes"] = boxes
        if self.mixup is not None:
            batch["pixel_values"], batch["mixup_targets"] = self.mixup(batch["pixel_values"])
        if self.channels_last:
            batch["pixel_values"] = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
        return batch

    def _pixel_values(
        self, images: list[Image.Image | None], sizes: list[tuple[int, int]], image_ids: list[str]
    ) -> torch.Tensor:
        """Processes the loaded images in one call; with `cache_images`, stores them and takes the rest (`None`
        in `images`) from the cache."""
        loaded = [i for i, image in enumerate(images) if image is not None]
        processed = None
        if loaded:
            processed = self.processor(images=[images[i] for i in loaded], return_tensors="pt")["pixel_values"]
        if not self.cache_images:
            return processed
        for row, i in enumerate(loaded):
            self._cache[image_ids[i]] = (processed[row].clone(), sizes[i])
        return torch.stack([self._cache[image_id][0] for image_id in image_ids])

    def __repr__(self) -> str:
        return (
            f"SeeYouCollator(max_length={self.max_length}, image_augment={self.image_augment!r}, "
            f"text_augment={self.text_augment!r}, mixup={self.mixup!r}, return_boxes={self.return_boxes}, "
            f"channels_last={self.channels_last}, cache_images={self.cache_images})"
        )
