"""Shared fixtures: a tiny offline tokenizer and tiny models of the real architectures."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = (
    "a red blue green yellow circle square star triangle left right of above below the on and photo "
    "ein eine roter blaue Kreis un une cercle rouge étoile"
).split()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """An XLM-R tokenizer (unigram, XLM-R's special tokens) over a few words and single letters."""
    from transformers import XLMRobertaTokenizer

    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("▁" + w, -1.0) for w in WORDS]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyzéöü"] + [("▁", -3.0), ("<mask>", 0.0)]
    tokenizer = XLMRobertaTokenizer(vocab=vocab)
    tokenizer.model_max_length = 32
    return tokenizer


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    """A tiny ResNet + XLM-R SeeYouModel with fixed random weights, in eval mode."""
    from seeyou_ml import SeeYouModel
    from seeyou_ml.presets import tiny_config

    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(tiny_tokenizer), projection_dim=16, vision_widths=(8, 16), vision_depths=(1, 1),
                         text_hidden_size=32, max_text_length=32)
    return SeeYouModel(config).eval()


@pytest.fixture()
def saved_model(tiny_model, tiny_tokenizer, tmp_path):
    """A tiny model and its processor saved with save_pretrained."""
    from seeyou_ml.presets import tiny_processor

    folder = tmp_path / "model"
    tiny_model.save_pretrained(folder)
    tiny_processor(tiny_tokenizer, image_size=32).save_pretrained(folder)
    return folder


def text_batch(tokenizer, texts):
    """Tokenised `texts` as tensors."""
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]
