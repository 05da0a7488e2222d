"""Tests of the `seeyou` command (`seeyou_ml.cli`)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from seeyou_ml import cli
from seeyou_ml.cli import Subcommand, build_parser, main, register_subcommand
from seeyou_ml.evaluation.report import RECALL_BARS_PNG, TEXT_TO_TEXT_PNG, ZERO_SHOT_PNG
from seeyou_ml.presets import tiny_processor

CAPTIONS = [
    {"en": ["a red circle", "a red circle left"], "de": ["ein roter Kreis"], "fr": ["un cercle rouge"]},
    {"en": ["a blue square"], "de": ["eine blaue Kreis"], "fr": ["une étoile"]},
    {"en": ["a green star"], "de": ["ein Kreis"], "fr": ["un cercle"]},
]


@pytest.fixture()
def saved_model(tiny_model, tiny_tokenizer, tmp_path):
    """A tiny model and its processor saved with save_pretrained."""
    folder = tmp_path / "model"
    tiny_model.save_pretrained(folder)
    tiny_processor(tiny_tokenizer, image_size=32).save_pretrained(folder)
    return folder


@pytest.fixture()
def corpus_folder(tmp_path):
    """A captions-jsonl corpus: val.jsonl and three images."""
    folder = tmp_path / "corpus"
    (folder / "images").mkdir(parents=True)
    lines = []
    for index, captions in enumerate(CAPTIONS):
        Image.new("RGB", (48, 48), (80 * index, 120, 200 - 60 * index)).save(folder / "images" / f"{index}.png")
        lines.append(json.dumps({"image_id": f"im{index}", "image": f"images/{index}.png", "captions": captions}))
    (folder / "val.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def assert_png(path):
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100


def test_evaluate_writes_json_table_and_figures(saved_model, corpus_folder, tmp_path, capsys):
    output = tmp_path / "out" / "results.json"
    status = main(["evaluate", "--model", str(saved_model), "--data", str(corpus_folder), "--split", "val",
                   "--output", str(output), "--batch-size", "2", "--no-progress"])
    assert status == 0
    results = json.loads(output.read_text())
    assert results["languages"] == ["de", "en", "fr"]
    assert (results["num_images"], results["num_captions"]) == (3, 10)
    assert results["per_language"]["en"]["num_captions"] == 4
    assert set(results["text_to_text"]["R@1"]["en"]) == {"de", "fr"}
    assert results["split"] == "val"
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[:3] == ["lang", "images", "captions"]
    assert f"Results: {output}" in printed
    assert_png(output.parent / RECALL_BARS_PNG)
    assert_png(output.parent / TEXT_TO_TEXT_PNG)


def test_evaluate_restricts_languages_and_puts_figures_in_plots_dir(saved_model, corpus_folder, tmp_path):
    output, plots = tmp_path / "results.json", tmp_path / "figures"
    main(["evaluate", "--model", str(saved_model), "--data", str(corpus_folder), "--languages", "en,de",
          "--output", str(output), "--plots-dir", str(plots), "--no-progress"])
    results = json.loads(output.read_text())
    assert results["languages"] == ["en", "de"] and set(results["per_language"]) == {"de", "en"}  # as asked
    assert_png(plots / RECALL_BARS_PNG)
    assert_png(plots / TEXT_TO_TEXT_PNG)


def test_evaluate_on_the_scenes_corpus_reports_zero_shot(saved_model, tmp_path, monkeypatch):
    monkeypatch.setenv("SEEYOU_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "scenes.json"
    main(["evaluate", "--model", str(saved_model), "--data", "scenes", "--split", "val", "--num-images", "6",
          "--languages", "en,de", "--output", str(output), "--no-progress"])
    results = json.loads(output.read_text())
    assert results["num_images"] == 6 and results["languages"] == ["en", "de"]
    assert set(results["zero_shot"]) == {"de", "en", "mean"}
    assert_png(tmp_path / ZERO_SHOT_PNG)


def test_parser_lists_evaluate_and_requires_its_arguments(capsys):
    assert "evaluate" in build_parser().format_help()
    with pytest.raises(SystemExit):
        main(["evaluate", "--data", "scenes"])
    assert "--model" in capsys.readouterr().err


def test_subcommands_register_once_per_name(monkeypatch):
    monkeypatch.setattr(cli, "_SUBCOMMANDS", dict(cli._SUBCOMMANDS))  # leave the real registry untouched
    command = Subcommand(name="echo-test", help="prints nothing", add_arguments=lambda parser: None, run=lambda a: 7)
    register_subcommand(command)
    assert main(["echo-test"]) == 7
    with pytest.raises(ValueError, match="a subcommand named 'echo-test' is already registered"):
        register_subcommand(Subcommand("echo-test", "other", lambda parser: None, lambda a: 0))


@pytest.fixture()
def saved_head_model(tiny_tokenizer, tmp_path):
    """A tiny model with a grounding head and its processor, saved."""
    import torch

    from seeyou_ml import SeeYouModel
    from seeyou_ml.presets import tiny_config

    torch.manual_seed(0)
    head = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    model = SeeYouModel(tiny_config(vocab_size=len(tiny_tokenizer), vision_widths=(8, 16), max_text_length=32,
                                    grounding_config=head))
    folder = tmp_path / "head-model"
    model.save_pretrained(folder)
    tiny_processor(tiny_tokenizer, image_size=32).save_pretrained(folder)
    return folder


def test_ground_writes_a_picture_of_the_box_and_map(saved_head_model, tmp_path, capsys):
    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "scene.png")
    status = main(["ground", "--model", str(saved_head_model), "--image", str(tmp_path / "scene.png"),
                   "--text", "a red circle", "--output", str(tmp_path / "out.png")])
    assert status == 0 and "box [" in capsys.readouterr().out
    with Image.open(tmp_path / "out.png") as image:
        assert image.format == "PNG" and image.size == (4 * 48, 4 * 40)


def test_evaluate_rerank_top_k_reports_recall_before_and_after(saved_head_model, corpus_folder, tmp_path, capsys):
    main(["evaluate", "--model", str(saved_head_model), "--data", str(corpus_folder), "--split", "val",
          "--output", str(tmp_path / "r.json"), "--no-progress", "--rerank-top-k", "10"])
    results = json.loads((tmp_path / "r.json").read_text())
    assert sorted(results["reranked"]) == ["de", "en", "fr"]
    assert "re-ranked R@1" in capsys.readouterr().out
