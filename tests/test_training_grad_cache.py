"""GradCache: sub-batched embedding passes give the gradients of one pass over the whole batch."""

from __future__ import annotations

import pytest
import torch

from seeyou_ml.data.collator import SeeYouCollator
from seeyou_ml.presets import tiny_processor
from seeyou_ml.training.grad_cache import cache_embeddings, embed_pair, split_inputs
from seeyou_ml.losses import active_weights, compute_losses
from seeyou_ml.training.config import LossTermConfig
from training_fixtures import IMAGE_SIZE, make_records, tiny_model


@pytest.fixture()
def batch(tiny_tokenizer):
    records = make_records(12)
    return SeeYouCollator(tiny_processor(tiny_tokenizer, image_size=IMAGE_SIZE))(records)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _loss(outputs, batch, model):
    weights = active_weights({"contrastive_loss": LossTermConfig()}, step=0)
    return compute_losses(outputs, batch, model, weights)[0]


def _batchnorm_eval(model):
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()  # per-sample forward: the embedding of a row does not depend on its sub-batch
    return model


@pytest.mark.parametrize("sub_batch_size", [3, 5])
def test_gradients_equal_one_big_batch(tiny_tokenizer, batch, sub_batch_size):
    model = _batchnorm_eval(tiny_model(len(tiny_tokenizer)))
    reference_loss = _loss(embed_pair(model, batch), batch, model)
    reference_loss.backward()
    reference = _grads(model)
    model.zero_grad(set_to_none=True)

    cached = cache_embeddings(model, batch, sub_batch_size)
    assert cached.sizes == [len(c["input_ids"]) for c in split_inputs(batch, sub_batch_size)]
    loss = _loss(cached.embeddings, batch, model)
    loss.backward()
    cached.backward()
    grads = _grads(model)

    assert loss.item() == pytest.approx(reference_loss.item(), abs=1e-6)
    assert grads.keys() == reference.keys() and len(grads) == len(list(model.parameters()))
    worst = max((grads[n] - reference[n]).abs().max().item() for n in reference)
    assert worst <= 1e-5
    assert reference["logit_scale"].abs().item() > 0 and reference["visual_projection.weight"].abs().max() > 1e-4


def test_dropout_is_replayed_in_the_second_pass(tiny_tokenizer, batch):
    model = _batchnorm_eval(tiny_model(len(tiny_tokenizer), text_dropout=0.3))
    torch.manual_seed(0)
    cached = cache_embeddings(model, batch, sub_batch_size=4)
    replayed = []
    original = cached.model

    class Recorder(torch.nn.Module):
        def get_image_features(self, **kwargs):
            return original.get_image_features(**kwargs)

        def get_text_features(self, **kwargs):
            out = original.get_text_features(**kwargs)
            replayed.append(out.pooler_output.detach())
            return out

    cached.model = Recorder()
    loss = _loss(cached.embeddings, batch, model)
    loss.backward()
    cached.backward()
    # With dropout on, a second draw would differ; the replay reproduces every cached embedding exactly.
    assert torch.equal(torch.cat(replayed), cached.embeddings["text_embeds"].detach())
    torch.manual_seed(1)
    fresh = model.get_text_features(input_ids=batch["input_ids"][:4], attention_mask=batch["attention_mask"][:4])
    assert not torch.allclose(fresh.pooler_output, cached.embeddings["text_embeds"][:4])


def test_backward_before_the_loss_is_refused(tiny_tokenizer, batch):
    cached = cache_embeddings(tiny_model(len(tiny_tokenizer)), batch, sub_batch_size=6)
    with pytest.raises(RuntimeError, match="back-propagate the loss"):
        cached.backward()
