"""The embeddings of an evaluation corpus, saved as safetensors and reused while model, processor and data match.

A cache entry is a folder `<cache_dir>/<fingerprint>/` holding `embeddings.safetensors` (`image_embeds` (N, D),
`text_embeds` (M, D), `text_to_image` (M,)) and `meta.json` (image ids, caption languages, the fingerprint). The
fingerprint hashes the model's config and weights, the processor's settings and the corpus, so any change to one of
them gives a new entry instead of stale embeddings.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

EMBEDDINGS_NAME = "embeddings.safetensors"
META_NAME = "meta.json"


@dataclass
class CorpusEmbeddings:
    """Embeddings of a corpus: every distinct image once, every caption once.

    Args:
        image_embeds: (N, D) float32 image embeddings, one per distinct `image_id`, in order of first appearance.
        text_embeds: (M, D) float32 caption embeddings, in dataset row order.
        text_to_image: (M,) index into `image_embeds` of each caption's image.
        image_ids: the N image ids.
        langs: the M caption languages.
    """

    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    text_to_image: torch.Tensor
    image_ids: list[str]
    langs: list[str]

    def __post_init__(self):
        if self.text_embeds.shape[0] != len(self.langs) or self.text_to_image.shape[0] != len(self.langs):
            raise ValueError(
                f"{self.text_embeds.shape[0]} caption embeddings, {self.text_to_image.shape[0]} image indices and "
                f"{len(self.langs)} languages: give one of each per caption."
            )
        if self.image_embeds.shape[0] != len(self.image_ids):
            raise ValueError(f"{self.image_embeds.shape[0]} image embeddings for {len(self.image_ids)} image ids.")


def _model_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _processor_digest(processor: Any) -> str:
    digest = hashlib.sha256()
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None and hasattr(image_processor, "to_json_string"):
        digest.update(image_processor.to_json_string().encode())
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        vocab = sorted(tokenizer.get_vocab().items()) if hasattr(tokenizer, "get_vocab") else []
        digest.update(json.dumps([tokenizer.__class__.__name__, getattr(tokenizer, "model_max_length", None),
                                  vocab]).encode())
    return digest.hexdigest()


def _dataset_digest(dataset: Any, image_ids: list[str], captions: list[str], langs: list[str]) -> str:
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint is not None:
        return str(fingerprint)
    # Without a datasets fingerprint the captions stand for the corpus (images are keyed by their ids).
    return hashlib.sha256(json.dumps([image_ids, captions, langs]).encode()).hexdigest()


def corpus_fingerprint(model: torch.nn.Module, processor: Any, dataset: Any, image_ids: list[str],
                       captions: list[str], langs: list[str]) -> str:
    """A hex digest that changes whenever the model's weights or config, the processor or the corpus change.

    Args:
        model: the embedding model.
        processor: its processor.
        dataset: the corpus; a `datasets.Dataset` contributes its own fingerprint.
        image_ids, captions, langs: the corpus's per-row columns, used when `dataset` has no fingerprint.
    """
    parts = [_model_digest(model), _processor_digest(processor), _dataset_digest(dataset, image_ids, captions, langs)]
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:24]


def save_embeddings(embeddings: CorpusEmbeddings, directory: str | os.PathLike, fingerprint: str = "") -> Path:
    """Writes `embeddings` to `directory` (created if missing) as safetensors plus a JSON of ids and languages.

    Returns:
        The folder.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "image_embeds": embeddings.image_embeds.contiguous(),
        "text_embeds": embeddings.text_embeds.contiguous(),
        "text_to_image": embeddings.text_to_image.contiguous(),
    }
    save_file(tensors, str(folder / EMBEDDINGS_NAME))
    meta = {"fingerprint": fingerprint, "image_ids": embeddings.image_ids, "langs": embeddings.langs}
    (folder / META_NAME).write_text(json.dumps(meta), encoding="utf-8")
    return folder


def load_embeddings(directory: str | os.PathLike) -> CorpusEmbeddings:
    """Reads embeddings written by [`save_embeddings`].

    Raises:
        FileNotFoundError: when `directory` lacks `embeddings.safetensors` or `meta.json`.
    """
    folder = Path(directory)
    missing = [name for name in (EMBEDDINGS_NAME, META_NAME) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} has no {' or '.join(missing)}; write it with save_embeddings first.")
    tensors = load_file(str(folder / EMBEDDINGS_NAME))
    meta = json.loads((folder / META_NAME).read_text(encoding="utf-8"))
    return CorpusEmbeddings(
        image_embeds=tensors["image_embeds"],
        text_embeds=tensors["text_embeds"],
        text_to_image=tensors["text_to_image"],
        image_ids=meta["image_ids"],
        langs=meta["langs"],
    )


__all__ = ["CorpusEmbeddings", "corpus_fingerprint", "load_embeddings", "save_embeddings"]
