"""Tests for `seeyou_ml.data.samplers`: unique images per batch, language grouping, determinism, coverage."""

from __future__ import annotations

import datasets
import pytest
import torch

from seeyou_ml.data.columns import read_columns
from seeyou_ml.data.samplers import NeighbourBatchSampler, UniqueImageBatchSampler, nearest_images


def flickr_like_rows(num_images: int = 60) -> tuple[list[str], list[str]]:
    """Rows shaped like flickr8k-multi: 5-6 en and de captions, one fr and cs per image, a few ja and zh."""
    image_ids, langs = [], []
    for image in range(num_images):
        per_lang = {"en": 5 + image % 2, "de": 6, "fr": 1, "cs": 1, "ja": int(image % 7 == 0), "zh": int(image % 11 == 0)}
        for lang, count in per_lang.items():
            image_ids += [f"img{image}"] * count
            langs += [lang] * count
    return image_ids, langs


def assert_unique_images(batches, image_ids):
    for batch in batches:
        images = [image_ids[i] for i in batch]
        assert len(set(images)) == len(images), f"batch repeats an image: {images}"


def test_batches_never_repeat_an_image_and_cover_every_caption_once():
    image_ids, langs = flickr_like_rows()
    sampler = UniqueImageBatchSampler(image_ids, batch_size=16, langs=langs, seed=3)
    batches = list(sampler)
    assert_unique_images(batches, image_ids)
    flat = [i for batch in batches for i in batch]
    assert len(flat) == len(set(flat)) == len(image_ids)
    assert sampler.captions_per_epoch == len(image_ids)
    assert len(sampler) == len(batches)
    # Only the final batch may be short.
    assert all(len(batch) == 16 for batch in batches[:-1])


def test_group_by_language_gives_single_language_batches():
    image_ids, langs = flickr_like_rows()
    sampler = UniqueImageBatchSampler(image_ids, batch_size=8, langs=langs, group_by_language=True, seed=0)
    batches = list(sampler)
    assert_unique_images(batches, image_ids)
    for batch in batches:
        assert len({langs[i] for i in batch}) == 1
    # At most one short batch per language, and every caption is covered.
    short = [langs[batch[0]] for batch in batches if len(batch) < 8]
    assert len(short) == len(set(short))
    assert sorted(i for batch in batches for i in batch) == list(range(len(image_ids)))
    assert sampler.coverage() == {lang: (langs.count(lang), langs.count(lang)) for lang in set(langs)}


def test_languages_are_interleaved_across_the_epoch():
    image_ids, langs = flickr_like_rows()
    batches = list(UniqueImageBatchSampler(image_ids, batch_size=8, langs=langs, group_by_language=True, seed=0))
    batch_langs = [langs[batch[0]] for batch in batches]
    first_half = set(batch_langs[: len(batch_langs) // 2])
    assert {"en", "de"} <= first_half


def test_plan_is_deterministic_per_seed_and_epoch():
    image_ids, langs = flickr_like_rows()
    sampler = UniqueImageBatchSampler(image_ids, batch_size=16, langs=langs, seed=7)
    same = UniqueImageBatchSampler(image_ids, batch_size=16, langs=langs, seed=7)
    epoch0 = list(sampler)
    assert epoch0 == list(same)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    sampler.set_epoch(0)
    assert list(sampler) == epoch0
    other_seed = UniqueImageBatchSampler(image_ids, batch_size=16, langs=langs, seed=8)
    assert list(other_seed) != epoch0


def test_drop_last_keeps_only_full_batches():
    image_ids, langs = flickr_like_rows()
    sampler = UniqueImageBatchSampler(image_ids, batch_size=24, langs=langs, group_by_language=True, drop_last=True)
    batches = list(sampler)
    assert batches and all(len(batch) == 24 for batch in batches)
    assert sampler.captions_per_epoch == 24 * len(batches)
    # zh has 6 captions: no full batch, so it is not covered at all.
    assert sampler.coverage()["zh"] == (0, 6)


def test_captions_that_would_repeat_an_image_are_left_out_and_counted():
    # Image "a" has 10 captions; with batches of 3 over 14 captions only a few batches exist to hold them.
    image_ids = ["a"] * 10 + ["b", "c", "d", "e"]
    sampler = UniqueImageBatchSampler(image_ids, batch_size=3, seed=0)
    batches = list(sampler)
    assert_unique_images(batches, image_ids)
    covered = sum(len(batch) for batch in batches)
    assert sampler.captions_per_epoch == covered < len(image_ids)
    assert sum(image_ids[i] == "a" for batch in batches for i in batch) == len(batches)
    assert {"b", "c", "d", "e"} <= {image_ids[i] for batch in batches for i in batch}


def test_max_captions_per_image_limits_each_image_per_epoch():
    image_ids, langs = flickr_like_rows(20)
    sampler = UniqueImageBatchSampler(image_ids, batch_size=4, langs=langs, max_captions_per_image=1, seed=1)
    flat = [i for batch in sampler for i in batch]
    assert sorted(image_ids[i] for i in flat) == sorted(set(image_ids))
    sampler.set_epoch(1)
    assert [i for batch in sampler for i in batch] != flat


def test_unshuffled_plan_ignores_the_seed():
    image_ids = ["a", "a", "b", "b", "c"]
    batches = list(UniqueImageBatchSampler(image_ids, batch_size=2, shuffle=False, seed=0))
    assert batches == list(UniqueImageBatchSampler(image_ids, batch_size=2, shuffle=False, seed=99))
    assert batches == [[0, 2], [4, 1], [3]]


def test_from_dataset_reads_columns_without_decoding_images(tmp_path):
    image_ids, langs = flickr_like_rows(10)
    # The image paths do not exist: decoding any of them would raise.
    dataset = datasets.Dataset.from_dict(
        {
            "image": [str(tmp_path / f"missing{i}.jpg") for i in range(len(image_ids))],
            "caption": [f"caption {i}" for i in range(len(image_ids))],
            "lang": langs,
            "image_id": image_ids,
        }
    ).cast_column("image", datasets.Image())
    dataset = dataset.shuffle(seed=0)
    sampler = UniqueImageBatchSampler.from_dataset(dataset, batch_size=8, group_by_language=True)
    shuffled_ids, shuffled_langs = dataset["image_id"], dataset["lang"]
    for batch in sampler:
        assert len({shuffled_ids[i] for i in batch}) == len(batch)
        assert len({shuffled_langs[i] for i in batch}) == 1
    assert read_columns(dataset, ["lang"])["lang"] == list(shuffled_langs)


def test_group_by_language_without_langs_is_an_error():
    with pytest.raises(ValueError, match="needs langs"):
        UniqueImageBatchSampler(["a", "b"], batch_size=2, group_by_language=True)


def test_accelerate_shards_the_batches_and_forwards_set_epoch():
    from accelerate.data_loader import prepare_data_loader

    image_ids, langs = flickr_like_rows(30)
    dataset = list(range(len(image_ids)))
    shards = []
    for process_index in range(2):
        sampler = UniqueImageBatchSampler(image_ids, batch_size=8, langs=langs, drop_last=True, seed=5)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=list)
        loader = prepare_data_loader(loader, num_processes=2, process_index=process_index, put_on_device=False)
        loader.set_epoch(2)
        assert sampler.epoch == 2
        shards.append([batch for batch in loader])
    reference = UniqueImageBatchSampler(image_ids, batch_size=8, langs=langs, drop_last=True, seed=5)
    reference.set_epoch(2)
    expected = list(reference)
    assert shards[0] == expected[0::2][: len(shards[0])]
    assert shards[1] == expected[1::2][: len(shards[1])]
    assert not {i for b in shards[0] for i in b} & {i for b in shards[1] for i in b}


# ---- NeighbourBatchSampler ----------------------------------------------------------------------------------------


def test_nearest_images_ranks_by_the_share_of_features_in_common_and_never_returns_the_image_itself():
    features = [{"a", "b"}, {"a", "b", "c", "d"}, {"a", "b", "c"}, {"a", "b", "e"}, {"b", "a"}, {"a", "x"}, {"z"}]
    for seed in range(5):
        neighbours = nearest_images(features, num_neighbours=5, seed=seed)
        assert neighbours.shape == (7, 5)
        # Jaccard with image 0: image 4 1.0; images 2 and 3 2/3; image 1 1/2; image 5 1/3; image 6 0.
        assert neighbours[0][0] == 4 and set(neighbours[0][1:3]) == {2, 3} and neighbours[0][3:].tolist() == [1, 5]
        assert neighbours[1][:2].tolist() == [2, 0] or neighbours[1][:2].tolist() == [2, 4]  # 3/4, then 2/4
        assert all(i not in row for i, row in enumerate(neighbours.tolist()))
    with pytest.raises(ValueError, match="num_neighbours=7 must be between 1"):
        nearest_images(features, num_neighbours=7)


def objects_corpus(num_images: int = 64, captions_per_image: int = 2):
    """Rows of images in clusters of four that share an object (and nothing with other clusters)."""
    image_ids, features = [], []
    for image in range(num_images):
        for _ in range(captions_per_image):
            image_ids.append(f"img{image}")
            features.append([f"object{image // 4}", f"place{image}"])
    return image_ids, features


def test_neighbour_batches_are_groups_of_similar_images_without_repeats():
    image_ids, features = objects_corpus()
    sampler = NeighbourBatchSampler(image_ids, features, batch_size=8, hard_fraction=1.0, group_size=4,
                                    num_neighbours=3, drop_last=True, seed=0)
    number = [int(name[3:]) for name in sampler.image_names]  # image codes follow the sorted names
    for code, row in enumerate(sampler.neighbours.tolist()):
        assert {number[n] for n in row} == {number[code] // 4 * 4 + k for k in range(4)} - {number[code]}
    batches = list(sampler)
    assert len(batches) == 128 // 2 and all(len(b) == 8 for b in batches)  # two anchors from the stream per batch
    for batch in batches:
        names = [image_ids[row] for row in batch]
        assert len(set(names)) == 8
        for group in (names[:4], names[4:]):
            assert len({int(name[3:]) // 4 for name in group}) == 1  # one cluster: the anchor and its neighbours


def test_neighbour_batches_mix_groups_and_stream_and_follow_seed_and_epoch():
    image_ids, features = objects_corpus()
    make = lambda seed: NeighbourBatchSampler(image_ids, features, batch_size=16, hard_fraction=0.5, group_size=4,
                                              num_neighbours=3, seed=seed)
    sampler = make(0)
    first = list(sampler)
    assert first == list(make(0))
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(make(1)) != first
    stream_rows = set()
    for batch in first:
        names = [image_ids[row] for row in batch]
        assert len(set(names)) == len(names)
        for start in (0, 4):  # two groups of four: an anchor and its three nearest images
            assert len({int(name[3:]) // 4 for name in names[start:start + 4]}) == 1
        stream_rows.update([batch[0], batch[4], *batch[8:]])
    assert stream_rows == set(range(len(image_ids)))  # every caption once as an anchor or filler


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hard_fraction": 1.5}, "hard_fraction=1.5 must be between 0 and 1"),
        ({"group_size": 1}, "group_size=1 must be between 2 and the images of a batch"),
        ({"batch_captions_per_image": 2, "group_size": 8}, r"group_size=8 must be between 2 and the images of a batch \(4\)"),
        ({"group_size": 4, "num_neighbours": 2}, "num_neighbours=2 must be at least group_size - 1"),
    ],
)
def test_neighbour_sampler_names_bad_settings(kwargs, message):
    image_ids, features = objects_corpus()
    with pytest.raises(ValueError, match=message):
        NeighbourBatchSampler(image_ids, features, batch_size=8, **kwargs)
    with pytest.raises(ValueError, match="features has 3 entries but image_ids has 128"):
        NeighbourBatchSampler(image_ids, features[:3], batch_size=8)


def test_several_captions_of_each_image_come_together_and_the_plan_stays_the_same():
    image_ids, langs = flickr_like_rows()
    one = UniqueImageBatchSampler(image_ids, batch_size=8, langs=langs, drop_last=True, seed=3)
    two = UniqueImageBatchSampler(image_ids, batch_size=16, langs=langs, drop_last=True, seed=3,
                                  batch_captions_per_image=2)
    planned, batches = list(one), list(two)
    assert [batch[::2] for batch in batches] == planned  # the planned rows, each followed by one more caption
    for batch in batches:
        assert len(batch) == 16 and len(set(batch)) == 16
        pairs = [(image_ids[batch[i]], image_ids[batch[i + 1]]) for i in range(0, 16, 2)]
        assert all(a == b for a, b in pairs) and len({a for a, _ in pairs}) == 8


def test_neighbour_groups_keep_their_images_with_several_captions_each():
    image_ids, features = objects_corpus()
    sampler = NeighbourBatchSampler(image_ids, features, batch_size=16, hard_fraction=1.0, group_size=4,
                                    num_neighbours=3, drop_last=True, seed=0, batch_captions_per_image=2)
    for batch in sampler:
        names = [image_ids[row] for row in batch]
        assert names[::2] == names[1::2] and len(set(names)) == 8
        for group in (names[:8], names[8:]):
            assert len({int(name[3:]) // 4 for name in group}) == 1


def test_several_captions_per_image_must_divide_the_batch_and_exist():
    image_ids, langs = flickr_like_rows()
    with pytest.raises(ValueError, match="batch_captions_per_image=3 must be >= 1 and divide batch_size=16"):
        UniqueImageBatchSampler(image_ids, batch_size=16, batch_captions_per_image=3)
    with pytest.raises(ValueError, match="image 'b' has 1 caption\\(s\\), fewer than batch_captions_per_image=2"):
        UniqueImageBatchSampler(["a", "a", "b"], batch_size=2, batch_captions_per_image=2)
