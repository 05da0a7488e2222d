"""Tests of `load_corpus`: every format, detection, language filter, bad input, and the flickr8k-multi counts."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import datasets
import pytest
from PIL import Image

from fixtures_corpus import (
    captions_jsonl,
    image_bytes,
    imagefolder,
    imagefolder_text_column,
    karpathy,
    multi30k,
    multi30k_coco,
    saved_dataset,
    webdataset,
    webdataset_txt_with_metadata,
    write_image,
    write_lines,
    write_shard,
)
from seeyou_ml.data import CORPUS_FORMATS, ISO_639_1, CorpusReport, corpus_features, detect_format, load_corpus


FLICKR8K_MULTI = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "flickr8k-multi"
LOGGER = "seeyou_ml.data.corpus"
SAVED_MAPPING = {"picture": "image", "text": "caption", "language": "lang"}


def rows(dataset) -> list[tuple[str, str, str]]:
    return [(row["image_id"], row["lang"], row["caption"]) for row in dataset]


# Formats


def test_captions_jsonl_one_row_per_caption_with_images_from_relative_paths(tmp_path, monkeypatch):
    root = captions_jsonl(tmp_path / "corpus")
    monkeypatch.chdir(tmp_path)  # paths resolve against the corpus folder, not the working directory
    corpus, report = load_corpus("corpus", split="train", return_report=True)

    assert corpus.column_names == ["image", "caption", "lang", "image_id"]
    assert corpus.features == corpus_features() and isinstance(corpus.features["image"], datasets.Image)
    assert rows(corpus)[:3] == [("0", "en", "a photo 0"), ("0", "en", "another photo 0"), ("0", "de", "ein Foto 0")]
    assert corpus.num_rows == 9
    image = corpus[3]["image"]
    assert isinstance(image, Image.Image) and image.size == (24, 16)
    assert image.convert("RGB").getpixel((0, 0))[1] > 150  # image 1 is the green one
    assert report.captions == 9 and report.images == 3
    assert report.captions_per_language == {"en": 6, "de": 3}
    assert report.skipped == {} and report.format == "captions-jsonl"
    assert Path(corpus.with_format("arrow")[0:1]["image"][0]["path"].as_py()) == root / "images" / "0.jpg"


def test_captions_jsonl_val_split_and_single_file(tmp_path):
    root = captions_jsonl(tmp_path)
    assert rows(load_corpus(root, split="val")) == [("3", "en", "a val photo"), ("3", "nl", "een foto")]
    assert load_corpus(root / "val.jsonl").num_rows == 2


def test_karpathy_train_includes_restval_and_joins_filepath(tmp_path):
    root = karpathy(tmp_path)
    corpus = load_corpus(root / "dataset_coco.json", split="train", image_root=root / "coco")
    assert rows(corpus) == [
        ("100", "en", "sentence 0 of 0"), ("100", "en", "sentence 1 of 0"),
        ("101", "en", "sentence 0 of 1"), ("101", "en", "sentence 1 of 1"),
    ]
    assert corpus[0]["image"].size == (24, 16)
    test = load_corpus(root, split="test", image_root=root / "coco", default_lang="de")
    assert rows(test) == [("103", "de", "sentence 0 of 3"), ("103", "de", "sentence 1 of 3")]
    assert {row["image_id"] for row in load_corpus(root, split="restval", image_root=root / "coco")} == {"101"}


def test_karpathy_unknown_split_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"split 'dev' is not in the Karpathy splits .* use one of \['train'"):
        load_corpus(karpathy(tmp_path), split="dev", image_root=tmp_path / "coco")


def test_multi30k_aligns_lines_across_languages(tmp_path):
    root = multi30k(tmp_path)
    corpus, report = load_corpus(root, split="train", return_report=True)
    assert report.captions_per_language == {"de": 3, "en": 3, "fr": 3}
    assert ("1001", "en", "en caption 1") in rows(corpus) and ("1001", "fr", "fr caption 1") in rows(corpus)
    assert rows(load_corpus(root, languages=["fr"])) == [(str(1000 + i), "fr", f"fr caption {i}") for i in range(3)]


def test_multi30k_misaligned_files_are_an_error(tmp_path):
    root = multi30k(tmp_path, de_lines=2)
    with pytest.raises(ValueError, match=r"train\.de\.gz has 2 lines but .*train\.txt lists 3 images; .*line-aligned"):
        load_corpus(root)
    assert load_corpus(root, languages=["en"]).num_rows == 3  # the broken file is not read


def test_multi30k_coco_split_names_carry_an_id_after_the_file_name(tmp_path):
    root = multi30k_coco(tmp_path)
    corpus, report = load_corpus(root, split="test_2017_mscoco", return_report=True)
    assert report.skipped == {} and report.images == 3
    assert report.captions_per_language == {"de": 3, "en": 3, "fr": 3}
    assert ("COCO_val2014_000000117071", "en", "en coco caption 0") in rows(corpus)
    assert ("COCO_val2014_000000391895", "fr", "fr coco caption 2") in rows(corpus)
    assert corpus[0]["image"].size == (24, 16)


def test_imagefolder_metadata_jsonl(tmp_path):
    corpus = load_corpus(imagefolder(tmp_path / "folder"), split="train", cache_dir=str(tmp_path / "cache"))
    assert rows(corpus) == [(f"img{i}", "es", f"picture {i}") for i in range(3)]
    assert corpus[2]["image"].convert("RGB").getpixel((0, 0))[2] > 150  # img2 is the blue one


def test_imagefolder_metadata_csv_with_column_mapping(tmp_path):
    root = imagefolder(tmp_path / "folder", csv=True)
    mapping = {"text": "caption", "language": "lang"}
    corpus = load_corpus(root, column_mapping=mapping, cache_dir=str(tmp_path / "cache"))
    assert rows(corpus) == [(f"img{i}", "fr", f"picture {i}") for i in range(3)]


def test_imagefolder_text_column_of_the_datasets_docs_needs_no_mapping(tmp_path):
    root = imagefolder_text_column(tmp_path / "folder")
    corpus = load_corpus(root, split="train", default_lang="en", cache_dir=str(tmp_path / "cache"))
    assert rows(corpus) == [("0000", "en", "a golden retriever 0"), ("0001", "en", "a golden retriever 1")]
    streamed = load_corpus(root, split="train", streaming=True, cache_dir=str(tmp_path / "cache"))
    assert rows(streamed) == rows(corpus)


def test_webdataset_caption_from_txt_metadata_from_json(tmp_path):
    shards = str(webdataset_txt_with_metadata(tmp_path) / "*.tar")
    corpus, report = load_corpus(shards, default_lang="en", return_report=True)
    assert report.skipped == {}
    assert rows(corpus) == [("000000000", "en", "caption 0"), ("000000001", "de", "caption 1")]
    assert corpus[1]["image"].size == (20, 20)


def test_webdataset_json_and_txt_samples(tmp_path):
    root = webdataset(tmp_path)
    expected = [("dog", "en", "a dog"), ("dog", "ja", "犬"), ("s1", "en", "a cat")]
    corpus = load_corpus(root, split="train")
    assert rows(corpus) == expected
    assert corpus[2]["image"].size == (20, 20)
    assert rows(load_corpus(root / "train" / "000.tar", default_lang="en")) == expected
    assert rows(load_corpus(str(root / "train" / "*.tar"))) == expected


def test_name_neither_local_nor_reachable_offline_is_a_file_error(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty-cache")
    for name in ("no-such-corpus", "someone/no-such-corpus"):
        with pytest.raises(FileNotFoundError, match=rf"^{name}: no such file or directory, and not reachable on "
                                                    r"the Hub offline .*Give the path of a local corpus"):
            load_corpus(name)


def test_saved_datasets_with_column_mapping(tmp_path):
    root = saved_dataset(tmp_path / "saved")
    corpus = load_corpus(root, split="test", column_mapping=SAVED_MAPPING)
    assert [(row["lang"], row["caption"]) for row in corpus] == [("de", "row 3"), ("de", "row 4")]
    assert corpus[0]["image"].size == (20, 20)
    assert load_corpus(root, format="datasets", column_mapping=SAVED_MAPPING).num_rows == 3


def test_datasets_format_without_caption_column_names_the_mapping(tmp_path):
    with pytest.raises(ValueError, match=r"columns \['picture', 'text', 'language'\].*Pass column_mapping="):
        load_corpus(saved_dataset(tmp_path / "saved"))


def test_datasets_format_explodes_caption_lists_and_keeps_boxes(tmp_path):
    table = datasets.Dataset.from_dict({
        "image": [{"bytes": image_bytes(0), "path": None}],
        "captions": [["left one", "right one"]],
    }, features=datasets.Features({"image": datasets.Image(), "captions": datasets.List(datasets.Value("string"))}))
    table.save_to_disk(str(tmp_path / "saved"))
    assert [row["caption"] for row in load_corpus(tmp_path / "saved")] == ["left one", "right one"]


def test_datasets_format_reads_parquet_folders_eagerly_and_streaming(tmp_path, caplog):
    table = datasets.Dataset.from_dict(
        {"img": [{"bytes": image_bytes(i), "path": None} for i in range(3)], "sentence": ["s0", "s1", "s2"],
         "lang": ["en", "de", "xx"]},
        features=datasets.Features({"img": datasets.Image(), "sentence": datasets.Value("string"),
                                    "lang": datasets.Value("string")}),
    )
    (tmp_path / "pq" / "data").mkdir(parents=True)
    table.to_parquet(str(tmp_path / "pq" / "data" / "train-00000.parquet"))
    mapping = {"img": "image", "sentence": "caption"}
    assert detect_format(tmp_path / "pq") == "datasets"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        corpus = load_corpus(tmp_path / "pq", column_mapping=mapping, cache_dir=str(tmp_path / "cache"))
    assert [(row["lang"], row["caption"]) for row in corpus] == [("en", "s0"), ("de", "s1")]
    assert any(record.getMessage().startswith(f"skipped {tmp_path / 'pq'}, row 2 (unknown_language)")
               for record in caplog.records)
    stream, report = load_corpus(tmp_path / "pq", column_mapping=mapping, streaming=True, return_report=True)
    assert [(row["caption"], row["image"].size) for row in stream] == [("s0", (20, 20)), ("s1", (20, 20))]
    assert report.skipped == {"unknown_language": 1}


def test_imagefolder_streaming(tmp_path):
    stream = load_corpus(imagefolder(tmp_path / "folder"), streaming=True)
    assert rows(stream) == [(f"img{i}", "es", f"picture {i}") for i in range(3)]


def test_boxes_and_phrase_become_columns(tmp_path):
    write_image(tmp_path / "a.jpg")
    write_lines(tmp_path / "train.jsonl", [
        {"image": "a.jpg", "caption": "the red square", "lang": "en", "boxes": [[1, 2, 10, 12]], "phrase": "red square"}
    ])
    corpus = load_corpus(tmp_path)
    assert corpus.column_names == ["image", "caption", "lang", "image_id", "boxes", "phrase"]
    assert corpus[0]["boxes"] == [[1.0, 2.0, 10.0, 12.0]] and corpus[0]["phrase"] == "red square"
    assert corpus[0]["image_id"] == "a"


def test_streaming_yields_the_same_rows_and_fills_the_report(tmp_path):
    root = captions_jsonl(tmp_path)
    stream, report = load_corpus(root, streaming=True, return_report=True)
    assert isinstance(stream, datasets.IterableDataset)
    assert rows(stream) == rows(load_corpus(root))
    assert report.captions == 9 and report.images == 3


# Detection and languages


@pytest.mark.parametrize(
    "build, expected",
    [(captions_jsonl, "captions-jsonl"), (karpathy, "karpathy"), (multi30k, "multi30k"), (imagefolder, "imagefolder"),
     (webdataset, "webdataset"), (saved_dataset, "datasets")],
)
def test_detect_format(tmp_path, build, expected):
    assert detect_format(build(tmp_path / "corpus")) == expected


def test_detect_format_failure_lists_the_formats(tmp_path):
    (tmp_path / "notes.md").write_text("nothing here")
    with pytest.raises(ValueError) as error:
        load_corpus(tmp_path)
    assert "matches none of the corpus formats" in str(error.value)
    assert all(f"  {name}: " in str(error.value) for name in CORPUS_FORMATS)
    with pytest.raises(ValueError, match="does not exist"):
        load_corpus(tmp_path / "missing")


def test_languages_filter_normalizes_codes(tmp_path):
    corpus = load_corpus(captions_jsonl(tmp_path), languages=["DE"])
    assert rows(corpus) == [(str(i), "de", f"ein Foto {i}") for i in range(3)]
    with pytest.raises(ValueError, match=r"languages contains 'german', which is not an ISO 639-1 code"):
        load_corpus(tmp_path, languages=["german"])


def test_region_subtags_map_to_the_language(tmp_path):
    write_image(tmp_path / "a.jpg")
    record = {"image": "a.jpg", "captions": {"pt-BR": ["uma foto"], "zh_Hans": ["照片"]}}
    write_lines(tmp_path / "train.jsonl", [record])
    assert [row["lang"] for row in load_corpus(tmp_path)] == ["pt", "zh"]


def test_iso_table_has_every_two_letter_code():
    assert len(ISO_639_1) == 184 and {"en", "zh", "ja", "nl", "cs", "id", "he", "yi"} <= ISO_639_1
    assert "xx" not in ISO_639_1


# Bad input: each case is a counted skip with a warning naming file and line, or a strict error.


def bad_jsonl(tmp_path: Path, line: object, make_image=None) -> Path:
    """train.jsonl with a good record on line 1 and the bad one on line 2."""
    write_image(tmp_path / "good.jpg")
    if make_image is not None:
        make_image(tmp_path / "bad.jpg")
    write_lines(tmp_path / "train.jsonl", [{"image": "good.jpg", "captions": {"en": ["fine"]}}, line])
    return tmp_path / "train.jsonl"


def write_garbage(path: Path) -> None:
    path.write_bytes(b"this is not an image at all")


def write_truncated(path: Path) -> None:
    write_image(path, size=(64, 64))
    path.write_bytes(path.read_bytes()[:300])


BAD_RECORD = {"image": "bad.jpg", "captions": {"en": ["one", "two"]}}
BAD_INPUTS = [
    # (line 2 of train.jsonl, image writer, reason, captions dropped, text of warning and error)
    (BAD_RECORD, None, "missing_image", 2, r"image file .*bad\.jpg does not exist"),
    (BAD_RECORD, write_garbage, "corrupt_image", 2, r"bad\.jpg cannot be decoded \(UnidentifiedImageError"),
    (BAD_RECORD, write_truncated, "corrupt_image", 2, r"bad\.jpg cannot be decoded \(OSError: .*[Tt]runcated"),
    ({"image": "good.jpg", "captions": {"en": ["  "]}}, None, "empty_caption", 1, r"empty en caption of image good"),
    ({"image": "good.jpg", "captions": {"xx": ["hi"]}}, None, "unknown_language", 1, r"language code 'xx' is not ISO"),
    ('{"image": "good.jpg", "captions": ', None, "malformed_line", 0, r"malformed line \(Expecting value"),
    ({"captions": {"en": ["no image"]}}, None, "malformed_line", 0, r"malformed line \(no 'image' path"),
    ({"image": "good.jpg"}, None, "malformed_line", 0, r"malformed line \(no 'caption' or 'captions' key"),
    ({"image": "good.jpg", "caption": 7}, None, "malformed_line", 0, r"caption is of type int, expected a string"),
    ({"image": "good.jpg", "caption": ["ok", 7]}, None, "malformed_line", 0, r"caption 7 is of type int, expected a"),
]


@pytest.mark.parametrize("line, make_image, reason, dropped, message", BAD_INPUTS)
def test_bad_input_is_a_counted_skip_with_a_warning(tmp_path, caplog, line, make_image, reason, dropped, message):
    file = bad_jsonl(tmp_path, line, make_image)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        corpus, report = load_corpus(tmp_path, return_report=True)

    assert rows(corpus) == [("good", "en", "fine")]
    assert report.skipped == {reason: 1} and report.dropped_captions == {reason: dropped}
    [issue] = report.issues
    assert (issue.reason, issue.file, issue.line) == (reason, str(file), 2)
    warnings = [record.getMessage() for record in caplog.records]
    assert any(w.startswith(f"skipped {file}, line 2 ({reason}): ") for w in warnings)
    assert any(re.search(message, w) for w in warnings)
    assert warnings[-1].endswith(f"kept 1 captions of 1 images; skipped 1: {reason} 1 ({dropped} captions)")


@pytest.mark.parametrize("line, make_image, reason, dropped, message", BAD_INPUTS)
def test_bad_input_is_an_error_when_strict(tmp_path, line, make_image, reason, dropped, message):
    file = bad_jsonl(tmp_path, line, make_image)
    with pytest.raises(ValueError, match=rf"^{file}, line 2: .*{message}.*(strict=False to skip)"):
        load_corpus(tmp_path, strict=True)


def test_strict_error_names_the_fix(tmp_path):
    bad_jsonl(tmp_path, {"image": "good.jpg", "captions": {"en": [""]}})
    with pytest.raises(ValueError, match=r"Remove the empty caption or write one \(or pass strict=False"):
        load_corpus(tmp_path, strict=True)


def test_skips_are_counted_per_reason_in_one_summary(tmp_path, caplog):
    write_image(tmp_path / "good.jpg")
    write_lines(tmp_path / "train.jsonl", [
        {"image": "good.jpg", "captions": {"en": ["fine", ""], "qq": ["?"]}},
        "not json",
        {"image": "gone.jpg", "captions": {"de": ["weg", "fort"]}},
        "[1, 2]",
    ])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        corpus, report = load_corpus(tmp_path, return_report=True)
    assert corpus.num_rows == 1
    assert report.skipped == {"empty_caption": 1, "unknown_language": 1, "malformed_line": 2, "missing_image": 1}
    assert report.dropped_captions["missing_image"] == 2 and report.num_skipped == 5
    assert [issue.line for issue in report.issues] == [1, 1, 2, 4, 3]
    assert caplog.records[-1].getMessage().endswith(
        "skipped 5: missing_image 1 (2 captions), empty_caption 1 (1 captions), unknown_language 1 (1 captions), "
        "malformed_line 2 (0 captions)"
    )


def test_a_bad_image_skips_every_line_that_names_it(tmp_path):
    write_garbage(tmp_path / "bad.jpg")
    write_lines(tmp_path / "train.jsonl", [{"image": "bad.jpg", "caption": "x"}, {"image": "bad.jpg", "caption": "y"}])
    _, report = load_corpus(tmp_path, return_report=True)
    assert [(issue.reason, issue.line) for issue in report.issues] == [("corrupt_image", 1), ("corrupt_image", 2)]


def test_verify_images_false_still_skips_missing_files(tmp_path):
    write_garbage(tmp_path / "bad.jpg")
    write_lines(tmp_path / "train.jsonl", [{"image": "bad.jpg", "caption": "x"}, {"image": "gone.jpg", "caption": "y"}])
    corpus, report = load_corpus(tmp_path, verify_images=False, return_report=True)
    assert [row["caption"] for row in corpus.remove_columns("image")] == ["x"]
    assert report.skipped == {"missing_image": 1}


def test_streaming_skips_bad_images_before_yielding(tmp_path):
    bad_jsonl(tmp_path, BAD_RECORD, write_truncated)
    stream, report = load_corpus(tmp_path, streaming=True, return_report=True)
    assert rows(stream) == [("good", "en", "fine")]
    assert report.skipped == {"corrupt_image": 1}
    with pytest.raises(ValueError, match=r"train\.jsonl, line 2: .*[Tt]runcated"):
        list(load_corpus(tmp_path, streaming=True, strict=True))


def test_webdataset_bad_samples_name_shard_and_sample(tmp_path):
    shard = write_shard(tmp_path / "train" / "000.tar", [
        ("a", {"jpg": image_bytes(0, "JPEG"), "json": b'{"caption": "ok"}'}),
        ("b", {"jpg": image_bytes(1, "JPEG"), "json": b'{"caption": '}),
        ("c", {"json": b'{"caption": "no image"}'}),
        ("d", {"png": b"garbage", "txt": b"broken png"}),
    ])
    corpus, report = load_corpus(tmp_path, return_report=True)
    assert [row["caption"] for row in corpus] == ["ok"]
    assert [(i.reason, i.file, i.line) for i in report.issues] == [
        ("malformed_line", str(shard), "sample b"), ("missing_image", str(shard), "sample c"),
        ("corrupt_image", str(shard), "sample d"),
    ]
    with pytest.raises(ValueError, match=rf"^{shard}, sample b: malformed sample"):
        load_corpus(tmp_path, strict=True)


def test_karpathy_malformed_entry_names_its_index(tmp_path):
    root = karpathy(tmp_path)
    content = json.loads((root / "dataset_coco.json").read_text())
    del content["images"][1]["sentences"]
    (root / "dataset_coco.json").write_text(json.dumps(content))
    corpus, report = load_corpus(root, image_root=root / "coco", return_report=True)
    assert corpus.num_rows == 2 and [(i.reason, i.line) for i in report.issues] == [("malformed_line", "images[1]")]
    with pytest.raises(ValueError, match=r"dataset_coco\.json, images\[1\]: malformed entry \(no 'sentences' list"):
        load_corpus(root, image_root=root / "coco", strict=True)


def test_imagefolder_bad_rows_are_skipped_and_broken_json_is_an_error(tmp_path):
    root = imagefolder(tmp_path / "folder")
    metadata = root / "train" / "metadata.jsonl"
    lines = metadata.read_text().splitlines()
    write_lines(metadata, [lines[0], "", json.dumps({"file_name": "img1.png", "caption": "", "lang": "es"}), lines[2]])
    corpus, report = load_corpus(root, return_report=True, cache_dir=str(tmp_path / "cache"))
    assert corpus.num_rows == 2
    assert [(i.reason, i.file, i.line) for i in report.issues] == [("empty_caption", str(metadata), 3)]

    write_lines(metadata, [lines[0], "{broken"])
    with pytest.raises(ValueError, match=rf"^{metadata}, line 2: not a JSON object .*cannot skip it"):
        load_corpus(root, cache_dir=str(tmp_path / "cache"))


def test_multi30k_empty_caption_names_the_caption_file(tmp_path):
    import gzip

    root = multi30k(tmp_path)
    with gzip.open(root / "raw" / "train.fr.gz", "wt", encoding="utf-8") as handle:
        handle.write("fr caption 0\n\nfr caption 2\n")
    _, report = load_corpus(root, return_report=True)
    assert [(i.reason, Path(i.file).name, i.line) for i in report.issues] == [("empty_caption", "train.fr.gz", 2)]


def test_report_summary_without_skips():
    report = CorpusReport(source="x", format="captions-jsonl", split="val", captions=3, images=1)
    assert report.summary() == "x [captions-jsonl, split 'val']: kept 3 captions of 1 images; nothing skipped"


# Acceptance: the real corpus gives exactly the caption counts of its README.


@pytest.mark.parametrize(
    "split, per_language, images",
    [
        ("train", {"en": 44602, "de": 41851, "fr": 6993, "cs": 6993, "ja": 488,
                   "es": 100, "id": 100, "ru": 100, "tr": 100, "zh": 100}, 7606),
        ("val", {"en": 1439, "de": 1449, "fr": 242, "cs": 242, "nl": 1209}, 242),
    ],
)
def test_flickr8k_multi_counts_match_its_readme(split, per_language, images):
    corpus, report = load_corpus(FLICKR8K_MULTI, split=split, return_report=True)
    assert report.format == "captions-jsonl" and report.skipped == {}
    assert report.captions_per_language == per_language
    assert corpus.num_rows == sum(per_language.values())
    arrow = corpus.data.table
    assert dict(zip(*[c.to_pylist() for c in arrow.column("lang").value_counts().flatten()])) == per_language
    assert len(set(arrow.column("image_id").to_pylist())) == images
