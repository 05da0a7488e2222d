"""Per-language LoRA adapters on the text tower, in peft's own format, routed row by row within a batch.

One base model serves every language; a language it saw too little of gets a LoRA adapter of a few hundred kB on the
text tower (its word embeddings, attention and feed-forward matrices), trained without touching the base weights
(see `seeyou_ml.training.adapters`). Adapters are named by ISO 639-1 code and live in the text tower itself, injected
with peft's functional API, so the tower stays the transformers module it was and the rest of the model is unchanged.

- `add_language_adapter`, `delete_language_adapter`, `language_adapters`, `set_language`;
- routing: `SeeYouModel.get_text_features(..., lang=[...])` sends every row through its language's adapter in one
  batch (peft's mixed-adapter batches); a language without an adapter gets the base weights and one warning;
- `save_language_adapters(model, dir)` writes `dir/<lang>/adapter_config.json` + `adapter_model.safetensors`, the
  files `PeftModel.save_pretrained` writes, so each folder loads with plain peft:
  `PeftModel.from_pretrained(text_tower, "dir/es")`; `load_language_adapters` reads them back;
- `merge_language_adapter` folds one adapter into the base weights for export (the adapters are then gone).

`SeeYouModel.save_pretrained` writes the base weights as usual and the adapters under `adapters/`;
`from_pretrained` restores them (the config lists them in `adapter_languages`).

References: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (2021); Pfeiffer et al., "MAD-X: An
Adapter-Based Framework for Multi-Task Cross-Lingual Transfer" (2020), for one adapter per language.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from .languages import normalize_lang

logger = logging.getLogger(__name__)

ADAPTERS_FOLDER = "adapters"
"""Folder beside a saved model's weights that holds one peft adapter folder per language."""

BASE_ADAPTER = "__base__"
"""peft's name for "no adapter" in mixed-adapter batches."""

DEFAULT_TARGET_MODULES = ("word_embeddings", "query", "key", "value", "dense")
"""Text-tower modules a language adapter adapts by default: the word embeddings (new scripts need new token vectors,
which attention alone cannot supply), every attention projection and the feed-forward matrices (`dense` names both
in BERT-style encoders such as XLM-R)."""

_PEFT_PREFIX = "base_model.model."  # what PeftModel puts before the module path in adapter_model.safetensors
_CONFIG_NAME = "adapter_config.json"
_WEIGHTS_NAME = "adapter_model.safetensors"


def default_lora_config(
    r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.0,
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
):
    """The `peft.LoraConfig` of a language adapter when none is given.

    Args:
        r: rank of the update matrices.
        lora_alpha: the update is scaled by `lora_alpha / r`.
        lora_dropout: dropout on the adapter's input.
        target_modules: names of the text-tower modules to adapt.
    """
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=list(target_modules))


def _language_code(lang: str) -> str:
    code = normalize_lang(lang)
    if code is None or code != lang:
        raise ValueError(f"language {lang!r} is not an ISO 639-1 code as the corpora write it (e.g. 'es', 'zh'); "
                         f"name adapters by those codes{f', here {code!r}' if code else ''}.")
    return code


def language_adapters(model: nn.Module) -> list[str]:
    """The languages the model's text tower has adapters for, sorted."""
    return sorted(getattr(model.text_model, "peft_config", {}) or {})


def _sync_config(model: nn.Module) -> None:
    """Keeps `config.adapter_languages` equal to the adapters present (None when there are none)."""
    model.config.adapter_languages = language_adapters(model) or None


def add_language_adapter(model: nn.Module, lang: str, lora_config=None) -> None:
    """Adds a new, untrained LoRA adapter for `lang` to the model's text tower.

    peft leaves the adapter's B matrices at zero, so the new adapter changes nothing until it is trained. The text
    tower's own weights are frozen by the injection (`requires_grad=False`), as adapter training wants.

    Args:
        model: a `SeeYouModel` (anything with a transformers `text_model` and a `config`).
        lang: ISO 639-1 code of the language, the name of the adapter.
        lora_config: a `peft.LoraConfig`; defaults to [`default_lora_config`]. It is copied, so one config can serve
            several languages.

    Example:

    ```python
    >>> from seeyou_ml import SeeYouModel
    >>> from seeyou_ml.presets import tiny_config
    >>> model = SeeYouModel(tiny_config(vocab_size=100))
    >>> add_language_adapter(model, "es"); add_language_adapter(model, "ja")
    >>> language_adapters(model), model.config.adapter_languages
    (['es', 'ja'], ['es', 'ja'])
    ```
    """
    from peft import LoraConfig
    from peft.functional import inject_adapter_in_model

    code = _language_code(lang)
    if code in language_adapters(model):
        raise ValueError(f"the model already has an adapter for {code!r}; delete it first "
                         "(delete_language_adapter) or load it under another name.")
    config = copy.deepcopy(lora_config) if lora_config is not None else default_lora_config()
    if not isinstance(config, LoraConfig):
        raise TypeError(f"lora_config is a {type(config).__name__}; language adapters are LoRA, pass a "
                        "peft.LoraConfig.")
    with warnings.catch_warnings():
        # peft warns that a second adapter joins the first; several adapters are the point here.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        inject_adapter_in_model(config, model.text_model, adapter_name=code)
    _sync_config(model)


def _lora_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(name, layer) for name, layer in module.named_modules() if isinstance(layer, LoraLayer)]


def _unload(model: nn.Module, merge: Optional[str] = None) -> None:
    """Replaces every LoRA layer of the text tower by its base layer, first merging `merge`'s update into it."""
    tower = model.text_model
    for name, layer in _lora_layers(tower):
        if merge is not None:
            layer.merge(adapter_names=[merge])
        parent_name, _, child = name.rpartition(".")
        setattr(tower.get_submodule(parent_name) if parent_name else tower, child, layer.get_base_layer())
    for parameter in tower.parameters():
        parameter.requires_grad_(True)  # peft froze the base weights for adapter training; a plain tower trains
    if hasattr(tower, "peft_config"):
        del tower.peft_config
    model.__dict__.pop("_default_language", None)
    _sync_config(model)


def delete_language_adapter(model: nn.Module, lang: str) -> None:
    """Removes `lang`'s adapter; when it was the last one, the text tower is left exactly as it was without adapters."""
    from peft.functional import delete_adapter
    from peft.tuners.lora import LoraLayer

    present = language_adapters(model)
    if lang not in present:
        raise ValueError(f"the model has no adapter for {lang!r}; it has {present or 'none'}.")
    if present == [lang]:
        _unload(model)
        return
    delete_adapter(model.text_model, adapter_name=lang, prefix="lora_", layer_cls=LoraLayer)
    del model.text_model.peft_config[lang]
    if getattr(model, "_default_language", None) == lang:
        model._default_language = None
    _sync_config(model)


def set_language(model: nn.Module, lang: Optional[str]) -> None:
    """Sets the adapter for captions that come without a language (`lang=None`); None (the default) is the base.

    It is also peft's active adapter: the one `requires_grad` is on for when training a single language.
    """
    from peft.functional import set_adapter

    if lang is not None and lang not in language_adapters(model):
        raise ValueError(f"the model has no adapter for {lang!r}; it has {language_adapters(model) or 'none'} "
                         "(add one with add_language_adapter or load_language_adapters).")
    model._default_language = lang
    if lang is not None:
        set_adapter(model.text_model, lang)


def train_language_adapters(model: nn.Module, languages: Sequence[str]) -> list[nn.Parameter]:
    """Freezes the whole model but the adapters of `languages`, and returns their parameters.

    Args:
        model: a model with adapters for every one of `languages`.
        languages: the adapters to train (rows route to them by their `lang` in training too).
    """
    from peft.functional import set_adapter

    missing = sorted(set(languages) - set(language_adapters(model)))
    if missing:
        raise ValueError(f"the model has no adapter for {missing}; add them first with add_language_adapter.")
    model.requires_grad_(False)
    set_adapter(model.text_model, list(languages))  # requires_grad on exactly these adapters' weights
    return [p for p in model.parameters() if p.requires_grad]


def adapter_names_for_rows(model: nn.Module, lang: Union[str, Sequence[Optional[str]], None], rows: int) -> list[str]:
    """The adapter each of `rows` captions goes through: its language's, else the base (`BASE_ADAPTER`).

    `lang=None` sends every row to the language set with [`set_language`] (the base unless set); a row whose language
    is None or `BASE_ADAPTER` goes to the base. Languages without an adapter are named in one warning, the first time
    they are seen.
    """
    present = set(language_adapters(model))
    if lang is None:
        lang = getattr(model, "_default_language", None)
    if lang is None or isinstance(lang, str):
        lang = [lang] * rows
    if len(lang) != rows:
        raise ValueError(f"`lang` has {len(lang)} entries for a batch of {rows} captions; give one per caption.")
    missing = {code for code in lang if code not in (None, BASE_ADAPTER) and code not in present}
    warned = model.__dict__.setdefault("_languages_without_adapter", set())
    if missing - warned:
        new = sorted(missing - warned)
        logger.warning(f"No language adapter for {', '.join(new)}; those captions use the base text tower (adapters: "
                       f"{', '.join(sorted(present))}).")
        warned.update(new)
    return [code if code in present else BASE_ADAPTER for code in lang]


def _route_hook(module: nn.Module, args: tuple, kwargs: dict, adapter_names: list[str]) -> tuple[tuple, dict]:
    return args, {**kwargs, "adapter_names": adapter_names}


@contextlib.contextmanager
def language_routing(
    model: nn.Module, lang: Union[str, Sequence[Optional[str]], None], rows: int
) -> Iterator[Optional[list[str]]]:
    """Within the block, every LoRA layer of the text tower sends row i through the adapter of `lang[i]`.

    peft's mixed-adapter batches: each layer computes the base output for the whole batch once and adds each
    adapter's low-rank update to its own rows. Unlike `PeftModel`'s `adapter_names=` (inference only), this routing
    also holds in training mode, where gradients reach each adapter from its own rows only, so a batch mixing
    languages trains all their adapters in one step. Without adapters the block does nothing.

    Yields:
        The per-row adapter names, or None when the model has no adapters.
    """
    if not language_adapters(model):
        yield None
        return
    names = adapter_names_for_rows(model, lang, rows)
    hook = functools.partial(_route_hook, adapter_names=names)
    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for _, layer in _lora_layers(model.text_model)]
    try:
        yield names
    finally:
        for handle in handles:
            handle.remove()


def save_language_adapters(
    model: nn.Module, directory: Union[str, Path], languages: Optional[Sequence[str]] = None
) -> list[Path]:
    """Writes each adapter to `directory/<lang>/` as `PeftModel.save_pretrained` would.

    Args:
        model: a model with language adapters.
        directory: parent folder; one subfolder per language is created.
        languages: which adapters (default: all).

    Returns:
        The folders written, each loadable with `PeftModel.from_pretrained(text_tower, folder)`.
    """
    from peft.functional import get_peft_model_state_dict
    from safetensors.torch import save_file

    present = language_adapters(model)
    languages = present if languages is None else list(languages)
    missing = sorted(set(languages) - set(present))
    if missing:
        raise ValueError(f"the model has no adapter for {missing}; it has {present or 'none'}.")
    folders = []
    for lang in languages:
        folder = Path(directory) / lang
        folder.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(model.text_model.peft_config[lang])
        config.inference_mode = True  # as PeftModel.save_pretrained records a saved adapter
        config.save_pretrained(str(folder))
        state = get_peft_model_state_dict(model.text_model, adapter_name=lang)
        save_file({_PEFT_PREFIX + key: value.detach().contiguous() for key, value in state.items()},
                  str(folder / _WEIGHTS_NAME), metadata={"format": "pt"})
        folders.append(folder)
    return folders


def saved_adapter_languages(directory: Union[str, Path]) -> list[str]:
    """Languages with an adapter folder (`<lang>/adapter_config.json`) in `directory`, sorted."""
    return sorted(p.parent.name for p in Path(directory).glob(f"*/{_CONFIG_NAME}"))


def load_language_adapters(
    model: nn.Module, directory: Union[str, Path], languages: Optional[Sequence[str]] = None
) -> list[str]:
    """Adds the adapters saved in `directory/<lang>/` (by [`save_language_adapters`] or by peft) to the model.

    Args:
        model: the base model the adapters were trained on.
        directory: parent folder of the per-language adapter folders.
        languages: which to load (default: every `<lang>/adapter_config.json` in `directory`).

    Returns:
        The languages loaded.
    """
    from peft import PeftConfig
    from peft.functional import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    available = saved_adapter_languages(directory)
    languages = available if languages is None else list(languages)
    missing = sorted(set(languages) - set(available))
    if missing:
        raise FileNotFoundError(f"no adapter folder for {missing} in {directory} (it holds {available or 'none'}); "
                                f"each needs <lang>/{_CONFIG_NAME} and <lang>/{_WEIGHTS_NAME}.")
    for lang in languages:
        folder = Path(directory) / lang
        config = PeftConfig.from_pretrained(str(folder))
        config.inference_mode = False
        add_language_adapter(model, lang, config)
        weights = load_peft_weights(str(folder), device="cpu")
        weights = {key.removeprefix(_PEFT_PREFIX): value for key, value in weights.items()}
        result = set_peft_model_state_dict(model.text_model, weights, adapter_name=lang)
        unexpected = [key for key in result.unexpected_keys if "lora_" in key]
        if unexpected:
            delete_language_adapter(model, lang)
            raise ValueError(f"{folder}/{_WEIGHTS_NAME} holds weights this text tower has no place for, e.g. "
                             f"{unexpected[:3]}; it was trained on another base model.")
    return languages


def merge_language_adapter(model: nn.Module, lang: str) -> nn.Module:
    """Folds `lang`'s adapter into the text tower's weights and removes all adapters, for export.

    The merged model embeds every caption as the adapter model embeds `lang`'s, with no peft layer left; save it
    with `save_pretrained` as a plain model.

    Returns:
        `model`, changed in place.
    """
    if lang not in language_adapters(model):
        raise ValueError(f"the model has no adapter for {lang!r}; it has {language_adapters(model) or 'none'}.")
    with torch.no_grad():
        _unload(model, merge=lang)
    return model


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict without its adapters, under the names it has without them."""
    return {
        key.replace(".base_layer.", "."): value
        for key, value in model.state_dict().items()
        if ".lora_" not in key  # peft names every adapter weight lora_A, lora_B, lora_embedding_A, ...
    }


__all__ = [
    "ADAPTERS_FOLDER",
    "BASE_ADAPTER",
    "DEFAULT_TARGET_MODULES",
    "adapter_names_for_rows",
    "add_language_adapter",
    "base_state_dict",
    "default_lora_config",
    "delete_language_adapter",
    "language_adapters",
    "language_routing",
    "load_language_adapters",
    "merge_language_adapter",
    "save_language_adapters",
    "saved_adapter_languages",
    "set_language",
    "train_language_adapters",
]
