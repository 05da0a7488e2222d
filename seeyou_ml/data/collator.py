"""`SeeYouCollator`: turns a list of corpus records into a batch that `SeeYouModel.forward` takes as is.

Records follow the common schema (`image`, `caption`, `lang`, `image_id`, optional `boxes` + `phrase`). The
collator loads each image, applies the text and image augmentations, runs the processor (tokenise + pad, resize +
normalise) and, when asked, maps boxes into the processed image's pixel frame and mixes the batch with MixUp.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from ..images import load_image
from ..geometry import box_xyxy_to_cxcywh
from ..processing import boxes_to_processed, processed_frame
from .augment_image import MixUp
from .augment_text import TextAugment

__all__ = ["SeeYouCollator"]

_REQUIRED_KEYS = ("image", "caption", "lang", "image_id")


class SeeYouCollator:
    """Collates corpus records into `SeeYouModel` inputs, with optional augmentations.

    The batch's keys are `forward`'s arguments, so `model(**batch)` works: `input_ids` and `attention_mask`
    (B, T) padded to the longest caption, `pixel_values` (B, 3, H, W), `lang` and `image_id` (lists of B strings).
    Optional keys, which the trainer pops before calling the model:

    - `boxes` (with `return_boxes=True`): list of B float tensors (n_i, 4), `[x0, y0, x1, y1]` in the processed
      image's pixels (clipped to it); (0, 4) for records without boxes.
    - `phrase_input_ids`, `phrase_attention_mask` (B, P) and `phrase_boxes` (B, 4) (with `return_phrases=True`): each
      record's referring expression (`phrase`) tokenised, and its first box as `(cx, cy, w, h)` in [0, 1] of the
      processed image; the first two are `forward` arguments, the boxes are read by the grounding losses.
    - `mention_token_mask` (B, M, T) and `mention_boxes` (B, M, 4) (with `return_mentions=True`): for each of the
      objects a caption names (the corpus's `mention_spans`, `[start, end)` characters of the caption, and
      `mention_boxes`, in the input image's pixels), the caption tokens that name it and its box as `(cx, cy, w, h)` in
      [0, 1] of the processed image; a record with fewer than M mentions (or a mention truncated away) has all-zero
      masks in the rest, which the loss skips. The mask is a `forward` argument, the boxes are read by the loss.
    - `negative_input_ids`, `negative_attention_mask` (B, N, T) and `negative_caption_mask` (B, N) (with
      `return_negative_captions=True`): each record's captions that are false of its image (the corpus's
      `negative_captions`), tokenised; a record with fewer than N has empty texts in the rest, marked `False` in
      `negative_caption_mask`. The first two are `forward` arguments, the mask is read by the matching loss.
    - `mixup_targets` (with `mixup`): (B, B) soft image-to-text targets for `seeyou_ml.losses.soft_contrastive_loss`; rows sum to 1.

    Augmentations draw from the global torch RNG, which `DataLoader` seeds per worker; pass `generator=` to the
    DataLoader for reproducible runs.

    Args:
        processor ([`SeeYouProcessor`]): Tokenizer + image processor.
        max_length (`int`, *optional*): Longest caption in tokens; the tokenizer's `model_max_length` when omitted.
        image_augment (`Callable[[PIL.Image.Image], PIL.Image.Image]`, *optional*): E.g. [`RandAugment`].
        text_augment ([`TextAugment`], *optional*): E.g. [`SynonymReplacement`], [`BackTranslation`] or a
            [`SequentialTextAugment`] of both; it may change a caption's language, and `lang` reports the new one.
        mixup ([`MixUp`], *optional*): Mixes the processed images and adds `mixup_targets`.
        return_boxes (`bool`, *optional*, defaults to `False`): Add `boxes`.
        return_phrases (`bool`, *optional*, defaults to `False`): Add the referring expressions and their boxes; every
            record then needs a `phrase` and at least one box.
        return_mentions (`bool`, *optional*, defaults to `False`): Add the token masks and boxes of the objects each
            caption names; every record then needs `mention_spans` and `mention_boxes` (the scenes corpus has them).
        return_negative_captions (`bool`, *optional*, defaults to `False`): Add each record's negative captions; every
            record then needs a `negative_captions` list (the scenes corpus has them).
        channels_last (`bool`, *optional*, defaults to `False`): Return `pixel_values` in channels-last memory
            layout (same values), for a vision tower whose weights are channels-last.
        cache_images (`bool`, *optional*, defaults to `False`): Keep every image's processed pixels, keyed by
            `image_id`, and reuse them when a caption of the same image comes again (a corpus with ten captions per
            image then loads and processes each image once instead of ten times). Holds `4 * 3 * H * W` bytes per
            image in each process that collates; not with `image_augment`, which draws new pixels every time.
        cache_text (`bool`, *optional*, defaults to `False`): Keep every caption's (and referring expression's) token
            ids, keyed by the text, and only pad them when the text comes again; the batch is the processor's. Holds
            the ids of every distinct text in each process that collates; not with `text_augment`, whose captions
            are new every time.

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
        return_phrases: bool = False,
        cache_text: bool = False,
        return_mentions: bool = False,
        return_negative_captions: bool = False,
    ):
        if cache_text and text_augment is not None:
            raise ValueError(
                f"cache_text=True with text_augment={text_augment!r}: every augmented caption would stay in the cache; "
                "drop one of them."
            )
        if cache_images and image_augment is not None:
            raise ValueError(
                f"cache_images=True with image_augment={image_augment!r}: cached pixels would repeat one augmented "
                "draw; drop one of them."
            )
        if return_mentions and text_augment is not None:
            raise ValueError(f"return_mentions=True with text_augment={text_augment!r}: an augmented caption's words "
                             "move, and the mention spans would name others; drop one of them.")
        boxes_flag = next((name for name, on in (("return_boxes", return_boxes), ("return_phrases", return_phrases),
                                                 ("return_mentions", return_mentions)) if on), None)
        if boxes_flag and image_augment is not None and getattr(image_augment, "is_geometric", True):
            raise ValueError(
                f"{boxes_flag}=True with image_augment={image_augment!r}, which may move pixels and leave the boxes "
                "behind; use RandAugment(ops=PHOTOMETRIC_OPS), or give a custom augmentation is_geometric = False."
            )
        if boxes_flag and mixup is not None:
            raise ValueError(f"{boxes_flag}=True with mixup: a mixed image holds two images' objects; drop one of them.")
        self.processor = processor
        self.max_length = max_length
        self.image_augment = image_augment
        self.text_augment = text_augment
        self.mixup = mixup
        self.return_boxes = return_boxes
        self.return_phrases = return_phrases
        self.channels_last = channels_last
        self.cache_images = cache_images
        self.cache_text = cache_text
        self.return_mentions = return_mentions
        self.return_negative_captions = return_negative_captions
        # image_id -> (processed pixels (3, H, W), input size (width, height))
        self._cache: dict[str, tuple[torch.Tensor, tuple[int, int]]] = {}
        # text -> token ids (special tokens included, truncated as the processor would)
        self._token_cache: dict[str, list[int]] = {}
        # caption -> each token's [start, end) characters (return_mentions with cache_text)
        self._offset_cache: dict[str, list[tuple[int, int]]] = {}

    @property
    def draws_random(self) -> bool:
        """Whether collating draws random numbers (from the global torch RNG): with any augmentation."""
        return any(a is not None for a in (self.image_augment, self.text_augment, self.mixup))

    @property
    def columns(self) -> list[str]:
        """The record keys this collator reads; a loader may hand out only these (see `select_columns`)."""
        columns = list(_REQUIRED_KEYS)
        if self.return_boxes or self.return_phrases:
            columns.append("boxes")
        if self.return_phrases:
            columns.append("phrase")
        if self.return_mentions:
            columns += ["mention_spans", "mention_boxes"]
        if self.return_negative_captions:
            columns.append("negative_captions")
        return columns

    def _check(self, index: int, record: Mapping[str, Any]) -> None:
        missing = [key for key in _REQUIRED_KEYS if key not in record]
        if missing:
            raise KeyError(
                f"record {index} of the batch (image_id {record.get('image_id')!r}) lacks {missing}; records need "
                f"{list(_REQUIRED_KEYS)} (load corpora with load_corpus to get the common schema)."
            )

    @staticmethod
    def _phrase(index: int, record: Mapping[str, Any]) -> tuple[str, Sequence[float]]:
        """The record's referring expression and its first box, in the input image's pixels."""
        phrase, boxes = record.get("phrase"), record.get("boxes")
        if not phrase or not boxes:
            raise ValueError(
                f"record {index} of the batch (image_id {record.get('image_id')!r}) has no referring expression "
                "(`phrase` and `boxes`); return_phrases needs both in every record (the scenes corpus has them)."
            )
        return phrase, boxes[0]

    @staticmethod
    def _record_list(index: int, record: Mapping[str, Any], key: str, flag: str) -> list:
        values = record.get(key)
        if values is None:
            raise ValueError(f"record {index} of the batch (image_id {record.get('image_id')!r}) has no `{key}`; "
                             f"{flag} needs it in every record (the scenes corpus has it).")
        return list(values)

    def _mentions(self, index: int, record: Mapping[str, Any], caption: str) -> tuple[list, list]:
        """The record's mention spans (checked against its caption) and their boxes."""
        spans = self._record_list(index, record, "mention_spans", "return_mentions")
        boxes = self._record_list(index, record, "mention_boxes", "return_mentions")
        if len(spans) != len(boxes):
            raise ValueError(f"record {index} of the batch (image_id {record.get('image_id')!r}) has {len(spans)} "
                             f"mention_spans and {len(boxes)} mention_boxes; give one box per span.")
        for start, end in spans:
            if not 0 <= start < end <= len(caption):
                raise ValueError(f"record {index} of the batch (image_id {record.get('image_id')!r}) has the mention "
                                 f"span [{start}, {end}) outside its {len(caption)}-character caption; spans are "
                                 "[start, end) characters of `caption`.")
        return spans, boxes

    def _token_offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Each text's tokens as `[start, end)` characters (special tokens `(0, 0)`), tokenised as `_encode_texts`
        does; with `cache_text`, each text once."""
        tokenizer = self.processor.tokenizer
        cache = self._offset_cache if self.cache_text else {}
        missing = [text for text in dict.fromkeys(texts) if text not in cache]
        if missing:
            if not getattr(tokenizer, "is_fast", False):
                raise ValueError(f"return_mentions needs a fast tokenizer (offset mappings); "
                                 f"{type(tokenizer).__name__} is not one.")
            encoded = tokenizer(missing, truncation=True, max_length=self.max_length, return_offsets_mapping=True,
                                return_attention_mask=False, return_token_type_ids=False)
            cache.update(zip(missing, encoded["offset_mapping"]))
        return [cache[text] for text in texts]

    def _mention_token_mask(self, captions: list[str], spans: list[list], length: int) -> torch.Tensor:
        """(B, M, T) True on the caption tokens that overlap each mention's characters."""
        mask = torch.zeros(len(captions), max(1, max(map(len, spans))), length, dtype=torch.bool)
        left = self.processor.tokenizer.padding_side == "left"
        for row, (offsets, row_spans) in enumerate(zip(self._token_offsets(captions), spans)):
            if not row_spans:
                continue
            offsets = torch.tensor(offsets, dtype=torch.long).reshape(-1, 2)  # (L, 2)
            start = length - offsets.shape[0] if left else 0
            bounds = torch.tensor(row_spans, dtype=torch.long)  # (m, 2)
            token = offsets[None, :, 1] > offsets[None, :, 0]  # (1, L), special tokens cover no characters
            overlap = (offsets[None, :, 0] < bounds[:, 1:]) & (offsets[None, :, 1] > bounds[:, :1])  # (m, L)
            mask[row, : len(row_spans), start : start + offsets.shape[0]] = overlap & token
        return mask

    def _negative_captions(self, captions: list[list[str]]) -> dict[str, torch.Tensor]:
        """`negative_input_ids`, `negative_attention_mask` (B, N, T) and `negative_caption_mask` (B, N)."""
        count = max(1, max(map(len, captions)))
        flat = [row[i] if i < len(row) else "" for row in captions for i in range(count)]
        input_ids, attention_mask = self._encode_texts(flat)
        present = torch.tensor([[i < len(row) for i in range(count)] for row in captions], dtype=torch.bool)
        shape = (len(captions), count, input_ids.shape[-1])
        return {"negative_input_ids": input_ids.view(shape), "negative_attention_mask": attention_mask.view(shape),
                "negative_caption_mask": present}

    def _phrase_boxes(self, boxes: list[Sequence[float]], sizes: list[tuple[int, int]]) -> torch.Tensor:
        """(B, 4) `(cx, cy, w, h)` in [0, 1] of the processed images, mapped once per distinct input size."""
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)  # (B, 4) x0, y0, x1, y1 in input pixels
        out = torch.empty_like(boxes)
        for size in dict.fromkeys(sizes):
            rows = [i for i, s in enumerate(sizes) if s == size]
            out[rows] = boxes_to_processed(self.processor.image_processor, boxes[rows], *size, normalized=True)
        return box_xyxy_to_cxcywh(out)

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
        phrases, phrase_boxes, mention_spans, mention_boxes, negatives = [], [], [], [], []
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
                boxes.append(boxes_to_processed(self.processor.image_processor, record.get("boxes"), *size))
            if self.return_phrases:
                phrase, box = self._phrase(index, record)
                phrases.append(phrase)
                phrase_boxes.append(box)
            if self.return_mentions:
                spans, object_boxes = self._mentions(index, record, caption)
                mention_spans.append(spans)
                mention_boxes.append(object_boxes)
            if self.return_negative_captions:
                negatives.append(self._record_list(index, record, "negative_captions", "return_negative_captions"))
            images.append(image)
            sizes.append(size)
            captions.append(caption)
            langs.append(lang)
            image_ids.append(image_id)
        input_ids, attention_mask = self._encode_texts(captions)
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
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
        if self.return_phrases:
            batch["phrase_input_ids"], batch["phrase_attention_mask"] = self._encode_texts(phrases)
            batch["phrase_boxes"] = self._phrase_boxes(phrase_boxes, sizes)  # (B, 4)
        if self.return_mentions:
            batch["mention_token_mask"] = self._mention_token_mask(captions, mention_spans, input_ids.shape[-1])
            count = batch["mention_token_mask"].shape[1]
            padded = [list(row) + [[0.0, 0.0, 1.0, 1.0]] * (count - len(row)) for row in mention_boxes]
            boxes_flat = self._phrase_boxes([box for row in padded for box in row],
                                            [size for size in sizes for _ in range(count)])
            batch["mention_boxes"] = boxes_flat.view(len(records), count, 4)  # (B, M, 4)
        if self.return_negative_captions:
            batch.update(self._negative_captions(negatives))
        if self.mixup is not None:
            batch["pixel_values"], batch["mixup_targets"] = self.mixup(batch["pixel_values"])
        if self.channels_last:
            batch["pixel_values"] = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
        return batch

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """`input_ids` and `attention_mask` (B, T) of `texts`, padded to the longest; with `cache_text`, only the
        texts not seen before are tokenised."""
        if not self.cache_text:
            encoded = self.processor(
                text=texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
            )
            return encoded["input_ids"], encoded["attention_mask"]
        tokenizer = self.processor.tokenizer
        missing = [text for text in dict.fromkeys(texts) if text not in self._token_cache]
        if missing:
            encoded = tokenizer(missing, truncation=True, max_length=self.max_length, return_attention_mask=False,
                                return_token_type_ids=False)
            self._token_cache.update(zip(missing, encoded["input_ids"]))
        padded = tokenizer.pad({"input_ids": [self._token_cache[text] for text in texts]}, return_tensors="pt")
        return padded["input_ids"], padded["attention_mask"]

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
            # Channels-last batches are kept as (H, W, 3): their stack is the batch's memory layout, without the
            # transposing copy that converting a (B, 3, H, W) stack costs.
            pixels = processed[row].permute(1, 2, 0) if self.channels_last else processed[row]
            self._cache[image_ids[i]] = (pixels.clone(memory_format=torch.contiguous_format), sizes[i])
        stacked = torch.stack([self._cache[image_id][0] for image_id in image_ids])
        return stacked.permute(0, 3, 1, 2) if self.channels_last else stacked

    def __repr__(self) -> str:
        return (
            f"SeeYouCollator(max_length={self.max_length}, image_augment={self.image_augment!r}, "
            f"text_augment={self.text_augment!r}, mixup={self.mixup!r}, return_boxes={self.return_boxes}, "
            f"channels_last={self.channels_last}, cache_images={self.cache_images}, "
            f"return_phrases={self.return_phrases}, cache_text={self.cache_text}, "
            f"return_mentions={self.return_mentions}, return_negative_captions={self.return_negative_captions})"
        )
