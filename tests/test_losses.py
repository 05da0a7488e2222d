import contextlib
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from seeyou_ml.data.augment_image import MixUp
from seeyou_ml.geometry import box_cell_coverage, generalized_box_iou
from seeyou_ml.losses import (
    attention_iou,
    attention_iou_loss,
    attention_mass_loss,
    box_loss,
    compute_losses,
    contrastive_loss,
    gather_no_grad,
    hard_negative_indices,
    hardest_negative_indices,
    itm_loss,
    sample_hard_negatives,
    soft_contrastive_loss,
)
from seeyou_ml.presets import tiny_config


def test_symmetric_infonce_against_a_hand_computed_3x3_example():
    images = torch.eye(3)
    texts = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    scale = torch.tensor(2.0)
    # logits = 2 * images @ texts.T = [[2, 1.2, 0], [0, 1.6, 0], [0, 0, 2]]
    e = math.exp
    image_to_text = [
        -math.log(e(2) / (e(2) + e(1.2) + e(0))),
        -math.log(e(1.6) / (e(0) + e(1.6) + e(0))),
        -math.log(e(2) / (e(0) + e(0) + e(2))),
    ]
    # The transpose: columns of the same matrix, [[2, 0, 0], [1.2, 1.6, 0], [0, 0, 2]].
    text_to_image = [
        -math.log(e(2) / (e(2) + e(0) + e(0))),
        -math.log(e(1.6) / (e(1.2) + e(1.6) + e(0))),
        -math.log(e(2) / (e(0) + e(0) + e(2))),
    ]
    expected = (sum(image_to_text) / 3 + sum(text_to_image) / 3) / 2
    assert contrastive_loss(images, texts, scale).item() == pytest.approx(expected, abs=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(vocab_size: int):
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, vocab_size, (8, 6), generator=generator)
    input_ids[:, 0] = 0
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                pixel_values=torch.randn(8, 3, 32, 32, generator=generator))


def _model():
    from seeyou_ml import SeeYouModel

    torch.manual_seed(0)
    # eval(): BatchNorm then uses running statistics, so half batches see the same function as the full batch.
    return SeeYouModel(tiny_config(vocab_size=40, projection_dim=8, vision_widths=(8, 16), vision_depths=(1, 1),
                                   text_hidden_size=16)).eval()


def _projection_grads(model):
    return torch.cat([model.visual_projection.weight.grad.flatten(), model.text_projection.weight.grad.flatten()])


@contextlib.contextmanager
def _process_group(rank: int, world_size: int, port: int):
    """A gloo process group of `world_size` processes on this machine, for a worker started by `mp.spawn`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    with _process_group(rank, world_size, port):
        model = _model()
        batch = _batch(40)
        local = {k: v.chunk(world_size)[rank] for k, v in batch.items()}
        loss = model(**local, return_loss=True).loss
        loss.backward()
        # What DDP does: average the loss for reporting and the gradients over ranks.
        reported = loss.detach().clone()
        dist.all_reduce(reported)
        grads = _projection_grads(model)
        dist.all_reduce(grads)
        if rank == 0:
            torch.save({"loss": reported / world_size, "grads": grads / world_size}, os.path.join(out_dir, "r.pt"))


def test_two_processes_match_one_process_on_the_full_batch(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    distributed = torch.load(tmp_path / "r.pt")

    model = _model()
    loss = model(**_batch(40), return_loss=True).loss
    loss.backward()
    torch.testing.assert_close(distributed["loss"], loss.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(distributed["grads"], _projection_grads(model), atol=1e-5, rtol=0)
    assert _projection_grads(model).abs().sum() > 0


def test_soft_loss_with_identity_targets_is_the_clip_loss():
    logits = torch.randn(6, 6)
    labels = torch.arange(6)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(soft_contrastive_loss(logits, torch.eye(6)), expected)


def test_soft_loss_weights_both_captions_of_a_mixed_image():
    logits = torch.randn(4, 4)
    targets = MixUp.targets(0.7, torch.tensor([1, 0, 3, 2]))
    log_p_image = F.log_softmax(logits, -1)
    log_p_text = F.log_softmax(logits.T, -1)
    image_loss = -(0.7 * log_p_image.diagonal() + 0.3 * log_p_image[torch.arange(4), [1, 0, 3, 2]]).mean()
    text_loss = -(0.7 * log_p_text.diagonal() + 0.3 * log_p_text[torch.arange(4), [1, 0, 3, 2]]).mean()
    torch.testing.assert_close(soft_contrastive_loss(logits, targets), (image_loss + text_loss) / 2)


def test_soft_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"square \(N, N\) logits"):
        soft_contrastive_loss(torch.randn(2, 4), torch.eye(2))
    with pytest.raises(ValueError, match=r"targets \(3, 3\) must match"):
        soft_contrastive_loss(torch.randn(2, 2), torch.eye(3))


# ---- grounding losses ------------------------------------------------------------------------------------------------


def _cxcywh(x0, y0, x1, y1):
    return [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]


@pytest.mark.parametrize(
    "pred, gold, inter, enclosing",
    [
        # Overlapping: intersection 0.1 x 0.1, enclosing box 0.3 x 0.3.
        ((0.1, 0.1, 0.3, 0.3), (0.2, 0.2, 0.4, 0.4), 0.01, 0.09),
        # Disjoint: no intersection, enclosing box [0, 0.6] x [0, 0.2].
        ((0.0, 0.0, 0.1, 0.2), (0.5, 0.0, 0.6, 0.2), 0.0, 0.12),
        # Nested: the small box inside the large one, which is also the enclosing box.
        ((0.3, 0.3, 0.5, 0.5), (0.2, 0.2, 0.7, 0.7), 0.04, 0.25),
    ],
    ids=["overlapping", "disjoint", "nested"],
)
def test_box_loss_is_five_l1_plus_two_giou_against_hand_computed_boxes(pred, gold, inter, enclosing):
    union = (pred[2] - pred[0]) * (pred[3] - pred[1]) + (gold[2] - gold[0]) * (gold[3] - gold[1]) - inter
    giou = inter / union - (enclosing - union) / enclosing
    pred_c, gold_c = torch.tensor([_cxcywh(*pred)]), torch.tensor([_cxcywh(*gold)])
    l1 = sum(abs(a - b) for a, b in zip(_cxcywh(*pred), _cxcywh(*gold)))
    assert generalized_box_iou(torch.tensor([pred]), torch.tensor([gold])).item() == pytest.approx(giou, abs=1e-6)
    assert box_loss(pred_c, gold_c).item() == pytest.approx(5 * l1 + 2 * (1 - giou), abs=1e-5)


def test_box_loss_of_a_perfect_box_is_zero_and_disjoint_giou_is_negative():
    box = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    assert box_loss(box, box).item() == pytest.approx(0.0, abs=1e-7)
    far = generalized_box_iou(torch.tensor([[0.0, 0.0, 0.1, 0.1]]), torch.tensor([[0.9, 0.9, 1.0, 1.0]]))
    assert far.item() == pytest.approx(0.0 - (1.0 - 0.02) / 1.0, abs=1e-6)


def test_box_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(N, 4\) boxes of one shape"):
        box_loss(torch.zeros(2, 4), torch.zeros(3, 4))


def test_box_cell_coverage_and_attention_iou_against_a_hand_computed_mask():
    # A 2 x 2 grid; the box [0.25, 0, 1, 0.5] covers half of cell (0, 0), all of cell (0, 1), nothing below.
    mask = box_cell_coverage(torch.tensor([[0.25, 0.0, 1.0, 0.5]]), 2, 2)
    torch.testing.assert_close(mask, torch.tensor([[0.5, 1.0, 0.0, 0.0]]))
    attention = torch.tensor([[0.2, 0.4, 0.3, 0.1]])
    # Scaled to a peak of 1: [0.5, 1, 0.75, 0.25]; sum of minima 0.5 + 1 = 1.5, of maxima 0.5 + 1 + 0.75 + 0.25 = 2.5.
    assert attention_iou(attention, mask).item() == pytest.approx(1.5 / 2.5, abs=1e-6)
    assert attention_iou_loss(attention, mask).item() == pytest.approx(1 - 1.5 / 2.5, abs=1e-6)
    assert attention_iou(mask / mask.sum(), mask).item() == pytest.approx(1.0, abs=1e-6)


def test_attention_mass_loss_against_a_hand_computed_mask():
    # The box of the test above: coverage [0.5, 1, 0, 0], as a distribution [1/3, 2/3, 0, 0].
    mask = torch.tensor([[0.5, 1.0, 0.0, 0.0]])
    attention = torch.tensor([[0.2, 0.4, 0.3, 0.1]])
    expected = -(math.log(0.2) / 3 + 2 * math.log(0.4) / 3)
    assert attention_mass_loss(attention, mask).item() == pytest.approx(expected, abs=1e-6)
    # Least for the map that equals the normalised mask (its entropy); any mass outside the box costs more.
    inside = torch.tensor([[1 / 3, 2 / 3, 0.0, 0.0]])
    entropy = -(math.log(1 / 3) / 3 + 2 * math.log(2 / 3) / 3)
    assert attention_mass_loss(inside, mask).item() == pytest.approx(entropy, abs=1e-6)
    leaking = torch.tensor([[0.3, 0.6, 0.1, 0.0]])
    assert attention_mass_loss(leaking, mask).item() > entropy
    # Averaged over maps.
    both = attention_mass_loss(torch.cat([attention, inside]), mask.expand(2, 4)).item()
    assert both == pytest.approx((expected + entropy) / 2, abs=1e-6)


def test_itm_loss_is_binary_cross_entropy_over_positives_and_negatives():
    positive, negative = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0, 1.0, 0.0])
    sigmoid = torch.sigmoid
    expected = -(
        torch.log(sigmoid(positive)).sum() + torch.log(1 - sigmoid(negative)).sum()
    ) / 6
    assert itm_loss(positive, negative).item() == pytest.approx(expected.item(), abs=1e-6)


def test_negative_sampler_never_draws_a_positive():
    generator = torch.Generator().manual_seed(0)
    ids = torch.tensor([0, 0, 1, 2, 2, 3])
    positive = ids[:, None] == ids[None, :]
    # The positives have by far the highest similarity: a sampler that did not mask them would draw them.
    similarity = torch.where(positive, torch.tensor(50.0), torch.randn(6, 6, generator=generator))
    for _ in range(200):
        drawn = sample_hard_negatives(similarity, positive, generator)
        assert not positive[torch.arange(6), drawn].any()


def test_negative_sampler_follows_the_softmax_of_the_similarities():
    generator = torch.Generator().manual_seed(0)
    similarity = torch.tensor([[9.0, 1.0, 0.0, -1.0]]).repeat(20_000, 1)
    positive = torch.tensor([[True, False, False, False]]).repeat(20_000, 1)
    counts = torch.bincount(sample_hard_negatives(similarity, positive, generator), minlength=4).float()
    expected = torch.softmax(torch.tensor([1.0, 0.0, -1.0]), dim=0)  # columns 1..3
    assert counts[0] == 0
    # 20,000 draws: the standard error of each share is below 0.0035.
    torch.testing.assert_close(counts[1:] / counts.sum(), expected, atol=0.015, rtol=0)


@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_hard_negatives_follow_the_softmax_of_the_scaled_similarities(scale):
    # Text 0 pairs with image 0; image 1 is at cosine 0.8 from it, image 2 at cosine 0.
    texts = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    images = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    ids = torch.tensor([0, 1, 2])
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([hard_negative_indices(images, texts, ids, generator, scale)[0][0] for _ in range(4000)])
    share = (draws == 1).float().mean()
    expected = torch.softmax(torch.tensor([0.8, 0.0]) * scale, dim=0)[0]  # 0.69 at scale 1, 0.98 at scale 5
    torch.testing.assert_close(share, expected, atol=0.03, rtol=0)


def test_negative_sampler_names_a_row_without_negatives():
    with pytest.raises(ValueError, match="row 1 of the batch has no negative"):
        sample_hard_negatives(torch.zeros(2, 2), torch.tensor([[True, False], [True, True]]))


def _negatives_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    with _process_group(rank, world_size, port):
        images, texts, ids = _negative_inputs()
        local = [t.chunk(world_size)[rank] for t in (images, texts, ids)]
        for name, num_rows in (("negatives", None), ("first_two", 2)):
            drawn = hard_negative_indices(*local, torch.Generator().manual_seed(7), num_rows=num_rows)
            gathered = [gather_no_grad(d) for d in drawn]
            if rank == 0:
                torch.save(gathered, os.path.join(out_dir, f"{name}.pt"))


def _negative_inputs():
    generator = torch.Generator().manual_seed(3)
    images = F.normalize(torch.randn(8, 5, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(8, 5, generator=generator), dim=-1)
    return images, texts, torch.tensor([0, 1, 1, 2, 3, 4, 5, 5])


def test_hard_negatives_of_two_processes_equal_one_process(tmp_path):
    mp.spawn(_negatives_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    distributed = torch.load(tmp_path / "negatives.pt")
    single = hard_negative_indices(*_negative_inputs(), torch.Generator().manual_seed(7))
    for got, want in zip(distributed, single):
        torch.testing.assert_close(got, want)
    ids = _negative_inputs()[2]
    assert (ids[single[0]] != ids).all() and (ids[single[1]] != ids).all()
    # Drawing for each process's first two pairs only: rows 0, 1 (process 0) and 4, 5 (process 1) of the global batch,
    # each against the whole batch, with one generator.
    images, texts, ids = _negative_inputs()
    rows = torch.tensor([0, 1, 4, 5])
    generator = torch.Generator().manual_seed(7)
    positive = ids[rows][:, None] == ids[None, :]
    want_image = sample_hard_negatives(texts[rows] @ images.T, positive, generator)
    want_text = sample_hard_negatives(images[rows] @ texts.T, positive, generator)
    got_image, got_text = torch.load(tmp_path / "first_two.pt")
    torch.testing.assert_close(got_image, want_image)
    torch.testing.assert_close(got_text, want_text)
    assert (ids[got_image] != ids[rows]).all() and (ids[got_text] != ids[rows]).all()


class _MatchingModel(torch.nn.Module):
    """A grounding head and an inverse temperature: what the matching term reads of a model."""

    def __init__(self):
        super().__init__()
        from seeyou_ml.configuration import SeeYouGroundingConfig
        from seeyou_ml.grounding import GroundingHead

        torch.manual_seed(0)
        config = SeeYouGroundingConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                                       rank_negatives=3)
        self.grounding_head = GroundingHead(config, text_width=8, vision_width=8)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(5.0)))


def _matching_inputs(model, rank: int = 0, world_size: int = 1):
    """This process's share of a batch of 8 pairs: the outputs and batch the matching term reads, and its regions."""
    generator = torch.Generator().manual_seed(5)
    regions = torch.randn(8, 4, 8, generator=generator)
    text = torch.randn(8, 5, 8, generator=generator)
    mask = torch.ones(8, 5, dtype=torch.long)
    mask[1::3, 3:] = 0
    images, texts, ids = _negative_inputs()
    rows = slice(rank * 8 // world_size, (rank + 1) * 8 // world_size)
    regions = regions[rows].clone().requires_grad_()
    head = model.grounding_head
    outputs = {"itm_logits": head.fuse(text[rows], mask[rows], regions, (2, 2), locate=False).itm_logits,
               "grounding_regions": regions, "grounding_text": text[rows], "region_size": (2, 2),
               "image_embeds": images[rows], "text_embeds": texts[rows]}
    batch = {"image_id": [f"img{i}" for i in ids[rows].tolist()], "attention_mask": mask[rows]}
    return outputs, batch, regions


def _matching_worker(rank: int, world_size: int, port: int, out_dir: str, term: str) -> None:
    with _process_group(rank, world_size, port):
        model = _MatchingModel()
        outputs, batch, regions = _matching_inputs(model, rank, world_size)
        _, terms = compute_losses(outputs, batch, model, {term: 1.0})
        terms[term].backward()
        losses = [torch.empty(()) for _ in range(world_size)]
        dist.all_gather(losses, terms[term].detach())
        grads = gather_no_grad(regions.grad)
        if rank == 0:
            torch.save({"losses": losses, "grads": grads}, os.path.join(out_dir, "matching.pt"))


@pytest.mark.parametrize("term", ["itm_loss", "itm_rank_loss"])
def test_the_matching_terms_of_two_processes_equal_one_process(tmp_path, term):
    # Each process matches its own 4 pairs, with negatives found in (and regions gathered over) all 8: the mean of
    # their losses is the loss of one process holding the 8, and the regions' gradients (summed over processes, as
    # the contrastive loss's are) are that process's.
    mp.spawn(_matching_worker, args=(2, _free_port(), str(tmp_path), term), nprocs=2, join=True)
    distributed = torch.load(tmp_path / "matching.pt")
    model = _MatchingModel()
    outputs, batch, regions = _matching_inputs(model)
    _, terms = compute_losses(outputs, batch, model, {term: 1.0})
    terms[term].backward()
    torch.testing.assert_close(torch.stack(distributed["losses"]).mean(), terms[term].detach())
    torch.testing.assert_close(distributed["grads"] / 2, regions.grad)


def test_hardest_negatives_are_the_highest_scoring_pairs_of_other_images():
    images, texts, ids = _negative_inputs()  # ids 0, 1, 1, 2, 3, 4, 5, 5
    negative_image, negative_text = hardest_negative_indices(images, texts, ids, num_negatives=3)
    for similarity, found in ((texts @ images.T, negative_image), (images @ texts.T, negative_text)):
        for row in range(8):
            others = [j for j in range(8) if ids[j] != ids[row]]
            want = sorted(others, key=lambda j: -similarity[row, j].item())[:3]
            assert found[row].tolist() == want
    # Each process's first rows only, still against the whole batch.
    first_two = hardest_negative_indices(images, texts, ids, num_negatives=3, num_rows=2)
    torch.testing.assert_close(first_two[0], negative_image[:2])
    torch.testing.assert_close(first_two[1], negative_text[:2])


def test_hardest_negatives_name_a_batch_with_too_few():
    images, texts, ids = _negative_inputs()  # rows of image 1 and image 5 have 6 captions of other images
    with pytest.raises(ValueError, match="has 6 negatives .* fewer than the 7 that grounding_config.rank_negatives"):
        hardest_negative_indices(images, texts, ids, num_negatives=7)


def test_the_rank_term_is_the_softmax_cross_entropy_over_each_pair_and_its_hardest_negatives():
    model = _MatchingModel()
    outputs, batch, _ = _matching_inputs(model)
    _, terms = compute_losses(outputs, batch, model, {"itm_rank_loss": 1.0})
    # Brute force: every caption-image pair of the 8 through the head, then each row's softmax over its own pair and
    # its 3 hardest negatives, in both directions.
    regions, text, mask = outputs["grounding_regions"], outputs["grounding_text"], batch["attention_mask"]
    t, i = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    logits = model.grounding_head.fuse(text[t.flatten()], mask[t.flatten()], regions[i.flatten()], (2, 2),
                                       locate=False).itm_logits.view(8, 8)  # (caption, image)
    images, texts, ids = _negative_inputs()
    negative_image, negative_text = hardest_negative_indices(images, texts, ids, num_negatives=3)
    rows = torch.arange(8)[:, None]
    caption_side = torch.cat([logits.diagonal()[:, None], logits[rows, negative_image]], dim=1)
    image_side = torch.cat([logits.diagonal()[:, None], logits.T[rows, negative_text]], dim=1)
    target = torch.zeros(8, dtype=torch.long)
    expected = (F.cross_entropy(caption_side, target) + F.cross_entropy(image_side, target)) / 2
    torch.testing.assert_close(terms["itm_rank_loss"].detach(), expected.detach())


def test_a_term_counts_from_its_start_step_at_every_every_th_step():
    from seeyou_ml.losses import active_weights
    from seeyou_ml.training.config import LossTermConfig

    losses = {"contrastive_loss": LossTermConfig(), "box_loss": LossTermConfig(weight=2.0, start_step=3, every=2)}
    counted = [step for step in range(10) if "box_loss" in active_weights(losses, step)]
    assert counted == [3, 5, 7, 9]
    assert active_weights(losses, 5) == {"contrastive_loss": 1.0, "box_loss": 2.0}
    assert active_weights(losses, 6) == {"contrastive_loss": 1.0}
    assert active_weights(losses, 5.6) == {"contrastive_loss": 1.0, "box_loss": 2.0}  # a time schedule's position


def test_with_negative_captions_each_image_ranks_its_caption_against_them_and_the_hardest_rest():
    model = _MatchingModel()  # rank_negatives 3
    outputs, batch, _ = _matching_inputs(model)
    generator = torch.Generator().manual_seed(9)
    negative_text = torch.randn(8 * 2, 5, 8, generator=generator)  # two negative captions per image
    negative_mask = torch.ones(8 * 2, 5, dtype=torch.long)
    negative_mask[::5, 4:] = 0
    present = torch.ones(8, 2, dtype=torch.bool)
    present[3, 1] = False  # image 3 has one
    outputs.update(grounding_negative_text=negative_text, negative_attention_mask=negative_mask)
    batch["negative_caption_mask"] = present
    _, terms = compute_losses(outputs, batch, model, {"itm_rank_loss": 1.0})
    regions, text, mask = outputs["grounding_regions"], outputs["grounding_text"], batch["attention_mask"]
    head = model.grounding_head
    t, i = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    logits = head.fuse(text[t.flatten()], mask[t.flatten()], regions[i.flatten()], (2, 2),
                       locate=False).itm_logits.view(8, 8)  # (caption, image)
    own_image = torch.arange(8).repeat_interleave(2)
    negative = head.fuse(negative_text, negative_mask, regions[own_image], (2, 2), locate=False).itm_logits.view(8, 2)
    negative = negative.masked_fill(~present, float("-inf"))
    images, texts, ids = _negative_inputs()
    negative_image, hardest_text = hardest_negative_indices(images, texts, ids, num_negatives=3)
    rows = torch.arange(8)[:, None]
    caption_side = torch.cat([logits.diagonal()[:, None], logits[rows, negative_image]], dim=1)
    # 3 candidates: the 2 negative captions and the 1 hardest caption of the batch.
    image_side = torch.cat([logits.diagonal()[:, None], logits.T[rows, hardest_text[:, :1]], negative], dim=1)
    target = torch.zeros(8, dtype=torch.long)
    expected = (F.cross_entropy(caption_side, target) + F.cross_entropy(image_side, target)) / 2
    torch.testing.assert_close(terms["itm_rank_loss"].detach(), expected.detach())

    batch["negative_caption_mask"] = torch.ones(8, 4, dtype=torch.bool)
    outputs.update(grounding_negative_text=torch.randn(32, 5, 8), negative_attention_mask=torch.ones(32, 5))
    with pytest.raises(ValueError, match="4 negative captions per image, more than the 3 candidates"):
        compute_losses(outputs, batch, model, {"itm_rank_loss": 1.0})


def test_the_mention_term_pulls_each_named_objects_attention_into_its_box():
    from seeyou_ml.losses import LOSS_TERMS

    attention = torch.tensor([[[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]],
                              [[0.7, 0.1, 0.1, 0.1], [0.5, 0.2, 0.2, 0.1], [0.1, 0.1, 0.1, 0.7]]])  # (2, 3, 2 x 2)
    token_mask = torch.zeros(2, 3, 6, dtype=torch.bool)
    token_mask[0, 0, 1:3] = token_mask[0, 1, 4] = token_mask[1, 0, 2] = True  # row 0 names 2 objects, row 1 one
    boxes = torch.tensor([[[0.25, 0.25, 0.5, 0.5], [0.5, 0.25, 1.0, 0.5], [0.5, 0.5, 1.0, 1.0]],
                          [[0.5, 0.75, 1.0, 0.5], [0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0]]])  # (cx, cy, w, h)
    outputs = {"mention_attention": attention, "region_size": (2, 2)}
    batch = {"mention_token_mask": token_mask, "mention_boxes": boxes}
    _, terms = compute_losses(outputs, batch, None, {"mention_attention_loss": 1.0})
    # The top-left cell; the top row (half each); the bottom row (half each). Unnamed slots count for nothing.
    expected = -(math.log(0.4) + (math.log(0.1) + math.log(0.2)) / 2 + (math.log(0.1) + math.log(0.1)) / 2) / 3
    torch.testing.assert_close(terms["mention_attention_loss"], torch.tensor(expected))
    assert LOSS_TERMS["mention_attention_loss"].needs == ("grounding_head", "mentions")
    with pytest.raises(ValueError, match=r"mention_attention_loss needs \['mention_attention'\]"):
        compute_losses({"region_size": (2, 2)}, batch, None, {"mention_attention_loss": 1.0})


def test_listed_directions_are_those_every_named_object_lies_further_along_than_the_one_named_before():
    from seeyou_ml.losses import listed_directions

    token_mask = torch.zeros(3, 3, 6, dtype=torch.bool)
    boxes = torch.zeros(3, 3, 4)
    token_mask[0, 0, 1] = token_mask[0, 1, 3] = token_mask[0, 2, 4:6] = True  # three objects, named in slot order
    boxes[0, :, :2] = torch.tensor([[0.8, 0.5], [0.5, 0.6], [0.2, 0.9]])  # each further left and further down
    token_mask[1, 0, 4] = token_mask[1, 1, 1] = True  # slot 1 is named first
    boxes[1, :2, :2] = torch.tensor([[0.2, 0.2], [0.7, 0.9]])  # so the text goes left and up
    token_mask[2, 0, 2] = True  # one object: no direction
    directions = listed_directions(token_mask, boxes)  # left to right, right to left, top to bottom, bottom to top
    assert directions.tolist() == [[False, True, True, False], [False, True, False, True], [False] * 4]


def test_the_order_term_teaches_the_gates_the_named_words_and_the_direction_the_objects_lie_in():
    from seeyou_ml.losses import LOSS_TERMS, check_loss_terms
    from seeyou_ml.training.config import LossTermConfig

    token_mask = torch.zeros(2, 2, 4, dtype=torch.bool)
    token_mask[0, 0, 1] = token_mask[0, 1, 2] = True  # two objects, the first on the left of the second, higher up
    token_mask[1, 0, 0] = True  # one object
    boxes = torch.tensor([[[0.2, 0.1, 0.1, 0.1], [0.6, 0.5, 0.1, 0.1]], [[0.5, 0.5, 0.2, 0.2], [0.0] * 4]])
    gate_logits = torch.tensor([[0.0, 2.0, 1.0, -3.0], [1.0, -1.0, 0.5, 0.0]])
    direction_logits = torch.tensor([[1.0, 0.0, 2.0, -1.0], [5.0, 0.0, 0.0, 0.0]])
    attention_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])  # the first text's last token is padding
    outputs = {"order_gate_logits": gate_logits, "order_direction_logits": direction_logits}
    batch = {"mention_token_mask": token_mask, "mention_boxes": boxes, "attention_mask": attention_mask}
    _, terms = compute_losses(outputs, batch, None, {"order_loss": 1.0})
    words = [(0.0, 0), (2.0, 1), (1.0, 1), (1.0, 1), (-1.0, 0), (0.5, 0), (0.0, 0)]  # (logit, named) of 7 words
    gate = sum(math.log1p(math.exp(-x if named else x)) for x, named in words) / len(words)
    # The first text: left to right and top to bottom both hold; the second names one object and counts for nothing.
    direction = -math.log((math.exp(1.0) + math.exp(2.0)) / sum(math.exp(x) for x in (1.0, 0.0, 2.0, -1.0)))
    torch.testing.assert_close(terms["order_loss"], torch.tensor(gate + direction))
    assert LOSS_TERMS["order_loss"].needs == ("grounding_head", "mentions", "order_readout")
    with pytest.raises(ValueError, match="Loss term order_loss needs the head's order readout "
                                         r"\(grounding_config.order_readout: true\)"):
        check_loss_terms({"contrastive_loss": LossTermConfig(), "order_loss": LossTermConfig(start_step=5)}, False,
                         provided={"grounding_head", "mentions"})
