"""The training loop: exact resume, its single step, 2 processes = 1 process, stages and late loss terms, the output
directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from transformers import AutoModel

import seeyou_ml  # noqa: F401  (registers the Auto classes)
from seeyou_ml import SeeYouProcessor
from seeyou_ml.training.build import build_trainer
from seeyou_ml.training.config import TrainingRecipe
from seeyou_ml.losses import LOSS_TERMS, register_loss_term
from training_fixtures import (
    REPO_ROOT,
    StepClock,
    file_recipe,
    make_records,
    make_trainer,
    tiny_model,
    tiny_recipe,
)


def test_resumed_run_reproduces_the_uninterrupted_loss_curve_exactly(tmp_path, tiny_tokenizer):
    records = make_records(24)  # 3 batches of 8 per epoch
    sections = dict(
        stages=[{"name": "lit", "steps": 5, "freeze": ["vision"]}, {"name": "joint", "steps": 2}],
        data={"batch_size": 8, "eval_split": None, "sub_batch_size": 4},
        checkpoint={"save_every": 4, "keep_last": 2},
    )
    full = make_trainer(tiny_recipe(tmp_path / "full", **sections), tiny_tokenizer, records, text_dropout=0.1)
    uninterrupted = full.train()
    checkpoint = tmp_path / "full" / "checkpoints" / "step-00000004"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["batch_in_epoch"] == 1  # mid-epoch

    # A new process state: other initial weights and random state, everything restored from the checkpoint.
    torch.manual_seed(1234)
    resumed_trainer = make_trainer(
        tiny_recipe(tmp_path / "resumed", resume_from=str(checkpoint), **sections), tiny_tokenizer, records,
        model=tiny_model(len(tiny_tokenizer), seed=99, text_dropout=0.1),
    )
    resumed = resumed_trainer.train()
    assert [step for step, _ in resumed.losses] == [4, 5, 6]
    assert resumed.losses == uninterrupted.losses[4:]  # exactly, dropout and the stage change included
    for (name, a), b in zip(full.unwrapped.state_dict().items(), resumed_trainer.unwrapped.state_dict().values()):
        assert torch.equal(a, b), name


def test_optimizer_step_is_the_loops_step(tmp_path, tiny_tokenizer):
    records = make_records(24)  # one epoch of 3 batches
    sections = dict(stages=[{"name": "lit", "steps": 2, "freeze": ["vision"]}, {"name": "joint", "steps": 1}])
    looped = make_trainer(tiny_recipe(tmp_path / "loop", **sections), tiny_tokenizer, records)
    output = looped.train()

    stepped = make_trainer(tiny_recipe(tmp_path / "step", **sections), tiny_tokenizer, records)
    stepped.loader.set_epoch(0)
    results, rates = [], []
    for batch in stepped.loader:
        results.append(stepped.optimizer_step(batch))
        rates.append([group["lr"] for group in stepped.optimizer.param_groups])
    assert stepped.step == looped.step == 3
    assert [(i, r.loss) for i, r in enumerate(results)] == output.losses
    assert not any(r.skipped for r in results)
    assert set(results[0].terms) == {"contrastive_loss"} and results[0].embeddings["image_embeds"].shape == (8, 16)
    assert [group["lr"] for group in looped.optimizer.param_groups] == rates[-1]
    for (name, a), b in zip(looped.unwrapped.state_dict().items(), stepped.unwrapped.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_batch_sampler_without_batch_size_is_refused_with_the_fix(tmp_path, tiny_tokenizer):
    class IndexBatches(list):
        def set_epoch(self, epoch):
            pass

    with pytest.raises(ValueError, match=r"batch_sampler IndexBatches has no `batch_size` attribute; .* Give the "
                                         r"sampler `batch_size = 8` \(data.batch_size\)"):
        make_trainer(tiny_recipe(tmp_path), tiny_tokenizer, make_records(16),
                     batch_sampler=IndexBatches([[0, 1, 2, 3, 4, 5, 6, 7]]))


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, tiny_tokenizer):
    # A budget that is never reached: the processes share the main one's clock to agree on when to stop.
    data = file_recipe(tmp_path, tiny_tokenizer, make_records(20), data={"sub_batch_size": 2}, max_train_seconds=3600)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(REPO_ROOT / "recipes" / "train.py"), "--config", str(tmp_path / "recipe.yaml")]
    done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Trained 4 steps" in done.stdout
    two = [json.loads(line)["loss"] for line in (tmp_path / "out" / "history.jsonl").read_text().splitlines()]

    # One process, one pass over the whole batch (no sub-batches): the same losses.
    single = TrainingRecipe.from_dict({**data, "output_dir": str(tmp_path / "single"),
                                       "data": {**data["data"], "sub_batch_size": None}})
    one = [loss for _, loss in build_trainer(single).train().losses]
    assert len(two) == len(one) == 4
    assert max(abs(a - b) for a, b in zip(one, two)) <= 1e-5
    assert one[0] != one[-1]


def test_time_budget_ends_the_loop_after_the_step_that_crosses_it_then_saves_and_evaluates(tmp_path,
                                                                                          tiny_tokenizer):
    def evaluate(model, processor, dataset, batch_size):
        return {"en": {"image_to_text/R@1": 0.5}}

    recipe = tiny_recipe(tmp_path, stages=[{"steps": 100}], max_train_seconds=25)
    clock = StepClock(seconds_per_step=10)
    trainer = clock.attach(make_trainer(recipe, tiny_tokenizer, make_records(16), eval_dataset=make_records(4),
                                        evaluate_fn=evaluate, clock=clock))
    output = trainer.train()
    assert [step for step, _ in output.losses] == [0, 1, 2]  # 10, 20, then 30 s >= 25 s
    assert (output.step, output.train_seconds) == (3, 30.0)
    assert json.loads((tmp_path / "retrieval_results.json").read_text()) == {"step": 3, **output.metrics}
    loaded = AutoModel.from_pretrained(tmp_path)
    for (name, a), b in zip(trainer.unwrapped.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    # Scheduled by steps, the 100-step cosine has barely started.
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(trainer.schedule.lr_at(2, "vision"))


def test_time_schedule_spreads_the_stages_over_the_budget_and_resumes_at_the_recorded_time(tmp_path,
                                                                                          tiny_tokenizer):
    records = make_records(24)
    sections = dict(stages=[{"name": "lit", "steps": 4, "freeze": ["vision"]}, {"name": "joint", "steps": 4}],
                    max_train_seconds=60, schedule_by="time", checkpoint={"save_every": 3})
    clock = StepClock(seconds_per_step=10)
    full = clock.attach(make_trainer(tiny_recipe(tmp_path / "full", **sections), tiny_tokenizer, records,
                                     clock=clock))
    seen = []
    step = full.training_step

    def recording_step(batch):
        seen.append((full.position, full.stages.name,
                     {g["name"]: g["lr"] for g in full.optimizer.param_groups}))
        return step(batch)

    full.training_step = recording_step
    uninterrupted = full.train()
    # 8 schedule steps over 60 s at 10 s per step: positions 0, 4/3, 8/3 in `lit`, 4, 16/3, 20/3 in `joint`.
    assert uninterrupted.step == 6 and uninterrupted.train_seconds == 60.0
    assert [position for position, _, _ in seen] == pytest.approx([0, 4 / 3, 8 / 3, 4, 16 / 3, 20 / 3])
    assert [name for _, name, _ in seen] == ["lit"] * 3 + ["joint"] * 3
    # lr 1e-3, warmup 2 per stage: half the peak, the peak, then a third of the way down the cosine (0.75).
    assert [rates["text/decay"] for _, _, rates in seen] == pytest.approx([5e-4, 1e-3, 7.5e-4] * 2)
    assert [rates["vision/decay"] for _, _, rates in seen] == pytest.approx([0.0] * 3 + [5e-4, 1e-3, 7.5e-4])

    checkpoint = tmp_path / "full" / "checkpoints" / "step-00000003"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["train_seconds"] == 30.0
    clock = StepClock(seconds_per_step=10)  # a new session's clock starts again at 0
    resumed_trainer = clock.attach(make_trainer(
        tiny_recipe(tmp_path / "resumed", resume_from=str(checkpoint), **sections), tiny_tokenizer, records,
        model=tiny_model(len(tiny_tokenizer), seed=99), clock=clock))
    resumed = resumed_trainer.train()
    assert resumed.losses == uninterrupted.losses[3:] and resumed.train_seconds == 60.0
    for (name, a), b in zip(full.unwrapped.state_dict().items(), resumed_trainer.unwrapped.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.fixture()
def constant_term():
    register_loss_term("test_constant_loss")(lambda outputs, batch, model: outputs["image_embeds"].sum() * 0 + 1.0)
    yield
    LOSS_TERMS.pop("test_constant_loss")


def test_frozen_stage_and_late_loss_term(tmp_path, tiny_tokenizer, constant_term):
    recipe = tiny_recipe(
        tmp_path, stages=[{"name": "lit", "steps": 2, "freeze": ["vision"]}, {"name": "joint", "steps": 2}],
        losses={"contrastive_loss": {}, "test_constant_loss": {"weight": 0.5, "start_step": 3}},
    )
    trainer = make_trainer(recipe, tiny_tokenizer, make_records(16))
    vision = trainer.unwrapped.vision_model
    initial = {k: v.clone() for k, v in vision.state_dict().items()}
    after_stage_one = {}
    step = trainer.training_step

    def recording_step(batch):
        if trainer.step == 2:
            after_stage_one.update({k: v.clone() for k, v in vision.state_dict().items()})
        return step(batch)

    trainer.training_step = recording_step
    trainer.train()
    # Locked: weights and BatchNorm statistics unchanged through stage one, both moving in stage two.
    assert all(torch.equal(initial[k], after_stage_one[k]) for k in initial)
    assert not torch.equal(initial["embedder.embedder.convolution.weight"], vision.embedder.embedder.convolution.weight)
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert ["test_constant_loss" in h for h in history] == [False, False, False, True]
    assert history[3]["loss"] == pytest.approx(history[3]["contrastive_loss"] + 0.5)
    assert history[2]["loss"] == history[2]["contrastive_loss"]


# The untrained tiny text tower clusters its captions at first; here the collapse check only has to reach the logs.
@pytest.mark.filterwarnings("ignore::seeyou_ml.training.monitor.EmbeddingCollapseWarning")
def test_output_directory_holds_model_processor_recipe_results_and_logs(tmp_path, tiny_tokenizer):
    calls = []

    def evaluate(model, processor, dataset, batch_size):
        calls.append((model.training, len(dataset), batch_size))
        return {"en": {"image_to_text/R@1": 0.5, "text_to_image/R@1": 0.25}}

    recipe = tiny_recipe(tmp_path, stages=[{"steps": 2}], monitor={"report_to": "tensorboard", "log_every": 1,
                                                                   "collapse_every": 1, "progress_bar": False},
                         eval={"embed_batch_size": 5})
    trainer = make_trainer(recipe, tiny_tokenizer, make_records(16), eval_dataset=make_records(4),
                           evaluate_fn=evaluate)
    output = trainer.train()

    assert calls == [(False, 4, 5)]
    assert output.metrics == {"en": {"image_to_text/R@1": 0.5, "text_to_image/R@1": 0.25}}
    results = json.loads((tmp_path / "retrieval_results.json").read_text())
    assert results == {"step": 2, **output.metrics}
    assert TrainingRecipe.from_yaml(tmp_path / "recipe.yaml") == recipe
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "SeeYouModel"
    for (name, a), b in zip(trainer.unwrapped.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    processor = SeeYouProcessor.from_pretrained(tmp_path)
    assert processor.tokenizer("a red circle")["input_ids"] == tiny_tokenizer("a red circle")["input_ids"]
    events = [p for p in tmp_path.rglob("events.out.tfevents.*")]
    assert events and events[0].stat().st_size > 0


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED", "MEGATRON_LM", "XLA"])
def test_sharding_distributed_types_are_refused_at_start_naming_what_is_supported(kind, tmp_path, tiny_tokenizer):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from seeyou_ml.training.trainer import check_distributed_type

    chosen = SimpleNamespace(distributed_type=DistributedType[kind])
    message = rf"chooses {kind}, which this trainer does not support: it trains data-parallel .*MULTI_GPU"
    with pytest.raises(ValueError, match=message):
        make_trainer(tiny_recipe(tmp_path), tiny_tokenizer, make_records(8), accelerator=chosen)
    for supported in ("NO", "MULTI_CPU", "MULTI_GPU"):
        check_distributed_type(SimpleNamespace(distributed_type=DistributedType[supported]))


def test_a_grounding_head_with_detached_towers_is_clipped_apart_from_them():
    from seeyou_ml import SeeYouModel
    from seeyou_ml.presets import tiny_config
    from seeyou_ml.training.trainer import clip_groups

    head = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    joint = SeeYouModel(tiny_config(vocab_size=50, vision_widths=(8, 16), grounding_config=head))
    trainable = list(joint.parameters())
    assert clip_groups(joint, trainable) == [trainable]

    detached = SeeYouModel(tiny_config(vocab_size=50, vision_widths=(8, 16),
                                       grounding_config=dict(head, detach_towers=True)))
    trainable = [p for p in detached.parameters() if p is not detached.logit_scale]
    towers, own = clip_groups(detached, trainable)
    assert {id(p) for p in own} == {id(p) for p in detached.grounding_head.parameters()}
    assert len(towers) + len(own) == len(trainable) and not any(p is detached.logit_scale for p in towers)
    assert any(p is detached.text_projection.weight for p in towers)

    # Clipped apart, the towers keep their gradient however large the head's is.
    for p in trainable:
        p.grad = torch.full_like(p, 100.0 if any(p is q for q in own) else 1e-3)
    before = detached.text_projection.weight.grad.clone()
    for group in clip_groups(detached, trainable):
        torch.nn.utils.clip_grad_norm_(group, 1.0)
    torch.testing.assert_close(detached.text_projection.weight.grad, before)


def test_background_batches_yield_in_order_raise_the_producers_error_and_stop_with_the_consumer():
    import threading

    from seeyou_ml.training.trainer import background_batches

    assert list(background_batches(iter(range(7)))) == list(range(7))

    def failing():
        yield 1
        raise RuntimeError("collate failed on record 3")

    batches = background_batches(failing())
    assert next(batches) == 1
    with pytest.raises(RuntimeError, match="collate failed on record 3"):
        next(batches)

    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    batches = background_batches(endless())
    assert [next(batches) for _ in range(3)] == [0, 1, 2]
    batches.close()
    assert not any(t.name == "seeyou-collate" for t in threading.enumerate())
    assert len(produced) <= 5  # at most the slot and the one in hand ahead of the consumer


def test_collating_in_the_background_only_without_random_draws_and_with_the_same_losses(tmp_path, tiny_tokenizer):
    from seeyou_ml.data.augment_text import SynonymReplacement
    from seeyou_ml.data.collator import SeeYouCollator

    records = make_records(24)
    background = make_trainer(tiny_recipe(tmp_path / "bg"), tiny_tokenizer, records)
    in_step = make_trainer(tiny_recipe(tmp_path / "fg", data={"background_collate": False}), tiny_tokenizer, records)
    assert background.background_collate and not in_step.background_collate
    assert background.train().losses == in_step.train().losses

    augmenting = SeeYouCollator(background.processor, text_augment=SynonymReplacement({"en": {"red": ["crimson"]}}))
    assert augmenting.draws_random and not SeeYouCollator(background.processor).draws_random
    assert not make_trainer(tiny_recipe(tmp_path / "aug"), tiny_tokenizer, records,
                            collate_fn=augmenting).background_collate
