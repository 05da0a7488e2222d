"""Small named configurations of the real architectures (ResNet + XLM-R), for the embedded default and tests.

They build the same classes as `microsoft/resnet-50` + `xlm-roberta-base`, only narrower and shallower, so the code
path a CPU run exercises is the one a GPU run with Hub checkpoints takes.
"""

from __future__ import annotations

from transformers import ResNetConfig, ViTImageProcessorPil, XLMRobertaConfig

from .configuration import SeeYouConfig
from .processing import SeeYouProcessor

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def tiny_config(
    vocab_size: int,
    image_size: int = 64,
    projection_dim: int = 64,
    vision_widths: tuple[int, ...] = (16, 32, 64, 128),
    vision_depths: tuple[int, ...] = (1, 1, 1, 1),
    text_hidden_size: int = 64,
    text_layers: int = 2,
    text_heads: int = 2,
    max_text_length: int = 64,
    pad_token_id: int = 1,
    vision_stem_width: int | None = None,
    text_intermediate_size: int | None = None,
    **kwargs,
) -> SeeYouConfig:
    """A tiny ResNet (basic blocks) + tiny XLM-R [`SeeYouConfig`].

    Args:
        vocab_size: size of the tokenizer's vocabulary (e.g. `len(scenes_tokenizer())`).
        image_size: side of the square input images; only documents the intended size (ResNets pool globally).
        projection_dim: size of the shared space.
        vision_widths, vision_depths: channels and blocks of the ResNet stages.
        text_hidden_size, text_layers, text_heads: width, depth and heads of the XLM-R encoder.
        max_text_length: longest caption in tokens (XLM-R reserves two more positions for padding offsets).
        pad_token_id: the tokenizer's padding id (1 in XLM-R's layout).
        vision_stem_width: channels of the ResNet stem (its 7x7 convolution); None = the first stage's width.
        text_intermediate_size: width of the XLM-R feed-forward layers; None = 4 * text_hidden_size.
        **kwargs: further [`SeeYouConfig`] fields (`text_pooling`, `projection`, ...).
    """
    vision = ResNetConfig(
        num_channels=3,
        embedding_size=vision_stem_width or vision_widths[0],
        hidden_sizes=list(vision_widths),
        depths=list(vision_depths),
        layer_type="basic",
        hidden_act="relu",
        downsample_in_first_stage=False,
        image_size=image_size,
    )
    text = XLMRobertaConfig(
        vocab_size=vocab_size,
        hidden_size=text_hidden_size,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        intermediate_size=text_intermediate_size or 4 * text_hidden_size,
        max_position_embeddings=max_text_length + 2,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return SeeYouConfig(vision_config=vision, text_config=text, projection_dim=projection_dim, **kwargs)


def tiny_processor(tokenizer, image_size: int = 64) -> SeeYouProcessor:
    """A processor that resizes images to `image_size`² (no crop, so boxes stay in frame) with ImageNet statistics."""
    image_processor = ViTImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    return SeeYouProcessor(image_processor=image_processor, tokenizer=tokenizer)
