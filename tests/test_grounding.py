"""The grounding head: shapes and gradients over tower kinds, save/load, ground() and the grounding metrics."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from transformers import BertConfig, ResNetConfig, ViTConfig, XLMRobertaConfig

from seeyou_ml import SeeYouConfig, SeeYouModel
from seeyou_ml.evaluation.grounding import evaluate_grounding, format_grounding_table, grounding_grid
from seeyou_ml.presets import tiny_config, tiny_processor

HEAD = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}

VISION = {
    "resnet": lambda: ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
    "vit": lambda: ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             image_size=32, patch_size=8),
}
TEXT = {
    "xlm-roberta": lambda: XLMRobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=32, max_position_embeddings=40),
    "bert": lambda: BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=40),
}


def _inputs(batch: int = 3):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (batch, 7), generator=generator)
    phrase = torch.randint(5, 50, (batch, 4), generator=generator)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(batch, 3, 32, 32, generator=generator),
        "phrase_input_ids": phrase,
        "phrase_attention_mask": torch.ones_like(phrase),
    }


@pytest.mark.parametrize("text", sorted(TEXT))
@pytest.mark.parametrize("vision", sorted(VISION))
def test_head_outputs_have_their_shapes_and_every_head_weight_gets_a_gradient(vision, text):
    torch.manual_seed(0)
    config = SeeYouConfig(vision_config=VISION[vision](), text_config=TEXT[text](), projection_dim=8,
                          grounding_config=HEAD)
    model = SeeYouModel(config)
    out = model(**_inputs())
    grid = (4, 4)  # ResNet: 32 px, stem /4, second stage /2; ViT: 32 px in 8 px patches
    assert out.region_size == grid
    assert out.itm_logits.shape == (3,)
    assert out.pred_boxes.shape == (3, 4) and ((out.pred_boxes > 0) & (out.pred_boxes < 1)).all()
    assert len(out.cross_attentions) == 2
    assert all(a.shape == (3, 2, 4, grid[0] * grid[1]) for a in out.cross_attentions)
    torch.testing.assert_close(out.cross_attentions[0].sum(-1), torch.ones(3, 2, 4))
    (out.itm_logits.sum() + out.pred_boxes.sum()).backward()
    missing = [n for n, p in model.grounding_head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert model.text_model.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_a_finer_resnet_stage_gives_a_finer_grid():
    config = tiny_config(vocab_size=50, vision_widths=(8, 16, 32), vision_depths=(1, 1, 1),
                         grounding_config=dict(HEAD, feature_stage=-2))
    out = SeeYouModel(config)(**_inputs())
    assert out.region_size == (4, 4)  # 32 px: stem /4, stage 2 /2 -> 4 x 4; the last stage would be 2 x 2
    assert SeeYouModel(config).grounding_head.region_in.in_features == 16


def test_a_caption_span_gives_the_box_when_no_phrase_is_given():
    torch.manual_seed(0)
    model = SeeYouModel(tiny_config(vocab_size=50, vision_widths=(8, 16), grounding_config=HEAD)).eval()
    inputs = {k: v for k, v in _inputs().items() if not k.startswith("phrase")}
    span = torch.zeros(3, 7, dtype=torch.long)
    span[:, 2:4] = 1
    out = model(**inputs, phrase_token_mask=span)
    head = model.grounding_head(out.text_model_output.last_hidden_state, inputs["attention_mask"],
                                out.vision_model_output.last_hidden_state, span)
    torch.testing.assert_close(out.pred_boxes, head.pred_boxes)
    assert model(**inputs).pred_boxes is None


def test_the_matching_logit_reads_the_mean_of_the_fused_tokens_or_the_first_one():
    torch.manual_seed(0)
    head_config = SeeYouConfig(grounding_config=HEAD).grounding_config
    regions = torch.randn(2, 9, 16)
    text = torch.randn(2, 5, 16)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    from seeyou_ml.grounding import GroundingHead

    head = GroundingHead(head_config, text_width=16, vision_width=16).eval()
    out = head.fuse(text, mask, regions, (3, 3))
    # The fused states the readout sees: the layers run again by hand.
    fused = text
    for layer in head.layers:
        fused, _ = layer(fused, mask.float(), regions)
    fused = head.final_norm(fused)
    expected_mean = torch.stack([head.itm(fused[0].mean(0)), head.itm(fused[1, :3].mean(0))]).squeeze(-1)
    torch.testing.assert_close(out.itm_logits, expected_mean)

    head.config = SeeYouConfig(grounding_config=dict(HEAD, itm_pooling="cls")).grounding_config
    torch.testing.assert_close(head.fuse(text, mask, regions, (3, 3)).itm_logits, head.itm(fused[:, 0]).squeeze(-1))
    # Matching alone updates only the first token in the last layer: the same logit.
    matching = head.fuse(text, mask, regions, (3, 3), locate=False)
    torch.testing.assert_close(matching.itm_logits, head.itm(fused[:, 0]).squeeze(-1))
    assert matching.pred_boxes is None and matching.cross_attentions is None
    with pytest.raises(ValueError, match="itm_pooling must be 'mean' or 'cls'"):
        SeeYouConfig(grounding_config=dict(HEAD, itm_pooling="max"))


@pytest.mark.parametrize("layers", [1, 2])
def test_fusing_indexed_pairs_equals_fusing_the_gathered_pairs_and_matching_reads_the_first_token_alone(layers):
    from seeyou_ml.grounding import GroundingHead

    torch.manual_seed(0)
    config = dict(HEAD, num_hidden_layers=layers)
    head = GroundingHead(SeeYouConfig(grounding_config=config).grounding_config, text_width=16, vision_width=16)
    text = torch.randn(3, 5, 16, requires_grad=True)
    regions = torch.randn(4, 9, 16, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    span = torch.tensor([[0, 1, 1, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0]])
    # Texts and images used by several pairs, one image by none.
    text_index, region_index = torch.tensor([2, 0, 2, 1, 0, 2]), torch.tensor([0, 0, 3, 3, 1, 0])
    indexed = head.fuse(text, mask, regions, (3, 3), span, pairs=(text_index, region_index))
    gathered = head.fuse(text[text_index], mask[text_index], regions[region_index], (3, 3), span[text_index])
    torch.testing.assert_close(indexed.itm_logits, gathered.itm_logits)
    torch.testing.assert_close(indexed.pred_boxes, gathered.pred_boxes)
    torch.testing.assert_close(indexed.expression_attention, gathered.expression_attention)
    assert len(indexed.cross_attentions) == layers
    for a, b in zip(indexed.cross_attentions, gathered.cross_attentions, strict=True):
        assert a.shape == (6, 2, 5, 9)
        torch.testing.assert_close(a, b)
    weights = [*head.layers.parameters(), *head.final_norm.parameters(), *head.itm.parameters(),
               *head.box.parameters()]
    gradients = [torch.autograd.grad(out.itm_logits.sum() + out.pred_boxes.sum(), [text, regions, *weights])
                 for out in (indexed, gathered)]
    for a, b in zip(*gradients, strict=True):
        torch.testing.assert_close(a, b)

    # Matching alone with a first-token readout: the logits of the whole pass, and their gradients.
    head.config = SeeYouConfig(grounding_config=dict(config, itm_pooling="cls")).grounding_config
    matching = head.fuse(text, mask, regions, (3, 3), locate=False, pairs=(text_index, region_index)).itm_logits
    full = head.fuse(text[text_index], mask[text_index], regions[region_index], (3, 3)).itm_logits
    torch.testing.assert_close(matching, full)
    weights = [*head.layers.parameters(), *head.final_norm.parameters(), *head.itm.parameters()]
    for a, b in zip(*(torch.autograd.grad(out.sum(), [text, regions, *weights]) for out in (matching, full)),
                    strict=True):
        torch.testing.assert_close(a, b)


def test_detached_towers_get_no_gradient_from_the_head():
    torch.manual_seed(0)
    model = SeeYouModel(tiny_config(vocab_size=50, vision_widths=(8, 16),
                                    grounding_config=dict(HEAD, detach_towers=True)))
    out = model(**_inputs())
    (out.itm_logits.sum() + out.pred_boxes.sum()).backward()
    assert all(p.grad is None for p in model.text_model.parameters())
    assert all(p.grad is None for p in model.vision_model.parameters())
    assert model.grounding_head.itm.weight.grad.abs().sum() > 0
    assert model.grounding_head.region_in.weight.grad.abs().sum() > 0

    model.zero_grad(set_to_none=True)
    model(**_inputs(), return_loss=True).loss.backward()  # the contrastive loss still trains the towers
    assert model.text_model.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_save_and_load_with_a_head_and_a_checkpoint_without_one(tmp_path):
    torch.manual_seed(0)
    head = dict(HEAD, reference_window=1)
    model = SeeYouModel(tiny_config(vocab_size=50, vision_widths=(8, 16), grounding_config=head)).eval()
    model.save_pretrained(tmp_path / "head")
    assert (tmp_path / "head" / "model.safetensors").exists()
    loaded, info = SeeYouModel.from_pretrained(tmp_path / "head", output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    with torch.no_grad():
        expected, got = model(**_inputs()), loaded.eval()(**_inputs())
    torch.testing.assert_close(got.pred_boxes, expected.pred_boxes)
    torch.testing.assert_close(got.itm_logits, expected.itm_logits)

    plain = SeeYouModel(tiny_config(vocab_size=50, vision_widths=(8, 16))).eval()
    plain.save_pretrained(tmp_path / "plain")
    loaded, info = SeeYouModel.from_pretrained(tmp_path / "plain", output_loading_info=True)
    assert loaded.grounding_head is None and not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**_inputs()).image_embeds, plain(**_inputs()).image_embeds)


def _centred_model(tokenizer):
    """A model whose head attends uniformly and predicts the box (0.5, 0.5, 0.5, 0.5): centre of the image, half its
    width and height."""
    torch.manual_seed(0)
    model = SeeYouModel(tiny_config(vocab_size=len(tokenizer), vision_widths=(8, 16), max_text_length=32,
                                    grounding_config=HEAD)).eval()
    with torch.no_grad():
        for layer in model.grounding_head.layers:
            layer.cross_q.weight.zero_()
            layer.cross_q.bias.zero_()
        model.grounding_head.box[-1].weight.zero_()
        model.grounding_head.box[-1].bias.zero_()
    return model


def test_ground_returns_boxes_and_points_in_the_original_pixels(tiny_tokenizer):
    model = _centred_model(tiny_tokenizer)
    processor = tiny_processor(tiny_tokenizer, image_size=32)
    result = model.ground([Image.new("RGB", (128, 96)), Image.new("RGB", (40, 40))], ["a red circle", "a star"],
                          processor)
    torch.testing.assert_close(result.boxes, torch.tensor([[32.0, 24.0, 96.0, 72.0], [10.0, 10.0, 30.0, 30.0]]))
    torch.testing.assert_close(result.attention, torch.full((2, 4, 4), 1 / 16))
    # A flat map peaks at its first pixel: (0.5, 0.5) of the 32-px image, scaled back by 128/32 and 96/32.
    torch.testing.assert_close(result.points[0], torch.tensor([2.0, 1.5]))
    assert ((result.scores > 0) & (result.scores < 1)).all()


def test_ground_names_a_model_without_a_head(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="no grounding head"):
        tiny_model.ground([Image.new("RGB", (32, 32))], ["a star"], tiny_processor(tiny_tokenizer, 32))


def test_grounding_metrics_against_known_boxes(tiny_tokenizer, tmp_path):
    from datasets import Dataset

    model = _centred_model(tiny_tokenizer)
    processor = tiny_processor(tiny_tokenizer, image_size=32)
    # The prediction is always [16, 16, 48, 48] in a 64-px image and the flat map peaks at its top-left pixel. Gold:
    # the predicted box itself (pointing misses), a box around the top-left corner (pointing hits) and a quarter of
    # the predicted box (German).
    records = {
        "image": [Image.new("RGB", (64, 64))] * 3,
        "phrase": ["the star", "the star to the left of the circle", "der Stern"],
        "boxes": [[[16, 16, 48, 48]], [[0, 0, 32, 32]], [[16, 16, 32, 32]]],
        "lang": ["en", "en", "de"],
        "image_id": ["0", "1", "0"],
        "held_out": [True, False, True],
    }
    results = evaluate_grounding(model, processor, Dataset.from_dict(records), batch_size=2)
    en, de = results["per_language"]["en"], results["per_language"]["de"]
    # IoU of [16, 48]^2 with [0, 32]^2: 16*16 / (32*32 * 2 - 16*16) = 1/7; with [16, 32]^2: 16*16 / 32*32 = 1/4.
    assert en["acc@0.5"] == pytest.approx(50.0) and en["mean_iou"] == pytest.approx(100 * (1 + 1 / 7) / 2, abs=1e-4)
    assert en["pointing"] == pytest.approx(50.0) and en["count"] == 2
    assert de["acc@0.5"] == 0 and de["mean_iou"] == pytest.approx(25.0, abs=1e-4) and de["pointing"] == 0
    groups = results["groups"]
    assert groups["relational"]["count"] == 1 and groups["relational"]["pointing"] == 100
    assert groups["plain"]["count"] == 2 and groups["held-out images"]["count"] == 2
    table = format_grounding_table(results)
    assert "Acc@0.5" in table and "relational" in table
    grid = grounding_grid(model, processor, Dataset.from_dict(records), tmp_path / "grid.png", num_images=2)
    assert Image.open(grid).size == (4 * 256, 256 + 28)


def test_the_attention_loss_terms_read_the_expression_map_against_its_gold_box():
    from seeyou_ml.geometry import box_cell_coverage, box_cxcywh_to_xyxy
    from seeyou_ml.losses import attention_iou_loss, attention_mass_loss, compute_losses

    torch.manual_seed(0)
    model = SeeYouModel(tiny_config(vocab_size=50, vision_widths=(8, 16), grounding_config=HEAD))
    inputs = _inputs()
    out = model(**inputs)
    batch = dict(inputs, phrase_boxes=torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.5, 0.4, 0.2], [0.5, 0.5, 1.0, 1.0]]))
    _, terms = compute_losses(out, batch, model, {"attention_mass_loss": 1.0, "attention_iou_loss": 1.0})
    mask = box_cell_coverage(box_cxcywh_to_xyxy(batch["phrase_boxes"]), *out.region_size)  # (3, 16)
    attention = out.expression_attention  # (3, 16)
    torch.testing.assert_close(terms["attention_mass_loss"], attention_mass_loss(attention, mask))
    torch.testing.assert_close(terms["attention_iou_loss"], attention_iou_loss(attention, mask))
    # The whole-image box covers every cell: its cross-entropy is that of the uniform box distribution.
    expected = -(attention[2].log().mean())
    torch.testing.assert_close(attention_mass_loss(attention[2:], mask[2:]), expected)
    terms["attention_mass_loss"].backward()
    assert model.grounding_head.layers[-1].cross_q.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("sharpness", [1.0, 3.0])
def test_the_box_centre_starts_from_the_sharpened_attention_centroid(sharpness):
    from seeyou_ml.geometry import cell_centres

    torch.manual_seed(0)
    model = SeeYouModel(tiny_config(vocab_size=50, vision_widths=(8, 16),
                                    grounding_config=dict(HEAD, reference_sharpness=sharpness)))
    torch.nn.init.zeros_(model.grounding_head.box[2].weight)
    torch.nn.init.zeros_(model.grounding_head.box[2].bias)  # no learned offset: the centre is the reference point
    with torch.no_grad():
        model.grounding_head.layers[-1].cross_q.weight.mul_(30)  # peaked maps, far from uniform
    out = model(**_inputs())
    focus = out.expression_attention ** sharpness
    focus = focus / focus.sum(-1, keepdim=True)  # (3, 16)
    expected = focus @ cell_centres(*out.region_size, focus.device, focus.dtype)  # (3, 2)
    torch.testing.assert_close(out.pred_boxes[:, :2], expected)
    torch.testing.assert_close(out.pred_boxes[:, 2:], torch.full((3, 2), 0.5))
    plain = out.expression_attention @ cell_centres(*out.region_size, focus.device, focus.dtype)
    gap = (out.pred_boxes[:, :2] - plain).abs().max().item()
    assert gap < 1e-6 if sharpness == 1.0 else gap > 1e-3  # sharpened, it moves off the plain centroid


def test_the_reference_point_is_the_centroid_of_the_cells_around_the_peak_within_its_window():
    from seeyou_ml.geometry import cell_centres
    from seeyou_ml.grounding import reference_point

    attention = torch.full((4, 4), 0.01)
    attention[1, 1], attention[1, 2], attention[3, 3] = 0.4, 0.2, 0.26  # the peak, a neighbour, a far object
    attention = (attention / attention.sum()).flatten()[None]  # (1, 16), rows first
    # Window 0: the peak cell's centre, (1.5 / 4, 1.5 / 4).
    torch.testing.assert_close(reference_point(attention, (4, 4), window=0), torch.tensor([[0.375, 0.375]]))
    # Window 1: rows and columns 0-2 around the peak; the far object at (3, 3) is left out.
    inside = [(r, c) for r in range(3) for c in range(3)]
    grid = attention.view(4, 4)
    mass = sum(grid[r, c] for r, c in inside)
    x = sum(grid[r, c] * (c + 0.5) / 4 for r, c in inside) / mass
    y = sum(grid[r, c] * (r + 0.5) / 4 for r, c in inside) / mass
    torch.testing.assert_close(reference_point(attention, (4, 4), window=1), torch.stack([x, y])[None])
    # A window that covers the grid, or none, is the plain centroid.
    plain = attention @ cell_centres(4, 4, attention.device, attention.dtype)
    torch.testing.assert_close(reference_point(attention, (4, 4), window=3), plain)
    torch.testing.assert_close(reference_point(attention, (4, 4)), plain)


def test_with_a_zero_reference_window_the_box_centre_starts_at_the_peak_cell():
    from seeyou_ml.geometry import cell_centres

    torch.manual_seed(0)
    model = SeeYouModel(tiny_config(vocab_size=50, vision_widths=(8, 16),
                                    grounding_config=dict(HEAD, reference_sharpness=3.0, reference_window=0)))
    torch.nn.init.zeros_(model.grounding_head.box[2].weight)
    torch.nn.init.zeros_(model.grounding_head.box[2].bias)  # no learned offset: the centre is the reference point
    out = model(**_inputs())
    peak = out.expression_attention.argmax(-1)  # (3,)
    expected = cell_centres(*out.region_size, peak.device, out.pred_boxes.dtype)[peak]  # (3, 2)
    torch.testing.assert_close(out.pred_boxes[:, :2], expected)


def test_a_non_positive_reference_sharpness_is_refused():
    with pytest.raises(ValueError, match=r"reference_sharpness must be > 0, got 0"):
        SeeYouConfig(grounding_config=dict(HEAD, reference_sharpness=0))


def test_in_training_the_head_matches_only_its_itm_train_pairs_and_grounds_every_expression(monkeypatch):
    from seeyou_ml import losses
    from seeyou_ml.losses import box_loss, compute_losses, itm_loss

    torch.manual_seed(0)
    model = SeeYouModel(tiny_config(vocab_size=50, vision_widths=(8, 16),
                                    grounding_config=dict(HEAD, itm_train_pairs=2)))
    inputs = _inputs(batch=4)
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.5, 0.4, 0.2], [0.5, 0.5, 1.0, 1.0], [0.2, 0.8, 0.2, 0.2]])
    batch = dict(inputs, phrase_boxes=boxes, image_id=["a", "b", "c", "d"])
    out = model.train()(**inputs)
    assert out.itm_logits.shape == (2,) and out.pred_boxes.shape == (4, 4)
    assert out.grounding_regions.shape[0] == 4 and out.grounding_text.shape[0] == 4  # negatives come from all four
    assert model.eval()(**inputs).itm_logits.shape == (4,)  # evaluation scores every pair
    model.config.grounding_config.itm_train_pairs = None
    full = model.train()(**inputs)
    torch.testing.assert_close(out.itm_logits, full.itm_logits[:2])  # the same pairs, matched alone
    torch.testing.assert_close(out.pred_boxes, full.pred_boxes)
    model.config.grounding_config.itm_train_pairs = 2
    _, terms = compute_losses(out, batch, model, {"box_loss": 1.0})
    torch.testing.assert_close(terms["box_loss"], box_loss(out.pred_boxes, boxes))
    # Two positives and, for each, a negative image and a negative caption: six logits in the cross-entropy.
    monkeypatch.setattr(losses, "hard_negative_indices", lambda *args: (torch.tensor([1, 0]), torch.tensor([2, 3])))
    _, terms = compute_losses(out, batch, model, {"itm_loss": 1.0})
    head, mask, size = model.grounding_head, inputs["attention_mask"], out.region_size
    text, regions = out.grounding_text, out.grounding_regions
    with_other_image = head.fuse(text[:2], mask[:2], regions[[1, 0]], size).itm_logits
    with_other_text = head.fuse(text[[2, 3]], mask[[2, 3]], regions[:2], size).itm_logits
    negatives = torch.cat([with_other_image, with_other_text])
    torch.testing.assert_close(terms["itm_loss"], itm_loss(out.itm_logits, negatives))
    # As the trainer runs it: no matching pass in the forward; the term fuses the own pairs with their negatives.
    lean = model.train()(**inputs, output_matching=False)
    assert lean.itm_logits is None and lean.pred_boxes.shape == (4, 4)
    _, lean_terms = compute_losses(lean, batch, model, {"itm_loss": 1.0})
    torch.testing.assert_close(lean_terms["itm_loss"], terms["itm_loss"])
    terms["itm_loss"].backward()
    assert model.grounding_head.itm.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"itm_train_pairs must be >= 1, got 0"):
        SeeYouConfig(grounding_config=dict(HEAD, itm_train_pairs=0))

    # Grounding the first three expressions only: their boxes, scored against the first three gold boxes.
    model.config.grounding_config.expression_train_pairs = 3
    part = model.train()(**inputs)
    assert part.pred_boxes.shape == (3, 4) and part.expression_attention.shape[0] == 3
    torch.testing.assert_close(part.pred_boxes, full.pred_boxes[:3])
    _, terms = compute_losses(part, batch, model, {"box_loss": 1.0, "attention_mass_loss": 1.0})
    torch.testing.assert_close(terms["box_loss"], box_loss(part.pred_boxes, boxes[:3]))
    assert model.eval()(**inputs).pred_boxes.shape == (4, 4)


def test_the_head_adds_its_own_embedding_of_each_token_and_trains_it():
    torch.manual_seed(0)
    model = SeeYouModel(tiny_config(vocab_size=50, vision_widths=(8, 16),
                                    grounding_config=dict(HEAD, token_embeddings=True, detach_towers=True)))
    head = model.grounding_head
    assert head.token_embedding.weight.shape == (50, HEAD["hidden_size"])
    states = torch.randn(2, 3, model.config.text_config.hidden_size)
    ids = torch.tensor([[5, 6, 7], [7, 7, 8]])
    torch.testing.assert_close(head.encode_text(states, ids), head.text_in(states) + head.token_embedding.weight[ids])
    with pytest.raises(ValueError, match="pass the texts' input_ids"):
        head.encode_text(states)
    inputs = _inputs()
    out = model(**inputs)
    out.pred_boxes.sum().backward()
    grad = head.token_embedding.weight.grad
    used = torch.zeros(50, dtype=torch.bool)
    used[inputs["phrase_input_ids"].flatten()] = True
    assert (grad[used].abs().sum(-1) > 0).all() and (grad[~used] == 0).all()  # the expressions' tokens, no others
    assert all(p.grad is None for p in model.text_model.parameters())


def test_output_grounding_false_skips_the_head():
    torch.manual_seed(0)
    model = SeeYouModel(tiny_config(vocab_size=50, vision_widths=(8, 16), grounding_config=HEAD))
    skipped = model(**_inputs(), output_grounding=False)
    assert skipped.itm_logits is None and skipped.pred_boxes is None
    full = model(**_inputs())
    torch.testing.assert_close(skipped.logits_per_text, full.logits_per_text)
    assert full.itm_logits is not None


def test_the_head_adds_a_learned_embedding_of_each_position_up_to_its_length():
    torch.manual_seed(0)
    model = SeeYouModel(tiny_config(vocab_size=50, vision_widths=(8, 16),
                                    grounding_config=dict(HEAD, text_positions=5)))
    head = model.grounding_head
    assert SeeYouConfig.from_dict(model.config.to_dict()).grounding_config.text_positions == 5
    states = torch.randn(2, 3, model.config.text_config.hidden_size)
    torch.testing.assert_close(head.encode_text(states), head.text_in(states) + head.text_position.weight[:3])
    with pytest.raises(ValueError, match="a text of 7 tokens reached the grounding head, which embeds positions up to "
                                         "grounding_config.text_positions=5"):
        head.encode_text(torch.randn(1, 7, model.config.text_config.hidden_size))
    with pytest.raises(ValueError, match="text_positions must be >= 1"):
        SeeYouConfig(grounding_config=dict(HEAD, text_positions=0))


def test_the_model_returns_where_each_named_object_looks_and_its_negative_captions_in_the_heads_width():
    torch.manual_seed(0)
    model = SeeYouModel(tiny_config(vocab_size=50, vision_widths=(8, 16),
                                    grounding_config=dict(HEAD, detach_towers=True)))
    inputs = _inputs()
    inputs.pop("phrase_input_ids"), inputs.pop("phrase_attention_mask")
    mentions = torch.zeros(3, 2, 7, dtype=torch.bool)
    mentions[:, 0, 1:3] = True
    mentions[0, 1, 5] = True  # rows 1 and 2 name one object
    negatives = torch.randint(5, 50, (3, 2, 6), generator=torch.Generator().manual_seed(1))
    out = model(**inputs, mention_token_mask=mentions, negative_input_ids=negatives,
                negative_attention_mask=torch.ones_like(negatives))
    head, size = model.grounding_head, out.region_size
    text = head.encode_text(out.text_model_output.last_hidden_state, inputs["input_ids"])
    regions = head.encode_regions(model.grounding_feature_map(out.vision_model_output))[0]
    first = head.fuse(text, inputs["attention_mask"], regions, size).cross_attentions[0].mean(1)  # (3, 7, L)
    torch.testing.assert_close(out.mention_attention[:, 0], first[:, 1:3].mean(1))
    torch.testing.assert_close(out.mention_attention[0, 1], first[0, 5])
    assert (out.mention_attention[1:, 1] == 0).all()  # an unnamed slot looks nowhere
    flat = negatives.flatten(0, 1)
    states = model.text_model(input_ids=flat, attention_mask=torch.ones_like(flat)).last_hidden_state
    torch.testing.assert_close(out.grounding_negative_text, head.encode_text(states, flat))
    out.mention_attention.sum().backward()
    assert all(p.grad is None for p in model.text_model.parameters())  # detached towers: the head alone learns


def test_the_order_readout_scores_whether_the_named_objects_lie_in_the_order_the_text_lists_them():
    from seeyou_ml.configuration import SeeYouGroundingConfig
    from seeyou_ml.grounding import OrderReadout

    readout = OrderReadout(SeeYouGroundingConfig(hidden_size=4, num_attention_heads=2, order_readout=True))
    assert readout.scale.item() == 0.0  # off until the matching terms weigh it
    with torch.no_grad():
        readout.scale.fill_(1.0)
    # Four tokens over a 2 x 2 grid: words 0 and 2 name objects, word 1 does not, word 3 is padding.
    gate_logits = torch.tensor([[50.0, -50.0, 50.0, 50.0]]).repeat(4, 1)
    mask = torch.tensor([[1, 1, 1, 0]]).repeat(4, 1)
    # Texts 0 and 1 say "from left to right", 2 and 3 "from right to left".
    direction_logits = torch.tensor([[50.0, 0.0, 0.0, 0.0]] * 2 + [[0.0, 50.0, 0.0, 0.0]] * 2)
    cells = torch.zeros(4, 2, 4, 4)  # (B, heads, T, cells); cells 0 and 1 are the top row's, x = 0.25 and 0.75
    cells[[0, 2], :, 0, 0] = cells[[0, 2], :, 2, 1] = 1.0  # the first named object on the left
    cells[[1, 3], :, 0, 1] = cells[[1, 3], :, 2, 0] = 1.0  # on the right
    cells[:, :, 1, 3] = 1.0  # the unnamed word looks anywhere
    cells[:, :, 3, 2] = 1.0  # the padding too
    # The named objects lie 1/2 apart, at the starting sharpness of 10.
    expected = torch.tensor([1.0, -1.0, -1.0, 1.0]) * math.tanh(5.0)
    torch.testing.assert_close(readout(gate_logits, direction_logits, mask, cells, (2, 2)), expected)


def test_the_order_readout_reads_the_direction_from_which_word_comes_first():
    from seeyou_ml.configuration import SeeYouGroundingConfig
    from seeyou_ml.grounding import OrderReadout

    readout = OrderReadout(SeeYouGroundingConfig(hidden_size=4, num_attention_heads=2, order_readout=True))
    with torch.no_grad():
        readout.gate_weight.copy_(torch.tensor([2.0, 0.0, 0.0, 0.0]))
        readout.gate_bias.fill_(-1.0)
        readout.first_word.zero_()
        readout.second_word.zero_()
        # Feature 1 marks "left", feature 2 "right": "left" before "right" is left to right, the reverse right to left.
        readout.first_word[0, 1] = readout.second_word[0, 2] = 1.0
        readout.first_word[1, 2] = readout.second_word[1, 1] = 3.0
        readout.direction_bias.copy_(torch.tensor([0.0, 0.0, 0.5, 0.0]))
    words = torch.zeros(2, 4, 4)
    words[:, [0, 2], 0] = 1.0  # words 0 and 2 name objects
    words[0, 0, 1] = words[0, 1, 2] = 1.0  # "left ... right"
    words[1, 0, 2] = words[1, 1, 1] = 1.0  # "right ... left"
    words[:, 3, 1:3] = 5.0  # padding counts for nothing
    gate_logits, direction_logits = readout.text_cues(words, torch.tensor([[1, 1, 1, 0]] * 2))
    torch.testing.assert_close(gate_logits, torch.tensor([[1.0, -1.0, 1.0, -1.0]] * 2))
    torch.testing.assert_close(direction_logits, torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.0, 9.0, 0.5, 0.0]]))


def test_a_head_with_the_order_readout_starts_as_without_it_and_returns_its_cues_for_the_order_term(tmp_path):
    from seeyou_ml.losses import LOSS_TERMS

    torch.manual_seed(0)
    model = SeeYouModel(tiny_config(vocab_size=50, vision_widths=(8, 16),
                                    grounding_config=dict(HEAD, order_readout=True)))
    head = model.grounding_head
    assert SeeYouConfig.from_dict(model.config.to_dict()).grounding_config.order_readout
    inputs = _inputs()
    mentions = torch.zeros(3, 2, 7, dtype=torch.bool)
    mentions[:, 0, 1], mentions[:, 1, 4:6] = True, True
    out = model(**inputs, mention_token_mask=mentions)
    torch.manual_seed(0)  # the readout draws no random numbers: the rest of the model initialises as without it
    without = SeeYouModel(tiny_config(vocab_size=50, vision_widths=(8, 16), grounding_config=HEAD))
    torch.testing.assert_close(out.itm_logits, without(**inputs).itm_logits)
    states = model.text_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    cues = head.order.text_cues(head.encode_text(states, inputs["input_ids"]), inputs["attention_mask"])
    torch.testing.assert_close(out.order_gate_logits, cues[0])
    torch.testing.assert_close(out.order_direction_logits, cues[1])
    batch = {**inputs, "mention_token_mask": mentions, "mention_boxes": torch.rand(3, 2, 4)}
    LOSS_TERMS["order_loss"].fn(out, batch, model).backward()
    assert all(weight.grad.abs().sum() > 0 for weight in (head.order.gate_weight, head.order.first_word,
                                                           head.order.second_word, head.order.direction_bias))
    with torch.no_grad():  # a direction and a weight: the readout now changes the logits, and the matching trains it
        head.order.direction_bias.copy_(torch.tensor([3.0, 0.0, 0.0, 0.0]))
        head.order.scale.fill_(1.0)
    changed = model(**inputs).itm_logits
    assert not torch.allclose(changed, out.itm_logits)
    changed.sum().backward()
    assert head.order.scale.grad.abs() > 0 and head.order.log_sharpness.grad.abs() > 0
    model.save_pretrained(tmp_path)  # the trained readout is what loads, not a new initialisation
    loaded = SeeYouModel.from_pretrained(tmp_path).grounding_head.order
    for name, weight in head.order.named_parameters():
        torch.testing.assert_close(getattr(loaded, name), weight, msg=name)
    with pytest.raises(ValueError, match="order_readout reads where every word looks in the first fusion layer"):
        SeeYouConfig(grounding_config=dict(HEAD, order_readout=True, itm_pooling="cls", num_hidden_layers=1))


def test_fusing_indexed_pairs_with_the_order_readout_equals_fusing_the_gathered_pairs():
    from seeyou_ml.grounding import GroundingHead

    torch.manual_seed(0)
    config = SeeYouConfig(grounding_config=dict(HEAD, order_readout=True)).grounding_config
    head = GroundingHead(config, text_width=16, vision_width=16)
    with torch.no_grad():
        for weight in head.order.parameters():
            weight.copy_(torch.randn_like(weight))
    text, regions = torch.randn(3, 5, 16), torch.randn(4, 9, 16)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    text_index, region_index = torch.tensor([2, 0, 2, 1, 0, 2]), torch.tensor([0, 0, 3, 3, 1, 0])
    for locate in (True, False):
        indexed = head.fuse(text, mask, regions, (3, 3), locate=locate, pairs=(text_index, region_index))
        gathered = head.fuse(text[text_index], mask[text_index], regions[region_index], (3, 3), locate=locate)
        for name in ("itm_logits", "order_gate_logits", "order_direction_logits"):
            torch.testing.assert_close(indexed[name], gathered[name])
        weights = list(head.order.parameters())
        for a, b in zip(*(torch.autograd.grad(out.itm_logits.sum(), weights) for out in (indexed, gathered)),
                        strict=True):
            torch.testing.assert_close(a, b)
