"""The training loop: one script for one process or many (Accelerate), fp32 or bf16, with stages and resume.

Every optimizer step sees the recipe's global batch (`data.batch_size` pairs, split over the processes and, with
`data.sub_batch_size`, into GradCache sub-batches), sums the active loss terms, averages the gradients over the
processes, clips them, and steps AdamW and the staged schedule. A NaN/inf loss skips the update. Checkpoints carry
the model, optimizer, scheduler, random states and the data position, so a resumed CPU fp32 run reproduces the loss
curve of an uninterrupted one exactly.

The run ends after its last stage or, with `max_train_seconds`, after the step that spends the wall-clock budget.
With `schedule_by: time` the stages, warmups and cosine are laid over the budget instead of over a step count: each
step runs at schedule position `total_steps * elapsed / max_train_seconds`.

Gradients are averaged with one all-reduce per bucket after the backward pass rather than by DDP's hooks: a
GradCache step back-propagates the loss outside any forward call and stages change which parameters train, two
things DDP's reducer does not allow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import queue
import random
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import numpy as np
import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast, set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .checkpointing import load_checkpoint, resume_candidates, save_checkpoint
from .config import TrainingRecipe
from .grad_cache import cache_embeddings
from .memory import frozen_gc, keep_freed_memory
from .monitor import CollapseMonitor, NonFiniteLossGuard, NonFiniteStepWarning
from ..hub import HISTORY_NAME, RECIPE_NAME, RESULTS_NAME, write_model_card
from ..losses import LOSS_TERMS, active_weights, check_loss_terms, compute_losses, logit_scale_of
from .optim import build_optimizer, build_schedule
from .precision import resolve_mixed_precision
from .stages import StageController

logger = logging.getLogger(__name__)

FORWARD_KEYS = ("input_ids", "attention_mask", "pixel_values", "lang", "image_id", "phrase_input_ids",
                "phrase_attention_mask", "mention_token_mask", "negative_input_ids", "negative_attention_mask")
# Forward inputs that only some loss terms read (`LossTerm.needs` / `uses`): passed at the steps where one counts.
_TERM_INPUTS = {"phrases": ("phrase_input_ids", "phrase_attention_mask"), "mentions": ("mention_token_mask",),
                "negative_captions": ("negative_input_ids", "negative_attention_mask")}
_BUCKET_ELEMENTS = 1 << 24


@dataclass
class TrainOutput:
    """What [`Trainer.train`] returns.

    Args:
        step: optimizer steps done (including those of a resumed-from run).
        losses: `(step, loss)` of every step this call ran, the loss averaged over processes.
        skipped_steps: steps skipped for a non-finite loss, in the whole run.
        metrics: the final retrieval results, when an eval split was given.
        output_dir: where the model, recipe and results were written.
        train_seconds: seconds of the training loop, a resumed-from run's included (setup and the final save and
            evaluation excluded); what `max_train_seconds` is compared with.
    """

    step: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    skipped_steps: int = 0
    metrics: Optional[dict] = None
    output_dir: Optional[Path] = None
    train_seconds: float = 0.0


@dataclass
class StepOutput:
    """What [`Trainer.optimizer_step`] returns.

    Args:
        loss: the loss averaged over processes; NaN or inf when the step was skipped.
        terms: the unweighted loss terms, averaged over processes.
        embeddings: this process's detached `image_embeds` and `text_embeds`, (b, D) each.
        skipped: whether the update was skipped (non-finite loss or gradient norm) and counted by the guard.
    """

    loss: float
    terms: dict[str, float] = field(default_factory=dict)
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: bool = False


class SeededCollate:
    """Runs a collate function under a random state derived from the batch, leaving the global state untouched.

    Augmentations draw from the global torch RNG; data loaders fetch a batch ahead of the step that uses it, so
    without this the draws of the collator and of the model (dropout) would interleave in an order that a resumed run
    cannot replay. Seeding each batch from (seed, epoch, its image ids and captions) makes its augmentation a pure
    function of the batch, in the main process and in workers alike.
    """

    def __init__(self, collate_fn: Callable, seed: int):
        self.collate_fn = collate_fn
        self.seed = seed
        self.epoch = 0

    @property
    def draws_random(self) -> bool:
        """Whether the collate function draws random numbers; those that say they do not (`draws_random = False`,
        as [`SeeYouCollator`] without augmentations) run as they are, without touching the global RNG."""
        return getattr(self.collate_fn, "draws_random", True)

    def __call__(self, records: list) -> Any:
        if not self.draws_random:
            return self.collate_fn(records)
        digest = hashlib.blake2b(repr((self.seed, self.epoch)).encode(), digest_size=8)
        for record in records:
            if isinstance(record, Mapping):
                digest.update(repr((record.get("image_id"), record.get("caption"))).encode())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int.from_bytes(digest.digest(), "little") >> 1)
            return self.collate_fn(records)


def background_batches(batches: Iterable[Any]) -> Iterator[Any]:
    """Yields the items of `batches`, each produced in a background thread while the previous one is in use.

    Collating (tokenising, stacking images) then overlaps the training step, whose kernels release the GIL. The
    thread stops when the consumer does (end, `break` or an exception), and an error in it is raised in the consumer.
    """
    slot: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    end = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                slot.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put((batch, None)):
                    return
            put((end, None))
        except BaseException as error:  # handed to the consumer, which raises it
            put((end, error))

    thread = threading.Thread(target=produce, name="seeyou-collate", daemon=True)
    thread.start()
    try:
        while True:
            batch, error = slot.get()
            if batch is end:
                if error is not None:
                    raise error
                return
            yield batch
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restores the Python, NumPy and torch random states on exit (evaluation must not shift training's draws)."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


def make_accelerator(recipe: TrainingRecipe, **kwargs) -> Accelerator:
    """The `Accelerator` of a recipe: global batches split over processes, its precision and tracker.

    The precision is the recipe's `mixed_precision` resolved by
    [`~seeyou_ml.training.precision.resolve_mixed_precision`] (`auto`: bf16 only where it is native); a
    `mixed_precision` keyword argument takes precedence over it.
    """
    if "mixed_precision" not in kwargs:
        device = "cpu" if kwargs.get("cpu") else None
        choice = resolve_mixed_precision(recipe.mixed_precision, device=device)
        logger.info(f"Mixed precision: {choice.reason}.")
        kwargs["mixed_precision"] = choice.mixed_precision
    if recipe.monitor.report_to:
        kwargs.setdefault("log_with", recipe.monitor.report_to)
    accelerator = Accelerator(
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        project_dir=recipe.output_dir,
        **kwargs,
    )
    check_distributed_type(accelerator)
    return accelerator


def check_distributed_type(accelerator: Accelerator) -> None:
    """Refuses the distributed setups the trainer cannot run.

    The trainer replicates the model on every process and averages gradients itself (see the module docstring), so
    it runs on one device or data-parallel over several processes on one or many nodes (accelerate's `NO` and
    `MULTI_*` types: CPU, GPU, XPU, NPU, ...). FSDP and DeepSpeed shard parameters, optimizer and gradients, which
    that averaging and the checkpoints do not handle; run without them rather than silently ignore them.

    Raises:
        ValueError: naming the chosen type and what is supported.
    """
    kind = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
    if kind != "NO" and not kind.startswith("MULTI_"):
        raise ValueError(
            f"The accelerate configuration chooses {kind}, which this trainer does not support: it trains data-parallel "
            "(one replica of the model per process, on one or many nodes; distributed types NO and MULTI_GPU, "
            "MULTI_CPU, MULTI_XPU, ...). Choose 'multi-GPU' (or 'No distributed training') in `accelerate config`, "
            "or launch with `accelerate launch --multi_gpu --num_machines N --machine_rank R --main_process_ip IP "
            "...`; for memory, use data.sub_batch_size and model.gradient_checkpointing instead of sharding."
        )


def average_gradients(parameters: list[nn.Parameter], world_size: int) -> None:
    """Averages the gradients of `parameters` over all processes, bucket by bucket (missing grads count as 0)."""
    if world_size == 1:
        return
    grads = []
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        grads.append(parameter.grad)
    bucket: list[torch.Tensor] = []
    for i, grad in enumerate(grads):
        bucket.append(grad)
        if sum(g.numel() for g in bucket) >= _BUCKET_ELEMENTS or i == len(grads) - 1:
            flat = torch.cat([g.reshape(-1) for g in bucket])  # (sum of numel,)
            dist.all_reduce(flat)
            flat /= world_size
            offset = 0
            for g in bucket:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket = []


def _flatten(data: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def clip_groups(model: torch.nn.Module, trainable: list[torch.nn.Parameter]) -> list[list[torch.nn.Parameter]]:
    """The trainable parameters in the groups whose gradients are clipped together.

    One group, except for a grounding head with detached towers (`grounding_config.detach_towers`): its losses reach
    only its own weights and the contrastive loss never does, so it is clipped on its own. Clipped together, the
    head's larger gradients would scale down the towers' at every step (the towers then train as if at a lower
    learning rate: on the main job's model, mean val R@1 91.6 / 92.3 clipped together, 93.7 / 94.3 clipped apart).
    """
    head = getattr(model, "grounding_head", None)
    config = getattr(getattr(model, "config", None), "grounding_config", None)
    if head is None or config is None or not config.detach_towers:
        return [trainable]
    own = {id(p) for p in head.parameters()}
    groups = [[p for p in trainable if id(p) not in own], [p for p in trainable if id(p) in own]]
    return [group for group in groups if group]


class Trainer:
    """Trains a dual encoder as a [`TrainingRecipe`] says.

    Args:
        recipe: the resolved recipe.
        model: a dual encoder exposing `vision_model`, `text_model`, `get_image_features`, `get_text_features` and a
            `logit_scale` (e.g. `SeeYouModel`); built after `set_seed(recipe.seed)` for reproducible runs.
        processor: saved next to the model and handed to the evaluation.
        train_dataset: map-style dataset of records (or anything `collate_fn` understands).
        collate_fn: records -> batch whose keys are the model's `forward` arguments (e.g. `SeeYouCollator`).
        batch_sampler: yields lists of indices of global batches and has `set_epoch(epoch)`, `__len__` and a
            `batch_size` attribute, the global batch, by which accelerate splits every batch over the processes
            (e.g. `UniqueImageBatchSampler` with `drop_last=True`).
        eval_dataset: records to evaluate retrieval on at the end (and every `eval.every` steps).
        evaluate_fn: `fn(model, processor, dataset, batch_size=..., **recipe.eval.kwargs) -> dict`; defaults to
            `seeyou_ml.evaluation.evaluate_retrieval`.
        accelerator: defaults to [`make_accelerator`] of the recipe.
        clock: seconds as a float, for the `max_train_seconds` budget, the time schedule and samples/s; defaults to
            `time.perf_counter`.

    Example:

    ```python
    >>> from seeyou_ml.training.build import build_trainer  # doctest: +SKIP
    >>> output = build_trainer(TrainingRecipe.from_yaml("recipes/scenes-tiny.yaml")).train()  # doctest: +SKIP
    ```
    """

    def __init__(
        self,
        recipe: TrainingRecipe,
        model: nn.Module,
        processor: Any,
        train_dataset: Any,
        collate_fn: Callable,
        batch_sampler: Any,
        eval_dataset: Any = None,
        evaluate_fn: Optional[Callable] = None,
        accelerator: Optional[Accelerator] = None,
        clock: Optional[Callable[[], float]] = None,
    ):
        self.recipe = recipe
        if recipe.keep_freed_memory:
            if keep_freed_memory():
                logger.info("CPU memory: large allocations come from the heap and freed memory stays there for the "
                            "next step (keep_freed_memory).")
            else:
                warnings.warn("keep_freed_memory needs Linux with glibc; the C library's defaults stay.", stacklevel=2)
        self.accelerator = accelerator if accelerator is not None else make_accelerator(recipe)
        check_distributed_type(self.accelerator)
        if self.accelerator.mixed_precision == "fp16":
            raise ValueError("mixed_precision=fp16 needs loss scaling that GradCache and the NaN guard do not "
                             "handle; use bf16 (or no).")
        self.output_dir = Path(recipe.output_dir)
        self.processor = processor
        self.eval_dataset = eval_dataset
        self.evaluate_fn = evaluate_fn
        processes = self.accelerator.num_processes
        if recipe.data.batch_size % processes:
            raise ValueError(f"data.batch_size={recipe.data.batch_size} does not split over {processes} processes; "
                             f"use a multiple of {processes}.")
        self.local_batch = recipe.data.batch_size // processes
        if getattr(batch_sampler, "batch_size", None) is None:
            raise ValueError(
                f"batch_sampler {type(batch_sampler).__name__} has no `batch_size` attribute; the Trainer needs it to "
                "split every global batch over the processes (accelerate's split_batches). Give the sampler "
                f"`batch_size = {recipe.data.batch_size}` (data.batch_size), or use a sampler that has one, such as "
                "seeyou_ml.data.samplers.UniqueImageBatchSampler or torch.utils.data.BatchSampler."
            )
        sub = recipe.data.sub_batch_size
        self.sub_batch_size = sub if sub is not None and sub < self.local_batch else None
        check_loss_terms(recipe.losses, self.sub_batch_size is not None)

        if recipe.model.gradient_checkpointing:
            model.activation_checkpointing_enable()
        optimizer = build_optimizer(model, recipe.optim)
        scheduler = build_schedule(optimizer, recipe.optim, recipe.stages)
        self.batch_sampler = batch_sampler
        self.collate = SeededCollate(collate_fn, recipe.seed)
        # One batch collated ahead in a thread: safe where collating draws no random numbers and no process group
        # runs collectives from two threads (see data.background_collate).
        self.background_collate = (recipe.data.background_collate and recipe.data.num_workers == 0
                                   and processes == 1 and not self.collate.draws_random)
        loader = DataLoader(
            train_dataset,
            batch_sampler=batch_sampler,
            collate_fn=self.collate,
            num_workers=recipe.data.num_workers,
            # A private generator keeps `iter(loader)` from drawing on the global RNG (exact resume).
            generator=torch.Generator().manual_seed(recipe.seed),
        )
        # No DDP wrapper: gradients are averaged by `average_gradients` (see the module docstring).
        self.model = self.accelerator.prepare_model(model, evaluation_mode=True)
        self.optimizer, self.scheduler, self.loader = self.accelerator.prepare(optimizer, scheduler, loader)
        self.unwrapped = self.accelerator.unwrap_model(self.model)
        self.schedule = scheduler  # the StagedCosineSchedule inside accelerate's wrapper
        self.stages = StageController(self.unwrapped, scheduler.table, recipe.model.freeze_batchnorm)
        self.guard = NonFiniteLossGuard(recipe.monitor.max_consecutive_nonfinite)
        self.collapse = CollapseMonitor(recipe.monitor.collapse_max_cosine, recipe.monitor.collapse_min_rank_fraction)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.position: float = 0  # of the current step on the schedule (see schedule_position)
        self.clock = clock if clock is not None else time.perf_counter
        self.train_seconds = 0.0  # before this session: restored from a checkpoint
        self._session_start: Optional[float] = None

    # ---- time and schedule position -----------------------------------------------------------------------------

    def elapsed_seconds(self) -> float:
        """Seconds of training so far: a resumed-from run's plus this session's, whose clock starts at the first call
        (`train` makes that call right before its first step). Every process gets the main process's reading, so call
        it on all of them."""
        now = self.clock()
        if self._session_start is None:
            self._session_start = now
        seconds = self.train_seconds + now - self._session_start
        if self.accelerator.num_processes > 1:
            # Processes that disagreed on the schedule position or on when to stop would hang the gradient all-reduce.
            reading = torch.tensor([seconds], dtype=torch.float64, device=self.accelerator.device)
            seconds = broadcast(reading, from_process=0).item()
        return seconds

    def schedule_position(self) -> float:
        """Where the run stands on its schedule, in optimizer steps: the step count, or with `schedule_by: time` the
        spent share of `max_train_seconds` times the stages' total steps."""
        if self.recipe.schedule_by == "time":
            return self.recipe.total_steps * self.elapsed_seconds() / self.recipe.max_train_seconds
        return self.step

    def is_finished(self) -> bool:
        """Whether the run is over: the `max_train_seconds` budget is spent or, scheduled by steps, the last stage
        has ended."""
        budget = self.recipe.max_train_seconds
        if budget is not None and self.elapsed_seconds() >= budget:
            return True
        return self.recipe.schedule_by == "steps" and self.step >= self.recipe.total_steps

    # ---- one step -----------------------------------------------------------------------------------------------

    def optimizer_step(self, batch: Mapping[str, Any]) -> StepOutput:
        """One optimizer step on a global batch, exactly as the training loop takes it.

        Sets the stage (frozen towers, modes), active loss terms and learning rates of the current
        [`Trainer.schedule_position`], runs [`Trainer.training_step`], records the loss with the non-finite guard and
        advances the step counter. Logging, checkpoints and evaluation stay with the loop.

        Args:
            batch: a collated global batch (this process's share of it when several run), keys as `model.forward`'s.

        Returns:
            A [`StepOutput`]; `skipped` steps left the weights unchanged.

        Raises:
            TrainingDivergedError: when this is `monitor.max_consecutive_nonfinite`-th non-finite loss in a row.
        """
        self.position = self.schedule_position()
        self.stages.apply(self.position)
        self.schedule.set_position(self.position)
        loss, terms, embeddings = self.training_step(batch)
        finite = self.guard.update(loss, self.step)
        self.step += 1
        return StepOutput(loss=loss, terms=terms, embeddings=embeddings, skipped=not finite)

    def training_step(self, batch: Mapping[str, Any]) -> tuple[float, dict[str, float], dict[str, torch.Tensor]]:
        """Forward, loss, backward, gradient sync, clipping and the optimizer update for one global batch, in the
        stage that [`Trainer.optimizer_step`] applied (call that one: it also keeps the schedule and counters).

        Returns:
            `(loss, terms, embeddings)`: the loss averaged over processes (NaN/inf when skipped), the unweighted terms
            and this process's detached (b, D) embeddings for the collapse monitor.
        """
        accelerator = self.accelerator
        self.stages.train_mode()
        weights = active_weights(self.recipe.losses, self.position)
        cached = None
        if self.sub_batch_size is not None:
            cached = cache_embeddings(self.unwrapped, batch, self.sub_batch_size, accelerator.autocast)
            outputs = cached.embeddings
        else:
            outputs = self.forward_batch(batch)
        total, terms = compute_losses(outputs, batch, self.unwrapped, weights)

        # Every process must agree on skipping, or the gradient all-reduce would hang.
        finite = torch.isfinite(total.detach()).float().reshape(1)
        all_finite = bool(accelerator.reduce(finite, reduction="sum").item() == accelerator.num_processes)
        trainable = [p for p in self.unwrapped.parameters() if p.requires_grad]
        if all_finite:
            accelerator.backward(total)
            if cached is not None:
                cached.backward()
            average_gradients(trainable, accelerator.num_processes)
            max_norm = self.recipe.optim.max_grad_norm
            max_norm = max_norm if max_norm is not None else math.inf
            norms = [accelerator.clip_grad_norm_(group, max_norm) for group in clip_groups(self.unwrapped, trainable)]
            norm = torch.stack([torch.as_tensor(n, dtype=torch.float32) for n in norms]).norm()
            if torch.isfinite(norm):
                self.optimizer.step()
            else:
                warnings.warn(f"Step {self.step}: gradient norm is {float(norm)}; skipping the optimizer update.",
                              NonFiniteStepWarning, stacklevel=2)
                all_finite = False
        self.optimizer.zero_grad(set_to_none=True)

        loss = accelerator.reduce(total.detach().float().reshape(1), reduction="mean").item()
        if not all_finite and math.isfinite(loss):
            loss = float("nan")
        term_values = {
            name: accelerator.reduce(value.detach().float().reshape(1), reduction="mean").item()
            for name, value in terms.items()
        }
        embeddings = {k: outputs[k].detach() for k in ("image_embeds", "text_embeds")}
        return loss, term_values, embeddings

    def forward_batch(self, batch: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
        """What the loss terms read for `batch` (at least `image_embeds` and `text_embeds`, (b, D)): the model's
        output; a subclass may compute it otherwise (e.g. distillation, `seeyou_ml.training.adapters`)."""
        inputs = {k: batch[k] for k in FORWARD_KEYS if k in batch}
        if getattr(self.unwrapped, "grounding_head", None) is not None:
            # The grounding head runs only at the steps where one of its loss terms counts.
            weights = active_weights(self.recipe.losses, self.position)
            inputs["output_grounding"] = any("grounding_head" in LOSS_TERMS[name].needs for name in weights)
            read = {item for name in weights for item in LOSS_TERMS[name].needs + LOSS_TERMS[name].uses}
            for item, keys in _TERM_INPUTS.items():
                if item not in read:
                    for key in keys:
                        inputs.pop(key, None)
            # The matching terms fuse each caption's own pair in the pass of its negatives.
            inputs["output_matching"] = False
        return self.model(**inputs)

    # ---- the loop ------------------------------------------------------------------------------------------------

    def train(self) -> TrainOutput:
        """Runs (or resumes) the recipe to its last step or the end of its time budget, then saves the model,
        evaluates it and writes its model card."""
        accelerator, recipe = self.accelerator, self.recipe
        self._check_evaluation()
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            recipe.to_yaml(self.output_dir / RECIPE_NAME)
        # Per-process seeds: dropout and augmentation differ across processes (model init is seeded before, alike).
        set_seed(recipe.seed, device_specific=True)
        if recipe.resume_from:
            self._resume(resume_candidates(recipe.resume_from, self.output_dir))
        if recipe.monitor.report_to:
            accelerator.init_trackers(recipe.name, config=_flatten(recipe.to_dict()))

        output = TrainOutput(step=self.step, output_dir=self.output_dir)
        self._session_start = self.clock()  # the budget counts from here: setup is not training
        self.stages.apply(self.schedule_position())
        # Scheduled by time, the number of steps is unknown beforehand.
        bar = tqdm(total=recipe.total_steps if recipe.schedule_by == "steps" else None, initial=self.step,
                   desc=self.stages.name, dynamic_ncols=True,
                   disable=not (accelerator.is_main_process and recipe.monitor.progress_bar))
        try:
            with frozen_gc():  # the corpus, the sampler's plan and the model stay out of the collector's passes
                self._loop(output, bar)
            bar.close()
            output.step, output.skipped_steps = self.step, self.guard.skipped
            output.train_seconds = self.elapsed_seconds()
            self._save_final()
            output.metrics = self._evaluate(final=True)
            if accelerator.is_main_process:
                write_model_card(self.output_dir)  # README.md, with the results just written
            if output.metrics and recipe.monitor.report_to:
                accelerator.log({f"eval/{k}": v for k, v in _flatten(output.metrics).items()
                                 if isinstance(v, (int, float))}, step=self.step)
        finally:
            bar.close()
            if recipe.monitor.report_to:
                accelerator.end_training()
        return output

    def _loop(self, output: TrainOutput, bar: tqdm) -> None:
        """Steps through epochs (resuming mid-epoch) until [`Trainer.is_finished`]."""
        accelerator, recipe = self.accelerator, self.recipe
        start_seconds, start_step, stage = self.elapsed_seconds(), self.step, self.stages.current
        while not self.is_finished():
            self.collate.epoch = self.epoch
            loader = self.loader
            if self.batch_in_epoch:
                loader = accelerator.skip_first_batches(self.loader, self.batch_in_epoch)
            # Accelerate's loaders set their own iteration count as the sampler's epoch when iterated; align it.
            loader.set_epoch(self.epoch)
            self.batch_sampler.set_epoch(self.epoch)
            for batch in background_batches(loader) if self.background_collate else loader:
                result = self.optimizer_step(batch)
                self.batch_in_epoch += 1
                if self.stages.current != stage:
                    stage = self.stages.current
                    bar.set_description(self.stages.name)
                output.losses.append((self.step - 1, result.loss))
                seconds = max(self.elapsed_seconds() - start_seconds, 1e-9)
                rate = (self.step - start_step) * recipe.data.batch_size / seconds
                last = self.is_finished()
                self._after_step(result, rate, bar, last)
                if last:
                    break
            else:
                self.epoch += 1
                self.batch_in_epoch = 0
                continue
            break

    def _after_step(self, result: StepOutput, rate: float, bar: tqdm, last: bool) -> None:
        """Logging, collapse checks, periodic evaluation and checkpoints after optimizer step `self.step`; `last`
        says that it ends the run."""
        recipe, step = self.recipe, self.step
        loss, terms, embeddings = result.loss, result.terms, result.embeddings
        lrs = {group["name"]: group["lr"] for group in self.optimizer.param_groups}
        lr = max(lrs.values())
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_per_s=f"{rate:.1f}")
        logs: dict[str, float] = {}
        if self.accelerator.is_main_process:
            record = {"step": step - 1, "loss": loss, "lr": lr, "samples_per_second": rate, **terms}
            with open(self.output_dir / HISTORY_NAME, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if step % max(recipe.monitor.log_every, 1) == 0 or last:
            logs.update({"train/loss": loss, "train/samples_per_second": rate,
                         "train/skipped_steps": self.guard.skipped,
                         "train/logit_scale": float(logit_scale_of(self.unwrapped).detach())})
            logs.update({f"train/{name}": value for name, value in terms.items()})
            logs.update({f"lr/{name}": value for name, value in lrs.items()})
        every = recipe.monitor.collapse_every
        # On the main process only, as the tracker logs there: one warning per run, not one per process.
        if every and step % every == 0 and self.accelerator.is_main_process:
            stats, _ = self.collapse.check(embeddings["image_embeds"], embeddings["text_embeds"], step)
            logs.update({f"collapse/{name}": value for name, value in stats.items()})
        if recipe.eval.every and step % recipe.eval.every == 0 and not last:
            metrics = self._evaluate(final=False)
            logs.update({f"eval/{k}": v for k, v in _flatten(metrics or {}).items() if isinstance(v, (int, float))})
        if logs and recipe.monitor.report_to:
            self.accelerator.log(logs, step=step)
        if recipe.checkpoint.save_every and step % recipe.checkpoint.save_every == 0:
            self.save_checkpoint()

    # ---- checkpoints ---------------------------------------------------------------------------------------------

    def trainer_state(self) -> dict:
        """The trainer's position and counters as plain data."""
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "train_seconds": self.elapsed_seconds(), "guard": self.guard.state_dict()}

    def save_checkpoint(self) -> Path:
        """Writes `<output_dir>/checkpoints/step-<N>` atomically, keeping the last `checkpoint.keep_last`."""
        return save_checkpoint(self.accelerator, self.output_dir, self.step, self.trainer_state(),
                               self.recipe.checkpoint.keep_last)

    def _resume(self, candidates: list[Path]) -> None:
        """Loads the first of `candidates` that loads (falling back to the next, older one, with a warning)."""
        failures = []
        for path in candidates:
            try:
                state = load_checkpoint(self.accelerator, path)
                break
            except RuntimeError as error:
                if len(candidates) == 1:
                    raise
                failures.append(str(error))
                logger.warning(f"{error}; trying the next older checkpoint.")
        else:
            raise RuntimeError("No checkpoint could be loaded: " + "; ".join(failures))
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.train_seconds, self._session_start = state.get("train_seconds", 0.0), None
        self.guard.load_state_dict(state.get("guard", {}))
        if self.accelerator.is_main_process:
            self._truncate_history()
        # At warning level so that it shows with Python's default logging: a resumed run must say so.
        logger.warning(f"Resumed from step {self.step} (checkpoint {path}; epoch {self.epoch}, batch "
                       f"{self.batch_in_epoch}).")

    def _truncate_history(self) -> None:
        """Drops the records of steps after the checkpoint (they will be run again) and a partial last line that a
        kill during the append left."""
        history = self.output_dir / HISTORY_NAME
        if not history.exists():
            return
        kept = []
        lines = history.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning(f"{history}, line {number}: not a complete JSON record (the run was stopped while "
                               "writing it); dropped.")
                continue
            if record["step"] < self.step:
                kept.append(line)
        history.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    # ---- output and evaluation -----------------------------------------------------------------------------------

    def _save_final(self) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.unwrapped.save_pretrained(self.output_dir)
            if self.processor is not None:
                self.processor.save_pretrained(self.output_dir)
        self.accelerator.wait_for_everyone()

    def _check_evaluation(self) -> None:
        if self.eval_dataset is not None and self.evaluate_fn is None:
            try:
                from ..evaluation import evaluate_retrieval
            except ImportError as error:
                raise ImportError(
                    f"Evaluating data.eval_split needs seeyou_ml.evaluation.evaluate_retrieval ({error}); set "
                    "data.eval_split to null to train without it."
                ) from error
            self.evaluate_fn = evaluate_retrieval

    def _evaluate(self, final: bool) -> Optional[dict]:
        """Retrieval on the eval split on the main process; the final results go to `retrieval_results.json`."""
        if self.eval_dataset is None:
            return None
        self.accelerator.wait_for_everyone()
        results = None
        if self.accelerator.is_main_process:
            was_training = self.unwrapped.training
            self.unwrapped.eval()
            with preserved_rng(), torch.no_grad(), self.accelerator.autocast():
                results = self.evaluate_fn(self.unwrapped, self.processor, self.eval_dataset,
                                           batch_size=self.recipe.eval.embed_batch_size, **self.recipe.eval.kwargs)
            results = results.to_dict() if hasattr(results, "to_dict") else results
            self.unwrapped.train(was_training)
            if final:
                with open(self.output_dir / RESULTS_NAME, "w", encoding="utf-8") as f:
                    json.dump({"step": self.step, **results}, f, indent=2, default=float)
        self.accelerator.wait_for_everyone()
        return results


__all__ = [
    "SeededCollate",
    "StepOutput",
    "TrainOutput",
    "Trainer",
    "average_gradients",
    "background_batches",
    "check_distributed_type",
    "make_accelerator",
    "preserved_rng",
]
