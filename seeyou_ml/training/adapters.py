"""Training per-language adapters by multilingual distillation from parallel text, on the recipe machinery.

A recipe with an `adapters:` section ([`AdaptersConfig`]) loads a trained model, adds one LoRA adapter per language
to its frozen text tower (`seeyou_ml.adapters`) and trains only the adapters: the teacher is the base model's
embedding of each pair's English side (no adapter, no gradient), the student the embedding of the translation routed
through its language's adapter. Two loss terms, weighted in `losses:` like any other:

- `distillation_mse_loss`: mean squared distance between student and teacher embeddings (Reimers & Gurevych 2020);
- `distillation_contrastive_loss`: symmetric InfoNCE between students and teachers over the batch, at the base
  model's temperature, so that a translation is nearer its own English sentence than the others (as M-CLIP).

Batches mix languages: routing holds in training mode, each adapter's gradient coming from its own rows, so one step
trains every adapter. The final evaluation scores the held-out pairs (the last `validation_pairs` of every file)
with and without the adapters, and, when the recipe names an eval split, image–text retrieval on it the same way.

References: Reimers & Gurevych, "Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation"
(2020); Carlsson et al., "Cross-lingual and Multilingual CLIP" (M-CLIP, 2022).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..adapters import add_language_adapter, default_lora_config, train_language_adapters
from ..data.parallel import ParallelText, load_parallel_text
from ..losses import contrastive_loss, logit_scale_of, register_loss_term
from .config import TrainingRecipe
from .trainer import Trainer


@register_loss_term("distillation_mse_loss")
def distillation_mse_term(outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any], model) -> torch.Tensor:
    """Mean over pairs of the squared distance between the student (`text_embeds`) and teacher (`teacher_embeds`)."""
    student, teacher = outputs["text_embeds"].float(), outputs["teacher_embeds"].float()  # (b, D) each
    return (student - teacher).pow(2).sum(dim=-1).mean()


@register_loss_term("distillation_contrastive_loss")
def distillation_contrastive_term(
    outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any], model
) -> torch.Tensor:
    """Symmetric InfoNCE between students and teachers over the global batch, at the model's temperature."""
    return contrastive_loss(outputs["teacher_embeds"].float(), outputs["text_embeds"].float(), logit_scale_of(model))


class ParallelTextCollator:
    """Tokenises pairs `{"english", "translation", "lang"}` into the student's and the teacher's inputs.

    Returns `input_ids`, `attention_mask` (the translations), `lang`, `teacher_input_ids` and
    `teacher_attention_mask` (the English sides).
    """

    def __init__(self, tokenizer: Any, max_length: Optional[int] = None):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def _encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    def __call__(self, records: Sequence[Mapping[str, str]]) -> dict[str, Any]:
        student = self._encode([r["translation"] for r in records])
        teacher = self._encode([r["english"] for r in records])
        return {
            "input_ids": student["input_ids"],
            "attention_mask": student["attention_mask"],
            "lang": [r["lang"] for r in records],
            "teacher_input_ids": teacher["input_ids"],
            "teacher_attention_mask": teacher["attention_mask"],
        }


class DistillationTrainer(Trainer):
    """A [`Trainer`] whose batches are parallel text: the loss terms read the student's and the teacher's embeddings.

    `image_embeds` holds the teacher's too, so that the collapse monitor watches both sides as it does both towers.
    """

    def forward_batch(self, batch: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
        model = self.unwrapped
        with torch.no_grad():
            teacher = model.get_text_features(
                batch["teacher_input_ids"], batch["teacher_attention_mask"], lang=[None] * len(batch["lang"])
            ).pooler_output  # (b, D)
        student = model.get_text_features(batch["input_ids"], batch["attention_mask"], lang=batch["lang"])
        return {"text_embeds": student.pooler_output, "teacher_embeds": teacher, "image_embeds": teacher}


def parallel_records(texts: Sequence[ParallelText]) -> list[dict[str, str]]:
    """One record `{"english", "translation", "lang", "image_id"}` per pair; `image_id` names the pair, so the
    batch sampler never puts one pair twice into a batch."""
    return [
        {"english": english, "translation": translation, "lang": text.lang, "image_id": f"{text.lang}-{i}"}
        for text in texts
        for i, (english, translation) in enumerate(zip(text.english, text.translation))
    ]


def evaluate_adapters(
    model, processor, dataset: Sequence[ParallelText], batch_size: int = 256, corpus: Any = None, **kwargs
) -> dict[str, Any]:
    """The adapter run's final evaluation, each part with and without the adapters: `evaluate_retrieval` on `corpus`
    (when given) and, under `parallel_text`, `seeyou_ml.evaluation.compare_parallel_text` on the held-out pairs."""
    from ..evaluation import compare_parallel_text, evaluate_retrieval

    results = {}
    if corpus is not None:
        results = evaluate_retrieval(model, processor, corpus, batch_size=max(batch_size // 4, 1), **kwargs)
    return {**results, "parallel_text": compare_parallel_text(model, processor, dataset, batch_size=batch_size)}


def build_adapter_trainer(recipe: TrainingRecipe, accelerator: Optional[Accelerator] = None) -> DistillationTrainer:
    """The [`DistillationTrainer`] of a recipe with an `adapters:` section: base model and processor from
    `adapters.base`, one new adapter per language, the training pairs and the held-out ones."""
    from transformers import AutoProcessor

    from ..data.samplers import UniqueImageBatchSampler
    from ..modeling import SeeYouModel
    from .trainer import make_accelerator

    section = recipe.adapters
    if not section.train_languages:
        raise ValueError("adapters.train_languages is empty; name the languages to train adapters for, e.g. "
                         "[es, ja].")
    if recipe.data.sub_batch_size is not None:
        raise ValueError("data.sub_batch_size (GradCache) does not apply to adapter distillation; remove it.")
    accelerator = accelerator if accelerator is not None else make_accelerator(recipe)
    paths = {lang: section.parallel_text.format(lang=lang) for lang in section.train_languages}
    train = [load_parallel_text(p, "train", section.validation_pairs) for p in paths.values()]
    held_out = [load_parallel_text(p, "validation", section.validation_pairs) for p in paths.values()]
    corpus = None
    if recipe.data.eval_split:
        with accelerator.main_process_first():
            corpus = recipe.data.load_split(recipe.data.eval_split)

    set_seed(recipe.seed)
    model = SeeYouModel.from_pretrained(section.base)
    processor = AutoProcessor.from_pretrained(section.base)
    lora = default_lora_config(section.lora_r, section.lora_alpha, section.lora_dropout, section.target_modules)
    for lang in section.train_languages:
        add_language_adapter(model, lang, lora)
    train_language_adapters(model, section.train_languages)

    records = parallel_records(train)
    sampler = UniqueImageBatchSampler([r["image_id"] for r in records], recipe.data.batch_size,
                                      langs=[r["lang"] for r in records], drop_last=True, seed=recipe.seed,
                                      **recipe.data.sampler_kwargs)
    if len(sampler) == 0:
        raise ValueError(f"data.batch_size={recipe.data.batch_size} is more than the {len(records)} training pairs; "
                         "lower data.batch_size.")
    return DistillationTrainer(
        recipe,
        model=model,
        processor=processor,
        train_dataset=records,
        collate_fn=ParallelTextCollator(processor.tokenizer, recipe.data.max_length),
        batch_sampler=sampler,
        eval_dataset=held_out,
        evaluate_fn=functools.partial(evaluate_adapters, corpus=corpus),
        accelerator=accelerator,
    )


__all__ = [
    "DistillationTrainer",
    "ParallelTextCollator",
    "build_adapter_trainer",
    "distillation_contrastive_term",
    "distillation_mse_term",
    "evaluate_adapters",
    "parallel_records",
]
