"""Tests of the SentencePiece tokenizers: XLM-R special ids, the shipped scenes tokenizer, training, round trips."""

from __future__ import annotations

import unicodedata

import pytest
from transformers import AutoTokenizer, XLMRobertaTokenizer

from seeyou_ml.data.scenes import LANGUAGES, generate_scenes
from seeyou_ml.data.tokenizer import WORD_DELIMITER, scenes_tokenizer, train_sentencepiece_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return scenes_tokenizer()


@pytest.fixture(scope="module")
def texts():
    """Captions and phrases of test images (held-out combinations included) in every language."""
    out = []
    for drawn in generate_scenes("test", 100):
        out += list(drawn.captions.values()) + [lang.phrase(drawn.scene.phrase) for lang in LANGUAGES.values()]
    return out


def test_special_tokens_follow_xlm_roberta(tokenizer):
    assert isinstance(tokenizer, XLMRobertaTokenizer) and tokenizer.is_fast
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2, 3)
    assert tokenizer.mask_token_id == len(tokenizer) - 1
    assert 500 < len(tokenizer) <= 8001
    ids = tokenizer("a red circle")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2


def test_scenes_text_has_no_unknown_tokens_and_decodes_back(tokenizer, texts):
    encoded = tokenizer(texts)["input_ids"]
    assert sum(ids.count(tokenizer.unk_token_id) for ids in encoded) == 0
    for text, ids in zip(texts, encoded):
        # The tokenizer normalises with NFKC (full-width Chinese commas become ASCII ones).
        assert tokenizer.decode(ids, skip_special_tokens=True) == unicodedata.normalize("NFKC", text)


def test_words_are_single_pieces_in_every_script(tokenizer):
    assert tokenizer.tokenize("a purple square") == ["▁a", "▁purple", "▁square"]
    assert tokenizer.tokenize("большой синий квадрат") == ["▁большой", "▁синий", "▁квадрат"]
    assert tokenizer.tokenize("一个紫色的大正方形")[-5:] == ["一个", "紫色", "的", "大", "正方形"]
    assert "青い" in tokenizer.tokenize("青い正方形の左にある赤い円")


def test_unseen_text_falls_back_to_pieces_not_unknowns(tokenizer):
    ids = tokenizer("a purple squares left")["input_ids"]
    assert tokenizer.unk_token_id not in ids


def test_save_and_load_round_trip(tokenizer, texts, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    for loaded in (XLMRobertaTokenizer.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert len(loaded) == len(tokenizer) and loaded.mask_token_id == tokenizer.mask_token_id
        assert loaded(texts[:50])["input_ids"] == tokenizer(texts[:50])["input_ids"]
    batch = tokenizer(texts[:4], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 4 and (batch["input_ids"][batch["attention_mask"] == 0] == 1).all()


def test_training_is_deterministic_and_keeps_words_whole(tmp_path):
    sentences = [f"the {c} {s} is {w}" for c in ("red", "green", "purple") for s in ("circle", "square") for w in ("left", "right")] * 20
    sentences += [WORD_DELIMITER.join(["一个", "紫色", "的", "圆形"])] * 10
    first = train_sentencepiece_tokenizer(sentences, vocab_size=100, model_file=tmp_path / "a.model")
    second = train_sentencepiece_tokenizer(sentences, vocab_size=100, model_file=tmp_path / "b.model")
    assert first.get_vocab() == second.get_vocab()
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert first.tokenize("the purple square") == ["▁the", "▁purple", "▁square"]
    assert first.tokenize("一个紫色的圆形") == ["▁一个", "紫色", "的", "圆形"]
    assert WORD_DELIMITER not in "".join(first.get_vocab())


def test_training_rejects_empty_text():
    with pytest.raises(ValueError, match="no non-empty sentence"):
        train_sentencepiece_tokenizer(["", "  "])
