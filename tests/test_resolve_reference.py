"""`resolve_reference`: spans from a token classifier, candidate boxes from an object detector, both tiny models built
from configs whose outputs are set by least squares, so the spans and boxes they give are known."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    BertConfig,
    BertForTokenClassification,
    PreTrainedTokenizerFast,
    YolosConfig,
    YolosForObjectDetection,
    pipeline,
)
from transformers.models.yolos.image_processing_pil_yolos import YolosImageProcessorPil

from seeyou_ml import SeeYouModel, resolve_reference
from seeyou_ml.grounding import attention_mass, ground
from seeyou_ml.presets import tiny_config, tiny_processor

from test_grounding import HEAD, _centred_model

SENTENCE = "look at the red circle left of the blue square"
REFERENCES = ["the red circle", "the blue square"]
TAGS = ["O", "B-REF", "I-REF"]
# 160 x 96 px: the processor's 32 px square and the head's 4 x 4 grid make every cell 40 x 24 original pixels.
WIDTH, HEIGHT = 160, 96
DETECTED = [[20.0, 30.0, 80.0, 90.0], [100.0, 10.0, 150.0, 70.0]]  # what the detector is made to find


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _fit_last_layer(layer: torch.nn.Linear, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Sets a linear layer so that its (N, I) inputs give exactly the (N, O) targets (minimum-norm least squares)."""
    design = torch.cat([inputs, torch.ones(len(inputs), 1)], dim=1)  # (N, I + 1), the bias as a last input
    solution = torch.linalg.pinv(design) @ targets  # (I + 1, O)
    with torch.no_grad():
        layer.weight.copy_(solution[:-1].T)
        layer.bias.copy_(solution[-1])


def _word_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {token: i for i, token in enumerate(special + sorted(set(SENTENCE.split())))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]")


def _token_classifier(folder, tags: list[str] | None) -> str:
    """A tiny BERT tagger saved to `folder` that gives SENTENCE's words `tags` (None: every token `O`)."""
    tokenizer = _word_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, id2label=dict(enumerate(TAGS)),
                        label2id={tag: i for i, tag in enumerate(TAGS)})
    torch.manual_seed(0)
    model = BertForTokenClassification(config).eval()
    encoded = tokenizer(SENTENCE, return_tensors="pt")
    with torch.no_grad():
        states = model.bert(**encoded).last_hidden_state[0]  # (T, 16), [CLS] and [SEP] included
    labels = torch.zeros(len(states), dtype=torch.long)
    if tags is not None:
        labels[1:-1] = torch.tensor([TAGS.index(tag) for tag in tags])
    targets = torch.full((len(states), len(TAGS)), -10.0)
    targets[torch.arange(len(states)), labels] = 10.0
    _fit_last_layer(model.classifier, states, targets)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def ner_folder(tmp_path_factory):
    # look at [the red circle] left of [the blue square]
    tags = ["O", "O", "B-REF", "I-REF", "I-REF", "O", "O", "B-REF", "I-REF", "I-REF"]
    return _token_classifier(tmp_path_factory.mktemp("ner"), tags)


@pytest.fixture(scope="module")
def detector_folder(tmp_path_factory):
    """A tiny YOLOS whose detection tokens 0 and 1 find DETECTED in `_noise(WIDTH, HEIGHT)` and token 2 nothing."""
    folder = tmp_path_factory.mktemp("detector")
    config = YolosConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         image_size=[32, 32], patch_size=8, num_detection_tokens=3, id2label={0: "object"},
                         label2id={"object": 0})
    torch.manual_seed(0)
    model = YolosForObjectDetection(config).eval()
    with torch.no_grad():
        model.vit.embeddings.detection_tokens.normal_()  # distinct tokens, else their states coincide
    image_processor = YolosImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 64})
    pixel_values = image_processor(images=[_noise(WIDTH, HEIGHT)], return_tensors="pt")["pixel_values"]
    assert tuple(pixel_values.shape[-2:]) != (HEIGHT, WIDTH)
    heads = {"class": model.class_labels_classifier.layers[-1], "box": model.bbox_predictor.layers[-1]}
    inputs = {}  # what each last layer reads: (3 detection tokens, 16)

    def keep(name: str):
        return lambda module, args: inputs.__setitem__(name, args[0][0])

    hooks = [layer.register_forward_pre_hook(keep(name)) for name, layer in heads.items()]
    with torch.no_grad():
        model(pixel_values=pixel_values)
    for hook in hooks:
        hook.remove()
    corners = torch.tensor(DETECTED) / torch.tensor([WIDTH, HEIGHT, WIDTH, HEIGHT])  # (2, 4) in [0, 1]
    centred = torch.cat([(corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]], dim=1)
    _fit_last_layer(heads["box"], inputs["box"], torch.cat([torch.logit(centred), torch.zeros(1, 4)]))
    # Classes: "object", then the no-object class every DETR-style head ends with.
    _fit_last_layer(heads["class"], inputs["class"], torch.tensor([[10.0, -10.0], [10.0, -10.0], [-10.0, 10.0]]))
    model.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture()
def head_model(tiny_tokenizer):
    """A tiny model with a grounding head whose attention is not uniform."""
    torch.manual_seed(1)
    return SeeYouModel(tiny_config(vocab_size=len(tiny_tokenizer), vision_widths=(8, 16), max_text_length=32,
                                   grounding_config=HEAD)).eval()


def _pixel_mass(attention: torch.Tensor, box) -> float:
    """A (4, 4) map spread evenly over the 40 x 24 original pixels of each cell, summed over an integer box."""
    per_pixel = attention.repeat_interleave(HEIGHT // 4, 0).repeat_interleave(WIDTH // 4, 1) / (WIDTH * HEIGHT / 16)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return float(per_pixel[y0:y1, x0:x1].sum())


def test_attention_mass_is_the_map_summed_over_the_pixels_of_the_box():
    attention = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(0)).flatten(1).softmax(-1).view(2, 4, 4)
    boxes = [[0, 0, 160, 96], [40, 48, 120, 96], [20, 12, 60, 36], [0, 0, 0, 96], [-40, -24, 40, 24]]
    unit = torch.tensor(boxes, dtype=torch.float32) / torch.tensor([WIDTH, HEIGHT, WIDTH, HEIGHT])
    mass = attention_mass(attention, unit)
    clipped = [[max(v, 0) for v in box] for box in boxes]  # outside the frame holds nothing
    expected = torch.tensor([[_pixel_mass(a, box) for box in clipped] for a in attention])
    torch.testing.assert_close(mass, expected)
    torch.testing.assert_close(mass[:, 0], torch.ones(2))
    assert (mass[:, 3] == 0).all()


def test_the_whole_text_is_scored_in_the_heads_box_by_attention_mass_and_crop_similarity(tiny_tokenizer):
    model = _centred_model(tiny_tokenizer)  # uniform attention, box = the middle half of the image
    processor = tiny_processor(tiny_tokenizer, image_size=32)
    image, text = _noise(128, 96), "a red circle"
    [(span, box, score)] = resolve_reference(image, text, model, processor)
    assert span == text
    assert box == pytest.approx((32.0, 24.0, 96.0, 72.0), abs=1e-4)
    with torch.no_grad():
        crop = model.get_image_features(processor(images=[image.crop((32, 24, 96, 72))])["pixel_values"])
        phrase = model.get_text_features(**processor(text=[text])).pooler_output
    cosine = float(crop.pooler_output[0] @ phrase[0])
    # A uniform map puts a quarter of its mass in a box of a quarter of the image.
    assert score == pytest.approx(0.5 * 0.25 + 0.5 * (1 + cosine) / 2, abs=1e-5)
    [(_, _, mass_only)] = resolve_reference(image, text, model, processor, attention_weight=1.0)
    [(_, _, similarity_only)] = resolve_reference(image, text, model, processor, attention_weight=0.0)
    assert mass_only == pytest.approx(0.25, abs=1e-5)
    assert similarity_only == pytest.approx((1 + cosine) / 2, abs=1e-5)


def test_phrases_are_grounded_in_their_own_boxes_best_first(head_model, tiny_tokenizer):
    processor = tiny_processor(tiny_tokenizer, image_size=32)
    image = _noise(WIDTH, HEIGHT)
    phrases = ["the blue square", "a star", "the blue square"]  # a repeated phrase is grounded once
    found = resolve_reference(image, SENTENCE, head_model, processor, phrases=phrases)
    assert sorted(span for span, _, _ in found) == ["a star", "the blue square"]
    scores = [score for _, _, score in found]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    alone = ground(head_model, processor, [image, image], ["the blue square", "a star"])
    by_span = {span: box for span, box, _ in found}
    torch.testing.assert_close(torch.tensor([by_span["the blue square"], by_span["a star"]]), alone.boxes,
                               atol=1e-4, rtol=1e-4)


def test_ner_spans_are_the_words_the_token_classifier_tags(ner_folder, head_model, tiny_tokenizer):
    processor = tiny_processor(tiny_tokenizer, image_size=32)
    found = resolve_reference(_noise(WIDTH, HEIGHT), SENTENCE, head_model, processor, ner=ner_folder)
    assert sorted(span for span, _, _ in found) == sorted(REFERENCES)


def test_ner_that_finds_nothing_grounds_the_whole_text(tmp_path, head_model, tiny_tokenizer):
    tagger = pipeline("token-classification", model=_token_classifier(tmp_path / "none", None),
                      aggregation_strategy="simple")
    assert tagger(SENTENCE) == []
    found = resolve_reference(_noise(WIDTH, HEIGHT), SENTENCE, head_model, tiny_processor(tiny_tokenizer, 32),
                              ner=tagger)
    assert [span for span, _, _ in found] == [SENTENCE]


def test_detector_boxes_are_the_candidates_in_original_pixels_scored_by_attention_mass(
    detector_folder, ner_folder, head_model, tiny_tokenizer
):
    processor = tiny_processor(tiny_tokenizer, image_size=32)
    image = _noise(WIDTH, HEIGHT)
    found = resolve_reference(image, SENTENCE, head_model, processor, ner=ner_folder, detector=detector_folder,
                              attention_weight=1.0)
    assert len(found) == len(REFERENCES) * len(DETECTED)  # every span against every box
    for span in REFERENCES:
        boxes = sorted(box for s, box, _ in found if s == span)
        # The pipeline truncates its boxes to whole pixels.
        torch.testing.assert_close(torch.tensor(boxes), torch.tensor(DETECTED), atol=1.0, rtol=0.0)
    attention = dict(zip(REFERENCES, ground(head_model, processor, [image] * 2, REFERENCES).attention))
    expected = [_pixel_mass(attention[span], box) for span, box, _ in found]
    assert [score for _, _, score in found] == pytest.approx(expected, abs=1e-5)
    assert expected == sorted(expected, reverse=True) and len(set(expected)) == len(expected)


def test_a_detector_that_finds_nothing_leaves_the_heads_boxes(detector_folder, head_model, tiny_tokenizer):
    processor = tiny_processor(tiny_tokenizer, image_size=32)
    image = _noise(WIDTH, HEIGHT)
    unsure = functools.partial(pipeline("object-detection", model=detector_folder), threshold=1.0)
    assert unsure(image) == []
    found = resolve_reference(image, SENTENCE, head_model, processor, detector=unsure, phrases=REFERENCES)
    own = resolve_reference(image, SENTENCE, head_model, processor, phrases=REFERENCES)
    assert [span for span, _, _ in found] == [span for span, _, _ in own]
    torch.testing.assert_close(torch.tensor([box for _, box, _ in found]), torch.tensor([box for _, box, _ in own]))


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"phrases": ["the red circle", 3]}, r"phrases\[1\] is 3"),
        ({"phrases": ["the red circle", " "]}, r"phrases\[1\] is ' '"),
        ({"phrases": "the red circle"}, "give a non-empty list of strings"),
        ({"phrases": []}, "give a non-empty list of strings"),
        ({"phrases": ["a star"], "ner": "tagger"}, "not both"),
        ({"ner": 3}, "`ner` is a int; give a model name, a local folder"),
        ({"detector": 3.5}, "`detector` is a float; give a model name"),
        ({"detector": lambda image: [{"label": "object"}]}, "`detector` returned .* give an object-detection"),
        ({"attention_weight": 1.5}, r"`attention_weight` is 1.5; give a weight in \[0, 1\]"),
        ({"text": "  "}, "`text` is '  '"),
    ],
)
def test_bad_arguments_are_named(arguments, message, head_model, tiny_tokenizer):
    arguments = {"text": SENTENCE, **arguments}
    with pytest.raises(ValueError, match=message):
        resolve_reference(_noise(32, 32), model=head_model, processor=tiny_processor(tiny_tokenizer, 32), **arguments)


def test_an_unaggregated_ner_pipeline_is_refused(ner_folder, head_model, tiny_tokenizer):
    tokens = pipeline("token-classification", model=ner_folder)
    with pytest.raises(ValueError, match='aggregation_strategy="simple"'):
        resolve_reference(_noise(32, 32), SENTENCE, head_model, tiny_processor(tiny_tokenizer, 32), ner=tokens)


def test_a_model_without_a_grounding_head_is_named(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="`model` has no grounding head"):
        resolve_reference(_noise(32, 32), SENTENCE, tiny_model, tiny_processor(tiny_tokenizer, 32))
