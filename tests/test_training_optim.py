"""Per-tower AdamW groups and the staged warmup-cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from seeyou_ml.training.config import OptimConfig, StageConfig
from seeyou_ml.training.optim import (
    StagedCosineSchedule,
    build_optimizer,
    build_param_groups,
    peak_lr,
    stage_table,
)
from training_fixtures import tiny_model


@pytest.fixture()
def model(tiny_tokenizer):
    return tiny_model(len(tiny_tokenizer))


def test_groups_split_towers_and_leave_norms_biases_and_logit_scale_undecayed(model):
    config = OptimConfig(lr=1e-4, vision_lr=2e-4, head_lr=1e-3, weight_decay=0.2)
    groups = {g["name"]: g for g in build_param_groups(model, config)}
    assert set(groups) == {f"{t}/{d}" for t in ("vision", "text", "head") for d in ("decay", "no_decay")}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}

    assert {id(p) for p in model.vision_model.parameters()} == ids["vision/decay"] | ids["vision/no_decay"]
    assert {id(p) for p in model.text_model.parameters()} == ids["text/decay"] | ids["text/no_decay"]
    assert id(model.logit_scale) in ids["head/no_decay"]
    assert id(model.visual_projection.weight) in ids["head/decay"]
    assert sum(len(v) for v in ids.values()) == len(list(model.parameters()))

    norms = [m for m in model.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d))]
    assert norms and all(id(p) not in ids["vision/decay"] | ids["text/decay"] for m in norms for p in m.parameters())
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    assert biases and all(id(p) not in set().union(ids["vision/decay"], ids["text/decay"], ids["head/decay"])
                          for p in biases)
    assert all(p.ndim >= 2 for name in ("vision/decay", "text/decay", "head/decay") for p in groups[name]["params"])

    assert groups["vision/decay"]["lr"] == 2e-4 and groups["text/decay"]["lr"] == 1e-4
    assert groups["head/no_decay"]["lr"] == 1e-3
    assert groups["text/decay"]["weight_decay"] == 0.2 and groups["text/no_decay"]["weight_decay"] == 0.0


def test_groups_need_the_towers_by_name():
    with pytest.raises(ValueError, match="no `vision_model` module"):
        build_param_groups(torch.nn.Linear(2, 2), OptimConfig())


def _schedule(config, stages):
    model = torch.nn.Module()
    model.vision_model, model.text_model = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    model.logit_scale = torch.nn.Parameter(torch.tensor(0.0))
    optimizer = build_optimizer(model, config)
    return optimizer, StagedCosineSchedule(optimizer, stage_table(config, stages), config.min_lr_ratio)


def _rates(config, stages, steps):
    optimizer, schedule = _schedule(config, stages)
    rates = []
    for _ in range(steps):
        rates.append({g["name"]: g["lr"] for g in optimizer.param_groups})
        optimizer.step()
        schedule.step()
    return rates


def test_schedule_warms_up_linearly_then_follows_a_cosine():
    config = OptimConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    rates = [r["text/decay"] for r in _rates(config, [StageConfig(steps=14)], 16)]
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    expected = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / 10)) for i in range(10)]
    assert rates[4:14] == pytest.approx(expected)
    assert rates[14:] == pytest.approx([0.1, 0.1])  # after the last stage the floor holds


def test_stages_restart_warmup_with_their_own_rates_and_freeze_to_zero():
    config = OptimConfig(lr=1.0, head_lr=2.0, warmup_steps=2)
    stages = [StageConfig(name="lit", steps=4, freeze=["vision"], text_lr=0.1),
              StageConfig(name="joint", steps=4, warmup_steps=1)]
    rates = _rates(config, stages, 8)
    assert [r["vision/decay"] for r in rates[:4]] == [0.0] * 4
    assert [r["text/decay"] for r in rates[:4]] == pytest.approx([0.05, 0.1, 0.1, 0.05])
    assert [r["head/no_decay"] for r in rates[:2]] == pytest.approx([1.0, 2.0])
    # joint: one warmup step, then cos over the 3 remaining steps: 1, 0.75, 0.25
    assert [r["vision/decay"] for r in rates[4:]] == pytest.approx([1.0, 1.0, 0.75, 0.25])
    assert rates[4]["text/decay"] == 1.0


def test_set_position_equals_stepping_and_takes_fractional_positions():
    config = OptimConfig(lr=1.0, head_lr=2.0, warmup_steps=2)
    stages = [StageConfig(name="lit", steps=4, freeze=["vision"]), StageConfig(name="joint", steps=4)]
    stepped = _rates(config, stages, 8)
    optimizer, schedule = _schedule(config, stages)
    for step in reversed(range(8)):  # any order: the rates depend on the position alone
        schedule.set_position(step)
        assert {g["name"]: g["lr"] for g in optimizer.param_groups} == stepped[step]
    assert schedule.get_last_lr() == [g["lr"] for g in optimizer.param_groups]

    def text_rate(position):
        schedule.set_position(position)
        return next(g["lr"] for g in optimizer.param_groups if g["name"] == "text/decay")

    assert text_rate(0.5) == pytest.approx(0.75)  # warmup between steps 0 (0.5) and 1 (1.0)
    assert text_rate(1.5) == 1.0  # capped at the peak before the warmup's last step
    assert text_rate(8 / 3) == pytest.approx(0.75)  # cosine: a third of the way down
    assert text_rate(4.5) == pytest.approx(0.75) and text_rate(5.5) == 1.0  # the next stage warms up again


def test_schedule_state_round_trips():
    config = OptimConfig(lr=1.0, warmup_steps=2)
    model = torch.nn.Module()
    model.vision_model, model.text_model = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, config)
    schedule = StagedCosineSchedule(optimizer, stage_table(config, [StageConfig(steps=10)]))
    for _ in range(3):
        optimizer.step()
        schedule.step()
    other_optimizer = build_optimizer(model, config)
    other = StagedCosineSchedule(other_optimizer, stage_table(config, [StageConfig(steps=10)]))
    other.load_state_dict(schedule.state_dict())
    assert other.last_epoch == 3 and other.get_lr() == schedule.get_lr()


def test_bad_stages_are_refused():
    with pytest.raises(ValueError, match="freezes \\['image'\\]"):
        stage_table(OptimConfig(), [StageConfig(freeze=["image"])])
    with pytest.raises(ValueError, match="at least one step"):
        stage_table(OptimConfig(), [StageConfig(steps=0)])


def test_optimizer_is_fused_by_default_and_steps_like_the_per_tensor_loop(tiny_tokenizer):
    config = OptimConfig(lr=1e-2, weight_decay=0.1)
    fused_model, loop_model = tiny_model(len(tiny_tokenizer)), tiny_model(len(tiny_tokenizer))
    loop_model.load_state_dict(fused_model.state_dict())
    fused = build_optimizer(fused_model, config)
    loop = build_optimizer(loop_model, OptimConfig(lr=1e-2, weight_decay=0.1, fused=False))
    assert fused.defaults["fused"] is True and not loop.defaults["fused"]
    torch.manual_seed(0)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in fused_model.parameters()]
        for model_, optimizer in ((fused_model, fused), (loop_model, loop)):
            for p, g in zip(model_.parameters(), grads):
                p.grad = g.clone()
            optimizer.step()
    for (name, a), b in zip(fused_model.named_parameters(), loop_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_the_grounding_head_has_its_own_rate_else_the_heads_else_lr():
    from seeyou_ml import SeeYouModel
    from seeyou_ml.presets import tiny_config

    model = SeeYouModel(tiny_config(vocab_size=50, vision_widths=(8, 16), grounding_config={
        "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}))

    def rates(config, stage=None):
        groups = build_param_groups(model, config)
        if stage is not None:
            for group in groups:
                group["lr"] = peak_lr(config, stage, group["tower"])
        return {g["name"]: g["lr"] for g in groups}

    groups = {g["name"]: g for g in build_param_groups(model, OptimConfig(lr=1.0))}
    assert {id(p) for name in ("grounding/decay", "grounding/no_decay") for p in groups[name]["params"]} == {
        id(p) for p in model.grounding_head.parameters()}
    assert id(model.visual_projection.weight) in {id(p) for p in groups["head/decay"]["params"]}
    assert rates(OptimConfig(lr=1.0, head_lr=2.0, grounding_lr=5.0))["grounding/decay"] == 5.0
    assert rates(OptimConfig(lr=1.0, head_lr=2.0, grounding_lr=5.0))["head/decay"] == 2.0
    assert rates(OptimConfig(lr=1.0, head_lr=2.0))["grounding/decay"] == 2.0
    assert rates(OptimConfig(lr=1.0))["grounding/no_decay"] == 1.0
    stage = StageConfig(grounding_lr=7.0)
    assert rates(OptimConfig(lr=1.0, grounding_lr=5.0), stage)["grounding/decay"] == 7.0
    assert rates(OptimConfig(lr=1.0, grounding_lr=5.0), StageConfig(head_lr=3.0))["grounding/decay"] == 5.0
    decays = {g["name"]: g["weight_decay"] for g in build_param_groups(
        model, OptimConfig(lr=1.0, weight_decay=0.1, grounding_weight_decay=0.01))}
    assert decays == {"vision/decay": 0.1, "vision/no_decay": 0.0, "text/decay": 0.1, "text/no_decay": 0.0,
                      "head/decay": 0.1, "head/no_decay": 0.0, "grounding/decay": 0.01, "grounding/no_decay": 0.0}
    assert {g["name"]: g["weight_decay"] for g in build_param_groups(model, OptimConfig(lr=1.0, weight_decay=0.1))}[
        "grounding/decay"] == 0.1


def test_grounding_decay_steps_hold_the_heads_peak_then_fall_in_a_line_while_the_towers_follow_the_cosine():
    model = torch.nn.Module()
    model.vision_model, model.text_model = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    model.grounding_head = torch.nn.Linear(2, 2)
    config = OptimConfig(lr=1.0, grounding_lr=2.0, warmup_steps=2, min_lr_ratio=0.1, grounding_decay_steps=4)
    stages = [StageConfig(steps=10), StageConfig(name="second", steps=3)]
    optimizer = build_optimizer(model, config)
    schedule = StagedCosineSchedule(optimizer, stage_table(config, stages), config.min_lr_ratio)

    def rates(group):
        found = []
        for position in range(13):
            schedule.set_position(position)
            found.append(next(g["lr"] for g in optimizer.param_groups if g["name"] == group))
        return found

    # warmup 1.0, 2.0; the peak until 4 steps before the stage ends; then 2 * (0.1 + 0.9 * remaining / 4)
    first = [1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0 * (0.1 + 0.9 * 3 / 4), 2.0 * (0.1 + 0.9 * 2 / 4),
             2.0 * (0.1 + 0.9 / 4)]
    # a stage shorter than the decay decays over all of it after its warmup
    second = [1.0, 2.0, 2.0 * (0.1 + 0.9 / 3)]
    assert rates("grounding/decay") == pytest.approx(first + second)
    cosine = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / 8)) for i in range(8)]
    assert rates("text/decay") == pytest.approx([0.5, 1.0] + cosine + [0.5, 1.0, 1.0])
