"""Recall@k for image-text retrieval, computed tile by tile without ever holding the N×M score matrix.

Definitions follow CLIP_benchmark (https://github.com/LAION-AI/CLIP_benchmark):

- **image→text R@k**: an image is a hit when *any* of its captions is among its k best-scoring captions; images
  without a caption are candidates for text→image but not image→text queries.
- **text→image R@k**: every caption is a query; a hit when its image is among its k best-scoring images.
- **rsum**: the sum of all reported recalls (R@1 + R@5 + R@10 in both directions for the default `ks`).

Recalls are percentages (0-100), so `rsum` has its usual 0-600 range.

Ranking and ties: candidates are ordered by score (the dot product of the embeddings), highest first, and equal
scores by candidate index, **lowest first**. With that total order "among the k best" is defined even when scores
tie, and every chunk size gives the same answer.

Algorithm: the scores are computed in (chunk × chunk) tiles with one GEMM each, and every tile updates two running
top-K lists (K = max(ks)): one per image over captions and one per caption over images, so both directions cost one
pass over the score matrix. An entry enters a list only if it beats the list's current K-th score. Tiles are visited
in increasing candidate index, so an entry that merely *ties* the K-th score has a higher index than everything
already kept and loses the tie: the strict comparison is exact. The comparison runs on maxima of blocks of
`_BLOCK` scores first, so a tile whose lists are already full costs two max-reductions beyond its GEMM; a list's
first tile seeds it from the tile's own K-th score. Memory is O(chunk² + K·(N + M)).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

_BLOCK = 32


class _RunningTopK:
    """The K best (score, candidate index) pairs of each query, ordered by score desc then index asc.

    Args:
        num_queries: number of queries (rows of the lists).
        k: list length.
        num_candidates: number of candidates; also the index of the padding entries (score `-inf`) that fill lists
            while fewer than `k` candidates have been seen.
    """

    def __init__(self, num_queries: int, k: int, num_candidates: int):
        self.k = k
        self.values = torch.full((num_queries, k), float("-inf"))  # (Q, K)
        self.indices = torch.full((num_queries, k), num_candidates, dtype=torch.long)  # (Q, K)

    def update(self, start: int, tile: torch.Tensor, offset: int, along_rows: bool = True) -> None:
        """Merges the scores of queries `start:start + Q` against candidates `offset:offset + L`.

        Args:
            start: index of the tile's first query.
            tile: contiguous scores, (Q, L) when `along_rows` else (L, Q).
            offset: index of the tile's first candidate; must exceed every candidate index seen so far by these
                queries (tiles arrive in increasing candidate order).
            along_rows: whether the queries are the rows of `tile`.
        """
        num_rows, num_cols = tile.shape if along_rows else tile.T.shape
        threshold = self.values[start : start + num_rows, -1].clone()  # (R,)
        inclusive = torch.zeros(num_rows, dtype=torch.bool)
        cold = threshold == float("-inf")
        if num_cols >= self.k and bool(cold.any()):
            # A list that is not yet full takes every entry scoring at least the tile's own K-th score: anything
            # lower has K better entries in this very tile. Ties with it are kept and settled by the merge.
            if along_rows:
                tile_kth = torch.topk(tile, self.k, dim=1).values[:, -1].float()  # (Q,)
            else:
                tile_kth = torch.topk(tile, self.k, dim=0).values[-1].float()  # (Q,)
            threshold = torch.where(cold, tile_kth, threshold)
            inclusive = cold
        rows, cols, scores = _entries_above(tile, threshold, inclusive, along_rows)
        self._merge(start, rows, cols + offset, scores)

    def _merge(self, start: int, rows: torch.Tensor, indices: torch.Tensor, scores: torch.Tensor) -> None:
        if rows.numel() == 0:
            return
        touched = torch.unique(rows)  # (U,) sorted
        kept_rows = touched.repeat_interleave(self.k)  # (U*K,)
        all_rows = torch.cat([kept_rows, rows])
        all_scores = torch.cat([self.values[start + touched].reshape(-1), scores])
        all_indices = torch.cat([self.indices[start + touched].reshape(-1), indices])
        # Order (row asc, score desc, index asc) by stable sorts on score then row: within each row the entries
        # already come in increasing index (kept entries precede the tile's, whose candidates arrive in order).
        order = torch.argsort(all_scores, descending=True, stable=True)
        order = order[torch.argsort(all_rows[order], stable=True)]
        sorted_rows = all_rows[order]
        rank = torch.arange(sorted_rows.numel()) - torch.searchsorted(sorted_rows, sorted_rows)
        keep = rank < self.k  # every touched row has exactly K survivors: its K old entries take part
        target_rows, target_ranks = start + sorted_rows[keep], rank[keep]
        self.values[target_rows, target_ranks] = all_scores[order][keep]
        self.indices[target_rows, target_ranks] = all_indices[order][keep]


def _passes(scores: torch.Tensor, threshold: torch.Tensor, inclusive: torch.Tensor) -> torch.Tensor:
    return (scores > threshold) | (inclusive & (scores == threshold))


def _entries_above(
    tile: torch.Tensor, threshold: torch.Tensor, inclusive: torch.Tensor, along_rows: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query index, candidate index and fp32 score of the entries of a contiguous tile above their query's threshold.

    Args:
        tile: (R, C) contiguous scores.
        threshold, inclusive: per query; queries are the rows when `along_rows`, else the columns.
        along_rows: whether the queries are the rows of `tile`.

    Returns:
        `(queries, candidates, scores)`, each (P,), indices local to the tile.
    """
    num_rows, num_cols = tile.shape
    length = num_cols if along_rows else num_rows  # candidates per query
    blocked = length - length % _BLOCK
    found = []
    if blocked:
        if along_rows:
            # Blocks of _BLOCK neighbouring columns are contiguous, so whole blocks are copied out at once.
            block_max = tile[:, :blocked].unflatten(1, (blocked // _BLOCK, _BLOCK)).amax(dim=2)  # (R, C/B)
            queries, block = _passes(block_max.float(), threshold[:, None], inclusive[:, None]).nonzero(as_tuple=True)
            offsets = block[:, None] * _BLOCK + torch.arange(_BLOCK)  # (P, B) columns
            flat = queries[:, None] * num_cols + offsets
        else:
            block_max = tile[:blocked].unflatten(0, (blocked // _BLOCK, _BLOCK)).amax(dim=1)  # (R/B, C)
            block, queries = _passes(block_max.float(), threshold, inclusive).nonzero(as_tuple=True)
            offsets = block[:, None] * _BLOCK + torch.arange(_BLOCK)  # (P, B) rows
            flat = offsets * num_cols + queries[:, None]
        scores = tile.view(-1).index_select(0, flat.reshape(-1)).view(flat.shape)  # (P, B)
        hit, within = _passes(scores, threshold[queries, None], inclusive[queries, None]).nonzero(as_tuple=True)
        found.append((queries[hit], offsets[hit, within], scores[hit, within]))
    if blocked < length:
        rest = (tile[:, blocked:] if along_rows else tile[blocked:].T).float()  # (queries, length mod B)
        queries, offsets = _passes(rest, threshold[:, None], inclusive[:, None]).nonzero(as_tuple=True)
        found.append((queries, offsets + blocked, rest[queries, offsets]))
    queries, candidates, scores = zip(*found)
    return torch.cat(queries), torch.cat(candidates), torch.cat(scores)


@contextmanager
def _single_thread():
    """Runs the bookkeeping on one thread: its operations are small enough that a second thread mostly waits at
    OpenMP barriers, which costs far more than it saves when the cores are shared with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _as_matrix(embeds, name: str, dtype: torch.dtype) -> torch.Tensor:
    matrix = torch.as_tensor(np.asarray(embeds) if not isinstance(embeds, torch.Tensor) else embeds)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (rows, dim) array; got shape {tuple(matrix.shape)}.")
    matrix = matrix.detach().to("cpu", dtype)
    for start in range(0, matrix.shape[0], 65536):  # in slices: a full-size mask would rival the tiles in memory
        bad = (~torch.isfinite(matrix[start : start + 65536]).all(dim=1)).nonzero()
        if bad.numel():
            row = start + int(bad[0])
            raise ValueError(f"row {row} of {name} is not finite (NaN or inf); fix or drop that embedding.")
    return matrix


def _score_dtype(dtype: torch.dtype | None, *embeds) -> torch.dtype:
    if dtype is None:
        both_bf16 = all(isinstance(e, torch.Tensor) and e.dtype == torch.bfloat16 for e in embeds)
        return torch.bfloat16 if both_bf16 else torch.float32
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype={dtype} is not supported; use torch.float32 (exact) or torch.bfloat16 (faster).")
    return dtype


def bidirectional_topk(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    k: int,
    chunk_size: int = 2048,
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best candidates of every query and the k best queries of every candidate, in one pass over the scores.

    Scores are dot products; order is score desc, then index asc (see the module docstring).

    Args:
        queries: (N, D) embeddings.
        candidates: (M, D) embeddings.
        k: list length.
        chunk_size: side of the square score tiles; memory is O(chunk_size² + k·(N + M)).
        dtype: `torch.float32` or `torch.bfloat16` score tiles; `None` picks bf16 when both inputs are bf16.
            bf16 multiplies faster on CPUs with AVX512-BF16/AMX but rounds each score to 8 significant bits, so
            scores closer than that tie and are ordered by index.
        progress: show a progress bar over tiles.

    Returns:
        `(query_topk, candidate_topk)`: (N, k) candidate indices and (M, k) query indices, best first. When a side
        has fewer than k entries, lists are padded with its size (an index that matches nothing).
    """
    if k < 1:
        raise ValueError(f"k={k} must be at least 1.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be at least 1.")
    if queries.shape[0] < candidates.shape[0]:
        # The outer loop runs over the larger side: its lists are seeded by cheap row-wise top-k, while the
        # other side's first tiles need a strided top-k over the tile's columns.
        candidate_topk, query_topk = bidirectional_topk(candidates, queries, k, chunk_size, dtype, progress)
        return query_topk, candidate_topk
    score_dtype = _score_dtype(dtype, queries, candidates)
    queries, candidates = queries.to(score_dtype), candidates.to(score_dtype)
    num_rows, num_cols = queries.shape[0], candidates.shape[0]
    row_lists = _RunningTopK(num_rows, k, num_cols)
    col_lists = _RunningTopK(num_cols, k, num_rows)
    row_chunks, col_chunks = range(0, num_rows, chunk_size), range(0, num_cols, chunk_size)
    bar = tqdm(total=len(row_chunks) * len(col_chunks), desc="scoring tiles", unit="tile", disable=not progress)
    # Reused buffers keep the allocator from mapping fresh pages for every tile.
    tile_size = min(chunk_size, num_rows) * min(chunk_size, num_cols)
    product_buffer = torch.empty(tile_size, dtype=score_dtype)
    # bf16 reductions are slow on CPU; one conversion pass is cheaper than doing the block maxima in bf16.
    score_buffer = torch.empty(tile_size) if score_dtype != torch.float32 else product_buffer
    for row_start in row_chunks:
        row_block = queries[row_start : row_start + chunk_size]
        for col_start in col_chunks:
            col_block = candidates[col_start : col_start + chunk_size]
            shape = (row_block.shape[0], col_block.shape[0])
            product = product_buffer[: shape[0] * shape[1]].view(shape)
            torch.mm(row_block, col_block.T, out=product)  # (R, C)
            with _single_thread():
                tile = score_buffer[: shape[0] * shape[1]].view(shape)
                if tile.data_ptr() != product.data_ptr():
                    tile.copy_(product)
                row_lists.update(row_start, tile, col_start, along_rows=True)
                col_lists.update(col_start, tile, row_start, along_rows=False)
            bar.update()
    bar.close()
    return row_lists.indices, col_lists.indices


def recall_from_topk(
    topk: torch.Tensor, query_groups: torch.Tensor, candidate_groups: torch.Tensor, ks: Sequence[int]
) -> dict[int, float]:
    """R@k in percent: a query is a hit when one of its first k candidates belongs to its group.

    Args:
        topk: (Q, K) candidate indices per query, best first; index `len(candidate_groups)` is padding.
        query_groups: (Q,) non-negative group of each query.
        candidate_groups: (C,) non-negative group of each candidate.
        ks: cut-offs, each at most K.

    Returns:
        `{k: recall}` averaged over the queries whose group has at least one candidate.

    Raises:
        ValueError: when no query has a positive candidate.
    """
    padded_groups = torch.cat([candidate_groups, torch.tensor([-1])])
    matches = padded_groups[topk] == query_groups[:, None]  # (Q, K)
    first_hit = torch.where(matches.any(dim=1), matches.to(torch.uint8).argmax(dim=1), topk.shape[1])  # (Q,)
    answerable = torch.isin(query_groups, candidate_groups)
    if not bool(answerable.any()):
        raise ValueError("no query has a matching candidate, so recall is undefined; check the group labels.")
    return {k: 100.0 * float((first_hit[answerable] < k).double().mean()) for k in ks}


def retrieval_recall(
    image_embeds,
    text_embeds,
    text_to_image,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 2048,
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Image→text and text→image recall@k with CLIP_benchmark's definitions (see the module docstring).

    Args:
        image_embeds: (N, D) image embeddings (tensor or array), L2-normalised for cosine scores.
        text_embeds: (M, D) caption embeddings.
        text_to_image: (M,) index in `[0, N)` of each caption's image.
        ks: recall cut-offs.
        chunk_size: side of the square score tiles; memory is O(chunk_size² + max(ks)·(N + M)).
        dtype: `torch.float32` or `torch.bfloat16` scores; `None` picks bf16 only when both inputs are bf16
            tensors. bf16 rounds scores to 8 significant bits, so near-ties are ordered by index.
        progress: show a progress bar over tiles.

    Returns:
        `{"image_to_text/R@k": ..., "text_to_image/R@k": ..., "rsum": ...}` in percent.

    Example:

    ```python
    >>> import torch
    >>> from seeyou_ml.evaluation import retrieval_recall
    >>> images = torch.eye(3)
    >>> captions = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 0, 1], [0, 1, 0]])
    >>> retrieval_recall(images, captions, [0, 0, 1, 2], ks=(1,))
    {'image_to_text/R@1': 33.33333333333333, 'text_to_image/R@1': 50.0, 'rsum': 83.33333333333333}
    ```
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks={ks} must be a non-empty sequence of positive cut-offs, e.g. (1, 5, 10).")
    score_dtype = _score_dtype(dtype, image_embeds, text_embeds)
    images = _as_matrix(image_embeds, "image_embeds", score_dtype)
    texts = _as_matrix(text_embeds, "text_embeds", score_dtype)
    if images.shape[1] != texts.shape[1]:
        raise ValueError(
            f"image_embeds has dim {images.shape[1]} but text_embeds has dim {texts.shape[1]}; embed both with the "
            "same model."
        )
    owners = torch.as_tensor(np.asarray(text_to_image), dtype=torch.long).reshape(-1)
    if owners.numel() != texts.shape[0]:
        raise ValueError(f"text_to_image has {owners.numel()} entries for {texts.shape[0]} captions; give one each.")
    out_of_range = ((owners < 0) | (owners >= images.shape[0])).nonzero()
    if out_of_range.numel():
        bad = int(out_of_range[0])
        raise ValueError(
            f"text_to_image[{bad}] = {int(owners[bad])} is not an image index in [0, {images.shape[0]})."
        )
    image_topk, text_topk = bidirectional_topk(images, texts, max(ks), chunk_size, score_dtype, progress)
    image_ids = torch.arange(images.shape[0])
    image_to_text = recall_from_topk(image_topk, image_ids, owners, ks)
    text_to_image = recall_from_topk(text_topk, owners, image_ids, ks)
    results = {f"image_to_text/R@{k}": image_to_text[k] for k in ks}
    results.update({f"text_to_image/R@{k}": text_to_image[k] for k in ks})
    results["rsum"] = sum(image_to_text.values()) + sum(text_to_image.values())
    return results


__all__ = ["bidirectional_topk", "recall_from_topk", "retrieval_recall"]
