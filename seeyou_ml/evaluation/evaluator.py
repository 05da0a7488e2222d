"""Cross-lingual retrieval evaluation of a dual encoder on a corpus in the seeyou-ml record schema.

[`evaluate_retrieval`] embeds every distinct image once and every caption once, then reports

- per language: image→text and text→image R@1/5/10 and rsum over the images that have a caption in that language,
  and their mean over languages (definitions in `seeyou_ml.evaluation.retrieval`);
- cross-lingual text→text: for languages A ≠ B, each caption in A is a query over *all* captions in B, and is a
  hit at k when a caption of the same image is among its k best (queries whose image has no caption in B are left
  out); one matrix per k over (A, B);
- zero-shot classification for labelled corpora: each image is assigned the class whose prompts (in one language)
  it matches best, CLIP's way: prompt embeddings averaged per class and re-normalised.
"""

from __future__ import annotations

import os
from itertools import combinations
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..adapters import BASE_ADAPTER, language_adapters
from ..data.columns import read_columns
from ..images import load_image
from .cache import CorpusEmbeddings, corpus_fingerprint, load_embeddings, save_embeddings
from .retrieval import bidirectional_topk, recall_from_topk, retrieval_recall


def _model_placement(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


@torch.inference_mode()
def embed_images(model, processor, images: Sequence[Any], batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """Image embeddings with `model.get_image_features(pixel_values=...).pooler_output`.

    Args:
        model: a model with `get_image_features` (e.g. `SeeYouModel`).
        processor: its processor; called as `processor(images=[...], return_tensors="pt")`.
        images: PIL images or paths.
        batch_size: images per forward pass.
        progress: show a progress bar.

    Returns:
        (N, D) float32 embeddings on the CPU.
    """
    device, dtype = _model_placement(model)
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="embedding images", disable=not progress):
        batch = [load_image(image) for image in images[start : start + batch_size]]
        pixel_values = processor(images=batch, return_tensors="pt")["pixel_values"].to(device, dtype)
        out.append(model.get_image_features(pixel_values=pixel_values).pooler_output.float().cpu())
    dim = model.config.projection_dim if not out else out[0].shape[1]
    return torch.cat(out) if out else torch.empty(0, dim)


@torch.inference_mode()
def embed_texts(
    model,
    processor,
    texts: Sequence[str],
    batch_size: int = 256,
    progress: bool = True,
    langs: Sequence[str | None] | None = None,
) -> torch.Tensor:
    """Caption embeddings with `model.get_text_features(input_ids, attention_mask).pooler_output`.

    Args:
        model: a model with `get_text_features` (e.g. `SeeYouModel`).
        processor: its processor; called as `processor(text=[...], return_tensors="pt", padding=True)`.
        texts: the captions.
        batch_size: captions per forward pass.
        progress: show a progress bar.
        langs: the language of every caption, passed as `lang=` so that each goes through its language adapter
            (`seeyou_ml.adapters`); None passes none.

    Returns:
        (M, D) float32 embeddings on the CPU.
    """
    device, _ = _model_placement(model)
    out = []
    for start in tqdm(range(0, len(texts), batch_size), desc="embedding captions", disable=not progress):
        encoded = processor(text=list(texts[start : start + batch_size]), return_tensors="pt", padding=True)
        routing = {} if langs is None else {"lang": list(langs[start : start + batch_size])}
        features = model.get_text_features(
            input_ids=encoded["input_ids"].to(device), attention_mask=encoded["attention_mask"].to(device), **routing
        )
        out.append(features.pooler_output.float().cpu())
    dim = model.config.projection_dim if not out else out[0].shape[1]
    return torch.cat(out) if out else torch.empty(0, dim)


def _first_rows(image_ids: list[str]) -> tuple[list[int], list[str], torch.Tensor]:
    """Row of each distinct image's first caption, the distinct ids, and each row's image index."""
    index: dict[str, int] = {}
    first_rows, owners = [], []
    for row, image_id in enumerate(image_ids):
        if image_id not in index:
            index[image_id] = len(index)
            first_rows.append(row)
        owners.append(index[image_id])
    return first_rows, list(index), torch.tensor(owners, dtype=torch.long)


def embed_corpus(
    model,
    processor,
    dataset,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> CorpusEmbeddings:
    """Embeds each distinct image (grouped by `image_id`) once and every caption once.

    Args:
        model: a model with `get_image_features` and `get_text_features`.
        processor: its processor.
        dataset: a `datasets.Dataset` (or mapping of columns) with `image`, `caption`, `lang` and `image_id`.
        batch_size: images per forward pass; captions go four times as many at once.
        cache_dir: when given, embeddings are saved under `cache_dir/<fingerprint>/` and reused by later calls with
            the same model weights, processor and corpus (see `seeyou_ml.evaluation.cache`).
        progress: show progress bars.

    Returns:
        [`CorpusEmbeddings`]; captions went through their language's adapter where the model has one.
    """
    columns = read_columns(dataset, ["caption", "lang", "image_id"])
    image_ids = [str(image_id) for image_id in columns["image_id"]]
    captions, langs = list(columns["caption"]), list(columns["lang"])
    folder = None
    if cache_dir is not None:
        fingerprint = corpus_fingerprint(model, processor, dataset, image_ids, captions, langs)
        folder = os.path.join(cache_dir, fingerprint)
        if os.path.isfile(os.path.join(folder, "meta.json")):
            return load_embeddings(folder)
    first_rows, distinct_ids, owners = _first_rows(image_ids)
    if hasattr(dataset, "select"):
        images = _LazyImages(dataset.select(first_rows))
    else:
        images = [dataset["image"][row] for row in first_rows]
    embeddings = CorpusEmbeddings(
        image_embeds=embed_images(model, processor, images, batch_size, progress),
        text_embeds=embed_texts(model, processor, captions, 4 * batch_size, progress,
                                langs=langs if _adapter_languages(model) else None),
        text_to_image=owners,
        image_ids=distinct_ids,
        langs=langs,
    )
    if folder is not None:
        save_embeddings(embeddings, folder, fingerprint=os.path.basename(folder))
    return embeddings


class _LazyImages:
    """The `image` column of a `datasets.Dataset`, decoded one slice at a time."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: slice) -> list:
        return self.dataset[index]["image"]


def _language_subset(embeddings: CorpusEmbeddings, lang: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of the captions in `lang`, the images they describe, and each caption's index among those images."""
    rows = torch.tensor([i for i, code in enumerate(embeddings.langs) if code == lang], dtype=torch.long)
    images, owners = torch.unique(embeddings.text_to_image[rows], return_inverse=True)
    return rows, images, owners


def text_to_text_recall(
    embeddings: CorpusEmbeddings, languages: Sequence[str], ks: Sequence[int] = (1, 5, 10), chunk_size: int = 2048
) -> dict[str, dict[str, dict[str, float]]]:
    """Cross-lingual caption→caption recall for every ordered pair of languages.

    A caption in A queries all captions in B; it is a hit at k when a caption of the same image is among its k best
    (order: score desc, then index asc). Queries whose image has no caption in B are left out.

    Returns:
        `{"R@k": {A: {B: recall}}}` in percent, for A ≠ B with at least one answerable query.
    """
    results: dict[str, dict[str, dict[str, float]]] = {f"R@{k}": {a: {} for a in languages} for k in ks}
    subsets = {lang: torch.tensor([i for i, c in enumerate(embeddings.langs) if c == lang]) for lang in languages}
    for source, target in combinations(languages, 2):
        source_rows, target_rows = subsets[source], subsets[target]
        source_images = embeddings.text_to_image[source_rows]
        target_images = embeddings.text_to_image[target_rows]
        if not bool(torch.isin(source_images, target_images).any()):
            continue  # the two languages describe disjoint images
        forward, backward = bidirectional_topk(
            embeddings.text_embeds[source_rows], embeddings.text_embeds[target_rows], max(ks), chunk_size
        )
        for query, candidate, topk, query_images, candidate_images in (
            (source, target, forward, source_images, target_images),
            (target, source, backward, target_images, source_images),
        ):
            for k, value in recall_from_topk(topk, query_images, candidate_images, ks).items():
                results[f"R@{k}"][query][candidate] = value
    return results


def zero_shot_accuracy(
    model,
    processor,
    image_embeds: torch.Tensor,
    labels: Sequence[str],
    prompts: dict[str, dict[str, list[str]]],
    batch_size: int = 256,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Top-1 zero-shot classification accuracy per prompt language.

    Args:
        model, processor: the model and processor that embedded the images.
        image_embeds: (N, D) image embeddings.
        labels: the N class names.
        prompts: `{lang: {class name: [prompt, ...]}}`; every class in `labels` needs prompts in every language.
        batch_size: prompts per forward pass.
        progress: show progress bars.

    Returns:
        `{lang: {"accuracy": percent, "classes": number of classes}}`. Scores that tie go to the class listed first.
    """
    results = {}
    for lang, class_prompts in prompts.items():
        classes = list(class_prompts)
        missing = sorted(set(labels) - set(classes))
        if missing:
            raise ValueError(f"prompts[{lang!r}] has no prompts for the classes {missing}; add them or drop {lang!r}.")
        texts = [text for name in classes for text in class_prompts[name]]
        owners = torch.tensor([i for i, name in enumerate(classes) for _ in class_prompts[name]])
        prompt_embeds = embed_texts(model, processor, texts, batch_size, progress)  # (P, D)
        class_embeds = torch.zeros(len(classes), prompt_embeds.shape[1]).index_add_(0, owners, prompt_embeds)
        class_embeds = torch.nn.functional.normalize(class_embeds, dim=1)  # (C, D)
        predicted = (image_embeds @ class_embeds.T).argmax(dim=1)  # (N,)
        target = torch.tensor([classes.index(label) for label in labels])
        results[lang] = {"accuracy": 100.0 * float((predicted == target).double().mean()), "classes": len(classes)}
    return results


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = [key for key in rows[0] if all(key in row for row in rows)]
    return {key: sum(row[key] for row in rows) / len(rows) for key in keys}


def _image_labels(dataset, label_column: str, first_rows: list[int]) -> list[str]:
    values = read_columns(dataset, [label_column])[label_column]
    feature = getattr(dataset, "features", {}).get(label_column) if hasattr(dataset, "features") else None
    names = getattr(feature, "names", None)  # a ClassLabel stores integers
    return [names[values[row]] if names is not None else str(values[row]) for row in first_rows]


def _reranked_recall(
    model, processor, dataset, embeddings: CorpusEmbeddings, languages: Sequence[str], ks: Sequence[int], k: int,
    batch_size: int, chunk_size: int, similarity_weight: float,
) -> dict[str, dict[str, float]]:
    """Per-language recall after re-ranking each query's top `k` with the matching head, both directions."""
    from ..losses import logit_scale_of
    from .rerank import candidate_logits, encode_for_matching, rerank_topk

    if k < max(ks):
        raise ValueError(f"rerank_top_k={k} is below the largest recall cut-off {max(ks)}; give at least {max(ks)}.")
    first_rows, _, _ = _first_rows([str(i) for i in read_columns(dataset, ["image_id"])["image_id"]])
    if hasattr(dataset, "select"):
        images = _LazyImages(dataset.select(first_rows))
    else:
        images = [dataset["image"][row] for row in first_rows]
    captions = list(read_columns(dataset, ["caption"])["caption"])
    gallery = encode_for_matching(model, processor, images, captions, batch_size)
    scale = similarity_weight * float(logit_scale_of(model).detach())
    results = {}
    for lang in languages:
        rows, image_rows, owners = _language_subset(embeddings, lang)
        text_topk, image_topk = bidirectional_topk(
            embeddings.text_embeds[rows], embeddings.image_embeds[image_rows], k, chunk_size
        )
        subset = {
            "regions": gallery["regions"][image_rows], "region_size": gallery["region_size"],
            "text": gallery["text"][rows], "mask": gallery["mask"][rows],
        }
        texts, images_of_lang = embeddings.text_embeds[rows], embeddings.image_embeds[image_rows]
        text_prior = candidate_logits(texts, images_of_lang, text_topk, scale)
        image_prior = candidate_logits(images_of_lang, texts, image_topk, scale)
        text_topk = rerank_topk(model, subset, text_topk, text_queries=True, batch_size=batch_size, prior=text_prior)
        image_topk = rerank_topk(model, subset, image_topk, text_queries=False, batch_size=batch_size,
                                 prior=image_prior)
        gallery_ids = torch.arange(len(image_rows))
        to_image = recall_from_topk(text_topk, owners, gallery_ids, ks)
        to_text = recall_from_topk(image_topk, gallery_ids, owners, ks)
        results[lang] = {**{f"image_to_text/R@{c}": v for c, v in to_text.items()},
                         **{f"text_to_image/R@{c}": v for c, v in to_image.items()}}
    return results


def evaluate_retrieval(
    model,
    processor,
    dataset,
    languages: Sequence[str] | None = None,
    batch_size: int = 64,
    ks: Sequence[int] = (1, 5, 10),
    text_to_text: bool = True,
    label_column: str | None = None,
    prompts: dict[str, dict[str, list[str]]] | None = None,
    cache_dir: str | os.PathLike | None = None,
    chunk_size: int = 2048,
    progress: bool = True,
    compare_adapters: bool = True,
    rerank_top_k: int | None = None,
    rerank_similarity_weight: float = 1.0,
) -> dict[str, Any]:
    """Per-language retrieval, cross-lingual text→text retrieval and zero-shot classification (module docstring).

    Args:
        model: a model with `get_image_features`/`get_text_features` returning L2-normalised `pooler_output`s.
        processor: its processor.
        dataset: a corpus in the record schema (`image`, `caption`, `lang`, `image_id`).
        languages: languages to report (default: all in the corpus, sorted).
        batch_size: images per forward pass (captions go four times as many).
        ks: recall cut-offs.
        text_to_text: also compute the text→text matrices (needs two or more languages).
        label_column: column with each image's class, for zero-shot classification (with `prompts`).
        prompts: `{lang: {class name: [prompt, ...]}}` for zero-shot classification.
        cache_dir: reuse corpus embeddings saved there (see [`embed_corpus`]).
        chunk_size: score tile side for the recall kernel.
        progress: show progress bars.
        compare_adapters: when the model has language adapters (`seeyou_ml.adapters`), captions go through their
            language's adapter, and the languages that have one are also scored through the base weights.
        rerank_top_k: re-score the dual encoder's top k candidates of every query with the grounding head's matching
            logit, both directions (see `seeyou_ml.evaluation.rerank`); adds `reranked` (`{lang: {metric: value}}`)
            and `reranked_mean` beside the dual encoder's recalls.
        rerank_similarity_weight: the re-ranking score is the matching logit plus this times the dual encoder's
            logit of the pair (1, BLIP's sum; 0, the matching logit alone as in ALBEF).

    Returns:
        A JSON-serialisable dict: `languages`, `num_images`, `num_captions`, `per_language` (`{lang: {metric:
        value}}` with `image_to_text/R@k`, `text_to_image/R@k`, `rsum`, `num_images`, `num_captions`), `mean` (over
        languages), and when asked `text_to_text` (`{"R@k": {A: {B: value}}}`), `text_to_text_mean` (`{"R@k":
        mean over pairs}`), `zero_shot` (`{lang: {"accuracy", "classes"}}` plus `"mean"`) and, for a model with
        adapters, `without_adapters` (`languages`, `per_language` and `mean` of the languages with an adapter,
        their captions embedded by the base weights). Recalls and accuracy are percentages.

    Example:

    ```python
    >>> from seeyou_ml.data.scenes import load_scenes, class_prompts
    >>> corpus = load_scenes("val", num_images=200, languages=["en", "de"])
    >>> results = evaluate_retrieval(model, processor, corpus, label_column="label",
    ...                              prompts={lang: class_prompts(lang) for lang in ("en", "de")})
    >>> sorted(results["per_language"])
    ['de', 'en']
    ```
    """
    if (label_column is None) != (prompts is None):
        raise ValueError("zero-shot classification needs both label_column and prompts; pass both or neither.")
    embeddings = embed_corpus(model, processor, dataset, batch_size, cache_dir, progress)
    present = sorted(set(embeddings.langs))
    languages = present if languages is None else list(languages)
    absent = [lang for lang in languages if lang not in present]
    if absent:
        raise ValueError(f"languages {absent} have no captions in this corpus; it has {present}.")
    results: dict[str, Any] = {
        "languages": languages,
        "num_images": len(embeddings.image_ids),
        "num_captions": len(embeddings.langs),
        "per_language": {},
    }
    for lang in languages:
        rows, images, owners = _language_subset(embeddings, lang)
        scores = retrieval_recall(
            embeddings.image_embeds[images], embeddings.text_embeds[rows], owners, ks=ks, chunk_size=chunk_size
        )
        results["per_language"][lang] = {**scores, "num_images": len(images), "num_captions": len(rows)}
    results["mean"] = _mean([{k: v for k, v in row.items() if not k.startswith("num_")}
                             for row in results["per_language"].values()])
    adapted = [lang for lang in languages if lang in _adapter_languages(model)]
    if compare_adapters and adapted:
        results["without_adapters"] = _without_adapters(model, processor, dataset, embeddings, adapted, ks,
                                                        4 * batch_size, chunk_size, progress)
    if rerank_top_k is not None:
        results["reranked"] = _reranked_recall(model, processor, dataset, embeddings, languages, ks, rerank_top_k,
                                               batch_size, chunk_size, rerank_similarity_weight)
        results["reranked_mean"] = _mean(list(results["reranked"].values()))
    if text_to_text and len(languages) > 1:
        matrices = text_to_text_recall(embeddings, languages, ks, chunk_size)
        results["text_to_text"] = matrices
        results["text_to_text_mean"] = {
            name: sum(values) / len(values)
            for name, matrix in matrices.items()
            if (values := [v for row in matrix.values() for v in row.values()])
        }
    if label_column is not None:
        first_rows, _, _ = _first_rows([str(i) for i in read_columns(dataset, ["image_id"])["image_id"]])
        labels = _image_labels(dataset, label_column, first_rows)
        wanted = {lang: prompts[lang] for lang in languages if lang in prompts} or prompts
        zero_shot = zero_shot_accuracy(model, processor, embeddings.image_embeds, labels, wanted, 4 * batch_size,
                                       progress)
        zero_shot["mean"] = {"accuracy": sum(r["accuracy"] for r in zero_shot.values()) / len(zero_shot)}
        results["zero_shot"] = zero_shot
    return results


def _adapter_languages(model) -> list[str]:
    return language_adapters(model) if hasattr(model, "text_model") else []


def _without_adapters(model, processor, dataset, embeddings: CorpusEmbeddings, languages: list[str],
                      ks: Sequence[int], batch_size: int, chunk_size: int, progress: bool) -> dict[str, Any]:
    """Per-language retrieval of `languages` with their captions embedded through the base weights."""
    captions = list(read_columns(dataset, ["caption"])["caption"])
    per_language = {}
    for lang in languages:
        rows, images, owners = _language_subset(embeddings, lang)
        texts = embed_texts(model, processor, [captions[i] for i in rows.tolist()], batch_size, progress,
                            langs=[BASE_ADAPTER] * len(rows))
        scores = retrieval_recall(embeddings.image_embeds[images], texts, owners, ks=ks, chunk_size=chunk_size)
        per_language[lang] = {**scores, "num_images": len(images), "num_captions": len(rows)}
    return {"languages": languages, "per_language": per_language,
            "mean": _mean([{k: v for k, v in row.items() if not k.startswith("num_")} for row in per_language.values()])}


__all__ = [
    "embed_corpus",
    "embed_images",
    "embed_texts",
    "evaluate_retrieval",
    "text_to_text_recall",
    "zero_shot_accuracy",
]
