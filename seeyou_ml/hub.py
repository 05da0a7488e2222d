"""Publishing a trained output directory: its model card and its upload to the Hugging Face Hub.

The card is rendered from a template in the repository's top-level `model_cards/` folder (the Hub's layout: YAML
metadata between `---` lines, then Markdown) with what the output directory holds: `config.json`, the resolved
`recipe.yaml`, `retrieval_results.json`, per-language adapters (`adapters/<lang>/`, peft's layout) and grounding
results (the `grounding` section of `retrieval_results.json`, or `grounding_results.json`) when present. Its metadata
carries a `model-index` with every result of `retrieval_results.json`, so the Hub lists them. The names of the files a
training run writes there (`RESULTS_NAME`, `RECIPE_NAME`, `HISTORY_NAME`) are defined here, where they are read.

A push uploads the folder a user loads: model, processor, remote code, card, adapters, evaluation results and recipe
(`upload_files` decides which), through `huggingface_hub.HfApi` (`create_repo`, `upload_folder`). The token comes
only from the environment (`HF_TOKEN`) or the login store (`hf auth login`); it is never passed, written or printed.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

PathLike = Union[str, Path]

MODEL_CARDS_DIR = Path(__file__).resolve().parent.parent / "model_cards"
"""The repository's card templates (top-level `model_cards/`)."""
MODEL_CARD_TEMPLATE = MODEL_CARDS_DIR / "seeyou_model_card.md"
CARD_NAME = "README.md"
CONFIG_NAME = "config.json"
RESULTS_NAME = "retrieval_results.json"
"""What training writes after its final evaluation (`evaluate_retrieval`'s output, with a `grounding` section)."""
RECIPE_NAME = "recipe.yaml"
"""The resolved recipe a training run writes beside its model."""
HISTORY_NAME = "history.jsonl"
"""The loss per logged step, appended by training."""
GROUNDING_RESULTS_NAME = "grounding_results.json"
ADAPTERS_DIR = "adapters"
LICENSE = "apache-2.0"

# Written by training for resuming and monitoring, not for users of the model.
TRAINING_ONLY_FILES = frozenset({HISTORY_NAME})
PICKLE_SUFFIXES = frozenset({".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib"})
# Counts and positions beside the results of `retrieval_results.json`, not results themselves (so are `num_*` keys).
COUNT_KEYS = frozenset({"step", "classes"})

RETRIEVAL_TASK = ("image-text-retrieval", "Image-text retrieval")
TEXT_RETRIEVAL_TASK = ("cross-lingual-text-retrieval", "Cross-lingual text-text retrieval")
ZERO_SHOT_TASK = ("zero-shot-image-classification", "Zero-shot image classification")
GROUNDING_TASK = ("phrase-grounding", "Phrase grounding")


def _read_json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-run the evaluation that writes it.") from None


def _check_output_dir(output_dir: Path) -> None:
    if not output_dir.is_dir():
        raise FileNotFoundError(f"{output_dir}: no such directory; give the output directory of `seeyou train`.")
    if not (output_dir / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"{output_dir} has no {CONFIG_NAME}; give a folder written by `seeyou train` or `save_pretrained`."
        )


def _languages(results: Optional[dict], recipe: dict) -> list[str]:
    if results and results.get("languages"):
        return list(results["languages"])
    return list(recipe.get("data", {}).get("languages") or [])


def _corpus_name(recipe: dict) -> str:
    corpus = str(recipe.get("data", {}).get("corpus", "unknown"))
    return corpus if corpus == "scenes" else Path(corpus.rstrip("/")).name or corpus


def adapter_languages(output_dir: PathLike) -> list[str]:
    """Languages with a LoRA adapter in `<output_dir>/adapters/<lang>/` (peft's folder layout)."""
    root = Path(output_dir) / ADAPTERS_DIR
    if not root.is_dir():
        return []
    return sorted(path.name for path in root.iterdir() if (path / "adapter_config.json").is_file())


def _numeric_leaves(data: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], float]]:
    """(key path, value) of every finite number in nested mappings, counts left out."""
    if isinstance(data, dict):
        for key, value in data.items():
            if key not in COUNT_KEYS and not str(key).startswith("num_"):
                yield from _numeric_leaves(value, path + (str(key),))
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and math.isfinite(data):
        yield path, float(data)


def eval_results(results: dict, dataset_name: str, split: Optional[str] = None,
                 grounding: Optional[dict] = None) -> list[EvalResult]:
    """The `model-index` entries of a `retrieval_results.json` (and grounding results): one per result.

    Each language (or language pair for text→text, `mean` for averages) is a dataset configuration, so the Hub shows
    one table per language; a metric's `type` is its key in the results file (`image_to_text/R@1`, `rsum`, `R@1`,
    `accuracy`).

    Args:
        results: `evaluate_retrieval`'s output as written to `retrieval_results.json`.
        dataset_name: name of the evaluation corpus.
        split: the evaluated split.
        grounding: grounding results (nested mappings of numbers), when the model has a grounding head.
    """
    entries: list[EvalResult] = []

    def add(task: tuple[str, str], config: str, metric: str, value: float, label: str) -> None:
        entries.append(EvalResult(task_type=task[0], task_name=task[1], dataset_type=dataset_name,
                                  dataset_name=dataset_name, dataset_config=config, dataset_split=split,
                                  metric_type=metric, metric_name=f"{label} ({config})",
                                  # 100 * 0.916 is 91.60000000000001 in floating point; the card shows 91.6.
                                  metric_value=round(value, 4)))

    def label(metric: str) -> str:
        return metric.replace("image_to_text/", "image→text ").replace("text_to_image/", "text→image ")

    for section, task in (("per_language", RETRIEVAL_TASK), ("zero_shot", ZERO_SHOT_TASK)):
        for (config, metric), value in ((p[:2], v) for p, v in _numeric_leaves(results.get(section, {}))):
            add(task, config, metric, value, label(metric))
    for (metric,), value in _numeric_leaves(results.get("mean", {})):
        add(RETRIEVAL_TASK, "mean", metric, value, label(metric))
    for (metric, query, target), value in _numeric_leaves(results.get("text_to_text", {})):
        add(TEXT_RETRIEVAL_TASK, f"{query}→{target}", metric, value, f"text→text {metric}")
    for (metric,), value in _numeric_leaves(results.get("text_to_text_mean", {})):
        add(TEXT_RETRIEVAL_TASK, "mean", metric, value, f"text→text {metric}")
    for path, value in _numeric_leaves(grounding or {}):
        add(GROUNDING_TASK, "/".join(path[:-1]) or "all", path[-1], value, path[-1])
    return entries


def _grounding_results(output_dir: Path, results: Optional[dict]) -> Optional[dict]:
    """Grounding results: the `grounding` section of the retrieval results (what training writes), else
    `grounding_results.json`."""
    if results and isinstance(results.get("grounding"), dict):
        return results["grounding"]
    return _read_json(output_dir / GROUNDING_RESULTS_NAME)


def card_data(output_dir: PathLike, repo_id: Optional[str] = None, license: str = LICENSE) -> ModelCardData:
    """The card's metadata: languages, license, library, tags, datasets, base models, pipeline tag, model-index."""
    output_dir = Path(output_dir)
    recipe = _recipe(output_dir)
    results = _read_json(output_dir / RESULTS_NAME)
    grounding = _grounding_results(output_dir, results)
    model = recipe.get("model", {})
    base_models = [m for m in (model.get("vision"), model.get("text")) if m and not model.get("preset")]
    tags = ["seeyou", "clip", "dual-encoder", "multilingual", "image-text-retrieval", "custom_code"]
    tags += ["lora", "peft"] if adapter_languages(output_dir) else []
    tags += ["phrase-grounding"] if grounding else []
    name = repo_id.split("/")[-1] if repo_id else recipe.get("name") or output_dir.name
    dataset = _corpus_name(recipe)
    split = (results or {}).get("split") or recipe.get("data", {}).get("eval_split")
    return ModelCardData(
        language=_languages(results, recipe) or None,
        license=license,
        library_name="transformers",
        tags=tags,
        datasets=[dataset],
        base_model=base_models or None,
        pipeline_tag="zero-shot-image-classification",
        model_name=name,
        eval_results=eval_results(results, dataset, split, grounding) if results else None,
    )


def _recipe(output_dir: Path) -> dict:
    path = output_dir / RECIPE_NAME
    if not path.is_file():
        return {}
    recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(recipe, dict):
        raise ValueError(f"{path} does not hold a recipe mapping; re-run training or remove the file.")
    return recipe


def _training_facts(recipe: dict, results: Optional[dict]) -> list[tuple[str, str]]:
    """(what, value) rows of the training procedure, from the resolved recipe."""
    data, model, optim = recipe.get("data", {}), recipe.get("model", {}), recipe.get("optim", {})
    rows = [("corpus", f"`{data.get('corpus')}` (train split `{data.get('train_split', 'train')}`)")]
    if model.get("preset"):
        rows.append(("towers", f"preset `{model['preset']}` {json.dumps(model.get('preset_kwargs', {}))}"))
    else:
        rows.append(("towers", f"vision `{model.get('vision')}`, text `{model.get('text')}`"))
    rows.append(("batch", f"{data.get('batch_size')} pairs"))
    if results and "step" in results:
        rows.append(("optimizer steps", str(results["step"])))
    stages = recipe.get("stages") or []
    if stages:
        rows.append(("stages", ", ".join(f"{s.get('name', i)} ({s.get('steps')} steps)"
                                         for i, s in enumerate(stages))))
    if recipe.get("max_train_seconds"):
        rows.append(("time budget", f"{recipe['max_train_seconds']} s (schedule by {recipe.get('schedule_by')})"))
    rows.append(("optimizer", f"AdamW, lr {optim.get('lr')}, weight decay {optim.get('weight_decay')}, "
                              f"betas {optim.get('betas')}, warmup {optim.get('warmup_steps')} steps, cosine"))
    rows.append(("precision", str(recipe.get("mixed_precision"))))
    rows.append(("losses", ", ".join(recipe.get("losses", {}) or ["contrastive_loss"])))
    return rows


def render_model_card(output_dir: PathLike, repo_id: Optional[str] = None, license: str = LICENSE,
                      template_path: Optional[PathLike] = None) -> ModelCard:
    """Renders the model card of a training output directory.

    Args:
        output_dir: a folder written by `seeyou train` (or `save_pretrained`, with whatever results lie beside).
        repo_id: the Hub repository the card will live in; the usage snippet loads from it (default: the folder).
        license: the model's license identifier.
        template_path: a card template (default: `model_cards/seeyou_model_card.md`).

    Returns:
        A `huggingface_hub.ModelCard`; `card.data` holds the metadata and model-index.
    """
    from .evaluation import format_table

    output_dir = Path(output_dir)
    _check_output_dir(output_dir)
    template = Path(template_path) if template_path is not None else MODEL_CARD_TEMPLATE
    if not template.is_file():
        raise FileNotFoundError(f"card template {template} not found; run from a clone of seeyou-ml (it ships "
                                "model_cards/) or pass template_path.")
    config = _read_json(output_dir / CONFIG_NAME)
    recipe = _recipe(output_dir)
    results = _read_json(output_dir / RESULTS_NAME)
    grounding = _grounding_results(output_dir, results)
    data = card_data(output_dir, repo_id, license)
    text, vision = config.get("text_config", {}), config.get("vision_config", {})
    return ModelCard.from_template(
        data,
        template_path=str(template),
        model_id=repo_id or str(output_dir),
        model_name=data.model_name,
        languages=", ".join(data.language or []) or "the languages of its training corpus",
        vision_type=vision.get("model_type", "resnet"),
        vision_widths=vision.get("hidden_sizes"),
        text_type=text.get("model_type", "xlm-roberta"),
        text_layers=text.get("num_hidden_layers"),
        text_hidden=text.get("hidden_size"),
        projection_dim=config.get("projection_dim"),
        text_pooling=config.get("text_pooling"),
        corpus=_corpus_name(recipe) if recipe else None,
        eval_split=(results or {}).get("split") or recipe.get("data", {}).get("eval_split"),
        training_rows=_training_facts(recipe, results) if recipe else [],
        recipe_yaml=yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True) if recipe else None,
        results_table=format_table(results) if results and "per_language" in results else None,
        adapters=adapter_languages(output_dir),
        grounding_rows=[("/".join(p), f"{v:.2f}") for p, v in _numeric_leaves(grounding)] if grounding else [],
    )


def write_model_card(output_dir: PathLike, repo_id: Optional[str] = None, license: str = LICENSE,
                     path: Optional[PathLike] = None) -> Path:
    """Renders the card of `output_dir` and saves it (default: `<output_dir>/README.md`); returns the path."""
    card = render_model_card(output_dir, repo_id, license)
    path = Path(path) if path is not None else Path(output_dir) / CARD_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    card.save(path)
    return path


# ---- push ----------------------------------------------------------------------------------------------------------


def is_pickle(path: PathLike) -> bool:
    """Whether a file is (or holds) a Python pickle: by suffix, by the pickle protocol header, or a torch zip archive
    with a `.pkl` member."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(2)
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(".pkl") for name in archive.namelist())
    return False


def upload_files(output_dir: PathLike) -> list[str]:
    """The files a push uploads, relative to `output_dir`, sorted.

    Every top-level file (model weights, config, remote code, processor and tokenizer files, card, results, recipe,
    figures) but the training history, and the `adapters/` tree. Checkpoints and other folders hold training state and
    stay local.

    Raises:
        ValueError: when a file to upload is a pickle (loading it would run code): push safetensors only.
    """
    output_dir = Path(output_dir)
    _check_output_dir(output_dir)
    files = [p for p in output_dir.iterdir() if p.is_file() and not p.name.startswith(".")
             and p.name not in TRAINING_ONLY_FILES]
    adapters = output_dir / ADAPTERS_DIR
    if adapters.is_dir():
        files += [p for p in adapters.rglob("*") if p.is_file()]
    for path in files:
        if is_pickle(path):
            raise ValueError(f"{path} is a pickle, which runs code when loaded; save the model with save_pretrained "
                             "(safetensors) and remove the file before pushing.")
    return sorted(str(p.relative_to(output_dir)) for p in files)


def stage_upload(output_dir: PathLike, folder: PathLike, repo_id: Optional[str] = None,
                 license: str = LICENSE) -> list[str]:
    """Writes into `folder` exactly what a push uploads: `upload_files(output_dir)` and a card rendered for
    `repo_id`. Returns the relative paths, sorted.

    Raises:
        FileExistsError: when `folder` exists and is not empty.
    """
    output_dir, folder = Path(output_dir), Path(folder)
    names = upload_files(output_dir)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty; give a new or empty folder for the upload.")
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(output_dir / name, folder / name)
    render_model_card(output_dir, repo_id, license).save(folder / CARD_NAME)
    _check_no_token(folder)
    return sorted(set(names) | {CARD_NAME})


def _check_no_token(folder: Path) -> None:
    """Refuses an upload whose files contain the token in use (a recipe or note could have captured it)."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        return
    needle = token.encode()
    # Weights are left out: a token cannot hide in them, and they can be gigabytes.
    leaks = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                   if p.is_file() and p.suffix != ".safetensors" and needle in p.read_bytes())
    if leaks:
        raise ValueError(f"{', '.join(leaks)} contain{'s' if len(leaks) == 1 else ''} your Hugging Face token; remove "
                         "it before pushing.")


@dataclass
class PushResult:
    """What a push did (or, for a dry run, would do).

    Args:
        repo_id: the target repository.
        files: the uploaded paths, relative to the repository root.
        commit_url: the commit on the Hub; `None` for a dry run.
        folder: the dry run's folder; `None` for a push.
    """

    repo_id: str
    files: list[str] = field(default_factory=list)
    commit_url: Optional[str] = None
    folder: Optional[Path] = None


def push_to_hub(output_dir: PathLike, repo_id: str, private: bool = False, revision: Optional[str] = None,
                commit_message: Optional[str] = None, dry_run: Optional[PathLike] = None,
                license: str = LICENSE, api: Optional[HfApi] = None) -> PushResult:
    """Uploads a training output directory to the Hub as a model repository.

    Args:
        output_dir: a folder written by `seeyou train`.
        repo_id: `user/name` or `org/name`; the repository is created when missing.
        private: create the repository private.
        revision: branch to commit to (created when missing); default the main branch.
        commit_message: default "Upload <model name> with seeyou-ml".
        dry_run: write the upload into this (new or empty) folder instead and contact nobody.
        license: the license in the card's metadata.
        api: the `HfApi` to use; default one that reads the token from `HF_TOKEN` or the login store.

    Returns:
        [`PushResult`].
    """
    if not repo_id or repo_id.count("/") > 1 or repo_id.strip() != repo_id:
        raise ValueError(f"--repo-id {repo_id!r} is not a repository id; give `user/name` or `org/name`.")
    if dry_run is not None:
        return PushResult(repo_id, stage_upload(output_dir, dry_run, repo_id, license), folder=Path(dry_run))
    api = api if api is not None else HfApi()
    with tempfile.TemporaryDirectory(prefix="seeyou-push-") as staging:
        files = stage_upload(output_dir, staging, repo_id, license)
        repo_id = str(api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=staging,
            repo_type="model",
            revision=revision,
            commit_message=commit_message or f"Upload {repo_id.split('/')[-1]} with seeyou-ml",
        )
    return PushResult(repo_id, files, commit_url=str(getattr(commit, "commit_url", commit)))


__all__ = [
    "CARD_NAME",
    "MODEL_CARDS_DIR",
    "PushResult",
    "adapter_languages",
    "card_data",
    "eval_results",
    "is_pickle",
    "push_to_hub",
    "render_model_card",
    "stage_upload",
    "upload_files",
    "write_model_card",
]
