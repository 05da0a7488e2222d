"""The grounding head: words of a text attend over image regions to find what a phrase refers to.

Fusion layers in the style of ALBEF (Li et al. 2021) and X-VLM (Zeng et al. 2022): the text tower's token states are
the queries; the cells of the vision tower's feature map (ResNet H x W cells, or ViT patch tokens), each with a 2-D
sine-cosine position code, are keys and values. Every layer is self-attention over the text, cross-attention to the
regions and an FFN (pre-norm). Three readouts:

- an image-text matching logit from the mean of the fused token states (or the first token's, `itm_pooling`), plus,
  with `order_readout`, a check that the words name things in the order the image shows them ([`OrderReadout`]);
- a box `(cx, cy, w, h)` in [0, 1] for a referring expression: its centre is the attention centroid of the
  expression's tokens in the last layer (a reference point, as Deformable DETR's; sharpened towards the map's peak by
  `reference_sharpness`, and taken around the peak by `reference_window`) moved by a learned offset, its size
  regressed from the tokens' mean state;
- the cross-attention maps of every layer, `(B, heads, T, H*W)`.

[`ground`] turns the readouts into boxes in an image's pixels; [`resolve_reference`] finds the referring spans of a
text and ranks candidate boxes (the head's own, or an object detector's) by attention mass and crop-text similarity.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration import SeeYouGroundingConfig
from .geometry import ORDER_DIRECTIONS, box_cell_coverage, box_cxcywh_to_xyxy, cell_centres


@dataclass
class GroundingHeadOutput(ModelOutput):
    """Output of [`GroundingHead.forward`].

    Args:
        itm_logits (`torch.FloatTensor` of shape `(B,)`): Image-text matching logit of each pair.
        pred_boxes (`torch.FloatTensor` of shape `(B, 4)`): `(cx, cy, w, h)` in [0, 1] of the image.
        cross_attentions (`tuple[torch.FloatTensor]`): One `(B, heads, T, H*W)` map per layer.
        expression_attention (`torch.FloatTensor` of shape `(B, H*W)`): The last layer's map, heads averaged, over
            the expression's tokens (mask-weighted mean); sums to 1 over the cells.
        order_gate_logits (`torch.FloatTensor` of shape `(B, T)`, with `order_readout`): How much each word names an
            object (a logit; [`OrderReadout.text_cues`]).
        order_direction_logits (`torch.FloatTensor` of shape `(B, 4)`, with `order_readout`): Which of
            [`ORDER_DIRECTIONS`] the text lists things in (logits).
    """

    itm_logits: torch.FloatTensor | None = None
    pred_boxes: torch.FloatTensor | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    expression_attention: torch.FloatTensor | None = None
    order_gate_logits: torch.FloatTensor | None = None
    order_direction_logits: torch.FloatTensor | None = None


def region_grid(feature_map: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The cells of a vision tower's output as a sequence, and the grid they came from.

    Args:
        feature_map: a CNN map (B, C, H, W), or ViT tokens (B, N, C) with a first class token when N - 1 is a square.

    Returns:
        `(cells, (H, W))` with cells (B, H*W, C), rows of the grid first.
    """
    if feature_map.dim() == 4:
        height, width = feature_map.shape[-2:]
        return feature_map.flatten(2).transpose(1, 2), (height, width)  # (B, C, H, W) -> (B, H*W, C)
    if feature_map.dim() != 3:
        raise ValueError(f"the grounding head reads a (B, C, H, W) map or (B, N, C) tokens, got {tuple(feature_map.shape)}.")
    tokens = feature_map.shape[1]
    side = math.isqrt(tokens)
    if side * side != tokens:
        side = math.isqrt(tokens - 1)
        if side * side != tokens - 1:
            raise ValueError(f"{tokens} vision tokens form no square grid (with or without a class token).")
        feature_map = feature_map[:, 1:]  # drop the class token, (B, H*W, C)
    return feature_map, (side, side)


def reference_point(
    attention: torch.Tensor, region_size: tuple[int, int], sharpness: float = 1.0, window: int | None = None
) -> torch.Tensor:
    """The centroid of attention maps over their grid's cell centres: the box's reference point.

    Args:
        attention: (B, H*W) maps, rows of the grid first.
        region_size: `(H, W)` of the grid.
        sharpness: the maps are raised to this power (and renormalised) first; higher follows the peak more.
        window: only the cells within this many rows and columns of each map's peak cell count; `None`, every cell.

    Returns:
        (B, 2) `(x, y)` in [0, 1].
    """
    height, width = region_size
    focus = attention.clamp(min=1e-9)
    if sharpness != 1.0:
        focus = focus**sharpness
    if window is not None:
        peak = attention.argmax(dim=-1)  # (B,)
        rows = torch.arange(height, device=attention.device)[None, :] - (peak // width)[:, None]  # (B, H)
        cols = torch.arange(width, device=attention.device)[None, :] - (peak % width)[:, None]  # (B, W)
        near = (rows.abs() <= window)[:, :, None] & (cols.abs() <= window)[:, None, :]  # (B, H, W)
        focus = focus * near.flatten(1)
    focus = focus / focus.sum(-1, keepdim=True)  # (B, H*W)
    return focus @ cell_centres(height, width, attention.device, attention.dtype)


def position_code(centres: torch.Tensor, num_frequencies: int) -> torch.Tensor:
    """Sine-cosine code of `(x, y)` positions, (L, 2) -> (L, 4 * num_frequencies)."""
    frequencies = math.pi * 2.0 ** torch.arange(num_frequencies, device=centres.device, dtype=centres.dtype)
    angles = centres[:, :, None] * frequencies  # (L, 2, F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (L, 2, 2F) -> (L, 4F)


class FusionLayer(nn.Module):
    """Self-attention over the text, cross-attention to the image regions, FFN; pre-norm residuals."""

    def __init__(self, config: SeeYouGroundingConfig):
        super().__init__()
        d, self.num_heads = config.hidden_size, config.num_attention_heads
        self.self_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.self_qkv = nn.Linear(d, 3 * d)
        self.self_out = nn.Linear(d, d)
        self.cross_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.cross_q = nn.Linear(d, d)
        self.cross_kv = nn.Linear(d, 2 * d)
        self.cross_out = nn.Linear(d, d)
        self.ffn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.ffn = nn.Sequential(nn.Linear(d, config.intermediate_size), nn.GELU(), nn.Linear(config.intermediate_size, d))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, d = x.shape
        return x.view(batch, length, self.num_heads, d // self.num_heads).transpose(1, 2)  # (B, h, L, d/h)

    def attend_text(self, text: torch.Tensor, text_mask: torch.Tensor, first_only: bool = False) -> torch.Tensor:
        """Self-attention over each (T, d) text of (B, T, d) `text`, padding (0 in the (B, T) mask) masked; with
        `first_only`, only the first token's row is updated and returned, (B, 1, d)."""
        q, k, v = self.self_qkv(self.self_norm(text)).chunk(3, dim=-1)
        if first_only:
            text, q = text[:, :1], q[:, :1]
        q, k, v = self._heads(q), self._heads(k), self._heads(v)  # (B, h, T, d/h); q (B, h, 1, d/h) with first_only
        # Written out: for texts of a few dozen tokens this trains several times faster on CPUs than the fused kernel,
        # whose backward dominated the head's step (benchmarks/grounding_cost.py).
        scores = (q / math.sqrt(q.shape[-1])) @ k.transpose(-1, -2)  # (B, h, T, T)
        scores = scores.masked_fill(~text_mask[:, None, None, :].bool(), torch.finfo(scores.dtype).min)
        attended = scores.softmax(dim=-1) @ v
        return text + self.self_out(attended.transpose(1, 2).flatten(2))  # (B, h, T, d/h) -> (B, T, d)

    def region_keys(self, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-attention's keys and values of (B, L, d) regions, (B, heads, L, d/heads) each."""
        keys, values = self.cross_kv(regions).chunk(2, dim=-1)
        return self._heads(keys), self._heads(values)

    def attend_regions(
        self, text: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, text_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention of (B, T, d) text to its regions' keys and values, then the FFN: the updated text and the
        (B, heads, T, L) cross-attention. With (P,) `text_index`, pair p's text is `text[text_index[p]]` (queries
        projected once per text) and the outputs are the P pairs'."""
        q = self._heads(self.cross_q(self.cross_norm(text)))  # (B, h, T, d/h)
        if text_index is not None:
            text, q = text.index_select(0, text_index), q.index_select(0, text_index)  # (P, T, d), (P, h, T, d/h)
        # Written out rather than with scaled_dot_product_attention: the maps are an output of the head.
        weights = ((q / math.sqrt(q.shape[-1])) @ keys.transpose(-1, -2)).softmax(dim=-1)  # (B, h, T, L)
        text = text + self.cross_out((weights @ values).transpose(1, 2).flatten(2))
        text = text + self.ffn(self.ffn_norm(text))
        return text, weights

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, regions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, d) text, (B, T) mask, (B, L, d) regions -> updated text and the (B, heads, T, L) cross-attention."""
        return self.attend_regions(self.attend_text(text, text_mask), *self.region_keys(regions))


class OrderReadout(nn.Module):
    """A matching score for whether a text lists what it names in the order the image shows it.

    Each word's place in the image is the centroid of its first-layer cross-attention (heads averaged; the layer
    `mention_attention_loss` trains to find each named object; read, not trained, here). For every two words, the
    earlier one's place should come first along the direction the text names: per direction of [`ORDER_DIRECTIONS`],
    the mean of `tanh(sharpness * (later - earlier))` over the pairs, each pair weighted by the product of the two
    words' gates (how much each names an object); the directions are weighted by the text's direction
    probabilities. In [-1, 1] and scaled by a learned factor (0 at first), it is added to the matching logit.

    Gates and direction are read from the head's input words ([`OrderReadout.text_cues`]), before any word has seen
    the image: each word's gate from the word; the direction from which words come before which ("from left to
    right" and "from right to left" have the same words): per direction, a bilinear score summed over every earlier
    word s and later word t, `first(s) * second(t)`, with `first` and `second` linear in the word. The loss term
    `order_loss` teaches both from the corpus's mention spans and boxes; the matching loss alone did not (it weighed
    the words before the list, whose centroids lie mid-image, and found no direction), and a direction read from the
    words' first moment over positions stayed at chance for "from left to right" against "from right to left".
    """

    #: Centroids a tenth of the image apart give tanh(1) at first.
    initial_sharpness = 10.0

    def __init__(self, config: SeeYouGroundingConfig):
        super().__init__()
        d, k = config.hidden_size, len(ORDER_DIRECTIONS)
        self.gate_weight, self.gate_bias = nn.Parameter(torch.empty(d)), nn.Parameter(torch.empty(()))
        self.first_word, self.second_word = nn.Parameter(torch.empty(k, d)), nn.Parameter(torch.empty(k, d))
        self.direction_bias = nn.Parameter(torch.empty(k))
        self.log_sharpness, self.scale = nn.Parameter(torch.empty(())), nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gates at 1/2, the term at 0 (`scale`); the two word maps of the direction random (a product of zeros
        learns nothing), drawn from a generator of their own, so that adding the readout changes no other weight's
        initialisation. Weights loaded from a checkpoint are kept."""
        generator = torch.Generator().manual_seed(0)
        for weight in (self.first_word, self.second_word):
            init.copy_(weight, torch.randn(weight.shape, generator=generator) / weight.shape[1] ** 0.5)
        for weight in (self.gate_weight, self.gate_bias, self.direction_bias, self.scale):
            init.zeros_(weight)
        init.constant_(self.log_sharpness, math.log(self.initial_sharpness))

    def text_cues(self, words: torch.Tensor, text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, d) words, (B, T) mask -> `(gate_logits (B, T), direction_logits (B, len(ORDER_DIRECTIONS)))`."""
        mask, words = text_mask.float()[:, :, None], words.float()
        first, second = (words @ weight.T * mask for weight in (self.first_word, self.second_word))  # (B, T, K) each
        before = first.cumsum(1) - first  # (B, T, K): summed over the earlier words
        return words @ self.gate_weight + self.gate_bias, (before * second).sum(1) + self.direction_bias

    def forward(
        self,
        gate_logits: torch.Tensor,
        direction_logits: torch.Tensor,
        text_mask: torch.Tensor,
        first_map: torch.Tensor,
        region_size: tuple[int, int],
    ) -> torch.Tensor:
        """Cues of [`text_cues`], (B, T) mask, (B, heads, T, L) first-layer cross-attention -> (B,) logit terms."""
        centres = cell_centres(*region_size, first_map.device, torch.float32)  # (L, 2)
        directions = torch.tensor(ORDER_DIRECTIONS, device=first_map.device)  # (K, 2)
        place = first_map.detach().float().mean(1) @ (centres @ directions.T)  # (B, T, K): along each direction
        gates = torch.sigmoid(gate_logits) * text_mask.float()  # (B, T)
        length = gates.shape[1]
        earlier = torch.ones(length, length, dtype=torch.bool, device=gates.device).triu(1)  # [t, t'] for t < t'
        weights = gates[:, :, None] * gates[:, None, :] * earlier  # (B, T, T)
        agreement = torch.tanh(self.log_sharpness.exp() * (place[:, None, :, :] - place[:, :, None, :]))  # later - earlier
        order = torch.einsum("bst,bstk->bk", weights, agreement) / weights.sum((1, 2)).clamp(min=1e-6)[:, None]
        return self.scale * (order * direction_logits.softmax(-1)).sum(-1)  # (B,)


class GroundingHead(nn.Module):
    """Cross-modal fusion layers with matching, box and attention readouts (see the module docstring).

    Args:
        config: the head's settings.
        text_width: hidden size of the text tower's token states.
        vision_width: channels of the feature map the head reads.
        vocab_size: the text tower's vocabulary size; needed with `config.token_embeddings`.
    """

    def __init__(
        self, config: SeeYouGroundingConfig, text_width: int, vision_width: int, vocab_size: int | None = None
    ):
        super().__init__()
        d = config.hidden_size
        self.config = config
        self.text_in = nn.Linear(text_width, d)
        self.token_embedding = None
        if config.token_embeddings:
            if vocab_size is None:
                raise ValueError("grounding_config.token_embeddings needs the text tower's vocab_size.")
            self.token_embedding = nn.Embedding(vocab_size, d)
        self.text_position = None if config.text_positions is None else nn.Embedding(config.text_positions, d)
        self.region_in = nn.Linear(vision_width, d)
        self.position_in = nn.Linear(4 * config.num_position_frequencies, d)
        self.region_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(FusionLayer(config) for _ in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.itm = nn.Linear(d, 1)
        self.order = OrderReadout(config) if config.order_readout else None
        self.box = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 4))

    def encode_regions(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Projects a vision feature map to the head's width and adds the cells' position code.

        Args:
            feature_map: (B, C, H, W) or (B, N, C), see [`region_grid`].

        Returns:
            `(regions, (H, W))` with regions (B, H*W, d); they can be reused for many texts.
        """
        cells, size = region_grid(feature_map)
        centres = cell_centres(*size, cells.device, cells.dtype)  # (H*W, 2)
        code = self.position_in(position_code(centres, self.config.num_position_frequencies))  # (H*W, d)
        return self.region_norm(self.region_in(cells) + code), size

    def encode_text(self, text_states: torch.Tensor, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Projects the text tower's (B, T, H) token states to the head's width, (B, T, d), and adds the head's own
        embedding of each of the (B, T) `input_ids` where it has one (`config.token_embeddings`) and of each position
        (`config.text_positions`)."""
        text = self.text_in(text_states)
        if self.text_position is not None:
            length = text.shape[1]
            if length > self.text_position.num_embeddings:
                raise ValueError(f"a text of {length} tokens reached the grounding head, which embeds positions up to "
                                 f"grounding_config.text_positions={self.text_position.num_embeddings}; raise it or "
                                 "truncate the texts (data.max_length).")
            text = text + self.text_position.weight[:length].to(text.dtype)
        if self.token_embedding is None:
            return text
        if input_ids is None:
            raise ValueError("This grounding head embeds tokens of its own (grounding_config.token_embeddings): pass "
                             "the texts' input_ids with their states.")
        return text + self.token_embedding(input_ids).to(text.dtype)

    def fuse(
        self,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        regions: torch.Tensor,
        region_size: tuple[int, int],
        expression_mask: torch.Tensor | None = None,
        locate: bool = True,
        pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> GroundingHeadOutput:
        """Runs the fusion layers on projected inputs (see [`GroundingHead.forward`]); with `locate=False` only the
        matching logits (no box, no maps), as matching alone needs: with `itm_pooling="cls"` the last layer then
        updates the first token only, the one the logit reads.

        Text i is fused with regions i; with `pairs = (text_index, region_index)`, (P,) each, pair p is instead text
        `text_index[p]` with regions `region_index[p]`: the first layer's self-attention, which has not seen the image
        yet, and the first cross-attention's queries run once per distinct text, every layer's keys and values once per
        distinct image, the rest once per pair. The outputs are those of fusing the P gathered pairs (up to rounding),
        for P pairs.
        """
        text_mask = text_mask.to(text.dtype)
        pair_text = pair_regions = None
        if pairs is not None:
            text_index, region_index = pairs
            if expression_mask is not None:
                expression_mask = expression_mask[text_index]
            texts, pair_text = torch.unique(text_index, return_inverse=True)
            images, pair_regions = torch.unique(region_index, return_inverse=True)
            # index_select rather than indexing: its backward adds rows (index_add) instead of an accumulating
            # index_put, several times faster on CPUs.
            text, text_mask, regions = text.index_select(0, texts), text_mask[texts], regions.index_select(0, images)
        first_only = not locate and self.config.itm_pooling == "cls"
        cues = None if self.order is None else self.order.text_cues(text, text_mask)  # per distinct text
        maps = []
        for depth, layer in enumerate(self.layers):
            text = layer.attend_text(text, text_mask, first_only and depth == len(self.layers) - 1)
            keys, values = layer.region_keys(regions)  # (images, h, L, d/h) each
            text_index = None
            if pairs is not None:
                keys, values = (x.index_select(0, pair_regions) for x in (keys, values))  # (P, h, L, d/h) each
                if depth == 0:  # from here on each text is a pair's, and the image changes it
                    text_index, text_mask = pair_text, text_mask[pair_text]
            text, weights = layer.attend_regions(text, keys, values, text_index)
            maps.append(weights)
        text = self.final_norm(text)
        if self.config.itm_pooling == "cls":
            itm_logits = self.itm(text[:, 0]).squeeze(-1)  # (B,)
        else:
            weights = text_mask / text_mask.sum(-1, keepdim=True).clamp(min=1.0)  # (B, T)
            itm_logits = self.itm((text * weights[:, :, None]).sum(1)).squeeze(-1)  # (B, T, d) -> (B, d) -> (B,)
        order = {}
        if cues is not None:
            if pairs is not None:
                cues = tuple(cue.index_select(0, pair_text) for cue in cues)
            itm_logits = itm_logits + self.order(*cues, text_mask, maps[0], region_size).to(itm_logits.dtype)
            order = {"order_gate_logits": cues[0], "order_direction_logits": cues[1]}
        if not locate:
            return GroundingHeadOutput(itm_logits=itm_logits, **order)

        expression_mask = text_mask if expression_mask is None else expression_mask.to(text.dtype) * text_mask
        share = expression_mask / expression_mask.sum(-1, keepdim=True).clamp(min=1.0)  # (B, T)
        attention = (maps[-1].mean(1) * share[:, :, None]).sum(1)  # (B, h, T, L) -> (B, T, L) -> (B, L)
        config = self.config
        reference = reference_point(attention, region_size, config.reference_sharpness, config.reference_window)
        reference = reference.clamp(1e-4, 1 - 1e-4)  # (B, 2)
        pooled = (text * share[:, :, None]).sum(1)  # (B, d)
        raw = self.box(pooled)  # (B, 4)
        centre = torch.sigmoid(torch.logit(reference) + raw[:, :2])
        pred_boxes = torch.cat([centre, torch.sigmoid(raw[:, 2:])], dim=-1)  # (B, 4) cx, cy, w, h
        return GroundingHeadOutput(
            itm_logits=itm_logits, pred_boxes=pred_boxes, cross_attentions=tuple(maps), expression_attention=attention,
            **order,
        )

    def forward(
        self,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        feature_map: torch.Tensor,
        expression_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
    ) -> GroundingHeadOutput:
        """Fuses each text with its image.

        Args:
            text_states: (B, T, H) the text tower's token states (before pooling).
            text_mask: (B, T), 1 for tokens and 0 for padding.
            feature_map: (B, C, H', W') ResNet map or (B, N, C) ViT tokens of the paired images.
            expression_mask: (B, T), 1 on the tokens of the referring expression (a span of a caption); the whole
                text when omitted.
            input_ids: (B, T) the texts' token ids; needed with `config.token_embeddings`.

        Returns:
            [`GroundingHeadOutput`].
        """
        regions, size = self.encode_regions(feature_map)
        return self.fuse(self.encode_text(text_states, input_ids), text_mask, regions, size, expression_mask)


@dataclass
class GroundingResult:
    """What [`ground`] finds for each (image, text) pair.

    Args:
        boxes: (N, 4) `(x0, y0, x1, y1)` in the pixels of each original image.
        scores: (N,) image-text matching probability (sigmoid of the matching logit).
        attention: (N, H, W) the expression's last-layer cross-attention (heads and tokens averaged) on the head's grid.
        points: (N, 2) `(x, y)` in original pixels where the attention, upsampled bilinearly to the processed
            image, peaks (pointing).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    attention: torch.Tensor
    points: torch.Tensor


def _require_head(model) -> None:
    if getattr(model, "grounding_head", None) is None:
        raise ValueError("`model` has no grounding head; train one with `grounding_config` set in its config.")


@torch.no_grad()
def ground(model, processor, images: list, texts: list[str]) -> GroundingResult:
    """Finds what each text refers to in its image with a model's grounding head.

    Args:
        model: a [`SeeYouModel`] with a grounding head.
        processor: its [`SeeYouProcessor`].
        images: N images (PIL images, paths, or anything the corpora's `image` column holds).
        texts: N referring expressions; text i is grounded in image i.

    Returns:
        [`GroundingResult`], in the original images' pixels.
    """
    from .images import load_image

    _require_head(model)
    if len(images) != len(texts):
        raise ValueError(f"ground got {len(images)} images and {len(texts)} texts; give one text per image.")
    return _ground_texts(model, processor, [load_image(image) for image in images], texts, list(range(len(texts))))[0]


def _ground_texts(
    model, processor, images: list, texts: list[str], image_index: list[int]
) -> tuple[GroundingResult, torch.Tensor]:
    """[`ground`] for text i in `images[image_index[i]]` (RGB PIL images), each image through the vision tower once;
    also returns the texts' (N, D) dual-encoder embeddings from the same text forward."""
    from .processing import boxes_from_processed

    device = next(model.parameters()).device
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
    encoded = processor(text=list(texts), return_tensors="pt", padding=True, truncation=True).to(device)
    text = model.get_text_features(encoded["input_ids"], encoded["attention_mask"])
    feature_map = model.grounding_feature_map(model.get_image_features(pixel_values))
    feature_map = feature_map[torch.tensor(image_index, device=device)]  # one row per text
    out = model.grounding_head(text.last_hidden_state, encoded["attention_mask"], feature_map,
                               input_ids=encoded["input_ids"])
    height, width = region_grid(feature_map)[1]
    attention = out.expression_attention.float().view(-1, 1, height, width)  # (N, H*W) -> (N, 1, H, W)
    out_h, out_w = pixel_values.shape[-2:]
    upsampled = F.interpolate(attention, size=(out_h, out_w), mode="bilinear", align_corners=False).flatten(1)
    peak = upsampled.argmax(dim=-1)  # (N,), index into the processed image's pixels
    corners = box_cxcywh_to_xyxy(out.pred_boxes.float().cpu())  # (N, 4) in [0, 1] of the processed image
    peak = peak.cpu()
    centres = torch.stack([(peak % out_w + 0.5) / out_w, (peak // out_w + 0.5) / out_h], dim=-1)  # (N, 2) in [0, 1]
    boxes, points = [], []
    for i, image in enumerate(images[j] for j in image_index):
        # The box and the peak (as a point box) go back to the original image's pixels by one mapping.
        mapped = boxes_from_processed(processor.image_processor, torch.stack([corners[i], centres[i].repeat(2)]),
                                      *image.size)
        boxes.append(mapped[0])
        points.append(mapped[1, :2])
    result = GroundingResult(
        boxes=torch.stack(boxes),
        scores=torch.sigmoid(out.itm_logits.float()).cpu(),
        attention=attention[:, 0].cpu(),
        points=torch.stack(points),
    )
    return result, text.pooler_output.float().cpu()


def attention_mass(attention: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The share of each attention map that falls inside each box.

    Each map is read as constant over each of its cells (the cells tile the processed image), so a box's mass is the
    cells' weights times the fraction of each cell's area the box covers: the whole frame holds all of a map's mass.

    Args:
        attention: (S, H, W) maps on the head's grid, each summing to 1 (as [`GroundingResult`]'s `attention`).
        boxes: (K, 4) `(x0, y0, x1, y1)` in [0, 1] of the processed image.

    Returns:
        (S, K) masses in [0, 1].
    """
    height, width = attention.shape[-2:]
    boxes = boxes.to(device=attention.device, dtype=attention.dtype).clamp(0.0, 1.0)
    coverage = box_cell_coverage(boxes, height, width)  # (K, H*W)
    return attention.flatten(1) @ coverage.T  # (S, H*W) @ (H*W, K) -> (S, K)


def _pipeline(task: str, model_or_pipeline: Any, argument: str, device: torch.device, **kwargs) -> Any:
    """A transformers pipeline of `task` from a model name or folder; a ready pipeline (any callable) as it is."""
    if isinstance(model_or_pipeline, (str, os.PathLike)):
        from transformers import pipeline

        return pipeline(task, model=str(model_or_pipeline), device=device, **kwargs)
    if callable(model_or_pipeline):
        return model_or_pipeline
    raise ValueError(
        f"`{argument}` is a {type(model_or_pipeline).__name__}; give a model name, a local folder or a ready "
        f'`transformers.pipeline("{task}", ...)`.'
    )


def referring_spans(text: str, ner: Any = None, phrases: Sequence[str] | None = None, device: Any = None) -> list[str]:
    """The referring expressions of a text: named by a token-classification model, given, or the whole text.

    Args:
        text: the text that refers to things in an image.
        ner: a token-classification model name, local folder or ready pipeline; every entity it finds in `text` is a
            span (a name or folder is loaded with `aggregation_strategy="simple"`, grouping `B-`/`I-` tokens into
            one entity). When it finds none, the whole text is the one span.
        phrases: referring expressions to use as they are (usually spans of `text`), when `ner` is not given.
        device: where a pipeline built from a name or folder runs.

    Returns:
        The distinct spans, in the order found.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"`text` is {text!r}; give the sentence that refers to something in the image.")
    if ner is not None and phrases is not None:
        raise ValueError("give `ner` (to find the spans) or `phrases` (the spans), not both.")
    if ner is not None:
        entities = _pipeline("token-classification", ner, "ner", device, aggregation_strategy="simple")(text)
        if any("entity_group" not in entity for entity in entities):
            raise ValueError("the `ner` pipeline returns single tokens, not entities; build it with "
                             'aggregation_strategy="simple" (or "first", "max", "average").')
        spans = [text[e["start"]:e["end"]] if e.get("start") is not None else e["word"] for e in entities]
    elif phrases is not None:
        if isinstance(phrases, str) or not isinstance(phrases, Sequence) or not phrases:
            raise ValueError(f"`phrases` is {phrases!r}; give a non-empty list of strings, e.g. phrases=[{text!r}].")
        for index, phrase in enumerate(phrases):
            if not isinstance(phrase, str) or not phrase.strip():
                raise ValueError(f"phrases[{index}] is {phrase!r}; every phrase must be a non-empty string.")
        spans = list(phrases)
    else:
        spans = [text]
    spans = list(dict.fromkeys(span.strip() for span in spans if span.strip()))
    return spans or [text]


def _detected_boxes(image: Any, detector: Any, device: torch.device) -> torch.Tensor:
    """(K, 4) `(x0, y0, x1, y1)` in the image's pixels of what an object-detection pipeline finds in it."""
    detections = _pipeline("object-detection", detector, "detector", device)(image)
    try:
        corners = [[float(d["box"][k]) for k in ("xmin", "ymin", "xmax", "ymax")] for d in detections]
    except (KeyError, TypeError) as error:
        raise ValueError(
            f"`detector` returned {detections!r:.200}, not object-detection results (a list of "
            '{"box": {"xmin", "ymin", "xmax", "ymax"}, ...}); give an object-detection pipeline.'
        ) from error
    return torch.tensor(corners, dtype=torch.float32).reshape(-1, 4)  # (K, 4)


def _crop_embeddings(model, processor, image: Any, boxes: torch.Tensor) -> torch.Tensor:
    """(K, D) dual-encoder embeddings of the image cropped to each box (clipped to the image, at least a pixel)."""
    crops = []
    for x0, y0, x1, y1 in boxes.tolist():
        left, top = min(max(math.floor(x0), 0), image.width - 1), min(max(math.floor(y0), 0), image.height - 1)
        right, bottom = max(min(math.ceil(x1), image.width), left + 1), max(min(math.ceil(y1), image.height), top + 1)
        crops.append(image.crop((left, top, right, bottom)))
    device = next(model.parameters()).device
    pixel_values = processor(images=crops, return_tensors="pt")["pixel_values"].to(device)
    return model.get_image_features(pixel_values).pooler_output.float().cpu()


@torch.no_grad()
def resolve_reference(
    image: Any,
    text: str,
    model,
    processor,
    ner: Any = None,
    detector: Any = None,
    phrases: Sequence[str] | None = None,
    attention_weight: float = 0.5,
) -> list[tuple[str, tuple[float, float, float, float], float]]:
    """Finds what the referring spans of a text point at in an image, best first.

    1. Spans: what the token-classification model `ner` finds in `text` (the whole text when it finds nothing), else
       `phrases`, else the whole text. Each span is grounded as a text of its own, as the head is trained (the
       collator feeds every referring expression as its own `phrase`, tokenised beside the caption).
    2. Candidate boxes: what the object-detection model `detector` finds (above its pipeline's threshold; every span
       is scored against every box), else each span's own box from the grounding head. A detector that finds
       nothing falls back to the head's boxes.
    3. Scores: `attention_weight * mass + (1 - attention_weight) * (1 + cos) / 2`, where `mass` in [0, 1] is the share
       of the span's last-layer cross-attention map (heads and tokens averaged) inside the box (see
       [`attention_mass`]; the parts of the image that a centre crop drops hold none), and `cos` is the cosine of
       the dual encoder's embeddings of the image cropped to the box and of the span. The mass grows with the box,
       the crop similarity does not: their mean keeps a whole-image box from winning by size alone.

    Args:
        image: a PIL image, a path, or anything the corpora's `image` column holds.
        text: the sentence that refers to something in the image.
        model: a [`SeeYouModel`] with a grounding head; it runs where its weights are.
        processor: its [`SeeYouProcessor`].
        ner: a token-classification model name, local folder or ready `transformers` pipeline (see
            [`referring_spans`]).
        detector: an object-detection model name, local folder or ready `transformers` pipeline.
        phrases: the referring expressions, when `ner` is not given.
        attention_weight: weight of the attention mass in the score, in [0, 1]; the crop similarity gets the rest.

    Returns:
        `(span, (x0, y0, x1, y1), score)` for every span and candidate box, boxes in the image's pixels, scores in
        [0, 1], highest score first. The head's own boxes are [`ground`]'s, which may reach past the image's edge
        (their crops are clipped to it); a detector's are its pipeline's.

    Raises:
        ValueError: when `model` has no grounding head, `text` is empty, `phrases` is not a list of non-empty strings,
            both `ner` and `phrases` are given, `ner` or `detector` is neither a name, a folder nor a pipeline (or
            returns something else than a token-classification / object-detection pipeline does), or
            `attention_weight` lies outside [0, 1].

    Example:

    ```python
    >>> from seeyou_ml import resolve_reference
    >>> resolve_reference("scene.png", "the red circle left of the blue square", model, processor,
    ...                   phrases=["the red circle", "the blue square"])  # doctest: +SKIP
    [('the red circle', (12.0, 30.5, 41.2, 60.0), 0.81), ('the blue square', (70.3, 28.0, 101.9, 59.4), 0.77)]
    ```
    """
    from .images import load_image
    from .processing import boxes_to_processed

    _require_head(model)
    if not 0.0 <= attention_weight <= 1.0:
        raise ValueError(f"`attention_weight` is {attention_weight}; give a weight in [0, 1].")
    device = next(model.parameters()).device
    picture = load_image(image)
    spans = referring_spans(text, ner, phrases, device)
    found, span_embeds = _ground_texts(model, processor, [picture], spans, [0] * len(spans))
    boxes = _detected_boxes(picture, detector, device) if detector is not None else torch.empty(0, 4)
    own = boxes.shape[0] == 0  # no detector, or it found nothing: each span's own box
    if own:
        boxes = found.boxes
    unit = boxes_to_processed(processor.image_processor, boxes, *picture.size, normalized=True)  # (K, 4) in [0, 1]
    mass = attention_mass(found.attention, unit)  # (S, K)
    similarity = (1 + span_embeds @ _crop_embeddings(model, processor, picture, boxes).T) / 2  # (S, K)
    scores = attention_weight * mass + (1 - attention_weight) * similarity
    every = range(len(spans))
    pairs = [(s, s) for s in every] if own else [(s, k) for s in every for k in range(len(boxes))]
    ranked = [(spans[s], tuple(boxes[k].tolist()), float(scores[s, k])) for s, k in pairs]
    return sorted(ranked, key=lambda entry: entry[2], reverse=True)


__all__ = [
    "GroundingHead",
    "GroundingHeadOutput",
    "GroundingResult",
    "attention_mass",
    "ground",
    "position_code",
    "reference_point",
    "referring_spans",
    "region_grid",
    "resolve_reference",
]
