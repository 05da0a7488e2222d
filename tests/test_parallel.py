import json

import pytest

from seeyou_ml.data.parallel import VALIDATION_PAIRS, load_parallel_text, parallel_language


def write(path, pairs, lang="ja"):
    path.write_text("".join(json.dumps({"en": e, lang: t}) + "\n" for e, t in pairs), encoding="utf-8")
    return path


def test_splits_hold_out_the_last_pairs(tmp_path):
    pairs = [(f"sentence {i}", f"文 {i}") for i in range(10)]
    path = write(tmp_path / "en-ja.jsonl", pairs)
    train = load_parallel_text(path, "train", validation_pairs=3)
    validation = load_parallel_text(path, "validation", validation_pairs=3)
    assert train.lang == validation.lang == "ja"
    assert train.english == [e for e, _ in pairs[:7]] and validation.translation == [t for _, t in pairs[7:]]
    assert len(load_parallel_text(path, "all")) == 10
    assert VALIDATION_PAIRS == 200


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="not named en-<lang>.jsonl"):
        parallel_language(tmp_path / "english-japanese.jsonl")
    path = write(tmp_path / "en-zh.jsonl", [("a", "b")] * 3, lang="ja")
    with pytest.raises(ValueError, match=r"en-zh.jsonl, line 1: expected"):
        load_parallel_text(path, "all")
    path = write(tmp_path / "en-ru.jsonl", [("a", "б"), ("", "в")], lang="ru")
    with pytest.raises(ValueError, match="line 2: a side of the pair is empty"):
        load_parallel_text(path, "all")
    path = write(tmp_path / "en-tr.jsonl", [("a", "b")] * 3, lang="tr")
    with pytest.raises(ValueError, match="holds 3 pairs, no more than the 200 held out"):
        load_parallel_text(path)
    with pytest.raises(ValueError, match="split='test' is unknown"):
        load_parallel_text(path, "test")
