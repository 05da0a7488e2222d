"""The SeeYou dual encoder: any HF vision backbone and text encoder projected into one space (CLIP-style).

References: CLIP (Radford et al. 2021) for the symmetric InfoNCE objective and the learnable temperature;
transformers' `VisionTextDualEncoderModel` for composing two pretrained towers.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .adapters import ADAPTERS_FOLDER, base_state_dict, language_adapters, language_routing, load_language_adapters
from .configuration import SeeYouConfig
from .grounding import GroundingHead, OrderReadout
from .losses import contrastive_loss, image_ids_to_tensor
from .towers import build_tower, encode_image, encode_text, length_groups, load_tower, vision_width


@dataclass
class SeeYouOutput(ModelOutput):
    """Output of [`SeeYouModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `return_loss=True`):
            Symmetric contrastive loss.
        logits_per_image (`torch.FloatTensor` of shape `(image_batch_size, text_batch_size)`):
            Scaled cosine similarities between every image and every caption.
        logits_per_text (`torch.FloatTensor` of shape `(text_batch_size, image_batch_size)`):
            The transpose of `logits_per_image`.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            Projected, L2-normalised image embeddings.
        text_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            Projected, L2-normalised caption embeddings.
        vision_model_output (`ModelOutput`):
            The vision tower's output; `last_hidden_state` is the (B, C, H, W) feature map of a ResNet or the
            (B, N, C) tokens of a ViT.
        text_model_output (`ModelOutput`):
            The text tower's output; `last_hidden_state` is (B, T, H).
        itm_logits (`torch.FloatTensor` of shape `(batch_size,)`, *optional*, with a grounding head):
            Image-text matching logit of each caption with its own image.
        pred_boxes (`torch.FloatTensor` of shape `(batch_size, 4)`, *optional*, with a grounding head and a referring
            expression (`phrase_input_ids` or `phrase_token_mask`)): `(cx, cy, w, h)` in [0, 1] of the processed image.
        cross_attentions (`tuple[torch.FloatTensor]`, *optional*, with `pred_boxes`):
            The expression's cross-attention maps, one `(batch_size, heads, T, H*W)` per fusion layer.
        expression_attention (`torch.FloatTensor` of shape `(batch_size, H*W)`, *optional*, with `pred_boxes`):
            The last layer's map, heads and the expression's tokens averaged; sums to 1 over the cells.
        region_size (`tuple[int, int]`, *optional*, with a grounding head): `(H, W)` of the feature map the head read.
        grounding_regions (`torch.FloatTensor` of shape `(batch_size, H*W, d)`, *optional*, with a grounding head):
            The image regions in the head's width, reused by the matching loss for its negative pairs.
        grounding_text (`torch.FloatTensor` of shape `(batch_size, T, d)`, *optional*, with a grounding head):
            The captions' token states in the head's width, likewise.
        mention_attention (`torch.FloatTensor` of shape `(n, M, H*W)`, *optional*, with a grounding head and
            `mention_token_mask`): for each object a matched caption names, the first fusion layer's cross-attention
            of its tokens (heads and tokens averaged) in the caption's own image; sums to 1 over the cells.
        order_gate_logits (`torch.FloatTensor` of shape `(n, T)`, *optional*, with `mention_token_mask` and
            `grounding_config.order_readout`): how much each word of a matched caption names an object (logits).
        order_direction_logits (`torch.FloatTensor` of shape `(n, 4)`, *optional*, likewise): which direction each
            matched caption lists its objects in (logits over `seeyou_ml.geometry.ORDER_DIRECTIONS`).
        grounding_negative_text (`torch.FloatTensor` of shape `(n * N, T, d)`, *optional*, with a grounding head and
            `negative_input_ids`): the matched captions' N negative captions in the head's width, for the matching loss.
        negative_attention_mask (`torch.LongTensor` of shape `(n * N, T)`, *optional*, with
            `grounding_negative_text`): their mask.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    vision_model_output: Any = None
    text_model_output: Any = None
    itm_logits: torch.FloatTensor | None = None
    pred_boxes: torch.FloatTensor | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    expression_attention: torch.FloatTensor | None = None
    region_size: tuple[int, int] | None = None
    grounding_regions: torch.FloatTensor | None = None
    grounding_text: torch.FloatTensor | None = None
    mention_attention: torch.FloatTensor | None = None
    order_gate_logits: torch.FloatTensor | None = None
    order_direction_logits: torch.FloatTensor | None = None
    grounding_negative_text: torch.FloatTensor | None = None
    negative_attention_mask: torch.LongTensor | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in (self[k] for k in self.keys()))


def build_projection(in_features: int, config: SeeYouConfig) -> nn.Module:
    """A tower's projection into the shared space: one bias-free matrix, or Linear-GELU-Linear."""
    if config.projection == "linear":
        return nn.Linear(in_features, config.projection_dim, bias=False)
    return nn.Sequential(
        nn.Linear(in_features, in_features),
        nn.GELU(),
        nn.Linear(in_features, config.projection_dim, bias=False),
    )


ZERO_SHOT_AUTO_CLASS = "AutoModelForZeroShotImageClassification"


class SeeYouPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading for SeeYou models."""

    config: SeeYouConfig
    config_class = SeeYouConfig
    base_model_prefix = "seeyou"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`, with the model also named for zero-shot image classification in the
        folder's `auto_map`, so `pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)`
        finds it where this package is not installed (transformers writes one auto class per model class)."""
        if self._auto_class is not None:
            module = type(self).__module__.rsplit(".", 1)[-1]
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}),
                                    ZERO_SHOT_AUTO_CLASS: f"{module}.{type(self).__name__}"}
        super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, SeeYouModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
        if isinstance(module, OrderReadout):
            module.reset_parameters()

    if not hasattr(PreTrainedModel, "activation_checkpointing_enable"):
        # transformers before 5.24 names these `gradient_checkpointing_*`; the current names work on both.
        def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None) -> None:
            """Recomputes activations in the backward pass: both towers, the ResNet block by block."""
            self.gradient_checkpointing_enable(gradient_checkpointing_kwargs=activation_checkpointing_kwargs)

        def activation_checkpointing_disable(self) -> None:
            """Keeps activations for the backward pass again."""
            self.gradient_checkpointing_disable()

        @property
        def is_activation_checkpointing(self) -> bool:
            """Whether activation checkpointing is on."""
            return self.is_gradient_checkpointing


class SeeYouModel(SeeYouPreTrainedModel):
    """A CLIP-style dual encoder over any Hugging Face vision backbone and text encoder.

    Example:

    ```python
    >>> import torch
    >>> from seeyou_ml.presets import tiny_config
    >>> from seeyou_ml import SeeYouModel

    >>> model = SeeYouModel(tiny_config(vocab_size=100, projection_dim=16)).eval()
    >>> out = model(input_ids=torch.tensor([[0, 5, 6, 2]]), pixel_values=torch.rand(1, 3, 32, 32), return_loss=True)
    >>> out.logits_per_image.shape, out.image_embeds.norm(dim=-1)
    (torch.Size([1, 1]), tensor([1.0000]))
    ```
    """

    def __init__(
        self,
        config: SeeYouConfig,
        vision_model: PreTrainedModel | None = None,
        text_model: PreTrainedModel | None = None,
    ):
        super().__init__(config)
        with_text_pooler = config.text_pooling == "pooler"
        self.vision_model = vision_model if vision_model is not None else build_tower(config.vision_config)
        self.text_model = (
            text_model if text_model is not None else build_tower(config.text_config, with_pooler=with_text_pooler)
        )
        # The towers read the composite config's sub-configs, so edits to one are seen by the other.
        self.vision_model.config = config.vision_config
        self.text_model.config = config.text_config

        self.visual_projection = build_projection(vision_width(config.vision_config), config)
        self.text_projection = build_projection(config.text_config.hidden_size, config)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        grounding = config.grounding_config
        self.grounding_head = (
            GroundingHead(
                grounding,
                config.text_config.hidden_size,
                vision_width(config.vision_config, grounding.feature_stage),
                config.text_config.vocab_size,
            )
            if grounding is not None
            else None
        )
        # Read by `_set_gradient_checkpointing`; the ResNet tower, which has no checkpointing of its own, is
        # checkpointed block by block through its stages when it is set.
        self.gradient_checkpointing = False
        self.post_init()

    def scale(self) -> torch.Tensor:
        """The inverse temperature `exp(logit_scale)`, clamped to `config.max_logit_scale`."""
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)

    def _vision_checkpoint_fn(self):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return self._gradient_checkpointing_func
        return None

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """Embeds images.

        Args:
            pixel_values: (B, 3, H, W) images from the processor.

        Returns:
            `BaseModelOutputWithPooling` whose `pooler_output` holds the projected, L2-normalised (B, D) embeddings
            and `last_hidden_state` the tower's feature map.
        """
        pooled, outputs = encode_image(self.vision_model, pixel_values, self._vision_checkpoint_fn())
        embeds = F.normalize(self.visual_projection(pooled), dim=-1)  # (B, D)
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=embeds,
            hidden_states=getattr(outputs, "hidden_states", None),
        )

    def _embed_batch_images(self, pixel_values: torch.Tensor, image_id: list[str] | None) -> BaseModelOutputWithPooling:
        """`get_image_features` of a batch, running the vision tower once per distinct image: rows that share an
        `image_id` and hold the same pixels (several captions of one image) are embedded once and their outputs
        repeated, so a batch of B captions of B / k images costs the vision tower B / k images."""
        if image_id is None or len(set(image_id)) == len(image_id):
            return self.get_image_features(pixel_values)
        first_row: dict[str, int] = {}
        for row, image in enumerate(image_id):
            first_row.setdefault(image, row)
        slot = {image: k for k, image in enumerate(first_row)}
        inverse = torch.tensor([slot[image] for image in image_id], device=pixel_values.device)  # (B,) -> [0, U)
        unique = pixel_values[torch.tensor(list(first_row.values()), device=pixel_values.device)]  # (U, 3, H, W)
        if not torch.equal(unique[inverse], pixel_values):  # augmented views of one image differ: embed every row
            return self.get_image_features(pixel_values)
        if pixel_values.is_contiguous(memory_format=torch.channels_last):
            unique = unique.contiguous(memory_format=torch.channels_last)
        vision = self.get_image_features(unique)
        return BaseModelOutputWithPooling(
            last_hidden_state=vision.last_hidden_state[inverse],
            pooler_output=vision.pooler_output[inverse],
            hidden_states=tuple(h[inverse] for h in vision.hidden_states) if vision.hidden_states is not None else None,
        )

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        lang: str | list[str] | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Embeds captions.

        Args:
            input_ids: (B, T) token ids.
            attention_mask: (B, T), 1 for tokens and 0 for padding.
            lang: ISO 639-1 language of each caption (or one for all): with language adapters, row i goes through the
                adapter of `lang[i]` (`seeyou_ml.adapters`), a language without one through the base weights. None:
                the language of `seeyou_ml.adapters.set_language`, by default the base. Ignored without adapters.

        Returns:
            `BaseModelOutputWithPooling` whose `pooler_output` holds the projected, L2-normalised (B, D) embeddings
            and `last_hidden_state` the (B, T, H) token states.
        """
        groups = None
        if attention_mask is not None:
            groups = length_groups(attention_mask, self.config.text_length_groups)
        if groups is None:
            with language_routing(self, lang, input_ids.shape[0]):
                pooled, outputs = encode_text(self.text_model, input_ids, attention_mask, self.config.text_pooling)
            states = outputs.last_hidden_state
        else:
            pooled, states = self._encode_text_groups(input_ids, attention_mask, lang, groups)
        embeds = F.normalize(self.text_projection(pooled), dim=-1)  # (B, D)
        return BaseModelOutputWithPooling(last_hidden_state=states, pooler_output=embeds)

    def _encode_text_groups(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        lang: str | list[str] | None,
        groups: list[tuple[torch.Tensor, int]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The text tower run once per length group (`config.text_length_groups`); returns the pooled (B, H) vectors
        and the (B, T, H) token states in the batch's order (zeros past a group's longest caption)."""
        width = input_ids.shape[1]
        pooled, states = [], []
        for rows, length in groups:
            group_lang = [lang[i] for i in rows.tolist()] if isinstance(lang, (list, tuple)) else lang
            with language_routing(self, group_lang, rows.numel()):
                group_pooled, outputs = encode_text(
                    self.text_model, input_ids[rows, :length], attention_mask[rows, :length], self.config.text_pooling
                )
            pooled.append(group_pooled)
            states.append(F.pad(outputs.last_hidden_state, (0, 0, 0, width - length)))
        inverse = torch.argsort(torch.cat([rows for rows, _ in groups]))
        return torch.cat(pooled)[inverse], torch.cat(states)[inverse]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        return_loss: bool = False,
        lang: list[str] | None = None,
        image_id: list[str] | None = None,
        phrase_input_ids: torch.Tensor | None = None,
        phrase_attention_mask: torch.Tensor | None = None,
        phrase_token_mask: torch.Tensor | None = None,
        mention_token_mask: torch.Tensor | None = None,
        negative_input_ids: torch.Tensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        output_grounding: bool = True,
        output_matching: bool = True,
    ) -> SeeYouOutput:
        """Embeds a batch of images and captions and scores every pair.

        Args:
            input_ids: (B, T) caption token ids.
            attention_mask: (B, T) caption mask.
            pixel_values: (B, 3, H, W) images; row i pairs with caption i.
            return_loss: also compute the symmetric contrastive loss (across processes when a process group runs).
            lang: ISO 639-1 language of each caption, as the collator carries it; with language adapters each
                caption goes through its language's adapter (see `get_text_features`).
            image_id: id of each pair's image, as the collator carries it. With `return_loss`, pairs that share an
                image are not treated as negatives of each other.
            phrase_input_ids: (B, P) token ids of a referring expression in image i (the corpus's `phrase`); with a
                grounding head, `pred_boxes` and the attention outputs are the expression's.
            phrase_attention_mask: (B, P) mask of `phrase_input_ids`.
            phrase_token_mask: (B, T), 1 on the caption tokens of a referring span; used when no `phrase_input_ids`
                are given.
            mention_token_mask: (B, M, T), 1 on the caption tokens that name each of up to M objects (the collator's
                `return_mentions`); with a grounding head, `mention_attention` says where each looks.
            negative_input_ids: (B, N, T) token ids of captions false of image i (the collator's
                `return_negative_captions`); with a grounding head they come back in its width for the matching loss.
            negative_attention_mask: (B, N, T) mask of `negative_input_ids`.
            output_grounding: run the grounding head, where the model has one; `False` skips it (the trainer does at
                the steps where none of the head's loss terms counts).
            output_matching: with the head, fuse each caption with its own image for `itm_logits`; `False` leaves
                them out (the trainer does: its matching terms fuse the own pairs in the pass of their negatives).

        Returns:
            [`SeeYouOutput`].
        """
        if input_ids is None or pixel_values is None:
            raise ValueError(
                "SeeYouModel.forward needs both `input_ids` and `pixel_values`; to embed one modality use "
                "get_text_features or get_image_features."
            )
        for name, values in (("lang", lang), ("image_id", image_id)):
            if values is not None and len(values) != input_ids.shape[0]:
                raise ValueError(f"`{name}` has {len(values)} entries for a batch of {input_ids.shape[0]} captions.")

        # Text first: backward visits later operations first, so the vision tower's activations are freed before the
        # text tower's word-embedding gradient (a dense vocab x hidden tensor, 768 MB for XLM-R base) is formed.
        text = self.get_text_features(input_ids, attention_mask, lang=lang)
        vision = self._embed_batch_images(pixel_values, image_id)
        image_embeds, text_embeds = vision.pooler_output, text.pooler_output
        scale = self.scale()
        logits_per_text = scale * text_embeds @ image_embeds.T  # (B_text, B_image)

        loss = None
        if return_loss:
            if image_embeds.shape[0] != text_embeds.shape[0]:
                raise ValueError(
                    f"return_loss needs one caption per image, got {image_embeds.shape[0]} images and "
                    f"{text_embeds.shape[0]} captions."
                )
            ids = image_ids_to_tensor(image_id, image_embeds.device) if image_id is not None else None
            loss = contrastive_loss(image_embeds, text_embeds, scale, ids)

        grounding = {}
        if self.grounding_head is not None and output_grounding:
            grounding = self._ground_batch(text.last_hidden_state, input_ids, attention_mask, vision, phrase_input_ids,
                                           phrase_attention_mask, phrase_token_mask, output_matching,
                                           mention_token_mask, negative_input_ids, negative_attention_mask)
        return SeeYouOutput(
            loss=loss,
            logits_per_image=logits_per_text.T,
            logits_per_text=logits_per_text,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            vision_model_output=vision,
            text_model_output=text,
            **grounding,
        )

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`; language adapters go to `adapters/<lang>/` beside the base weights, in
        peft's format (`seeyou_ml.adapters.save_language_adapters`)."""
        from .adapters import save_language_adapters

        if not language_adapters(self):
            return super().save_pretrained(save_directory, *args, **kwargs)
        kwargs.setdefault("state_dict", base_state_dict(self))
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            save_language_adapters(self, os.path.join(save_directory, ADAPTERS_FOLDER))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "SeeYouModel":
        """`PreTrainedModel.from_pretrained`, restoring the language adapters that `config.adapter_languages` lists."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, info) with output_loading_info=True
        languages = model.config.adapter_languages
        if languages:
            model.config.adapter_languages = None  # the adapters are not there yet; loading them lists them again
            folder = os.path.join(str(pretrained_model_name_or_path), ADAPTERS_FOLDER)
            if not os.path.isdir(folder):
                from huggingface_hub import snapshot_download

                folder = os.path.join(snapshot_download(
                    str(pretrained_model_name_or_path), revision=kwargs.get("revision"),
                    allow_patterns=[f"{ADAPTERS_FOLDER}/*"], cache_dir=kwargs.get("cache_dir"),
                ), ADAPTERS_FOLDER)
            load_language_adapters(model, folder, languages)
        return loaded

    def grounding_feature_map(self, vision_output: BaseModelOutputWithPooling) -> torch.Tensor:
        """The vision map the grounding head reads: the stage its config names (ResNet), else the last hidden state."""
        stage = self.config.grounding_config.feature_stage
        if stage == -1 or vision_output.hidden_states is None:
            return vision_output.last_hidden_state
        return vision_output.hidden_states[stage]

    def _ground_batch(
        self,
        caption_states: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        vision: BaseModelOutputWithPooling,
        phrase_input_ids: torch.Tensor | None,
        phrase_attention_mask: torch.Tensor | None,
        phrase_token_mask: torch.Tensor | None,
        output_matching: bool = True,
        mention_token_mask: torch.Tensor | None = None,
        negative_input_ids: torch.Tensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """The grounding head's outputs: matching logits of the captions, the referring expression's box and maps,
        where the objects each caption names look, and the negative captions in the head's width."""
        head = self.grounding_head
        detach = self.config.grounding_config.detach_towers
        if attention_mask is None:
            attention_mask = torch.ones(caption_states.shape[:2], dtype=torch.long, device=caption_states.device)
        feature_map = self.grounding_feature_map(vision)
        if detach:
            feature_map, caption_states = feature_map.detach(), caption_states.detach()
        regions, size = head.encode_regions(feature_map)  # (B, H*W, d)
        caption_text = head.encode_text(caption_states, input_ids)  # (B, T, d)
        # In training the head may match the first n captions only (grounding_config.itm_train_pairs); regions and
        # text stay whole for the matching loss's negatives and the referring expressions.
        n = self.config.grounding_config.matched_captions(caption_text.shape[0], self.training)
        caption = expression = None
        if phrase_token_mask is not None or mention_token_mask is not None:
            span = None if phrase_token_mask is None else phrase_token_mask[:n]
            caption = head.fuse(caption_text[:n], attention_mask[:n], regions[:n], size, span)
            expression = None if span is None else caption
        elif output_matching:
            caption = head.fuse(caption_text[:n], attention_mask[:n], regions[:n], size, locate=False)
        extra = {}
        if mention_token_mask is not None:
            # The first layer's map: there each word's query is still its own (self-attention has mixed the words
            # only with each other, before any has seen the image), so it says where that word looks.
            first = caption.cross_attentions[0].mean(1)  # (n, h, T, L) -> (n, T, L)
            share = mention_token_mask[:n].to(first.dtype)  # (n, M, T)
            extra["mention_attention"] = (share / share.sum(-1, keepdim=True).clamp(min=1.0)) @ first  # (n, M, L)
            # What the order readout reads from each caption (None without one), for order_loss.
            extra.update(order_gate_logits=caption.order_gate_logits,
                         order_direction_logits=caption.order_direction_logits)
        if negative_input_ids is not None:
            ids = negative_input_ids[:n].flatten(0, 1)  # (n * N, T)
            mask = torch.ones_like(ids)
            if negative_attention_mask is not None:
                mask = negative_attention_mask[:n].flatten(0, 1)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
                states = self.text_model(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state
            extra.update(grounding_negative_text=head.encode_text(states, ids), negative_attention_mask=mask)
        if phrase_input_ids is not None:
            if phrase_attention_mask is None:
                phrase_attention_mask = torch.ones_like(phrase_input_ids)
            # In training the head may ground the first m expressions only (grounding_config.expression_train_pairs).
            m = self.config.grounding_config.expression_train_pairs if self.training else None
            phrase_input_ids, phrase_attention_mask = phrase_input_ids[:m], phrase_attention_mask[:m]
            with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
                states = self.text_model(
                    input_ids=phrase_input_ids, attention_mask=phrase_attention_mask, return_dict=True
                ).last_hidden_state  # (B, P, H)
            expression = head.fuse(head.encode_text(states, phrase_input_ids), phrase_attention_mask, regions[:m], size)
        outputs = {
            "itm_logits": None if caption is None else caption.itm_logits,
            "region_size": size,
            "grounding_regions": regions,
            "grounding_text": caption_text,
            **extra,
        }
        if expression is not None:
            outputs.update(
                pred_boxes=expression.pred_boxes,
                cross_attentions=expression.cross_attentions,
                expression_attention=expression.expression_attention,
            )
        return outputs

    def ground(self, images: list, texts: list[str], processor: Any) -> Any:
        """Finds what each text refers to in its image: boxes in the original images' pixels, matching scores and
        attention maps (see [`seeyou_ml.grounding.ground`]).

        Example:

        ```python
        >>> result = model.ground([image], ["the red circle left of the blue square"], processor)  # doctest: +SKIP
        >>> result.boxes  # (1, 4) x0, y0, x1, y1 in the image's pixels  # doctest: +SKIP
        ```
        """
        from .grounding import ground

        return ground(self, processor, images, texts)

    @classmethod
    def from_vision_text_pretrained(
        cls,
        vision_model_name_or_path: str | None = None,
        text_model_name_or_path: str | None = None,
        **kwargs,
    ) -> "SeeYouModel":
        """Builds a model from two pretrained towers, with new projections (as `VisionTextDualEncoderModel`).

        Args:
            vision_model_name_or_path: Hub id or local directory of a vision backbone (e.g. `microsoft/resnet-50`).
            text_model_name_or_path: Hub id or local directory of a text encoder (e.g. `xlm-roberta-base`).
            **kwargs: [`SeeYouConfig`] fields (`projection_dim`, `text_pooling`, ...) set the composite config; other
                `vision_*` keywords go to the vision tower's `from_pretrained` (`vision_model=` passes a built tower)
                and other `text_*` keywords to the text tower's.

        Example:

        ```python
        >>> model = SeeYouModel.from_vision_text_pretrained("microsoft/resnet-50", "xlm-roberta-base")  # doctest: +SKIP
        ```
        """
        # `text_pooling` and the like are fields of the composite config, not keywords of a tower.
        own_fields = {field.name for field in dataclasses.fields(SeeYouConfig)}
        routed = [k for k in kwargs if k not in own_fields]
        vision_kwargs = {k[len("vision_"):]: kwargs.pop(k) for k in routed if k.startswith("vision_")}
        text_kwargs = {k[len("text_"):]: kwargs.pop(k) for k in routed if k.startswith("text_")}
        text_pooling = kwargs.get("text_pooling", SeeYouConfig.text_pooling)

        vision_model = vision_kwargs.pop("model", None)
        if vision_model is None:
            if vision_model_name_or_path is None:
                raise ValueError("Give `vision_model_name_or_path` or a built tower as `vision_model=`.")
            vision_model = load_tower(vision_model_name_or_path, **vision_kwargs)
        text_model = text_kwargs.pop("model", None)
        if text_model is None:
            if text_model_name_or_path is None:
                raise ValueError("Give `text_model_name_or_path` or a built tower as `text_model=`.")
            text_model = load_tower(text_model_name_or_path, with_pooler=text_pooling == "pooler", **text_kwargs)

        config = SeeYouConfig.from_vision_text_configs(vision_model.config, text_model.config, **kwargs)
        return cls(config, vision_model=vision_model, text_model=text_model)


# Saved folders carry this file (and the flat modules it imports) with an `auto_map` entry, so `AutoModel` loads
# them with `trust_remote_code=True` where this package is not installed.
SeeYouModel.register_for_auto_class("AutoModel")

__all__ = ["SeeYouModel", "SeeYouOutput", "SeeYouPreTrainedModel"]
