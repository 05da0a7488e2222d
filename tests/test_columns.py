"""Tests for `seeyou_ml.data.columns.read_columns`: every map-style corpus kind, missing columns named."""

from __future__ import annotations

import datasets
import pytest

from seeyou_ml.data.columns import read_columns


def test_reads_columns_of_datasets_mappings_and_records_alike():
    rows = {"image_id": ["a", "b", "c"], "lang": ["en", "de", "en"], "caption": ["x", "y", "z"]}
    records = [dict(zip(rows, values)) for values in zip(*rows.values())]
    expected = {"image_id": ["a", "b", "c"], "lang": ["en", "de", "en"]}
    assert read_columns(rows, ["image_id", "lang"]) == expected
    assert read_columns(records, ["image_id", "lang"]) == expected
    assert read_columns(datasets.Dataset.from_dict(rows), ["image_id", "lang"]) == expected
    shuffled = datasets.Dataset.from_dict(rows).select([2, 0])
    assert read_columns(shuffled, ["image_id"]) == {"image_id": ["c", "a"]}


def test_missing_columns_are_named():
    with pytest.raises(KeyError, match=r"\['lang'\] are missing .*'image_id'"):
        read_columns({"image_id": ["a"], "caption": ["x"]}, ["image_id", "lang"])
    with pytest.raises(KeyError, match=r"columns \['lang'\] are missing from some records"):
        read_columns([{"image_id": "a", "lang": "en"}, {"image_id": "b"}], ["image_id", "lang"])
