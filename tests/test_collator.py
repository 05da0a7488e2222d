"""Tests for `seeyou_ml.data.collator`: keys, shapes, padding, image inputs, box scaling and augment hooks."""

from __future__ import annotations

import copy
import io

import datasets
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import CLIPImageProcessorPil, ConvNextImageProcessorPil

from seeyou_ml.data.augment_image import PHOTOMETRIC_OPS, MixUp, RandAugment
from seeyou_ml.data.collator import SeeYouCollator
from seeyou_ml.data.samplers import UniqueImageBatchSampler
from seeyou_ml.geometry import box_xyxy_to_cxcywh
from seeyou_ml.presets import tiny_processor
from seeyou_ml.processing import SeeYouProcessor, boxes_to_processed

CAPTIONS = ["a red circle", "ein roter Kreis left of the blue square", "une étoile"]


def colour_image(seed: int, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def records(n: int = 3, **extra):
    langs = ["en", "de", "fr"]
    return [
        {"image": colour_image(i), "caption": CAPTIONS[i % 3], "lang": langs[i % 3], "image_id": str(100 + i), **extra}
        for i in range(n)
    ]


@pytest.fixture()
def processor(tiny_tokenizer):
    return tiny_processor(tiny_tokenizer, image_size=32)


def test_batch_keys_are_the_forward_arguments(processor, tiny_model):
    batch = SeeYouCollator(processor)(records())
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values", "lang", "image_id"}
    assert batch["lang"] == ["en", "de", "fr"] and batch["image_id"] == ["100", "101", "102"]
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    outputs = tiny_model(**batch, return_loss=True)
    assert outputs.logits_per_image.shape == (3, 3) and torch.isfinite(outputs.loss)


def test_captions_are_padded_to_the_longest(processor, tiny_tokenizer):
    batch = SeeYouCollator(processor)(records())
    lengths = [len(tiny_tokenizer(caption)["input_ids"]) for caption in CAPTIONS]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(-1).tolist() == lengths
    padded = batch["attention_mask"] == 0
    assert padded.any() and (batch["input_ids"][padded] == tiny_tokenizer.pad_token_id).all()


def test_max_length_truncates(processor):
    batch = SeeYouCollator(processor, max_length=5)(records())
    assert batch["input_ids"].shape[1] == 5


def test_images_from_paths_bytes_and_other_modes_match(processor, tmp_path):
    image = colour_image(0)
    path = tmp_path / "image.png"
    image.save(path)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    base = {"caption": "a red circle", "lang": "en", "image_id": "7"}
    sources = [image, str(path), {"bytes": buffer.getvalue(), "path": None}, image.convert("RGBA")]
    batch = SeeYouCollator(processor)([{**base, "image": source} for source in sources])
    for row in range(1, 4):
        torch.testing.assert_close(batch["pixel_values"][row], batch["pixel_values"][0])


def test_unreadable_images_and_incomplete_records_are_named(processor, tmp_path):
    collator = SeeYouCollator(processor)
    bad = {"image": str(tmp_path / "nowhere.jpg"), "caption": "x", "lang": "en", "image_id": "42"}
    with pytest.raises(ValueError, match="image_id '42'"):
        collator([bad])
    with pytest.raises(KeyError, match=r"record 1 of the batch .* lacks \['lang'\]"):
        collator([records(1)[0], {"image": colour_image(1), "caption": "x", "image_id": "9"}])
    with pytest.raises(ValueError, match="empty batch"):
        collator([])


def test_cache_images_processes_each_image_once_with_the_same_pixels(processor, tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        box_image((40, 30), [5 * i, 4, 5 * i + 10, 20]).save(paths[-1])
    rows = [{"image": str(path), "caption": CAPTIONS[i], "lang": "en", "image_id": str(i), "boxes": [[0, 0, 20, 15]]}
            for i, path in enumerate(paths)]
    plain = SeeYouCollator(processor, return_boxes=True)(rows)
    cached = SeeYouCollator(processor, return_boxes=True, cache_images=True)
    assert torch.equal(cached(rows[:2])["pixel_values"], plain["pixel_values"][:2])
    # Images 0 and 1 now come from the cache: their files are no longer read.
    paths[0].unlink()
    paths[1].unlink()
    again = cached([rows[1], rows[2], {**rows[0], "caption": "another caption"}])
    assert torch.equal(again["pixel_values"], plain["pixel_values"][[1, 2, 0]])
    for got, want in zip(again["boxes"], [plain["boxes"][i] for i in (1, 2, 0)]):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="image_id '0'"):
        SeeYouCollator(processor)([rows[0]])
    with pytest.raises(ValueError, match="cache_images=True with image_augment"):
        SeeYouCollator(processor, image_augment=RandAugment(), cache_images=True)


def test_cached_channels_last_batches_have_the_layout_and_pixels_of_converted_ones(processor):
    rows = [{"image": box_image((40, 30), [5 * i, 4, 5 * i + 10, 20]), "caption": CAPTIONS[i], "lang": "en",
             "image_id": str(i)} for i in range(3)]
    plain = SeeYouCollator(processor, channels_last=True)(rows)["pixel_values"]
    cached = SeeYouCollator(processor, channels_last=True, cache_images=True)
    first, again = cached(rows[:2])["pixel_values"], cached(rows[::-1])["pixel_values"]
    for got, want in ((first, plain[:2]), (again, plain[[2, 1, 0]])):
        assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
        assert torch.equal(got, want)


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("max_length", [None, 6])
def test_cache_text_gives_the_processors_batches_and_tokenises_each_text_once(tiny_tokenizer, padding_side,
                                                                              max_length):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.padding_side = padding_side
    processor = tiny_processor(tokenizer, image_size=32)
    rows = records(6, boxes=[[0, 0, 20, 15]])
    for i, row in enumerate(rows):
        row["phrase"] = ["the red circle", "a blue star", "une étoile rouge"][i % 3]
    plain = SeeYouCollator(processor, max_length=max_length, return_phrases=True)
    cached = SeeYouCollator(processor, max_length=max_length, return_phrases=True, cache_text=True)
    keys = ("input_ids", "attention_mask", "phrase_input_ids", "phrase_attention_mask")
    seen = []
    for batch in (rows[:2], rows[1:], rows[::-1]):
        want, got = plain(batch), cached(batch)
        for key in keys:
            assert torch.equal(got[key], want[key]), key
        seen.append(got)
    # Every text is known after the second batch: the third is padded from the cache without the tokenizer.
    tokenizer.__class__ = type("Refusing", (type(tokenizer),), {"__call__": lambda *a, **k: pytest.fail("tokenised")})
    again = cached(rows[::-1])
    for key in keys:
        assert torch.equal(again[key], seen[-1][key]), key
    with pytest.raises(ValueError, match="cache_text=True with text_augment"):
        SeeYouCollator(processor, text_augment=lambda caption, lang, **kwargs: (caption, lang), cache_text=True)


def box_image(size, box) -> Image.Image:
    image = Image.new("RGB", size, (0, 0, 0))
    ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 255, 255))
    return image


def bright_region(pixel_values: torch.Tensor, image_processor) -> list[float]:
    """[x0, y0, x1, y1] of the pixels brighter than mid-grey in a processed (normalised) image."""
    red = pixel_values[0] * image_processor.image_std[0] + image_processor.image_mean[0]  # (H, W)
    ys, xs = torch.nonzero(red > 0.5, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


@pytest.mark.parametrize(
    "image_processor, expected",
    [
        # Resize 80x40 to 32x32: x * 0.4, y * 0.8.
        (None, [16.0, 8.0, 28.0, 24.0]),
        # ConvNeXT/ResNet: short side to int(32 / 0.875) = 36 (72x36), centre crop 32x32 at (20, 2).
        (ConvNextImageProcessorPil(size={"shortest_edge": 32}), [16.0, 7.0, 32.0, 25.0]),
        # CLIP: short side to 32 (64x32), centre crop 32x32 at (16, 0).
        (CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), [16.0, 8.0, 32.0, 24.0]),
    ],
    ids=["resize", "convnext-crop-pct", "clip-center-crop"],
)
def test_boxes_land_on_their_objects_in_the_processed_frame(processor, tiny_tokenizer, image_processor, expected):
    if image_processor is not None:
        processor = SeeYouProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer)
    box = [40, 10, 70, 30]
    record = {"image": box_image((80, 40), box), "caption": "a star", "lang": "en", "image_id": "1", "boxes": [box]}
    batch = SeeYouCollator(processor, return_boxes=True)([record, {**record, "boxes": None}])
    torch.testing.assert_close(batch["boxes"][0], torch.tensor([expected]))
    assert batch["boxes"][1].shape == (0, 4)
    # The mapped box matches where the object actually is, up to a pixel of resampling blur.
    region = bright_region(batch["pixel_values"][0], processor.image_processor)
    np.testing.assert_allclose(region, expected, atol=1.0)


def test_boxes_stay_off_by_default(processor):
    assert "boxes" not in SeeYouCollator(processor)(records(2, boxes=[[0, 0, 5, 5]]))


def test_return_boxes_refuses_augmentations_that_move_pixels(processor):
    with pytest.raises(ValueError, match="PHOTOMETRIC_OPS"):
        SeeYouCollator(processor, image_augment=RandAugment(), return_boxes=True)
    with pytest.raises(ValueError, match="mixup"):
        SeeYouCollator(processor, mixup=MixUp(), return_boxes=True)
    # Photometric operations keep every pixel where it is, so the boxes are those of the plain batch.
    rows = records(2, boxes=[[4, 2, 20, 12]])
    photometric = SeeYouCollator(processor, image_augment=RandAugment(num_ops=2, magnitude=9, ops=PHOTOMETRIC_OPS),
                                 return_boxes=True)(rows)
    plain = SeeYouCollator(processor, return_boxes=True)(rows)
    for got, want in zip(photometric["boxes"], plain["boxes"]):
        torch.testing.assert_close(got, want)
    assert not torch.equal(photometric["pixel_values"], plain["pixel_values"])


def test_image_augment_runs_before_processing(processor):
    augment = RandAugment(num_ops=2, magnitude=10)
    torch.manual_seed(0)
    batch = SeeYouCollator(processor, image_augment=augment)(records(2))
    torch.manual_seed(0)
    expected = [augment(record["image"]) for record in records(2)]
    torch.testing.assert_close(batch["pixel_values"], processor(images=expected)["pixel_values"])
    assert not torch.allclose(batch["pixel_values"], processor(images=[r["image"] for r in records(2)])["pixel_values"])


def test_text_augment_may_change_the_language(processor, tiny_tokenizer):
    def to_french(caption, lang, image_id=None, generator=None):
        return ("une étoile", "fr") if image_id == "100" else (caption, lang)

    batch = SeeYouCollator(processor, text_augment=to_french)(records(2))
    assert batch["lang"] == ["fr", "de"]
    expected = tiny_tokenizer("une étoile")["input_ids"]
    assert batch["input_ids"][0, : len(expected)].tolist() == expected


def test_mixup_adds_soft_targets(processor):
    torch.manual_seed(0)
    plain = SeeYouCollator(processor)(records())
    batch = SeeYouCollator(processor, mixup=MixUp(alpha=1.0))(records())
    targets = batch["mixup_targets"]
    assert targets.shape == (3, 3)
    torch.testing.assert_close(targets.sum(-1), torch.ones(3))
    # Each mixed image is the targets-weighted combination of the plain images.
    torch.testing.assert_close(batch["pixel_values"], torch.einsum("ij,jchw->ichw", targets, plain["pixel_values"]))


def test_collator_and_sampler_feed_a_dataloader(processor):
    rows = records(6)
    dataset = datasets.Dataset.from_list(
        [{**row, "image_id": str(i // 2)} for i, row in enumerate(rows)]  # two captions per image
    )
    sampler = UniqueImageBatchSampler.from_dataset(dataset, batch_size=3, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=SeeYouCollator(processor))
    batches = list(loader)
    assert sum(len(batch["image_id"]) for batch in batches) == 6
    for batch in batches:
        assert len(set(batch["image_id"])) == len(batch["image_id"])
        assert batch["pixel_values"].shape[1:] == (3, 32, 32)


def test_mention_token_masks_mark_the_tokens_of_each_named_object_and_boxes_follow_the_image(processor):
    tokenizer = processor.tokenizer
    rows = records(2)
    rows[0].update(caption="a red circle left of the blue square", mention_spans=[[0, 12], [21, 36]],
                   mention_boxes=[[0, 0, 20, 15], [20, 15, 40, 30]])
    rows[1].update(caption="une étoile", mention_spans=[[0, 10]], mention_boxes=[[10, 5, 30, 25]])
    batch = SeeYouCollator(processor, return_mentions=True)(rows)
    mask = batch["mention_token_mask"]
    assert mask.shape == (2, 2, batch["input_ids"].shape[1]) and mask.dtype == torch.bool
    named = [[tokenizer.decode(batch["input_ids"][r][mask[r, m]]) for m in range(2)] for r in range(2)]
    assert named == [["a red circle", "the blue square"], ["une étoile", ""]]  # the second row has one object
    # 40 x 30 images resized and centre-cropped to 32 x 32: the input's middle 40 x 30 -> x scaled by 32/30, cropped.
    expected = box_xyxy_to_cxcywh(boxes_to_processed(processor.image_processor, torch.tensor(
        [[0.0, 0, 20, 15], [20, 15, 40, 30]]), 40, 30, normalized=True))
    torch.testing.assert_close(batch["mention_boxes"][0], expected)
    assert batch["mention_boxes"].shape == (2, 2, 4)
    cached = SeeYouCollator(processor, return_mentions=True, cache_text=True)
    for _ in range(2):  # tokenised, then from the cache
        torch.testing.assert_close(cached(rows)["mention_token_mask"], mask)


@pytest.mark.parametrize(("change", "message"), [
    ({"mention_spans": None}, "has no `mention_spans`; return_mentions needs it"),
    ({"mention_spans": [[0, 40]]}, r"mention span \[0, 40\) outside its 12-character caption"),
    ({"mention_boxes": []}, "1 mention_spans and 0 mention_boxes"),
])
def test_bad_mentions_are_named(processor, change, message):
    row = dict(records(1)[0], mention_spans=[[0, 5]], mention_boxes=[[0, 0, 5, 5]])
    row.update(change)
    with pytest.raises(ValueError, match=message):
        SeeYouCollator(processor, return_mentions=True)([row])


def test_mentions_refuse_text_augmentation(processor):
    from seeyou_ml.data.augment_text import SynonymReplacement

    with pytest.raises(ValueError, match="return_mentions=True with text_augment"):
        SeeYouCollator(processor, return_mentions=True, text_augment=SynonymReplacement({"en": {}}, p=0.5))


def test_negative_captions_are_tokenised_per_record_and_padded_with_a_mask(processor):
    rows = records(2)
    rows[0]["negative_captions"] = ["a blue circle", "a red square", "a red star"]
    rows[1]["negative_captions"] = ["une cercle"]
    batch = SeeYouCollator(processor, return_negative_captions=True)(rows)
    assert batch["negative_input_ids"].shape[:2] == (2, 3)
    assert batch["negative_caption_mask"].tolist() == [[True, True, True], [True, False, False]]
    texts = rows[0]["negative_captions"] + ["une cercle", "", ""]
    expected = processor(text=texts, return_tensors="pt", padding=True)
    torch.testing.assert_close(batch["negative_input_ids"].flatten(0, 1), expected["input_ids"])
    torch.testing.assert_close(batch["negative_attention_mask"].flatten(0, 1), expected["attention_mask"])
    with pytest.raises(ValueError, match="has no `negative_captions`; return_negative_captions needs it"):
        SeeYouCollator(processor, return_negative_captions=True)(records(1))
