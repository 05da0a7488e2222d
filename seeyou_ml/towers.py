"""Wrapping any Hugging Face vision backbone and text encoder as the two towers of a dual encoder.

A tower is the plain `AutoModel` of its config, so pretrained checkpoints load into it unchanged. This module owns
what differs between backbones: how a tower is built, how wide its output is, how its output becomes one vector
(text poolers are picked from a small registry, as OpenCLIP's `hf_model.py` does) and how a ResNet, which has no
gradient checkpointing of its own, is checkpointed block by block through its stages.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import nn
from transformers import AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention

TextPooler = Callable[[object, torch.Tensor], torch.Tensor]
TEXT_POOLERS: dict[str, TextPooler] = {}


def register_text_pooler(name: str) -> Callable[[TextPooler], TextPooler]:
    """Registers `fn(text_outputs, attention_mask) -> (B, H)` as the text pooling called `name`."""

    def decorator(fn: TextPooler) -> TextPooler:
        TEXT_POOLERS[name] = fn
        return fn

    return decorator


@register_text_pooler("cls")
def cls_pool(outputs, attention_mask: torch.Tensor) -> torch.Tensor:
    """The first token's hidden state (`<s>` for XLM-R, `[CLS]` for BERT)."""
    return outputs.last_hidden_state[:, 0]  # (B, H)


@register_text_pooler("mean")
def mean_pool(outputs, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states of the non-padding tokens."""
    mask = attention_mask.unsqueeze(-1).to(outputs.last_hidden_state.dtype)  # (B, T, 1)
    summed = (outputs.last_hidden_state * mask).sum(dim=1)  # (B, H)
    return summed / mask.sum(dim=1).clamp(min=1.0)


@register_text_pooler("pooler")
def pooler_pool(outputs, attention_mask: torch.Tensor) -> torch.Tensor:
    """The tower's own pooler output (BERT's tanh layer over `[CLS]`), as `VisionTextDualEncoderModel` uses."""
    if outputs.pooler_output is None:
        raise ValueError("text_pooling='pooler' needs a text tower with a pooling layer; use 'cls' or 'mean'.")
    return outputs.pooler_output


def build_tower(config: PreTrainedConfig, with_pooler: bool = True) -> PreTrainedModel:
    """Builds the bare `AutoModel` of `config` with random weights.

    Args:
        config: any encoder config `AutoModel` knows.
        with_pooler: when False and the model class has an `add_pooling_layer` switch (BERT, XLM-R, ViT), the
            pooling layer is left out, so no parameter goes unused (DDP requires every parameter to get a grad).
    """
    model_class = _auto_model_class(config)
    return model_class._from_config(config, **_pooler_kwargs(model_class, with_pooler))


def load_tower(name_or_path: str, with_pooler: bool = True, **kwargs) -> PreTrainedModel:
    """Loads a pretrained tower (`AutoModel.from_pretrained`), leaving out an unused pooler as `build_tower` does.

    Keywords that name config attributes (e.g. `hidden_dropout_prob`) update the tower's config; the rest go to
    `from_pretrained`. A CLIP checkpoint gives its vision tower.
    """
    from transformers import AutoConfig

    config = kwargs.pop("config", None)
    if config is None:
        config, kwargs = AutoConfig.from_pretrained(name_or_path, return_unused_kwargs=True, **kwargs)
        if config.model_type == "clip":
            config = config.vision_config
    model_class = _auto_model_class(config)
    kwargs.update(_pooler_kwargs(model_class, with_pooler))
    return model_class.from_pretrained(name_or_path, config=config, **kwargs)


def _pooler_kwargs(model_class: type[PreTrainedModel], with_pooler: bool) -> dict:
    """`{"add_pooling_layer": False}` when the pooler is unwanted and the class can leave it out, else `{}`."""
    if not with_pooler and "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        return {"add_pooling_layer": False}
    return {}


def _auto_model_class(config: PreTrainedConfig) -> type[PreTrainedModel]:
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        return MODEL_MAPPING[type(config)]
    except KeyError:
        raise ValueError(
            f"AutoModel has no model for config type {type(config).__name__} (model_type={config.model_type!r}); "
            "use a vision backbone or text encoder that `transformers.AutoModel` can build."
        ) from None


def vision_width(config: PreTrainedConfig, stage: int = -1) -> int:
    """Channels of a vision tower's output: stage `stage` (from the end; -1 is the pooled last one) of a CNN, the
    hidden size of a ViT."""
    if getattr(config, "hidden_sizes", None):
        if not -len(config.hidden_sizes) <= stage < 0:
            raise ValueError(f"stage {stage} names no stage of a vision tower with {len(config.hidden_sizes)} "
                             "stages; count from the end (-1 is the last).")
        return config.hidden_sizes[stage]
    return config.hidden_size


def is_resnet(model: nn.Module) -> bool:
    """Whether `model` is transformers' `ResNetModel` (stem, stages, average pool)."""
    return getattr(getattr(model, "config", None), "model_type", None) == "resnet"


def encode_image(
    vision_model: PreTrainedModel,
    pixel_values: torch.Tensor,
    checkpoint_fn: Callable | None = None,
) -> tuple[torch.Tensor, object]:
    """Runs the vision tower; returns its pooled vector and its full output.

    Args:
        vision_model: a ResNet (its `last_hidden_state` is the (B, C, H, W) feature map) or a ViT-style backbone
            (`last_hidden_state` holds (B, N, C) tokens).
        pixel_values: (B, 3, H, W) images.
        checkpoint_fn: when given, a ResNet runs each residual block of its stages but the last under it
            (activations are re-computed in the backward pass).

    Returns:
        `(pooled, outputs)`: pooled (B, C) and the tower's `ModelOutput`, whose `last_hidden_state` the grounding head
        reads.
    """
    if is_resnet(vision_model):
        outputs = _resnet_forward(vision_model, pixel_values, checkpoint_fn)
        return outputs.pooler_output.flatten(1), outputs  # (B, C, 1, 1) -> (B, C)
    outputs = vision_model(pixel_values=pixel_values, return_dict=True)
    if getattr(outputs, "pooler_output", None) is not None:
        pooled = outputs.pooler_output
        return (pooled.flatten(1) if pooled.dim() == 4 else pooled), outputs
    return outputs.last_hidden_state[:, 0], outputs  # first token, (B, C)


def _resnet_forward(
    model: PreTrainedModel, pixel_values: torch.Tensor, checkpoint_fn: Callable | None
) -> BaseModelOutputWithPoolingAndNoAttention:
    """`ResNetModel.forward`, optionally checkpointed (HF's ResNet has no checkpointing of its own).

    The unit of recompute is each residual block: a whole first stage of ResNet-50 (three bottlenecks at 1/4
    resolution) would hold most of the activation memory during its own recompute. The last stage is not
    checkpointed: its activations live only until the start of the backward pass, when nothing is being recomputed,
    and at 1/32 resolution they are small (a few percent of ResNet-50's), while it holds a fifth of the compute.
    """
    hidden = model.embedder(pixel_values)  # (B, C0, H/4, W/4)
    last = len(model.encoder.stages) - 1
    stage_maps = []
    for index, stage in enumerate(model.encoder.stages):
        for block in stage.layers:
            checkpointed = checkpoint_fn is not None and index < last
            hidden = checkpoint_fn(block, hidden) if checkpointed else block(hidden)
        stage_maps.append(hidden)
    pooled = model.pooler(hidden)  # (B, C, 1, 1)
    # The stages' maps are kept (they are alive for the backward pass anyway) for a head that reads a finer one.
    return BaseModelOutputWithPoolingAndNoAttention(
        last_hidden_state=hidden, pooler_output=pooled, hidden_states=tuple(stage_maps)
    )


def text_position_limit(text_model: nn.Module) -> int | None:
    """The longest token sequence the text tower has position embeddings for, or None when it has no such table.

    RoBERTa-style towers (XLM-R) number positions from `padding_idx + 1`, so they hold that many fewer tokens.
    """
    embeddings = getattr(text_model, "embeddings", None)
    positions = getattr(embeddings, "position_embeddings", None)
    if not isinstance(positions, nn.Embedding):
        return None
    padding_idx = getattr(embeddings, "padding_idx", None)
    return positions.num_embeddings - (padding_idx + 1 if padding_idx is not None else 0)


def length_groups(attention_mask: torch.Tensor, groups: int) -> list[tuple[torch.Tensor, int]] | None:
    """Splits a right-padded batch into `groups` runs of rows sorted by length, each with its own longest length.

    Returns:
        `[(rows, length)]` with `rows` a (b,) index tensor, or None where grouping saves nothing: one group, no
        padding, fewer rows than groups, or a mask that is not right-padded (its padding cannot be cut off the end).
    """
    rows, width = attention_mask.shape
    if groups <= 1 or rows < groups:
        return None
    lengths = attention_mask.sum(dim=1)  # (B,)
    positions = torch.arange(width, device=attention_mask.device)
    if int(lengths.min()) == width or not torch.equal(attention_mask.bool(), positions < lengths[:, None]):
        return None
    order = torch.argsort(lengths, stable=True)
    return [(chunk, int(lengths[chunk[-1]])) for chunk in order.chunk(groups)]


def encode_text(
    text_model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    pooling: str,
) -> tuple[torch.Tensor, object]:
    """Runs the text tower; returns the pooled (B, H) caption vector and the tower's output.

    Raises:
        ValueError: when a caption has more tokens than the tower has positions, naming its row and the limit.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    limit = text_position_limit(text_model)
    if limit is not None and input_ids.shape[1] > limit:
        lengths = attention_mask.sum(dim=1)  # (B,)
        row = int(lengths.argmax())
        raise ValueError(f"caption {row} of the batch has {int(lengths[row])} tokens (input_ids is {input_ids.shape[1]} "
                         f"long), but the text tower has positions for {limit}; tokenise with truncation=True and "
                         f"max_length <= {limit}, or shorten the caption.")
    outputs = text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
    return TEXT_POOLERS[pooling](outputs, attention_mask), outputs
