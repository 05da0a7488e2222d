"""Tests of publishing (`seeyou_ml.hub`): model cards from model_cards/, and pushes against an intercepted HfApi."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from seeyou_ml import hub
from seeyou_ml.cli import main
from seeyou_ml.evaluation import format_table
from training_fixtures import make_records, make_trainer, tiny_recipe

TOKEN = "hf_TestTokenThatMustNeverBeWritten0123456789"
REMOTE_CODE = {"configuration.py", "modeling.py", "losses.py", "towers.py", "processing.py"}
MODEL_FILES = {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json"}


@pytest.fixture(scope="module")
def trained_output(tmp_path_factory, tiny_tokenizer):
    """The output directory of a two-step training run evaluated on en and de captions by `evaluate_retrieval`."""
    folder = tmp_path_factory.mktemp("trained")
    recipe = tiny_recipe(folder, stages=[{"steps": 2}], data={"eval_split": "test"})
    eval_dataset = datasets.Dataset.from_list(make_records(6, languages=("en", "de")))
    make_trainer(recipe, tiny_tokenizer, make_records(16), eval_dataset=eval_dataset).train()
    return folder


@pytest.fixture()
def output_dir(trained_output, tmp_path):
    """A private copy of `trained_output` with adapters, a checkpoint, training history and a tokenizer folder."""
    folder = shutil.copytree(trained_output, tmp_path / "out")
    (folder / "adapters" / "de").mkdir(parents=True)
    (folder / "adapters" / "de" / "adapter_config.json").write_text('{"r": 4, "peft_type": "LORA"}')
    (folder / "adapters" / "de" / "adapter_model.safetensors").write_bytes(b"weights")
    (folder / "checkpoints" / "step-00000002").mkdir(parents=True)
    (folder / "checkpoints" / "step-00000002" / "random_states_0.pkl").write_bytes(pickle.dumps({"rng": 1}))
    (folder / "history.jsonl").write_text('{"step": 0, "loss": 1.0}\n')
    (folder / "tokenizer").mkdir(exist_ok=True)
    (folder / "tokenizer" / "tokenizer.json").write_text("{}")
    return folder


def expected_results(results: dict) -> set[tuple[str, str, str, float]]:
    """(task, config, metric, value) of every result in a retrieval_results.json, read independently of the card,
    to four decimals."""
    rows = set()
    for lang, scores in results["per_language"].items():
        rows |= {("image-text-retrieval", lang, k, v) for k, v in scores.items() if not k.startswith("num_")}
    rows |= {("image-text-retrieval", "mean", k, v) for k, v in results["mean"].items()}
    for metric, matrix in results.get("text_to_text", {}).items():
        rows |= {("cross-lingual-text-retrieval", f"{a}→{b}", metric, v)
                 for a, row in matrix.items() for b, v in row.items()}
    rows |= {("cross-lingual-text-retrieval", "mean", k, v) for k, v in results.get("text_to_text_mean", {}).items()}
    for lang, scores in results.get("zero_shot", {}).items():
        rows.add(("zero-shot-image-classification", lang, "accuracy", scores["accuracy"]))
    return {(task, config, metric, round(value, 4)) for task, config, metric, value in rows}  # as the card shows them


def model_index_rows(card: ModelCard) -> set[tuple[str, str, str, float]]:
    index = card.data.to_dict()["model-index"]
    assert len(index) == 1
    return {(r["task"]["type"], r["dataset"]["config"], m["type"], m["value"])
            for r in index[0]["results"] for m in r["metrics"]}


def test_training_writes_a_card_whose_model_index_holds_every_result(trained_output):
    card = ModelCard.load(trained_output / "README.md")
    results = json.loads((trained_output / "retrieval_results.json").read_text())

    expected = expected_results(results)
    assert {("image-text-retrieval", lang, "image_to_text/R@1") for lang in ("en", "de")} <= {r[:3] for r in expected}
    assert ("cross-lingual-text-retrieval", "en→de", "R@1") in {r[:3] for r in expected}
    assert model_index_rows(card) == expected
    data = card.data.to_dict()
    assert data["language"] == results["languages"] == ["de", "en"]
    assert data["pipeline_tag"] == "zero-shot-image-classification"
    assert data["library_name"] == "transformers" and data["license"] == "apache-2.0"
    assert {"custom_code", "multilingual", "image-text-retrieval"} <= set(data["tags"])
    assert data["datasets"] == ["scenes"] and "base_model" not in data  # the tiny recipe's corpus; towers from scratch
    assert format_table(results) in card.text
    assert "| batch | 8 pairs |" in card.text and "| optimizer steps | 2 |" in card.text


def test_card_names_adapters_grounding_results_and_base_models(output_dir):
    recipe = yaml.safe_load((output_dir / "recipe.yaml").read_text())
    recipe["model"].update(preset=None, vision="microsoft/resnet-50", text="xlm-roberta-base")
    (output_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (output_dir / "grounding_results.json").write_text(json.dumps({"en": {"accuracy@0.5": 61.5, "num_phrases": 9,
                                                                          "pointing": 100 * 0.916}}))

    card = hub.render_model_card(output_dir, repo_id="me/tiny-seeyou")

    data = card.data.to_dict()
    assert data["base_model"] == ["microsoft/resnet-50", "xlm-roberta-base"]
    assert {"lora", "phrase-grounding"} <= set(data["tags"])
    assert data["model-index"][0]["name"] == "tiny-seeyou"
    assert ("phrase-grounding", "en", "accuracy@0.5", 61.5) in model_index_rows(card)
    assert ("phrase-grounding", "en", "pointing", 91.6) in model_index_rows(card)  # not 91.60000000000001
    assert "num_phrases" not in {row[2] for row in model_index_rows(card)}  # a count, not a result
    assert "## Language adapters" in card.text and "`de`" in card.text
    assert '"me/tiny-seeyou", trust_remote_code=True' in card.text
    assert ModelCard(str(card)).data.to_dict() == data  # the rendered text parses back to the same metadata


def test_card_reads_the_grounding_section_training_writes(output_dir):
    results = json.loads((output_dir / "retrieval_results.json").read_text())
    results["grounding"] = {"per_language": {"de": {"acc@0.5": 70.5}}}
    (output_dir / "retrieval_results.json").write_text(json.dumps(results))

    card = hub.render_model_card(output_dir)

    assert "phrase-grounding" in card.data.to_dict()["tags"]
    assert ("phrase-grounding", "per_language/de", "acc@0.5", 70.5) in model_index_rows(card)


def test_card_of_an_unevaluated_folder_says_so(saved_model):
    card = hub.render_model_card(saved_model)
    assert "has not been evaluated" in card.text and "model-index" not in card.data.to_dict()


def test_card_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'missing'}: no such directory"):
        hub.render_model_card(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        hub.render_model_card(tmp_path)


class RecordingApi:
    """Stands in for `huggingface_hub.HfApi`: records every call and a snapshot of the uploaded folder."""

    instances: list["RecordingApi"] = []

    def __init__(self, **kwargs):
        self.init_kwargs = kwargs
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: dict[str, bytes] = {}
        RecordingApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return SimpleNamespace(repo_id=repo_id)

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        self.uploaded = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        self.calls.append(("upload_folder", {k: v for k, v in kwargs.items() if k != "folder_path"}))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/0123abc")


@pytest.fixture()
def hf_api(monkeypatch):
    """`seeyou_ml.hub.HfApi` intercepted; the token in the environment only, as a user has it."""
    RecordingApi.instances = []
    monkeypatch.setattr(hub, "HfApi", RecordingApi)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return RecordingApi


RESULTS_AND_ADAPTERS = {"README.md", "recipe.yaml", "retrieval_results.json", "adapters/de/adapter_config.json",
                        "adapters/de/adapter_model.safetensors"}


@pytest.fixture()
def expected_upload(output_dir):
    """Model files, every modeling file save_pretrained wrote (at least the five of today's model), results, card,
    recipe and adapters."""
    code = {path.name for path in output_dir.glob("*.py")}
    assert REMOTE_CODE <= code
    return sorted(MODEL_FILES | code | RESULTS_AND_ADAPTERS)


def test_push_uploads_the_model_folder_and_the_dry_run_writes_the_same(output_dir, hf_api, expected_upload, tmp_path,
                                                                       capsys, caplog):
    status = main(["push", str(output_dir), "--repo-id", "me/tiny-seeyou", "--private",
                   "--commit-message", "first model"])
    assert status == 0
    (api,) = hf_api.instances
    assert api.init_kwargs == {}  # no token handed over: huggingface_hub reads HF_TOKEN or the login store itself
    assert api.calls == [
        ("create_repo", {"repo_id": "me/tiny-seeyou", "private": True, "exist_ok": True, "repo_type": "model"}),
        ("upload_folder", {"repo_id": "me/tiny-seeyou", "repo_type": "model", "revision": None,
                           "commit_message": "first model"}),
    ]
    assert sorted(api.uploaded) == expected_upload
    for name in set(expected_upload) - {"README.md"}:
        assert api.uploaded[name] == (output_dir / name).read_bytes(), name
    uploaded_card = ModelCard(api.uploaded["README.md"].decode())
    assert uploaded_card.data.to_dict()["model-index"][0]["name"] == "tiny-seeyou"
    push_output = capsys.readouterr().out
    assert "https://huggingface.co/me/tiny-seeyou/commit/0123abc" in push_output

    dry_run = tmp_path / "dry-run"
    assert main(["push", str(output_dir), "--repo-id", "me/tiny-seeyou", "--dry-run", str(dry_run)]) == 0
    assert len(hf_api.instances) == 1  # the dry run contacts nobody
    written = {str(p.relative_to(dry_run)): p.read_bytes() for p in dry_run.rglob("*") if p.is_file()}
    assert written == api.uploaded
    dry_output = capsys.readouterr().out
    assert [line.strip() for line in dry_output.splitlines()[1:]] == expected_upload

    logs = push_output + dry_output + caplog.text
    assert TOKEN not in logs
    assert all(TOKEN.encode() not in data for data in written.values())


def test_push_to_a_branch_creates_it(output_dir, hf_api, expected_upload):
    result = hub.push_to_hub(output_dir, "me/tiny-seeyou", revision="v2")
    calls = hf_api.instances[0].calls
    assert calls[1] == ("create_branch", {"repo_id": "me/tiny-seeyou", "branch": "v2", "exist_ok": True})
    assert calls[2][1]["revision"] == "v2" and calls[2][1]["commit_message"] == "Upload tiny-seeyou with seeyou-ml"
    assert result.files == expected_upload and result.folder is None


def test_push_refuses_a_pickle_and_names_it(output_dir, hf_api, capsys):
    torch.save({"w": torch.zeros(2)}, output_dir / "pytorch_model.bin")
    assert main(["push", str(output_dir), "--repo-id", "me/tiny-seeyou"]) == 2
    err = capsys.readouterr().err
    assert f"{output_dir / 'pytorch_model.bin'} is a pickle" in err and len(err.strip().splitlines()) == 1
    assert hf_api.instances == [] or hf_api.instances[0].calls == []


def test_pickles_are_recognised_by_content(tmp_path):
    (tmp_path / "state.data").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    torch.save({"w": torch.zeros(1)}, tmp_path / "weights.zip")
    (tmp_path / "notes.json").write_text('{"a": 1}')
    assert hub.is_pickle(tmp_path / "state.data") and hub.is_pickle(tmp_path / "weights.zip")
    assert not hub.is_pickle(tmp_path / "notes.json")


def test_push_refuses_files_holding_the_token(output_dir, hf_api, capsys):
    (output_dir / "recipe.yaml").write_text(f"name: leaked\nhub_token: {TOKEN}\n")
    assert main(["push", str(output_dir), "--repo-id", "me/tiny-seeyou"]) == 2
    err = capsys.readouterr().err
    # The card shows the recipe, so it holds the token too.
    assert "README.md, recipe.yaml contain your Hugging Face token" in err and TOKEN not in err
    assert hf_api.instances[0].calls == []


def test_dry_run_needs_an_empty_folder(output_dir, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="busy is not empty"):
        hub.push_to_hub(output_dir, "me/x", dry_run=tmp_path / "busy")
