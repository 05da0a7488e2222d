"""Resuming from damaged runs: a damaged-checkpoint matrix (each file truncated or missing), a partial history line,
`--resume_from` checked before anything is built, and the resumed run saying where it came from."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from seeyou_ml.training.build import build_trainer
from seeyou_ml.training.checkpointing import checkpoint_problem, resume_candidates
from training_fixtures import make_records, make_trainer, tiny_recipe

FILES = ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl", "trainer_state.json")
SECTIONS = dict(stages=[{"name": "joint", "steps": 6}], checkpoint={"save_every": 2, "keep_last": 3})


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_tokenizer):
    """A finished 6-step run with checkpoints after steps 2, 4 and 6, and its loss curve."""
    folder = tmp_path_factory.mktemp("run")
    output = make_trainer(tiny_recipe(folder, **SECTIONS), tiny_tokenizer, make_records(24)).train()
    return folder, output.losses


@pytest.fixture()
def run(trained_run, tmp_path):
    """A fresh copy of the trained run to damage."""
    folder = tmp_path / "run"
    shutil.copytree(trained_run[0], folder)
    return folder


def _damage(path, how: str) -> None:
    if how == "missing":
        path.unlink()
    else:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


def test_the_saved_checkpoints_are_intact_and_list_their_files(run):
    latest = run / "checkpoints" / "step-00000006"
    assert checkpoint_problem(latest) is None
    listed = json.loads((latest / "trainer_state.json").read_text())["files"]
    assert set(FILES) - {"trainer_state.json"} <= set(listed)
    assert resume_candidates("latest", run)[0] == latest


@pytest.mark.parametrize("how", ["truncated", "missing"])
@pytest.mark.parametrize("name", FILES)
def test_damaged_latest_falls_back_and_a_named_damaged_checkpoint_is_an_error(run, name, how, caplog):
    latest = run / "checkpoints" / "step-00000006"
    _damage(latest / name, how)
    with caplog.at_level(logging.WARNING):
        candidates = resume_candidates("latest", run)
    assert candidates[0] == run / "checkpoints" / "step-00000004"
    assert f"skipping checkpoint {latest}" in caplog.text and name in caplog.text
    with pytest.raises(ValueError, match=rf"--resume_from {latest}: .*{name}"):
        resume_candidates(str(latest), run)


def test_latest_with_every_checkpoint_damaged_names_each_problem(run):
    for path in (run / "checkpoints").iterdir():
        _damage(path / "optimizer.bin", "truncated")
    with pytest.raises(FileNotFoundError, match=r"no complete checkpoint .*step-00000006 .*optimizer.bin.*"
                                                r"step-00000002 .*optimizer.bin"):
        resume_candidates("latest", run)


def test_resume_falls_back_past_a_damaged_latest_and_a_partial_history_line(run, trained_run, tiny_tokenizer,
                                                                            caplog):
    _damage(run / "checkpoints" / "step-00000006" / "model.safetensors", "truncated")
    history = run / "history.jsonl"
    # A kill during the append leaves half a record.
    history.write_text(history.read_text() + '{"step": 6, "lo', encoding="utf-8")
    trainer = make_trainer(tiny_recipe(run, resume_from="latest", **SECTIONS), tiny_tokenizer, make_records(24))
    with caplog.at_level(logging.WARNING):
        resumed = trainer.train()
    assert f"Resumed from step 4 (checkpoint {run / 'checkpoints' / 'step-00000004'}" in caplog.text
    assert "line 7: not a complete JSON record" in caplog.text
    assert resumed.losses == trained_run[1][4:]
    assert [json.loads(line)["step"] for line in history.read_text().splitlines()] == [0, 1, 2, 3, 4, 5]


def test_resume_from_is_checked_before_the_corpus_is_loaded(run, monkeypatch):
    from seeyou_ml.training.config import DataConfig

    def never(*args, **kwargs):
        raise AssertionError("the corpus was loaded before --resume_from was checked")

    monkeypatch.setattr(DataConfig, "load_split", never)
    named = run / "checkpoints" / "step-00000004"
    _damage(named / "scheduler.bin", "truncated")
    with pytest.raises(ValueError, match=rf"{named / 'scheduler.bin'} has \d+ bytes"):
        build_trainer(tiny_recipe(run, resume_from=str(named), **SECTIONS))
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        build_trainer(tiny_recipe(run, resume_from=str(run / "nowhere"), **SECTIONS))
