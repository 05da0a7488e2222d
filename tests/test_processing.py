import pytest
import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor

from seeyou_ml import SeeYouProcessor
from seeyou_ml.presets import tiny_processor


def images(n=2, size=40):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)) for _ in range(n)]


def test_processor_output_feeds_the_model(tiny_tokenizer, tiny_model):
    processor = tiny_processor(tiny_tokenizer, image_size=32)
    batch = processor(text=["a red circle", "ein roter Kreis on the left"], images=images(), return_tensors="pt")
    assert set(batch.keys()) == {"input_ids", "attention_mask", "pixel_values"}
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()  # padded to the longest
    out = tiny_model(**batch, return_loss=True)
    assert out.logits_per_image.shape == (2, 2) and torch.isfinite(out.loss)


def test_processor_single_modality_and_truncation(tiny_tokenizer):
    processor = tiny_processor(tiny_tokenizer, image_size=32)
    assert set(processor(text="a red circle").keys()) == {"input_ids", "attention_mask"}
    assert set(processor(images=images(1)).keys()) == {"pixel_values"}
    long = processor(text=["a " * 100], max_length=10)
    assert long["input_ids"].shape == (1, 10) and long["input_ids"][0, -1].item() == tiny_tokenizer.eos_token_id


def test_save_load_round_trip_through_auto_processor(tiny_tokenizer, tiny_model, tmp_path):
    processor = tiny_processor(tiny_tokenizer, image_size=32)
    tiny_model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is SeeYouProcessor
    inputs = dict(text=["a blue star above the square"], images=images(1))
    expected, actual = processor(**inputs), loaded(**inputs)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)
    assert not any(p.suffix in {".bin", ".pt", ".pkl", ".pickle"} for p in tmp_path.iterdir())


# The tokenizer says that max_length does not cut without truncation; the processor checks it instead.
@pytest.mark.filterwarnings("ignore:`max_length` is ignored")
def test_untruncated_caption_longer_than_the_text_tower_names_the_caption_and_the_limit(tiny_tokenizer, tiny_model):
    processor = tiny_processor(tiny_tokenizer, image_size=32)
    captions = ["a red circle", "a blue star " * 20]
    limit = tiny_tokenizer.model_max_length
    with pytest.raises(ValueError, match=rf"caption 1 \('a blue star a blue star .*\.\.\.'\) has \d+ tokens, more "
                                         rf"than the {limit} the text tower has positions for; pass truncation=True"):
        processor(text=captions, truncation=False)
    with pytest.raises(ValueError, match=r"caption 0 \('a red circle'\) has 5 tokens, more than the 3"):
        processor(text=captions[:1], truncation=False, max_length=3)
    # The model names the limit of its own position table for input built without the processor.
    ids = tiny_tokenizer(captions, padding=True, truncation=False, return_tensors="pt")
    with pytest.raises(ValueError, match=r"caption 1 of the batch has \d+ tokens .* positions for 32; tokenise with "
                                         r"truncation=True"):
        tiny_model.get_text_features(**ids)


def _pixels(processor, image):
    return processor(images=[image])["pixel_values"][0]


def test_processor_converts_every_pil_mode_to_rgb_as_clip_does(tiny_tokenizer):
    processor = tiny_processor(tiny_tokenizer, image_size=32)
    rgb = images(1)[0]
    grey = Image.new("L", (40, 40), 90)
    palette = rgb.quantize(colors=16)
    cmyk = rgb.convert("CMYK")
    torch.testing.assert_close(_pixels(processor, grey), _pixels(processor, Image.new("RGB", (40, 40), (90,) * 3)))
    torch.testing.assert_close(_pixels(processor, palette), _pixels(processor, palette.convert("RGB")))
    torch.testing.assert_close(_pixels(processor, cmyk), _pixels(processor, cmyk.convert("RGB")))
    # Transparency is composited onto white (CLIP's convert_to_rgb), not dropped: an invisible red pixel is white.
    half = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    half.paste((0, 0, 255, 255), (0, 0, 20, 40))
    expected = Image.new("RGB", (40, 40), (255, 255, 255))
    expected.paste((0, 0, 255), (0, 0, 20, 40))
    torch.testing.assert_close(_pixels(processor, half), _pixels(processor, expected))
    transparent_palette = Image.new("P", (40, 40), 1)
    transparent_palette.putpalette([0, 0, 0, 255, 0, 0])
    transparent_palette.info["transparency"] = 1
    white = Image.new("RGB", (40, 40), "white")
    torch.testing.assert_close(_pixels(processor, transparent_palette), _pixels(processor, white))


def test_sixteen_bit_images_are_scaled_to_eight_bits_not_clipped(tiny_tokenizer, tmp_path):
    from seeyou_ml.images import load_image
    from seeyou_ml.processing import to_rgb

    processor = tiny_processor(tiny_tokenizer, image_size=32)
    samples = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.uint16).repeat(4, axis=0)  # (4, 4)
    Image.fromarray(samples).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as opened:
        assert opened.mode == "I;16"
        assert np.asarray(to_rgb(opened))[0].tolist() == [[0] * 3, [64] * 3, [128] * 3, [255] * 3]
    assert np.asarray(load_image(str(tmp_path / "grey16.png")))[0, 2].tolist() == [128, 128, 128]
    assert to_rgb(samples)[0].tolist() == [[0] * 3, [64] * 3, [128] * 3, [255] * 3]
    mid_grey = Image.fromarray(np.full((40, 40), 257 * 128, dtype=np.uint16))
    torch.testing.assert_close(_pixels(processor, mid_grey), _pixels(processor, Image.new("RGB", (40, 40), (128,) * 3)))


def test_boxes_map_to_the_processed_frame_and_back():
    from transformers import CLIPImageProcessor

    from seeyou_ml.processing import boxes_from_processed, boxes_to_processed

    # Shortest edge to 32, then a 32 x 32 centre crop: a 64 x 48 image becomes 42 x 32 with 5 px cut on the left.
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    boxes = torch.tensor([[20.0, 10.0, 40.0, 30.0], [30.0, 0.0, 50.0, 48.0]])
    pixels = boxes_to_processed(image_processor, boxes, 64, 48)
    unit = boxes_to_processed(image_processor, boxes, 64, 48, normalized=True)
    torch.testing.assert_close(unit, pixels / 32)
    scale = torch.tensor([42 / 64, 32 / 48, 42 / 64, 32 / 48])
    torch.testing.assert_close(pixels[0], boxes[0] * scale - torch.tensor([5.0, 0.0, 5.0, 0.0]))
    torch.testing.assert_close(boxes_from_processed(image_processor, unit, 64, 48), boxes)
