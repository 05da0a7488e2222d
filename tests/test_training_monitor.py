"""Collapse statistics, the collapse warning, and the non-finite loss guard (alone and inside the trainer)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from seeyou_ml.training.monitor import (
    COLLAPSE_REMEDIES,
    CollapseMonitor,
    EmbeddingCollapseWarning,
    NonFiniteLossGuard,
    NonFiniteStepWarning,
    TrainingDivergedError,
    TrainingWarning,
    alignment,
    effective_rank,
    mean_offdiagonal_cosine,
    uniformity,
)
from seeyou_ml.losses import LOSS_TERMS, register_loss_term
from training_fixtures import make_records, make_trainer, tiny_recipe


def test_statistics_of_spread_and_collapsed_embeddings():
    spread = torch.eye(8)  # 8 orthonormal rows
    collapsed = torch.ones(8, 8)
    assert mean_offdiagonal_cosine(spread) == pytest.approx(0.0)
    assert mean_offdiagonal_cosine(collapsed) == pytest.approx(1.0)
    assert effective_rank(spread) == pytest.approx(8.0, rel=1e-5)
    assert effective_rank(collapsed) == pytest.approx(1.0, rel=1e-4)
    # Orthonormal rows are sqrt(2) apart: log E exp(-2 * 2) = -4; identical rows: log 1 = 0.
    assert uniformity(spread) == pytest.approx(-4.0)
    assert uniformity(collapsed) == pytest.approx(0.0, abs=1e-6)
    assert alignment(spread, spread) == pytest.approx(0.0)
    assert alignment(spread, -spread) == pytest.approx(4.0)


def test_monitor_warns_with_remedies_only_for_the_collapsed_tower():
    monitor = CollapseMonitor(max_cosine=0.9, min_rank_fraction=0.25)
    healthy = torch.nn.functional.normalize(torch.randn(16, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingWarning)
        stats, messages = monitor.check(healthy + 0.0, healthy, step=7)
    assert messages == [] and stats["image/effective_rank"] > 4
    collapsed = torch.ones(16, 8) + 1e-3 * healthy
    with pytest.warns(EmbeddingCollapseWarning) as record:
        stats, messages = monitor.check(collapsed, healthy, step=9)
    assert len(messages) == 1 and messages[0].startswith("Step 9: the image embeddings are collapsing")
    assert stats["image/mean_cosine"] > 0.99
    assert all(remedy in messages[0] for remedy in COLLAPSE_REMEDIES)
    assert [str(w.message) for w in record] == messages


def test_trainer_warns_when_the_embeddings_collapse(tmp_path, tiny_tokenizer):
    recipe = tiny_recipe(tmp_path, stages=[{"steps": 2}], optim={"lr": 1e-6},
                         monitor={"collapse_every": 1, "progress_bar": False, "report_to": None})
    trainer = make_trainer(recipe, tiny_tokenizer, make_records(16))
    # A rank-1 image projection maps every (non-negative, pooled) image feature onto the same direction.
    with torch.no_grad():
        trainer.unwrapped.visual_projection.weight.fill_(0.01)
    with pytest.warns(EmbeddingCollapseWarning) as record:
        trainer.train()
    image = [str(w.message) for w in record if "the image embeddings are collapsing" in str(w.message)]
    assert [message.split(":")[0] for message in image] == ["Step 1", "Step 2"]
    assert "mean off-diagonal cosine 1.000" in image[0] and COLLAPSE_REMEDIES[0] in image[0]


def test_guard_counts_skips_resets_on_finite_and_stops_after_k_in_a_row():
    guard = NonFiniteLossGuard(max_consecutive=3)
    assert guard.update(1.5, step=0)
    with pytest.warns(NonFiniteStepWarning, match=r"Step 1: loss is nan; .* \(1 in a row, 1 in this run\)"):
        assert not guard.update(float("nan"), step=1)
    with pytest.warns(NonFiniteStepWarning, match="Step 2: loss is inf"):
        assert not guard.update(float("inf"), step=2)
    assert guard.update(1.2, step=3)
    assert (guard.skipped, guard.consecutive) == (2, 0)
    with pytest.warns(NonFiniteStepWarning), pytest.raises(TrainingDivergedError) as error:
        guard.update(float("nan"), step=4)
        guard.update(float("nan"), step=5)
        guard.update(float("-inf"), step=6)
    message = str(error.value)
    assert "NaN or infinite in 3 consecutive steps (4 to 6)" in message
    assert "5 skipped in this run" in message and "last finite loss was 1.2000 at step 3" in message
    assert "lower learning rate" in message and "--resume_from" in message
    again = NonFiniteLossGuard(max_consecutive=3)
    again.load_state_dict(guard.state_dict())
    assert again == guard


@pytest.fixture()
def nan_on_calls():
    """A loss term that is NaN on chosen calls and 0 otherwise."""
    calls = {"count": 0, "nan": set()}

    @register_loss_term("test_nan_loss")
    def nan_term(outputs, batch, model):
        calls["count"] += 1
        value = float("nan") if calls["count"] - 1 in calls["nan"] else 0.0
        return outputs["image_embeds"].sum() * 0.0 + value

    yield calls
    LOSS_TERMS.pop("test_nan_loss")


def test_trainer_skips_nan_steps_without_updating_and_counts_them(tmp_path, tiny_tokenizer, nan_on_calls):
    nan_on_calls["nan"] = {1, 2}
    recipe = tiny_recipe(tmp_path, stages=[{"steps": 4}], losses={"contrastive_loss": {}, "test_nan_loss": {}})
    trainer = make_trainer(recipe, tiny_tokenizer, make_records(16))
    snapshots = []
    step = trainer.training_step

    def recording_step(batch):
        before = trainer.unwrapped.visual_projection.weight.detach().clone()
        result = step(batch)
        snapshots.append(torch.equal(before, trainer.unwrapped.visual_projection.weight))
        return result

    trainer.training_step = recording_step
    with pytest.warns(NonFiniteStepWarning) as record:
        output = trainer.train()
    assert [str(w.message) for w in record] == [
        "Step 1: loss is nan; skipping the optimizer update (1 in a row, 1 in this run).",
        "Step 2: loss is nan; skipping the optimizer update (2 in a row, 2 in this run).",
    ]
    assert output.skipped_steps == 2
    assert [math.isnan(loss) for _, loss in output.losses] == [False, True, True, False]
    assert snapshots == [False, True, True, False]  # skipped steps leave the weights as they were
    state = trainer.optimizer.state[trainer.unwrapped.visual_projection.weight]
    assert int(state["step"]) == 2
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [math.isnan(h["loss"]) for h in history] == [False, True, True, False]


def test_trainer_stops_after_k_nan_steps_in_a_row(tmp_path, tiny_tokenizer, nan_on_calls):
    nan_on_calls["nan"] = set(range(1, 100))
    recipe = tiny_recipe(tmp_path, stages=[{"steps": 6}], losses={"contrastive_loss": {}, "test_nan_loss": {}},
                         monitor={"max_consecutive_nonfinite": 2})
    with pytest.warns(NonFiniteStepWarning) as record, \
            pytest.raises(TrainingDivergedError, match=r"2 consecutive steps \(1 to 2\)"):
        make_trainer(recipe, tiny_tokenizer, make_records(16)).train()
    assert [str(w.message).split(":")[0] for w in record] == ["Step 1", "Step 2"]
