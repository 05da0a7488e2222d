import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from seeyou_ml.data.augment_image import MixUp
from seeyou_ml.losses import contrastive_loss, soft_contrastive_loss
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


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
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
    finally:
        dist.destroy_process_group()


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
