import math
import pickle
import warnings

import pytest
import torch
from transformers import (
    AutoModel,
    BertConfig,
    BertModel,
    ResNetConfig,
    ViTConfig,
    ViTModel,
    VisionTextDualEncoderConfig,
    VisionTextDualEncoderModel,
    XLMRobertaConfig,
)

from seeyou_ml import SeeYouConfig, SeeYouModel, SeeYouOutput
from seeyou_ml.presets import tiny_config
from tests.conftest import text_batch

VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=30,
           patch_size=10, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
XLMR = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            max_position_embeddings=40, type_vocab_size=1, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)
RESNET = dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")


def make_inputs(batch=3, seq=7, vocab=99, image=30):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab, (batch, seq), generator=generator)
    input_ids[:, 0] = 0
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, -2:] = 0
    pixel_values = torch.randn(batch, 3, image, image, generator=generator)
    return dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)


@pytest.mark.parametrize(
    "vision, text, map_dims",
    [
        (ResNetConfig(**RESNET), XLMRobertaConfig(**XLMR), 4),
        (ResNetConfig(**RESNET), BertConfig(**BERT), 4),
        (ViTConfig(**VIT), XLMRobertaConfig(**XLMR), 3),
        (ViTConfig(**VIT), BertConfig(**BERT), 3),
    ],
    ids=["resnet-xlmr", "resnet-bert", "vit-xlmr", "vit-bert"],
)
def test_towers_give_normalised_embeddings_and_feature_maps(vision, text, map_dims):
    torch.manual_seed(0)
    model = SeeYouModel(SeeYouConfig(vision_config=vision, text_config=text, projection_dim=12)).eval()
    inputs = make_inputs()
    out = model(**inputs, return_loss=True)
    assert isinstance(out, SeeYouOutput)
    assert out.image_embeds.shape == out.text_embeds.shape == (3, 12)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(3))
    assert out.vision_model_output.last_hidden_state.dim() == map_dims
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.T)
    expected = math.exp(model.logit_scale.item()) * out.text_embeds @ out.image_embeds.T
    torch.testing.assert_close(out.logits_per_text, expected)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    # The features methods return the same embeddings as forward.
    image = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    torch.testing.assert_close(image, out.image_embeds)
    torch.testing.assert_close(text.pooler_output, out.text_embeds)


def test_padding_does_not_change_mean_pooled_text_embedding():
    torch.manual_seed(0)
    model = SeeYouModel(SeeYouConfig(vision_config=ResNetConfig(**RESNET), text_config=XLMRobertaConfig(**XLMR),
                                     projection_dim=8, text_pooling="mean")).eval()
    ids = torch.tensor([[0, 10, 11, 2]])
    padded = torch.tensor([[0, 10, 11, 2, 1, 1]])
    short = model.get_text_features(ids, torch.ones_like(ids)).pooler_output
    long = model.get_text_features(padded, torch.tensor([[1, 1, 1, 1, 0, 0]])).pooler_output
    torch.testing.assert_close(short, long, atol=1e-6, rtol=1e-5)


def test_logit_scale_starts_at_one_over_007_and_is_clamped(tiny_model, tiny_tokenizer):
    assert tiny_model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), abs=1e-6)
    assert tiny_model.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        tiny_model.logit_scale.fill_(10.0)  # exp(10) ≈ 22026, far above the clamp
    assert tiny_model.scale().item() == pytest.approx(100.0)
    ids, mask = text_batch(tiny_tokenizer, ["a red circle", "a blue star"])
    out = tiny_model(input_ids=ids, attention_mask=mask, pixel_values=torch.rand(2, 3, 32, 32))
    assert out.logits_per_image.abs().max().item() <= 100.0 + 1e-4


def test_save_pretrained_writes_safetensors_only_and_reloads_identically(tiny_model, tiny_tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    # Beside the weights and config, the modeling code that loads them through remote code.
    assert [name for name in files if not name.endswith(".py")] == ["config.json", "model.safetensors"]
    assert {"configuration.py", "modeling.py"} <= set(files)
    for path in tmp_path.iterdir():
        assert not path.read_bytes().startswith(b"\x80"), f"{path.name} looks like a pickle"
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is SeeYouModel
    ids, mask = text_batch(tiny_tokenizer, ["a red circle", "ein roter Kreis"])
    pixels = torch.rand(2, 3, 32, 32)
    expected = tiny_model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
    actual = loaded(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
    torch.testing.assert_close(actual.logits_per_image, expected.logits_per_image, rtol=0, atol=0)
    torch.testing.assert_close(actual.loss, expected.loss, rtol=0, atol=0)


def test_no_pickle_is_used_when_loading(tiny_model, tmp_path, monkeypatch):
    tiny_model.save_pretrained(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    AutoModel.from_pretrained(tmp_path)


def test_logits_equal_vision_text_dual_encoder_with_the_same_weights():
    torch.manual_seed(0)
    vtde_config = VisionTextDualEncoderConfig.from_vision_text_configs(ViTConfig(**VIT), BertConfig(**BERT),
                                                                       projection_dim=16)
    reference = VisionTextDualEncoderModel(vtde_config).eval()
    ours = SeeYouModel(SeeYouConfig(vision_config=ViTConfig(**VIT), text_config=BertConfig(**BERT),
                                    projection_dim=16, text_pooling="pooler")).eval()
    missing, unexpected = ours.load_state_dict(reference.state_dict(), strict=False)
    assert not unexpected and all("position_ids" in key for key in missing)
    inputs = make_inputs()
    with torch.no_grad():
        expected = reference(**inputs, return_loss=True)
        actual = ours(**inputs, return_loss=True)
    torch.testing.assert_close(actual.logits_per_image, expected.logits_per_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(actual.logits_per_text, expected.logits_per_text, atol=1e-5, rtol=0)
    torch.testing.assert_close(actual.loss, expected.loss, atol=1e-5, rtol=0)


@pytest.mark.parametrize("vision", [ResNetConfig(**RESNET), ViTConfig(**VIT)], ids=["resnet", "vit"])
def test_gradient_checkpointing_gives_equal_gradients(vision):
    torch.manual_seed(0)
    model = SeeYouModel(SeeYouConfig(vision_config=vision, text_config=XLMRobertaConfig(**XLMR), projection_dim=8))
    model.train()
    inputs = make_inputs(batch=4)

    def gradients():
        model.zero_grad()
        model(**inputs, return_loss=True).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the current name, not the deprecated gradient_* alias
        model.activation_checkpointing_enable()
        assert model.gradient_checkpointing and model.is_activation_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-5, rtol=0, msg=name)


def test_resnet_blocks_of_every_stage_but_the_last_run_under_the_checkpoint_function(tiny_model):
    calls = []
    tiny_model.train()
    tiny_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    inner = tiny_model._gradient_checkpointing_func
    tiny_model._gradient_checkpointing_func = lambda fn, *args: calls.append(fn) or inner(fn, *args)
    tiny_model.get_image_features(torch.rand(2, 3, 32, 32))
    stages = tiny_model.vision_model.encoder.stages
    assert len(stages) == 2
    assert calls == list(stages[0].layers)


def test_image_ids_mask_false_negatives(tiny_model, tiny_tokenizer):
    ids, mask = text_batch(tiny_tokenizer, ["a red circle", "the red circle", "a blue star"])
    pixels = torch.rand(3, 3, 32, 32)
    pixels[1] = pixels[0]
    out = tiny_model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True,
                     image_id=["7", "7", "9"])
    logits = out.logits_per_image.detach()
    # Captions 0 and 1 describe the same image: neither is a negative for the other's image.
    keep = torch.tensor([[True, False, True], [False, True, True], [True, True, True]])
    masked = logits.masked_fill(~keep, float("-inf"))
    expected = (torch.nn.functional.cross_entropy(masked, torch.arange(3))
                + torch.nn.functional.cross_entropy(masked.T, torch.arange(3))) / 2
    torch.testing.assert_close(out.loss.detach(), expected)


def test_an_image_with_several_captions_in_a_batch_is_embedded_once(tiny_model, tiny_tokenizer):
    ids, mask = text_batch(tiny_tokenizer, ["a red circle", "a blue star", "the red circle", "the blue star"])
    images = torch.rand(2, 3, 32, 32)
    pixels = images[[0, 1, 0, 1]]
    seen = []  # images per pass through the ResNet stem
    count = lambda module, args, out: seen.append(args[0].shape[0])  # noqa: E731
    hook = tiny_model.vision_model.embedder.register_forward_hook(count)
    model = tiny_model.eval()
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True,
                image_id=["7", "9", "7", "9"])
    plain = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
    assert seen == [2, 4]  # two distinct images, then every row without ids
    torch.testing.assert_close(out.image_embeds, plain.image_embeds)
    torch.testing.assert_close(out.vision_model_output.last_hidden_state, plain.vision_model_output.last_hidden_state)

    # The gradient of every row reaches the one embedding of its image: equal to embedding each row.
    out.loss.backward()
    deduplicated = model.visual_projection.weight.grad.clone()
    model.zero_grad()
    hook.remove()
    rows = model.get_image_features(pixels).pooler_output
    texts = model.get_text_features(ids, mask).pooler_output
    from seeyou_ml.losses import contrastive_loss

    contrastive_loss(rows, texts, model.scale(), torch.tensor([7, 9, 7, 9])).backward()
    torch.testing.assert_close(deduplicated, model.visual_projection.weight.grad)

    # Rows of one image id that hold different pixels (augmented views) are each embedded.
    seen.clear()
    hook = model.vision_model.embedder.register_forward_hook(count)
    model(input_ids=ids, attention_mask=mask, pixel_values=torch.rand(4, 3, 32, 32), image_id=["7", "9", "7", "9"])
    hook.remove()
    assert seen == [4]


def test_forward_names_bad_inputs(tiny_model, tiny_tokenizer):
    ids, mask = text_batch(tiny_tokenizer, ["a red circle", "a blue star"])
    with pytest.raises(ValueError, match="needs both `input_ids` and `pixel_values`"):
        tiny_model(input_ids=ids, attention_mask=mask)
    with pytest.raises(ValueError, match="`lang` has 1 entries for a batch of 2 captions"):
        tiny_model(input_ids=ids, attention_mask=mask, pixel_values=torch.rand(2, 3, 32, 32), lang=["en"])


def test_from_vision_text_pretrained_loads_towers_and_routes_kwargs(tmp_path):
    torch.manual_seed(0)
    vit, bert = ViTModel(ViTConfig(**VIT)), BertModel(BertConfig(**BERT))
    vit.save_pretrained(tmp_path / "vit")
    bert.save_pretrained(tmp_path / "bert")
    model = SeeYouModel.from_vision_text_pretrained(
        str(tmp_path / "vit"), str(tmp_path / "bert"),
        text_hidden_dropout_prob=0.25, projection_dim=10, text_pooling="cls",
    )
    assert model.config.projection_dim == 10 and model.config.text_pooling == "cls"
    assert model.config.text_config.hidden_dropout_prob == 0.25
    assert model.text_model.pooler is None  # cls pooling needs no pooler, so none is loaded
    torch.testing.assert_close(model.vision_model.embeddings.patch_embeddings.projection.weight,
                               vit.embeddings.patch_embeddings.projection.weight)
    torch.testing.assert_close(model.text_model.embeddings.word_embeddings.weight,
                               bert.embeddings.word_embeddings.weight)
    assert model.visual_projection.weight.shape == (10, 32)
    with pytest.raises(ValueError, match="vision_model_name_or_path"):
        SeeYouModel.from_vision_text_pretrained(None, str(tmp_path / "bert"))


def test_mlp_projection_and_tiny_preset():
    config = tiny_config(vocab_size=50, projection_dim=8, projection="mlp")
    model = SeeYouModel(config).eval()
    ids = torch.tensor([[0, 5, 6, 2]])
    assert model.get_text_features(ids).pooler_output.shape == (1, 8)
    assert isinstance(model.text_projection, torch.nn.Sequential)


def varied_lengths(rows=10, seq=12, vocab=99, seed=3):
    """Right-padded captions of lengths 3..seq, shuffled."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (rows, seq), generator=generator)
    input_ids[:, 0] = 0
    lengths = torch.linspace(3, seq, rows).round().long()[torch.randperm(rows, generator=generator)]
    attention_mask = (torch.arange(seq) < lengths[:, None]).long()
    return input_ids.masked_fill(attention_mask == 0, 1), attention_mask, lengths


def test_length_groups_sort_rows_and_cut_each_group_at_its_longest():
    from seeyou_ml.towers import length_groups

    _, mask, lengths = varied_lengths()
    groups = length_groups(mask, 3)
    rows = torch.cat([r for r, _ in groups])
    assert sorted(rows.tolist()) == list(range(10))
    assert torch.equal(lengths[rows], lengths.sort().values)
    assert [n for _, n in groups] == [int(lengths[r].max()) for r, _ in groups]
    assert [len(r) for r, _ in groups] == [4, 4, 2]
    # Nothing to gain: one group, no padding, fewer rows than groups; left padding cannot be cut off the end.
    assert length_groups(mask, 1) is None
    assert length_groups(torch.ones(4, 6, dtype=torch.long), 2) is None
    assert length_groups(mask[:2], 3) is None
    assert length_groups(mask.flip(1), 2) is None


@pytest.mark.parametrize("text", [XLMRobertaConfig(**XLMR), BertConfig(**BERT)], ids=["xlmr", "bert"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_text_length_groups_give_the_same_embeddings_states_and_gradients(text, pooling):
    input_ids, mask, _ = varied_lengths()

    def run(groups):
        torch.manual_seed(0)
        config = SeeYouConfig(vision_config=ResNetConfig(**RESNET), text_config=text, projection_dim=8,
                              text_pooling=pooling, text_length_groups=groups)
        model = SeeYouModel(config).train()
        out = model.get_text_features(input_ids, mask)
        (out.pooler_output.square().sum() + (out.last_hidden_state * mask[..., None]).sum()).backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        return out, grads

    plain, plain_grads = run(1)
    grouped, grouped_grads = run(4)
    torch.testing.assert_close(grouped.pooler_output, plain.pooler_output, atol=1e-6, rtol=1e-5)
    keep = mask.bool()
    torch.testing.assert_close(grouped.last_hidden_state[keep], plain.last_hidden_state[keep], atol=1e-5, rtol=1e-5)
    assert grouped.last_hidden_state.shape == plain.last_hidden_state.shape
    assert grouped_grads.keys() == plain_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(grouped_grads[name], plain_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_text_length_groups_must_be_positive():
    with pytest.raises(ValueError, match="text_length_groups must be >= 1"):
        SeeYouConfig(text_length_groups=0)
