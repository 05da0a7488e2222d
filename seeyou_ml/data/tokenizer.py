"""SentencePiece unigram tokenizers as transformers `XLMRobertaTokenizer`s, and the one shipped for the scenes corpus.

The tokenizer keeps XLM-R's special-token layout (`<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, `<mask>` last), so a
tiny XLM-R text tower built from `len(tokenizer)` works unchanged, and it is a tokenizers-backed fast tokenizer
that `save_pretrained`/`from_pretrained` round-trip. For real runs the tokenizer comes with the text tower's
checkpoint instead.

`python -m seeyou_ml.data.tokenizer --scenes` retrains the shipped scenes tokenizer (deterministic: one thread,
fixed input order) and writes it next to the corpus code.

Reference: Kudo, "Subword Regularization" (2018) for the unigram model; Conneau et al., "Unsupervised
Cross-lingual Representation Learning at Scale" (2019) for XLM-R's vocabulary layout.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from transformers import XLMRobertaTokenizer


SCENES_TOKENIZER_DIR = Path(__file__).parent / "scenes" / "tokenizer"
"""Where the scenes tokenizer ships (package data: tokenizer.json, tokenizer_config.json, scenes_spm.model)."""

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")

WORD_DELIMITER = "\u241f"
"""Marks word boundaries in unspaced training text (Chinese, Japanese); pieces never cross it, and it is removed.
A symbol that NFKC leaves alone (a tab would become a space before SentencePiece looks for it)."""


def _spm_to_tokenizer(model_proto: bytes) -> XLMRobertaTokenizer:
    """Wraps a SentencePiece model whose first four ids are XLM-R's specials; `<mask>` is appended last."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    pieces = [(p.piece, p.score if i >= len(SPECIAL_TOKENS) else 0.0) for i, p in enumerate(proto.pieces)]
    if tuple(p for p, _ in pieces[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise ValueError(
            f"the SentencePiece model starts with {[p for p, _ in pieces[:4]]}; it must start with {list(SPECIAL_TOKENS)} "
            "(train it with bos_id=0, pad_id=1, eos_id=2, unk_id=3)"
        )
    charsmap = proto.normalizer_spec.precompiled_charsmap or None
    return XLMRobertaTokenizer(vocab=pieces + [("<mask>", 0.0)], _spm_precompiled_charsmap=charsmap)


def _seed_pieces(sentences: list[str], max_length: int) -> Counter:
    """Candidate pieces for the unigram trainer: every substring of every word, weighted by corpus frequency.

    SentencePiece's own seed search keeps substrings repeated across distinct word types, so on a small,
    closed vocabulary it misses whole words ("▁purple" never becomes a piece). Words are what SentencePiece sees
    after splitting at whitespace (with "▁" in front) and at `WORD_DELIMITER` (without it).
    """
    units: Counter = Counter()
    for sentence in sentences:
        for chunk in sentence.split():
            first, *rest = chunk.split(WORD_DELIMITER)
            units["▁" + first] += 1
            units.update(r for r in rest if r)
    seeds: Counter = Counter()
    for unit, count in units.items():
        for i in range(len(unit)):
            for j in range(i + 2, min(len(unit), i + max_length) + 1):
                seeds[unit[i:j]] += count
    seeds.pop("▁", None)
    return seeds


def train_sentencepiece_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4000,
    character_coverage: float = 1.0,
    max_sentencepiece_length: int = 16,
    model_file: str | Path | None = None,
) -> XLMRobertaTokenizer:
    """Trains a SentencePiece unigram model on `texts` and returns it as an XLM-R fast tokenizer.

    Args:
        texts: Training sentences, all languages mixed. Their order matters for determinism, not for quality.
        vocab_size: Target number of SentencePiece pieces (the tokenizer adds `<mask>`). On a small corpus the
            trainer stops earlier rather than failing, so `len(tokenizer)` can be below `vocab_size + 1`.
        character_coverage: Share of characters the model must cover; 1.0 keeps every CJK and Arabic character.
        max_sentencepiece_length: Longest piece in characters.
        model_file: Where to also write the raw SentencePiece model, if anywhere.

    Returns:
        An `XLMRobertaTokenizer` with `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3 and `<mask>` as the last id.
    """
    sentences = [t for t in texts if t.strip()]
    if not sentences:
        raise ValueError("texts holds no non-empty sentence; pass the captions to train on")
    seeds = _seed_pieces(sentences, max_sentencepiece_length)
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as folder:
        seed_file = Path(folder) / "seeds.tsv"
        # Sorted by count then text, so the file (and the model) does not depend on dict order.
        seed_file.write_text("".join(f"{p}\t{n}\n" for p, n in sorted(seeds.items(), key=lambda x: (-x[1], x[0]))), encoding="utf-8")
        _train(sentences, buffer, seed_file, vocab_size, character_coverage, max_sentencepiece_length)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(buffer.getvalue())
    proto.trainer_spec.seed_sentencepieces_file = ""  # a temporary path; keeps the saved model reproducible
    if model_file is not None:
        Path(model_file).write_bytes(proto.SerializeToString())
    return _spm_to_tokenizer(proto.SerializeToString())


def _train(
    sentences: list[str],
    buffer: io.BytesIO,
    seed_file: Path,
    vocab_size: int,
    character_coverage: float,
    max_sentencepiece_length: int,
) -> None:
    """Runs the SentencePiece unigram trainer with XLM-R's special ids, writing the model into `buffer`."""
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=buffer,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=character_coverage,
        max_sentencepiece_length=max_sentencepiece_length,
        bos_id=0,
        pad_id=1,
        eos_id=2,
        unk_id=3,
        num_threads=1,  # several threads make the piece scores depend on scheduling
        input_sentence_size=0,
        shuffle_input_sentence=False,
        pretokenization_delimiter=WORD_DELIMITER,
        seed_sentencepieces_file=str(seed_file),
        minloglevel=2,
    )


def scenes_tokenizer() -> XLMRobertaTokenizer:
    """The tokenizer trained on the scenes corpus text of all ten languages, as shipped with the package.

    Example:

    ```python
    >>> tok = scenes_tokenizer()
    >>> tok("Von links nach rechts: ein roter Kreis.")["input_ids"][0], tok.mask_token_id == len(tok) - 1
    (0, True)
    ```
    """
    if not (SCENES_TOKENIZER_DIR / "tokenizer.json").exists():
        raise FileNotFoundError(
            f"no scenes tokenizer in {SCENES_TOKENIZER_DIR}; build it with `python -m seeyou_ml.data.tokenizer --scenes`"
        )
    return XLMRobertaTokenizer.from_pretrained(str(SCENES_TOKENIZER_DIR))


def scenes_training_texts(num_images: int | None = None, seed: int = 0) -> list[str]:
    """Text the scenes tokenizer learns from: train captions and phrases, zero-shot prompts and synonyms.

    Chinese and Japanese sentences are cut into words with `WORD_DELIMITER`: on templated text a unigram model
    would otherwise learn whole recurring clauses ("一个紫色的大正方形和一个") as single pieces, hiding the colour
    and shape words a text tower has to learn.
    """
    from .scenes import LANGUAGES, class_prompts, generate_scenes, synonym_table

    by_language: dict[str, list[str]] = {code: [] for code in LANGUAGES}
    for drawn in generate_scenes("train", num_images, seed):
        for code, language in LANGUAGES.items():
            by_language[code] += [drawn.captions[code], language.phrase(drawn.scene.phrase)]
    for code in LANGUAGES:
        by_language[code] += [p for prompts in class_prompts(code).values() for p in prompts]
        by_language[code] += [w for words in synonym_table(code).values() for w in words]
    texts = []
    for code, sentences in by_language.items():
        language = LANGUAGES[code]
        texts += [WORD_DELIMITER.join(language.words(s)) if code in ("zh", "ja") else s for s in sentences]
    return texts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m seeyou_ml.data.tokenizer", description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", action="store_true", help="retrain the shipped scenes tokenizer")
    parser.add_argument("--vocab-size", type=int, default=4000, help="target SentencePiece vocabulary size")
    parser.add_argument("--output-dir", default=str(SCENES_TOKENIZER_DIR), help="where to save it")
    args = parser.parse_args(argv)
    if not args.scenes:
        parser.error("pass --scenes to retrain the scenes tokenizer")
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    tokenizer = train_sentencepiece_tokenizer(
        scenes_training_texts(), vocab_size=args.vocab_size, model_file=output / "scenes_spm.model"
    )
    tokenizer.model_max_length = 128  # the longest scenes caption is under 60 tokens
    tokenizer.save_pretrained(str(output))
    print(f"saved a tokenizer of {len(tokenizer)} tokens to {output}")


if __name__ == "__main__":
    main()
