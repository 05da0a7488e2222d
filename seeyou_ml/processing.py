"""`SeeYouProcessor`: one object that turns images and captions into the inputs of `SeeYouModel`."""

from __future__ import annotations

from transformers import BatchFeature, ProcessorMixin


class SeeYouProcessor(ProcessorMixin):
    r"""Wraps an image processor and a tokenizer into a single processor.

    `processor(text=..., images=..., return_tensors="pt")` returns exactly the keys `SeeYouModel.forward` takes:
    `input_ids`, `attention_mask` and `pixel_values` (either modality may be left out).

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
            images: one PIL image / array or a list of them.
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

__all__ = ["SeeYouProcessor"]
