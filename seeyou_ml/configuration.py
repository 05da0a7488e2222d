"""Configuration of the SeeYou dual encoder."""

from __future__ import annotations

import math
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

TEXT_POOLINGS = ("cls", "mean", "pooler")
PROJECTIONS = ("linear", "mlp")
# `XLMRobertaConfig()` carries BERT's defaults; these are the values of the `xlm-roberta-base` checkpoint.
XLM_ROBERTA_BASE_OVERRIDES = {
    "vocab_size": 250002,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}


@strict
class SeeYouGroundingConfig(PreTrainedConfig):
    r"""
    Configuration of the grounding head of a [`SeeYouModel`]: fusion layers in which the text tower's token states
    attend over the vision tower's feature map (ALBEF / X-VLM style).

    Args:
        hidden_size (`int`, *optional*, defaults to 256):
            Width of the fusion layers; token states and feature-map cells are projected to it.
        num_hidden_layers (`int`, *optional*, defaults to 2):
            Fusion layers, each self-attention over the text, cross-attention to the image regions and an FFN.
        num_attention_heads (`int`, *optional*, defaults to 4):
            Heads of both attentions; the cross-attention maps have this many.
        intermediate_size (`int`, *optional*, defaults to 1024):
            Hidden width of each FFN.
        feature_stage (`int`, *optional*, defaults to -1):
            Which ResNet stage's map the head reads (-1 the last; -2 the one before, twice as fine, for small
            objects). Vision towers with tokens (ViT) use their last hidden state whatever this says.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the layer norms.
        num_position_frequencies (`int`, *optional*, defaults to 8):
            Sine and cosine frequencies of the cells' 2-D position code, so any map size is encoded.
        itm_pooling (`str`, *optional*, defaults to `"mean"`):
            Which fused text state the matching logit reads: `"mean"`, the mask-aware mean of every token's state, or
            `"cls"`, the first token's (ALBEF). Within one layer the first token's cross-attention sees only its own
            query, not what the other words found, so a shallow head needs `"mean"`; `"cls"` suits deeper ones.
            With `"cls"`, matching alone (the matching losses' negatives, re-ranking) updates only the first token in
            the last layer, far cheaper per pair than every token.
        reference_sharpness (`float`, *optional*, defaults to 1.0):
            The box's centre starts from the centroid of the expression's attention raised to this power (and
            renormalised), then moves by a learned offset. 1 is the plain centroid; higher powers follow the map's peak
            and ignore the mass it leaves on other objects, which otherwise pulls the centre between them.
        reference_window (`int`, *optional*):
            Take that centroid over the cells within this many rows and columns of the map's peak cell only (1: its
            3 x 3 neighbourhood): the mass on other objects (a relational expression's landmark) then cannot pull the
            centre away, while within the window the centroid still falls between cells, where an object's centre
            usually lies. `None` takes it over the whole map.
        detach_towers (`bool`, *optional*, defaults to `False`):
            Stop the head's gradients at the towers' outputs, so that its losses train the head alone and the
            towers keep the space the contrastive loss shapes (small towers trained from scratch lose retrieval
            accuracy to the head's losses; pretrained towers fine-tuned with ALBEF's recipe train jointly).
        token_embeddings (`bool`, *optional*, defaults to `False`):
            Give the head an embedding of its own for every token of the text tower's vocabulary, added to the
            projected token states. With `detach_towers`, words that occur only in referring expressions (never in a
            caption, so never trained by the contrastive loss) keep the text tower's random initial embedding; the
            head's own embedding of them is trained by its losses.
        text_positions (`int`, *optional*):
            Give the head a learned embedding of each token position up to this length, added to its text input. The
            text tower's states carry positions, but the head's own token embeddings do not; with them the head can
            tell which of two named objects a caption lists first. `None`: no position embeddings.
        itm_train_pairs (`int`, *optional*):
            In training, image-text matching runs on the first `itm_train_pairs` captions of each process's batch:
            their logits with their own images and with the hard negatives drawn for them (from the whole batch).
            Matching fuses three caption-image pairs per caption, most of the head's cost, so a large contrastive
            batch can train it on a share while every referring expression is still grounded; `None` matches every
            caption. Evaluation and inference score every pair.
        rank_negatives (`int`, *optional*, defaults to 7):
            How many hard negatives each matched caption (and its image) is ranked against by the listwise matching
            term `itm_rank_loss`: the images (captions) of other image ids that the dual encoder scores highest in the
            whole batch. Re-ranking a top 10 asks the head to order ten near misses; 7 puts eight candidates in each
            softmax. With negative captions in the batch (`data.return_negative_captions`), each image ranks its caption
            against its N negative captions and the `rank_negatives - N` hardest captions of the batch.
        expression_train_pairs (`int`, *optional*):
            Likewise for the referring expressions: in training the head grounds the first `expression_train_pairs`
            of each process's batch (their boxes and attention maps); `None` grounds every one.
        order_readout (`bool`, *optional*, defaults to `False`):
            Add to the matching logit a check of spatial order ([`OrderReadout`]): where each word looks in the first
            fusion layer (its attention's centroid), compared for every two words in the order the text says them,
            along the direction the text names ("from left to right", "from bottom to top"), weighted by how much
            each word names an object. A caption that lists objects in a spatial order is then told from the same
            objects listed in another order, which the mean of the fused tokens does not separate. Which words name
            objects and which direction a text names are taught by the loss term `order_loss` (from the corpus's
            mention spans and boxes); the readout's weight in the logit, by the matching terms.

    Example:

    ```python
    >>> from seeyou_ml import SeeYouConfig
    >>> config = SeeYouConfig(grounding_config={"hidden_size": 64, "num_hidden_layers": 1})
    >>> config.grounding_config.hidden_size
    64
    ```
    """

    model_type = "seeyou_grounding"

    hidden_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    feature_stage: int = -1
    layer_norm_eps: float = 1e-5
    num_position_frequencies: int = 8
    itm_pooling: str = "mean"
    reference_sharpness: float = 1.0
    reference_window: int | None = None
    detach_towers: bool = False
    token_embeddings: bool = False
    text_positions: int | None = None
    itm_train_pairs: int | None = None
    rank_negatives: int = 7
    expression_train_pairs: int | None = None
    order_readout: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"grounding_config.hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}; change one of them.")
        if self.num_hidden_layers < 1:
            raise ValueError(f"grounding_config.num_hidden_layers must be >= 1, got {self.num_hidden_layers}; give "
                             "grounding_config=None for a model without a head.")
        if not self.reference_sharpness > 0:
            raise ValueError(f"grounding_config.reference_sharpness must be > 0, got {self.reference_sharpness}; 1 "
                             "takes the attention's plain centroid as the box's reference point.")
        if self.reference_window is not None and self.reference_window < 0:
            raise ValueError(f"grounding_config.reference_window must be >= 0, got {self.reference_window}; None takes "
                             "the reference centroid over the whole map.")
        if self.itm_pooling not in ("mean", "cls"):
            raise ValueError(f"grounding_config.itm_pooling must be 'mean' or 'cls', got {self.itm_pooling!r}.")
        if self.order_readout and self.itm_pooling == "cls" and self.num_hidden_layers == 1:
            raise ValueError("grounding_config.order_readout reads where every word looks in the first fusion layer, "
                             "which with itm_pooling='cls' and one layer updates the first token only; use two "
                             "layers or itm_pooling='mean'.")
        if self.text_positions is not None and self.text_positions < 1:
            raise ValueError(f"grounding_config.text_positions must be >= 1, got {self.text_positions}; give the "
                             "longest text the head reads in tokens, or None for no position embeddings.")
        for name in ("itm_train_pairs", "expression_train_pairs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"grounding_config.{name} must be >= 1, got {value}; None trains the head on every "
                                 "pair of the batch.")
        if self.rank_negatives < 1:
            raise ValueError(f"grounding_config.rank_negatives must be >= 1, got {self.rank_negatives}; it is the "
                             "number of hard negatives itm_rank_loss ranks each positive against.")
        if self.feature_stage >= 0:
            raise ValueError(f"grounding_config.feature_stage counts stages from the end (-1 the last), got "
                             f"{self.feature_stage}.")

    def matched_captions(self, batch_size: int, training: bool) -> int:
        """How many of a process's first `batch_size` captions the head matches: `itm_train_pairs` of them in training
        (at most the batch), every one otherwise."""
        if not training or self.itm_train_pairs is None:
            return batch_size
        return min(self.itm_train_pairs, batch_size)


@strict
class SeeYouConfig(PreTrainedConfig):
    r"""
    Configuration of a [`SeeYouModel`]: a vision tower and a multilingual text tower, each an arbitrary Hugging Face
    encoder, projected into one space and compared with a learnable temperature (CLIP, Radford et al. 2021).

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Configuration of the vision tower, of any model type `AutoModel` can build (`resnet`, `vit`, ...).
            Defaults to `ResNetConfig()`, i.e. ResNet-50.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Configuration of the text tower, of any encoder model type (`xlm-roberta`, `bert`, ...). Defaults to an
            XLM-R base configuration.
        projection_dim (`int`, *optional*, defaults to 512):
            Size of the shared embedding space.
        projection (`str`, *optional*, defaults to `"linear"`):
            `"linear"` (one bias-free matrix per tower, as CLIP) or `"mlp"` (Linear-GELU-Linear).
        text_pooling (`str`, *optional*, defaults to `"mean"`):
            How a caption becomes one vector: `"cls"` (first token), `"mean"` (mask-aware mean of the tokens) or
            `"pooler"` (the tower's own pooler output, as `VisionTextDualEncoderModel` uses).
        logit_scale_init_value (`float`, *optional*, defaults to `ln(1/0.07) = 2.6592`):
            Initial value of the learnable log-temperature.
        max_logit_scale (`float`, *optional*, defaults to 100):
            The temperature's inverse is clamped to this value when used, so logits stay bounded.
        grounding_config (`dict` or [`SeeYouGroundingConfig`], *optional*):
            Settings of the phrase-grounding cross-attention head; `None` builds no head.
        text_length_groups (`int`, *optional*, defaults to 1):
            Captions of a batch are sorted by length and run through the text tower in this many groups, each padded
            only to its own longest caption: a batch of captions of mixed lengths spends less work on padding. The
            outputs are the same up to float rounding (except at padding positions of `last_hidden_state`). 1 runs
            the batch in one pass.
        adapter_languages (`list[str]`, *optional*):
            Languages (ISO 639-1) with a LoRA adapter on the text tower, saved under `adapters/<lang>/` beside the
            weights and restored by `from_pretrained`; kept up to date by `seeyou_ml.adapters`. `None`: no adapters.

    Example:

    ```python
    >>> from transformers import ResNetConfig, XLMRobertaConfig
    >>> from seeyou_ml import SeeYouConfig, SeeYouModel

    >>> config = SeeYouConfig(
    ...     vision_config=ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]),
    ...     text_config=XLMRobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
    ...                                  num_attention_heads=2, intermediate_size=37),
    ...     projection_dim=16,
    ... )
    >>> model = SeeYouModel(config)
    >>> round(model.logit_scale.exp().item(), 4)
    14.2857
    ```
    """

    model_type = "seeyou"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="resnet"),
        "text_config": SubConfigSpec(
            config_class=AutoConfig, model_type="xlm-roberta", init_kwargs=XLM_ROBERTA_BASE_OVERRIDES
        ),
        "grounding_config": SubConfigSpec(config_class=SeeYouGroundingConfig, optional=True),
    }

    vision_config: PreTrainedConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    projection_dim: int = 512
    projection: Literal["linear", "mlp"] = "linear"
    text_pooling: Literal["cls", "mean", "pooler"] = "mean"
    logit_scale_init_value: float = math.log(1 / 0.07)
    max_logit_scale: float = 100.0
    grounding_config: SeeYouGroundingConfig | dict | None = None
    initializer_range: float = 0.02
    text_length_groups: int = 1
    adapter_languages: list[str] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.text_pooling not in TEXT_POOLINGS:
            raise ValueError(f"text_pooling={self.text_pooling!r} is not one of {TEXT_POOLINGS}.")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection={self.projection!r} is not one of {PROJECTIONS}.")
        if self.text_length_groups < 1:
            raise ValueError(f"text_length_groups must be >= 1 (1 runs a batch in one pass), got {self.text_length_groups}.")
        if self.projection_dim <= 0:
            raise ValueError(f"projection_dim must be positive, got {self.projection_dim}.")
        if self.max_logit_scale < math.exp(self.logit_scale_init_value):
            raise ValueError(
                f"max_logit_scale={self.max_logit_scale} is below the initial scale "
                f"exp({self.logit_scale_init_value:.4f}); raise max_logit_scale or lower logit_scale_init_value."
            )

    @classmethod
    def from_vision_text_configs(
        cls, vision_config: PreTrainedConfig, text_config: PreTrainedConfig, **kwargs
    ) -> "SeeYouConfig":
        """Builds a config from the two tower configs; `kwargs` set the remaining fields."""
        return cls(vision_config=vision_config.to_dict(), text_config=text_config.to_dict(), **kwargs)


# `save_pretrained` copies this file into the folder and names it in `auto_map`, so the folder loads with
# `trust_remote_code=True` where this package is not installed.
SeeYouConfig.register_for_auto_class()

__all__ = ["SeeYouConfig", "SeeYouGroundingConfig"]
