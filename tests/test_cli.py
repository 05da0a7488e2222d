"""Tests of the `seeyou` command (`seeyou_ml.cli`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from seeyou_ml import cli
from seeyou_ml.cli import Subcommand, build_parser, main, register_subcommand
from seeyou_ml.evaluation.report import RECALL_BARS_PNG, TEXT_TO_TEXT_PNG, ZERO_SHOT_PNG

CAPTIONS = [
    {"en": ["a red circle", "a red circle left"], "de": ["ein roter Kreis"], "fr": ["un cercle rouge"]},
    {"en": ["a blue square"], "de": ["eine blaue Kreis"], "fr": ["une étoile"]},
    {"en": ["a green star"], "de": ["ein Kreis"], "fr": ["un cercle"]},
]


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


@pytest.mark.parametrize("command", ["train", "evaluate", "ground", "push", "card"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith(f"usage: seeyou {command}") and "--debug" in help_text
    assert command in build_parser().format_help()


def test_evaluate_reads_a_corpus_with_format_image_root_and_column_mapping(saved_model, tmp_path):
    """A captions-jsonl file whose keys differ from the schema, with its images in a folder of their own."""
    images, corpus = tmp_path / "pictures", tmp_path / "corpus"
    images.mkdir()
    corpus.mkdir()
    lines = []
    for index, captions in enumerate(CAPTIONS):
        Image.new("RGB", (48, 48), (80 * index, 120, 60)).save(images / f"{index}.png")
        lines.append(json.dumps({"id": f"im{index}", "picture": f"{index}.png", "texts": captions}))
    (corpus / "val.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = tmp_path / "results.json"
    status = main(["evaluate", "--model", str(saved_model), "--data", str(corpus), "--format", "captions-jsonl",
                   "--image-root", str(images), "--column-mapping", "id=image_id,picture=image,texts=captions",
                   "--output", str(output), "--plots-dir", str(tmp_path / "figures"), "--no-progress"])
    assert status == 0
    results = json.loads(output.read_text())
    assert (results["num_images"], results["num_captions"]) == (3, 10)


def test_a_bad_column_mapping_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model", "m", "--data", "d", "--column-mapping", "caption"])
    assert exit_info.value.code == 2
    assert "is not SRC=DEST[,SRC=DEST...]" in capsys.readouterr().err


def test_card_writes_the_model_card(saved_model, tmp_path, capsys):
    assert main(["card", str(saved_model), "--repo-id", "me/tiny"]) == 0
    assert capsys.readouterr().out.strip() == f"Model card: {saved_model / 'README.md'}"
    card = (saved_model / "README.md").read_text()
    assert card.startswith("---\n") and 'AutoModel.from_pretrained("me/tiny", trust_remote_code=True)' in card


def _recipe_file(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


USER_ERRORS = {
    "missing recipe": (lambda tmp, model: ["train", str(tmp / "nope.yaml")],
                       "recipe {tmp}/nope.yaml: no such file; give a recipe YAML such as recipes/scenes-tiny.yaml."),
    "unknown recipe key": (lambda tmp, model: ["train", _recipe_file(tmp, "name: x\ndata: {bogus: 1}\n")],
                           "Unknown recipe key(s) in section 'data': 'bogus'."),
    "recipe not YAML": (lambda tmp, model: ["train", _recipe_file(tmp, "name: [x\n")],
                        "recipe {tmp}/recipe.yaml is not valid YAML ("),
    "missing model folder": (lambda tmp, model: ["evaluate", "--model", str(tmp / "out"), "--data", "scenes"],
                             "--model {tmp}/out: no such directory; give the output directory of `seeyou train`"),
    "model folder without config": (lambda tmp, model: ["evaluate", "--model", str(tmp), "--data", "scenes"],
                                    "--model {tmp}: the folder has no config.json;"),
    "unknown scenes split": (lambda tmp, model: ["evaluate", "--model", str(model), "--data", "scenes",
                                                 "--split", "bogus"],
                             "split 'bogus' is not a scenes split; choose from ['test', 'train', 'val']"),
    "unknown language": (lambda tmp, model: ["evaluate", "--model", str(model), "--data", "scenes",
                                             "--languages", "en,xx"],
                         "language 'xx' is not in the scenes corpus;"),
    "corpus option on scenes": (lambda tmp, model: ["evaluate", "--model", str(model), "--data", "scenes",
                                                    "--image-root", str(tmp)],
                                "--image-root: options of corpora read by load_corpus"),
    "scenes option on a corpus": (lambda tmp, model: ["evaluate", "--model", str(model), "--data", str(tmp),
                                                      "--seed", "1"],
                                  "--seed: options of the embedded scenes corpus (--data scenes), not of {tmp}; "
                                  "leave them out."),
    "missing output folder to push": (lambda tmp, model: ["push", str(tmp / "out"), "--repo-id", "me/x"],
                                      "{tmp}/out: no such directory; give the output directory of `seeyou train`."),
    "bad repo id": (lambda tmp, model: ["push", str(model), "--repo-id", "me/x/y"],
                    "--repo-id 'me/x/y' is not a repository id; give `user/name` or `org/name`."),
    "missing output folder for a card": (lambda tmp, model: ["card", str(tmp / "out")],
                                         "{tmp}/out: no such directory;"),
}


@pytest.mark.parametrize("case", sorted(USER_ERRORS))
def test_user_errors_are_one_line_with_exit_status_2(case, saved_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SEEYOU_CACHE", str(tmp_path / "cache"))
    argv, message = USER_ERRORS[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    assert main(argv(inputs, saved_model)) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"seeyou {argv(inputs, saved_model)[0]}: error: ")
    assert message.format(tmp=inputs) in line and line.endswith("(--debug shows the traceback)")


def test_debug_shows_the_exception(tmp_path):
    for argv in (["--debug", "card", str(tmp_path / "out")], ["card", str(tmp_path / "out"), "--debug"]):
        with pytest.raises(FileNotFoundError, match="no such directory"):
            main(argv)
    with pytest.raises(FileNotFoundError, match="no such file"):
        main(["train", str(tmp_path / "nope.yaml"), "--debug"])


def test_console_command_exits_2_without_a_traceback(tmp_path):
    run = subprocess.run([sys.executable, "-m", "seeyou_ml.cli", "card", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip() == (f"seeyou card: error: {tmp_path / 'out'}: no such directory; give the output "
                                  "directory of `seeyou train`. (--debug shows the traceback)")


@pytest.fixture()
def saved_head_model(tiny_tokenizer, tmp_path):
    """A tiny model with a grounding head and its processor, saved."""
    import torch

    from seeyou_ml import SeeYouModel
    from seeyou_ml.presets import tiny_config, tiny_processor

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


def test_evaluate_scores_the_grounding_head_on_another_draw_of_the_scenes_corpus(saved_head_model, tmp_path,
                                                                                 monkeypatch, capsys):
    from transformers import AutoModel, AutoProcessor

    from seeyou_ml.data import load_scenes
    from seeyou_ml.evaluation.grounding import evaluate_grounding

    monkeypatch.setenv("SEEYOU_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "draw.json"
    main(["evaluate", "--model", str(saved_head_model), "--data", "scenes", "--split", "test", "--num-images", "4",
          "--languages", "en", "--seed", "1", "--output", str(output), "--no-progress"])
    results = json.loads(output.read_text())
    draw = load_scenes("test", num_images=4, languages=["en"], seed=1)
    assert draw["phrase"] != load_scenes("test", num_images=4, languages=["en"])["phrase"]  # a draw of its own
    model = AutoModel.from_pretrained(saved_head_model).eval()
    processor = AutoProcessor.from_pretrained(saved_head_model)
    assert results["grounding"] == evaluate_grounding(model, processor, draw)  # the seed's draw, scored as in training
    assert results["grounding"]["per_language"]["en"]["count"] == 4
    assert "grounding         Acc@0.5  mean IoU  pointing      n" in capsys.readouterr().out
