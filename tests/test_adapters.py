import json
import logging

import pytest
import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file

from seeyou_ml import SeeYouModel
from seeyou_ml.adapters import (
    ADAPTERS_FOLDER,
    BASE_ADAPTER,
    add_language_adapter,
    base_state_dict,
    delete_language_adapter,
    language_adapters,
    load_language_adapters,
    merge_language_adapter,
    save_language_adapters,
    set_language,
    train_language_adapters,
)
from seeyou_ml.presets import tiny_config

LANGUAGES = ["es", "id", "ja", "ru", "tr", "zh"]


def make_model(seed=0):
    torch.manual_seed(seed)
    config = tiny_config(vocab_size=60, projection_dim=16, vision_widths=(8, 16), vision_depths=(1, 1),
                         text_hidden_size=32, max_text_length=16)
    return SeeYouModel(config).eval()


def random_lora(seed):
    """A LoRA config whose B matrices start random (peft's default zero B would make every adapter the identity)."""
    torch.manual_seed(seed)
    return LoraConfig(r=4, lora_alpha=8, target_modules=["word_embeddings", "query", "key", "value", "dense"],
                      init_lora_weights=False)


def with_adapters(languages=LANGUAGES, seed=0):
    model = make_model(seed)
    for i, lang in enumerate(languages):
        add_language_adapter(model, lang, random_lora(100 + i))
    return model.eval()


def text_inputs(rows=12, seq=9, seed=1):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 60, (rows, seq), generator=generator)
    input_ids[:, 0] = 0
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -3:] = 0
    attention_mask[rows - 1, -5:] = 0
    return input_ids, attention_mask


def embed(model, input_ids, attention_mask, lang=None):
    return model.get_text_features(input_ids=input_ids, attention_mask=attention_mask, lang=lang).pooler_output


def test_new_adapter_changes_nothing_until_trained_and_config_lists_languages():
    model = make_model()
    input_ids, mask = text_inputs()
    before = embed(model, input_ids, mask)
    add_language_adapter(model, "ja")
    add_language_adapter(model, "es", LoraConfig(r=2, target_modules=["query", "value"]))
    assert language_adapters(model) == ["es", "ja"] and model.config.adapter_languages == ["es", "ja"]
    torch.testing.assert_close(embed(model, input_ids, mask, lang="ja"), before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="already has an adapter for 'ja'"):
        add_language_adapter(model, "ja")
    with pytest.raises(ValueError, match="not an ISO 639-1 code"):
        add_language_adapter(model, "japanese")


def test_adapter_changes_only_its_language_and_lang_none_is_base():
    model = make_model()
    input_ids, mask = text_inputs()
    base = embed(model, input_ids, mask)
    add_language_adapter(model, "es", random_lora(0))
    torch.testing.assert_close(embed(model, input_ids, mask), base, rtol=0, atol=0)
    adapted = embed(model, input_ids, mask, lang="es")
    assert (adapted - base).abs().max() > 1e-3
    set_language(model, "es")  # the default for untagged captions
    torch.testing.assert_close(embed(model, input_ids, mask), adapted, rtol=0, atol=0)
    set_language(model, None)
    torch.testing.assert_close(embed(model, input_ids, mask), base, rtol=0, atol=0)
    with pytest.raises(ValueError, match="has no adapter for 'fr'"):
        set_language(model, "fr")


def test_mixed_batch_equals_per_language_batches_row_by_row():
    model = with_adapters()
    input_ids, mask = text_inputs(rows=14)
    # Six adapter languages, a language without one (fr) and the base, interleaved.
    lang = ["es", "zh", "fr", "id", "ja", None, "ru", "tr", "es", "ja", "zh", "ru", "id", "tr"]
    with torch.no_grad():
        mixed = embed(model, input_ids, mask, lang=lang)
        for code in set(lang):
            rows = [i for i, c in enumerate(lang) if c == code]
            alone = embed(model, input_ids[rows], mask[rows], lang=code if code in LANGUAGES else None)
            torch.testing.assert_close(mixed[rows], alone, rtol=0, atol=1e-5)
    # Distinct adapters really give distinct embeddings of the same caption.
    same = input_ids[:1].repeat(6, 1), mask[:1].repeat(6, 1)
    rows = embed(model, *same, lang=LANGUAGES)
    assert torch.cdist(rows, rows).add(torch.eye(6)).min() > 1e-3


def test_language_without_adapter_uses_base_and_is_named_in_one_warning(caplog):
    model = with_adapters(["es", "ja"])
    input_ids, mask = text_inputs(rows=4)
    base = embed(model, input_ids, mask)
    with caplog.at_level(logging.WARNING, logger="seeyou_ml.adapters"):
        out = embed(model, input_ids, mask, lang=["fr", "de", "fr", "de"])
        embed(model, input_ids, mask, lang=["de", "fr", "es", "ja"])
    torch.testing.assert_close(out, base, rtol=0, atol=0)
    warnings = [r.getMessage() for r in caplog.records if "No language adapter" in r.getMessage()]
    assert warnings == ["No language adapter for de, fr; those captions use the base text tower (adapters: es, ja)."]
    with pytest.raises(ValueError, match="`lang` has 3 entries for a batch of 4 captions"):
        embed(model, input_ids, mask, lang=["es", "es", "es"])


def test_model_without_adapters_ignores_lang_silently(caplog):
    model = make_model()
    input_ids, mask = text_inputs(rows=3)
    with caplog.at_level(logging.WARNING):
        out = embed(model, input_ids, mask, lang=["en", "de", "fr"])
    torch.testing.assert_close(out, embed(model, input_ids, mask), rtol=0, atol=0)
    assert not caplog.records


def test_routing_holds_in_training_mode_gradients_reach_each_adapter_from_its_rows():
    model = with_adapters(["es", "ja"])
    trainable = train_language_adapters(model, ["es", "ja"])
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(".lora_" in n for n in names) and len(trainable) == len(names)
    assert any(".es" in n for n in names) and any(".ja" in n for n in names)
    model.train()
    input_ids, mask = text_inputs(rows=6)
    lang = ["es", "ja", "es", "ja", "es", "ja"]
    target = torch.randn(6, 16, generator=torch.Generator().manual_seed(3))

    def grads(rows, codes):
        model.zero_grad(set_to_none=True)
        loss = (embed(model, input_ids[rows], mask[rows], lang=codes) * target[rows]).sum()
        loss.backward()
        return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()
                if p.requires_grad}

    mixed = grads(list(range(6)), lang)
    es, ja = grads([0, 2, 4], "es"), grads([1, 3, 5], "ja")
    for name in mixed:
        torch.testing.assert_close(mixed[name], es[name] + ja[name], rtol=1e-4, atol=1e-6)
        if ".ja" in name:
            assert es[name].abs().max() == 0  # Spanish rows never touch the Japanese adapter


def test_save_layout_is_peft_and_loads_with_plain_peft(tmp_path):
    model = with_adapters(["es", "ja"])
    input_ids, mask = text_inputs()
    folders = save_language_adapters(model, tmp_path)
    assert folders == [tmp_path / "es", tmp_path / "ja"]
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["r"] == 4
        assert all(k.startswith("base_model.model.") for k in load_file(folder / "adapter_model.safetensors"))

    for lang in ("es", "ja"):
        fresh = make_model()  # same seed: the same base weights
        peft_tower = PeftModel.from_pretrained(fresh.text_model, str(tmp_path / lang)).eval()
        with torch.no_grad():
            expected = model.text_model  # route all rows through `lang` with the library, compare hidden states
            ours = model.get_text_features(input_ids, mask, lang=lang).last_hidden_state
            theirs = peft_tower(input_ids=input_ids, attention_mask=mask).last_hidden_state
        assert expected is not peft_tower
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


def test_load_restores_adapters_and_rejects_unknown(tmp_path):
    model = with_adapters(["es", "ja", "zh"])
    save_language_adapters(model, tmp_path, ["ja", "zh"])
    input_ids, mask = text_inputs()
    lang = ["ja", "zh", "ja", None, "zh", "ja", "zh", "ja", "zh", "ja", "zh", "ja"]
    restored = make_model()
    assert load_language_adapters(restored, tmp_path) == ["ja", "zh"]
    with torch.no_grad():
        torch.testing.assert_close(embed(restored, input_ids, mask, lang), embed(model, input_ids, mask, lang),
                                   rtol=0, atol=1e-6)
    with pytest.raises(FileNotFoundError, match=r"no adapter folder for \['ru'\]"):
        load_language_adapters(make_model(), tmp_path, ["ru"])


def test_save_pretrained_round_trips_adapters(tmp_path):
    model = with_adapters(["es", "ru"])
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in (tmp_path / ADAPTERS_FOLDER).iterdir()) == ["es", "ru"]
    weights = load_file(tmp_path / "model.safetensors")
    assert not any("lora_" in k or "base_layer" in k for k in weights)
    assert set(weights) == set(base_state_dict(model))
    loaded = SeeYouModel.from_pretrained(tmp_path).eval()
    assert loaded.config.adapter_languages == ["es", "ru"] == language_adapters(loaded)
    input_ids, mask = text_inputs()
    lang = ["es", "ru", None, "es", "ru", "es", "ru", "es", "ru", "es", "ru", "es"]
    with torch.no_grad():
        torch.testing.assert_close(embed(loaded, input_ids, mask, lang), embed(model, input_ids, mask, lang),
                                   rtol=0, atol=1e-6)
    # The base weights saved are the base weights: without adapters the loaded model is the plain model.
    plain = make_model()
    torch.testing.assert_close(embed(loaded, input_ids, mask), embed(plain, input_ids, mask), rtol=0, atol=1e-6)


def test_merged_model_equals_adapter_model_and_saves_plain(tmp_path):
    model = with_adapters(["es", "ja"])
    input_ids, mask = text_inputs()
    with torch.no_grad():
        expected = embed(model, input_ids, mask, lang="ja")
    merge_language_adapter(model, "ja")
    assert language_adapters(model) == [] and model.config.adapter_languages is None
    assert not any("lora_" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(embed(model, input_ids, mask), expected, rtol=0, atol=1e-5)
    model.save_pretrained(tmp_path)
    assert not (tmp_path / ADAPTERS_FOLDER).exists()
    reloaded = SeeYouModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(embed(reloaded, input_ids, mask), expected, rtol=0, atol=1e-5)


def test_delete_adapter_and_last_one_restores_plain_tower():
    model = with_adapters(["es", "ja"])
    input_ids, mask = text_inputs()
    with torch.no_grad():
        base, ja = embed(model, input_ids, mask), embed(model, input_ids, mask, lang="ja")
    delete_language_adapter(model, "es")
    assert language_adapters(model) == ["ja"]
    torch.testing.assert_close(embed(model, input_ids, mask, lang="ja"), ja, rtol=0, atol=0)
    delete_language_adapter(model, "ja")
    assert language_adapters(model) == [] and model.config.adapter_languages is None
    assert not any("lora_" in n or "base_layer" in n for n in model.state_dict())
    assert all(p.requires_grad for p in model.text_model.parameters())
    torch.testing.assert_close(embed(model, input_ids, mask), base, rtol=0, atol=0)
    with pytest.raises(ValueError, match="has no adapter for 'ja'"):
        delete_language_adapter(model, "ja")


def test_forward_routes_lang_like_get_text_features():
    model = with_adapters(["es", "ja"])
    input_ids, mask = text_inputs(rows=4)
    pixel_values = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    lang = ["es", "ja", "en", "es"]
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values, lang=lang)
        torch.testing.assert_close(out.text_embeds, embed(model, input_ids, mask, lang), rtol=0, atol=0)
    assert BASE_ADAPTER == "__base__"


def test_length_groups_route_each_row_through_its_own_adapter():
    model = with_adapters()
    input_ids, mask = text_inputs(rows=14)
    mask[3, -6:] = 0
    mask[8, -4:] = 0
    lang = ["es", "zh", "fr", "id", "ja", None, "ru", "tr", "es", "ja", "zh", "ru", "id", "tr"]
    with torch.no_grad():
        plain = embed(model, input_ids, mask, lang=lang)
        model.config.text_length_groups = 3
        grouped = embed(model, input_ids, mask, lang=lang)
    torch.testing.assert_close(grouped, plain, rtol=0, atol=1e-5)
