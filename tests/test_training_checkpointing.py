"""Atomic checkpoints: a failure mid-save leaves the previous one intact; only the last K are kept."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator

from seeyou_ml.training.checkpointing import (
    TRAINER_STATE_NAME,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_resume_path,
    save_checkpoint,
)


@pytest.fixture()
def prepared():
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def _train_step(model, optimizer):
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_save_and_load_round_trip(tmp_path, prepared):
    accelerator, model, optimizer = prepared
    _train_step(model, optimizer)
    path = save_checkpoint(accelerator, tmp_path, step=1, trainer_state={"epoch": 0}, keep_last=2)
    assert path == checkpoint_path(tmp_path, 1) and path.name == "step-00000001"
    weights = model.weight.detach().clone()
    expected_draw = torch.rand(3)  # drawn from the saved random state
    torch.manual_seed(123)
    _train_step(model, optimizer)
    state = load_checkpoint(accelerator, path)
    assert state == {"epoch": 0, "step": 1}
    assert torch.equal(model.weight, weights)
    assert torch.equal(torch.rand(3), expected_draw)


def test_failure_mid_save_leaves_previous_checkpoint_intact(tmp_path, prepared, monkeypatch):
    accelerator, model, optimizer = prepared
    first = save_checkpoint(accelerator, tmp_path, step=1, trainer_state={}, keep_last=3)
    files = {p.name: p.read_bytes() for p in first.iterdir()}

    def crash(output_dir, **kwargs):
        (tmp_path / "checkpoints" / ".tmp-step-00000002" / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt("killed during save")

    _train_step(model, optimizer)
    monkeypatch.setattr(accelerator, "save_state", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, tmp_path, step=2, trainer_state={}, keep_last=3)
    assert list_checkpoints(tmp_path) == [first]
    assert latest_checkpoint(tmp_path) == first
    assert resolve_resume_path("latest", tmp_path) == first
    assert {p.name: p.read_bytes() for p in first.iterdir()} == files
    assert (tmp_path / "checkpoints" / ".tmp-step-00000002").exists()

    monkeypatch.undo()
    second = save_checkpoint(accelerator, tmp_path, step=2, trainer_state={}, keep_last=3)
    assert not (tmp_path / "checkpoints" / ".tmp-step-00000002").exists()
    assert list_checkpoints(tmp_path) == [first, second]
    assert json.loads((second / TRAINER_STATE_NAME).read_text())["step"] == 2


def test_keeps_only_the_last_k(tmp_path, prepared):
    accelerator, model, optimizer = prepared
    for step in range(1, 6):
        _train_step(model, optimizer)
        save_checkpoint(accelerator, tmp_path, step=step * 10, trainer_state={}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000040", "step-00000050"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000040", "step-00000050"]


def test_resume_path_errors_name_what_exists(tmp_path, prepared):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_resume_path("latest", tmp_path)
    accelerator, _, _ = prepared
    save_checkpoint(accelerator, tmp_path, step=3, trainer_state={}, keep_last=1)
    with pytest.raises(FileNotFoundError, match="step-00000003"):
        resolve_resume_path(str(tmp_path / "checkpoints" / "step-00000009"), tmp_path)
