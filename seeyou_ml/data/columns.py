"""Reading whole metadata columns of a corpus (captions, languages, image ids) without decoding its images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["read_columns"]


def read_columns(dataset: Any, columns: Sequence[str]) -> dict[str, list]:
    """Reads whole metadata columns of a corpus without decoding its images.

    Args:
        dataset (`datasets.Dataset`, mapping of column lists, `pandas.DataFrame` or list of records): A map-style
            corpus.
        columns (`Sequence[str]`): Column names to read.

    Returns:
        `dict[str, list]`: One Python list per column, in dataset order (indices mappings such as `shuffle` or
        `select` are honoured).
    """
    import datasets

    if isinstance(dataset, datasets.IterableDataset):
        raise TypeError(
            "a streaming IterableDataset has no random access; load the corpus with streaming=False to build "
            "batches by image and language."
        )
    if isinstance(dataset, (list, tuple)):
        missing = sorted({c for record in dataset for c in columns if c not in record})
        if missing:
            raise KeyError(f"columns {missing} are missing from some records; every record needs {list(columns)}.")
        return {c: [record[c] for record in dataset] for c in columns}
    available = list(dataset.column_names) if hasattr(dataset, "column_names") else list(dataset.keys())
    missing = [c for c in columns if c not in available]
    if missing:
        raise KeyError(
            f"columns {missing} are missing from the dataset (it has {available}); map them into the common schema "
            "first, e.g. load_corpus(..., column_mapping=...) or dataset.rename_column(...)."
        )
    if isinstance(dataset, datasets.Dataset):
        # select_columns + python format skips the image column and any decoding transform.
        return dataset.select_columns(list(columns)).with_format(None)[:]
    return {c: list(dataset[c]) for c in columns}
