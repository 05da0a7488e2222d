"""Batch samplers for contrastive training: no image twice in a batch, optionally one language per batch.

Two captions of one image in an InfoNCE batch are false negatives: each is pushed away from the image it
describes. `UniqueImageBatchSampler` plans every epoch so that a batch holds at most one caption per image, and,
with `group_by_language=True`, captions of a single language (what per-language adapters train on).

The plan reads only the `image_id` and `lang` columns, once, and is vectorised with numpy: captions are shuffled
and the `k` captions of each image are spread evenly over the epoch (at times `(r + phase) / k` with a random
phase per image), so two captions of one image rarely fall into one batch. The stream is then cut into batches; a
colliding caption waits for the next batch. Captions that still cannot be placed without repeating an image (only
images with more captions than the epoch has batches) are left out of this epoch; `captions_per_epoch` and
`coverage()` report what an epoch covers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from .columns import read_columns

__all__ = ["NeighbourBatchSampler", "UniqueImageBatchSampler", "nearest_images"]


def _factorize(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of `values` (n,) and the sorted unique values they index."""
    uniques, codes = np.unique(np.asarray([str(v) for v in values]), return_inverse=True)
    return codes.reshape(-1), uniques


class UniqueImageBatchSampler(Sampler[list[int]]):
    """Yields batches of dataset indices in which no image appears twice (or, with `batch_captions_per_image=k`,
    every image of a batch appears with exactly k of its captions).

    Deterministic given `seed` and the epoch set with `set_epoch`, so every process of a distributed run plans the
    same batches. Use it as the DataLoader's `batch_sampler`; Accelerate shards batch samplers across processes
    (process `k` of `n` takes batches `k, k + n, ...`, so each global step sees `n` disjoint batches):

    ```python
    sampler = UniqueImageBatchSampler.from_dataset(train, batch_size=256, group_by_language=True, seed=0)
    loader = DataLoader(train, batch_sampler=sampler, collate_fn=collator, num_workers=4)
    loader = accelerator.prepare(loader)
    for epoch in range(num_epochs):
        loader.set_epoch(epoch)  # reaches the sampler through Accelerate; or call sampler.set_epoch(epoch)
        for batch in loader:
            ...
    ```

    With `drop_last=False` every language contributes at most one smaller final batch; with `drop_last=True` all
    batches have exactly `batch_size` captions (Accelerate then needs no padding batches).

    Args:
        image_ids (`Sequence[str]`): The `image_id` of every row.
        batch_size (`int`): Captions per batch.
        langs (`Sequence[str]`, *optional*): The `lang` of every row; required when `group_by_language`.
        group_by_language (`bool`, *optional*, defaults to `False`): Make every batch single-language.
        shuffle (`bool`, *optional*, defaults to `True`): Shuffle each epoch; otherwise follow dataset order.
        drop_last (`bool`, *optional*, defaults to `False`): Drop batches smaller than `batch_size`.
        seed (`int`, *optional*, defaults to 0): Base seed, combined with the epoch.
        max_captions_per_image (`int`, *optional*):
            Use at most this many captions of each image (per language when grouping) per epoch, e.g. 1 for the
            one-caption-per-image epochs of CLIP-style training; all when omitted.
        batch_captions_per_image (`int`, *optional*, defaults to 1):
            Captions of each image in a batch: a batch holds `batch_size / batch_captions_per_image` images, each
            with the caption the plan drew and `batch_captions_per_image - 1` more of its captions, drawn at
            random (other languages, where an image has one caption per language). `SeeYouModel` embeds an image
            once however many of its captions a batch holds, so the vision tower's cost per batch falls by this
            factor. The extra captions are extra draws: the epoch's plan covers each caption once as before.

    Example:

    ```python
    >>> from seeyou_ml.data.samplers import UniqueImageBatchSampler

    >>> sampler = UniqueImageBatchSampler(["a", "a", "b", "c"], batch_size=2, seed=0)
    >>> batches = list(sampler)
    >>> all(len({["a", "a", "b", "c"][i] for i in batch}) == len(batch) for batch in batches)
    True
    >>> sampler.captions_per_epoch
    4
    ```
    """

    def __init__(
        self,
        image_ids: Sequence[str],
        batch_size: int,
        langs: Sequence[str] | None = None,
        group_by_language: bool = False,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        max_captions_per_image: int | None = None,
        batch_captions_per_image: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1.")
        if batch_captions_per_image < 1 or batch_size % batch_captions_per_image:
            raise ValueError(f"batch_captions_per_image={batch_captions_per_image} must be >= 1 and divide "
                             f"batch_size={batch_size}.")
        if group_by_language and langs is None:
            raise ValueError("group_by_language=True needs langs (the lang column); pass langs=dataset['lang'].")
        if langs is not None and len(langs) != len(image_ids):
            raise ValueError(f"langs has {len(langs)} entries but image_ids has {len(image_ids)}; pass one per row.")
        if max_captions_per_image is not None and max_captions_per_image < 1:
            raise ValueError(f"max_captions_per_image={max_captions_per_image} must be >= 1 or None.")
        self.image_codes, self.image_names = _factorize(image_ids)
        if langs is not None:
            self.lang_codes, self.lang_names = _factorize(langs)
        else:
            self.lang_codes, self.lang_names = np.zeros(len(image_ids), dtype=np.int64), np.asarray([""])
        self.batch_size = batch_size
        self.batch_captions_per_image = batch_captions_per_image
        # The plan places images; each becomes batch_captions_per_image captions when a batch is handed out.
        self.images_per_batch = batch_size // batch_captions_per_image
        by_image = np.argsort(self.image_codes, kind="stable")
        starts = np.searchsorted(self.image_codes[by_image], np.arange(len(self.image_names)))
        self._rows_by_image = np.split(by_image, starts[1:])  # rows of each image
        if batch_captions_per_image > 1:
            fewest = int(np.argmin([len(rows) for rows in self._rows_by_image]))
            if len(self._rows_by_image[fewest]) < batch_captions_per_image:
                raise ValueError(f"image {str(self.image_names[fewest])!r} has {len(self._rows_by_image[fewest])} "
                                 f"caption(s), fewer than batch_captions_per_image={batch_captions_per_image}; "
                                 "lower it or drop images with fewer captions.")
        self.group_by_language = group_by_language
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.max_captions_per_image = max_captions_per_image
        self.epoch = 0
        self._plan: tuple[int, list[list[int]]] | None = None

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        batch_size: int,
        image_id_column: str = "image_id",
        lang_column: str = "lang",
        **kwargs,
    ) -> UniqueImageBatchSampler:
        """Builds the sampler from a corpus's `image_id` and `lang` columns (read once; images are not decoded).

        Args:
            dataset (`datasets.Dataset` or mapping of columns): A map-style corpus in the common schema.
            batch_size (`int`): Captions per batch.
            image_id_column (`str`, *optional*, defaults to `"image_id"`): Column grouping captions by image.
            lang_column (`str`, *optional*, defaults to `"lang"`): Language column.
            **kwargs: The remaining `UniqueImageBatchSampler` arguments.
        """
        columns = read_columns(dataset, [image_id_column, lang_column])
        return cls(columns[image_id_column], batch_size, langs=columns[lang_column], **kwargs)

    @property
    def sampler(self) -> UniqueImageBatchSampler:
        # Accelerate's DataLoaderShard.set_epoch forwards the epoch to `batch_sampler.batch_sampler.sampler`
        # (the torch BatchSampler layout); exposing ourselves there lets `loader.set_epoch` reach this sampler.
        return self

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch that seeds the next plan (call on every process before iterating)."""
        self.epoch = epoch

    def _group_order(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Orders the rows of one group so that the captions of each image are spread evenly over the epoch."""
        order = rng.permutation(rows) if self.shuffle else rows
        images = self.image_codes[order]
        # Rank of each caption within its image, in the (shuffled) order: 0 for the first caption seen, ...
        by_image = np.argsort(images, kind="stable")
        sorted_images = images[by_image]
        starts = np.flatnonzero(np.r_[True, sorted_images[1:] != sorted_images[:-1]])
        counts = np.diff(np.r_[starts, len(order)])
        rank = np.empty(len(order), dtype=np.int64)
        rank[by_image] = np.arange(len(order)) - np.repeat(starts, counts)
        per_image = np.empty(len(order), dtype=np.int64)
        per_image[by_image] = np.repeat(counts, counts)
        if self.max_captions_per_image is not None:
            keep = rank < self.max_captions_per_image
            order, rank, images = order[keep], rank[keep], images[keep]
            per_image = np.minimum(per_image[keep], self.max_captions_per_image)
        # An image with k captions gets them at epoch times (r + phase) / k, r = 0..k-1: evenly spaced with a random
        # phase, so two of them meet in one batch only if k exceeds (group size / batch size).
        phase = rng.random(len(self.image_names))[images] if self.shuffle else np.zeros(len(order))
        return order[np.argsort((rank + phase) / per_image, kind="stable")]

    def _cut(self, order: np.ndarray) -> list[list[int]]:
        """Cuts an ordered group into batches without repeating an image; defers colliding captions."""
        batches: list[list[int]] = []
        batch: list[int] = []
        seen: set[int] = set()
        waiting: deque[int] = deque()

        def place(row: int) -> bool:
            nonlocal batch, seen
            image = self.image_codes[row]
            if image in seen:
                return False
            batch.append(row)
            seen.add(image)
            if len(batch) == self.images_per_batch:
                batches.append(batch)
                batch, seen = [], set()
            return True

        def retry_waiting() -> bool:
            placed = False
            for _ in range(len(waiting)):
                row = waiting.popleft()
                if place(row):
                    placed = True
                else:
                    waiting.append(row)
            return placed

        for row in order.tolist():
            closed_before = len(batches)
            if not place(row):
                waiting.append(row)
            elif waiting and len(batches) > closed_before:
                retry_waiting()
        while waiting and retry_waiting():
            pass
        if batch and not self.drop_last:
            batches.append(batch)
        return batches

    def _plan_epoch(self) -> list[list[int]]:
        if self._plan is None or self._plan[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._plan = (self.epoch, self._with_more_captions(self._plan_batches(rng), rng))
        return self._plan[1]

    def _with_more_captions(self, batches: list[list[int]], rng: np.random.Generator) -> list[list[int]]:
        """Each planned row followed by `batch_captions_per_image - 1` other captions of its image."""
        extra = self.batch_captions_per_image - 1
        if not extra:
            return batches
        expanded = []
        for batch in batches:
            rows = []
            for row in batch:
                others = self._rows_by_image[self.image_codes[row]]
                others = others[others != row]
                rows += [row, *rng.choice(others, size=extra, replace=False).tolist()]
            expanded.append(rows)
        return expanded

    def _plan_batches(self, rng: np.random.Generator) -> list[list[int]]:
        """The batches of one epoch, drawn from `rng` (seeded from the seed and the epoch)."""
        if self.group_by_language:
            groups = [np.flatnonzero(self.lang_codes == code) for code in range(len(self.lang_names))]
        else:
            groups = [np.arange(len(self.image_codes))]
        batches = [batch for rows in groups for batch in self._cut(self._group_order(rows, rng))]
        if self.shuffle and self.group_by_language:
            # Interleave languages across the epoch instead of running them one after another.
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from (list(batch) for batch in self._plan_epoch())

    def __len__(self) -> int:
        return len(self._plan_epoch())

    @property
    def captions_per_epoch(self) -> int:
        """Number of captions the current epoch's batches hold (each at most once, unless batches draw more captions
        per image or neighbours)."""
        return sum(len(batch) for batch in self._plan_epoch())

    def coverage(self) -> dict[str, tuple[int, int]]:
        """Covered and total captions of the current epoch, per language (`""` when no langs were given).

        Returns:
            `dict[str, tuple[int, int]]`: `{lang: (covered, total)}`.
        """
        covered = np.zeros(len(self.lang_names), dtype=np.int64)
        for batch in self._plan_epoch():
            np.add.at(covered, self.lang_codes[batch], 1)
        totals = np.bincount(self.lang_codes, minlength=len(self.lang_names))
        return {str(name): (int(c), int(t)) for name, c, t in zip(self.lang_names, covered, totals)}

    def __repr__(self) -> str:
        return (
            f"UniqueImageBatchSampler(rows={len(self.image_codes)}, images={len(self.image_names)}, "
            f"batch_size={self.batch_size}, group_by_language={self.group_by_language}, drop_last={self.drop_last}, "
            f"seed={self.seed}, epoch={self.epoch})"
        )


def nearest_images(features: Sequence[Sequence[Any]], num_neighbours: int, seed: int = 0,
                   chunk_size: int = 1024) -> np.ndarray:
    """The `num_neighbours` images most like each image: the largest share of their features in common (the Jaccard
    similarity of the two feature sets, shared / all distinct features of both), ties broken at random.

    Sharing is relative, so an image with exactly the same two objects ranks before one that has them among four.

    Args:
        features (`Sequence[Sequence[Any]]`): One collection of hashable features per image, e.g. its
            `("red", "cross")` objects or its caption words.
        num_neighbours (`int`): Neighbours to keep per image (fewer than the number of images).
        seed (`int`, *optional*, defaults to 0): Seed of the tie-breaking.
        chunk_size (`int`, *optional*, defaults to 1024): Images scored at once (memory is chunk_size x images).

    Returns:
        `np.ndarray`: (images, num_neighbours) indices, most alike first; an image is never its own neighbour.
    """
    count = len(features)
    if not 0 < num_neighbours < count:
        raise ValueError(f"num_neighbours={num_neighbours} must be between 1 and the number of images - 1 ({count - 1}).")
    import torch

    vocabulary: dict[Any, int] = {}
    rows, cols = [], []
    for image, values in enumerate(features):
        for value in set(values):
            rows.append(image)
            cols.append(vocabulary.setdefault(value, len(vocabulary)))
    # float32 holds the counts exactly and resolves the ratios far below the tie-breaking noise (1e-7 against
    # 1 / largest**2); in-place steps keep a 20,000-image corpus to a few seconds.
    onehot = torch.zeros(count, max(len(vocabulary), 1), dtype=torch.float32)
    onehot[rows, cols] = 1.0
    sizes = onehot.sum(1)  # distinct features per image
    # Two different ratios of feature counts up to `largest` differ by at least 1 / largest**2: noise below that
    # only reorders equals.
    largest = max(2 * float(sizes.max()), 1.0)
    generator = torch.Generator().manual_seed(seed)
    neighbours = torch.empty(count, num_neighbours, dtype=torch.int64)
    for start in range(0, count, chunk_size):
        stop = min(start + chunk_size, count)
        shared = onehot[start:stop] @ onehot.T  # (chunk, images): features in common
        union = torch.add(sizes[start:stop, None], sizes[None, :]).sub_(shared).clamp_(min=1.0)
        similarity = shared.div_(union)
        similarity.add_(torch.rand(similarity.shape, generator=generator).mul_(0.5 / largest**2))
        similarity[torch.arange(stop - start), torch.arange(start, stop)] = -1.0
        neighbours[start:stop] = similarity.topk(num_neighbours, dim=1).indices  # sorted, most alike first
    return neighbours.numpy()


class NeighbourBatchSampler(UniqueImageBatchSampler):
    """A [`UniqueImageBatchSampler`] whose batches hold groups of similar images, hard negatives for one another.

    With random batches, the images a caption must be told apart from are mostly easy ones; retrieval over a large
    gallery is decided by the few that differ in one attribute or one relation. Here a share `hard_fraction` of
    every batch is built from groups of `group_size` images: an anchor caption from the epoch's stream (the same
    evenly spread order `UniqueImageBatchSampler` plans) and a random caption of each of `group_size - 1` of its
    nearest images, those with the largest share of `features` in common (see [`nearest_images`]). The rest of the
    batch follows the stream. No image appears twice in a batch. Anchors and fillers cover the epoch's captions once;
    neighbour captions are extra draws, so an epoch has more batches than the plain sampler's.

    Args:
        image_ids (`Sequence[str]`): The `image_id` of every row.
        features (`Sequence[Sequence[Any]]`): The features of every row (e.g. its objects or caption words);
            an image's features are the union over its rows.
        batch_size (`int`): Captions per batch.
        hard_fraction (`float`, *optional*, defaults to 0.5): Share of each batch filled with neighbour groups.
        group_size (`int`, *optional*, defaults to 4): Images per group (an anchor and its neighbours).
        num_neighbours (`int`, *optional*, defaults to 16): Nearest images each group draws its neighbours from.
        langs, shuffle, drop_last, seed, max_captions_per_image, batch_captions_per_image: As for
            [`UniqueImageBatchSampler`] (batches mix languages; `group_by_language` is not offered).

    Example:

    ```python
    >>> from seeyou_ml.data.samplers import NeighbourBatchSampler

    >>> objects = [["red circle"], ["red circle", "blue star"], ["blue star"], ["green cross"]]
    >>> sampler = NeighbourBatchSampler(["a", "b", "c", "d"], objects, batch_size=2, hard_fraction=1.0,
    ...                                 group_size=2, num_neighbours=1, seed=0)
    >>> sampler.neighbours[0].tolist()  # "a" shares its red circle with "b" only
    [1]
    ```
    """

    def __init__(
        self,
        image_ids: Sequence[str],
        features: Sequence[Sequence[Any]],
        batch_size: int,
        hard_fraction: float = 0.5,
        group_size: int = 4,
        num_neighbours: int = 16,
        langs: Sequence[str] | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        max_captions_per_image: int | None = None,
        batch_captions_per_image: int = 1,
    ):
        super().__init__(image_ids, batch_size, langs=langs, shuffle=shuffle, drop_last=drop_last, seed=seed,
                         max_captions_per_image=max_captions_per_image,
                         batch_captions_per_image=batch_captions_per_image)
        if len(features) != len(image_ids):
            raise ValueError(f"features has {len(features)} entries but image_ids has {len(image_ids)}; pass one "
                             "per row.")
        if not 0.0 <= hard_fraction <= 1.0:
            raise ValueError(f"hard_fraction={hard_fraction} must be between 0 and 1.")
        if group_size < 2 or group_size > self.images_per_batch:
            raise ValueError(f"group_size={group_size} must be between 2 and the images of a batch "
                             f"({self.images_per_batch}).")
        if num_neighbours < group_size - 1:
            raise ValueError(f"num_neighbours={num_neighbours} must be at least group_size - 1 ({group_size - 1}).")
        self.hard_fraction = hard_fraction
        self.group_size = group_size
        per_image: list[set] = [set() for _ in range(len(self.image_names))]
        for code, values in zip(self.image_codes.tolist(), features):
            per_image[code].update(values)
        self.neighbours = nearest_images(per_image, num_neighbours, seed=seed)

    def _plan_batches(self, rng: np.random.Generator) -> list[list[int]]:
        stream = self._group_order(np.arange(len(self.image_codes)), rng).tolist()
        groups_per_batch = int(self.images_per_batch * self.hard_fraction) // self.group_size
        batches: list[list[int]] = []
        waiting: deque[int] = deque()
        position = 0
        while position < len(stream) or waiting:
            batch: list[int] = []
            seen: set[int] = set()
            deferred: list[int] = []

            def next_row() -> int | None:
                nonlocal position
                while waiting or position < len(stream):
                    if waiting:
                        row = waiting.popleft()
                    else:
                        row, position = stream[position], position + 1
                    if self.image_codes[row] in seen:
                        deferred.append(row)  # its image is in this batch already; it waits for the next one
                        continue
                    return row
                return None

            for _ in range(groups_per_batch):  # groups_per_batch * group_size <= images_per_batch
                anchor = next_row()
                if anchor is None:
                    break
                image = int(self.image_codes[anchor])
                batch.append(anchor)
                seen.add(image)
                candidates = [n for n in self.neighbours[image].tolist() if n not in seen]
                if self.shuffle:
                    candidates = rng.permutation(candidates).tolist()
                for neighbour in candidates[: self.group_size - 1]:
                    rows = self._rows_by_image[neighbour]
                    # rng.choice(rows) draws the same row from the same stream, at five times the cost per call
                    batch.append(int(rows[rng.integers(0, len(rows))]))
                    seen.add(int(neighbour))
            while len(batch) < self.images_per_batch:
                row = next_row()
                if row is None:
                    break
                batch.append(row)
                seen.add(int(self.image_codes[row]))
            waiting.extend(deferred)
            if len(batch) == self.images_per_batch or (batch and not self.drop_last):
                batches.append(batch)
            if len(batch) < self.images_per_batch:
                break
        return batches

    def __repr__(self) -> str:
        return (
            f"NeighbourBatchSampler(rows={len(self.image_codes)}, images={len(self.image_names)}, "
            f"batch_size={self.batch_size}, hard_fraction={self.hard_fraction}, group_size={self.group_size}, "
            f"num_neighbours={self.neighbours.shape[1]}, seed={self.seed}, epoch={self.epoch})"
        )
