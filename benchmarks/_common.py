"""Shared pieces of the training benchmarks: the towers, the tokenizer, flickr8k-multi, retrieval evaluation, tables.

Both `recipe_vs_baseline.py` and `train_throughput.py` compare our training against transformers'
`VisionTextDualEncoderModel` (VTDE) on the same towers: a ViT-style vision tower that VTDE accepts and a tiny XLM-R
text tower, both from scratch, joined by linear projections. [`seeyou_from_vtde`] copies a VTDE's weights into a
`SeeYouModel` with `text_pooling="pooler"`, which computes the same embeddings (the core's parity test checks this),
so both sides start from the same initialisation.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
FLICKR_DIR = REPO_ROOT.parent / "shared" / "data" / "flickr8k-multi"
CACHE_DIR = REPO_ROOT / "outputs" / "benchmarks"


@dataclass
class TowerSizes:
    """Sizes of the two towers (CPU-feasible: a few million parameters each)."""

    image_size: int = 64
    patch_size: int = 8
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    projection_dim: int = 128
    max_text_length: int = 128


def tower_configs(vocab_size: int, pad_token_id: int, sizes: TowerSizes) -> tuple[Any, Any]:
    """A tiny `ViTConfig` and `XLMRobertaConfig` of the given sizes (library defaults otherwise, e.g. dropout)."""
    from transformers import ViTConfig, XLMRobertaConfig

    vision = ViTConfig(
        image_size=sizes.image_size,
        patch_size=sizes.patch_size,
        hidden_size=sizes.hidden_size,
        num_hidden_layers=sizes.layers,
        num_attention_heads=sizes.heads,
        intermediate_size=4 * sizes.hidden_size,
    )
    text = XLMRobertaConfig(
        vocab_size=vocab_size,
        hidden_size=sizes.hidden_size,
        num_hidden_layers=sizes.layers,
        num_attention_heads=sizes.heads,
        intermediate_size=4 * sizes.hidden_size,
        # XLM-R numbers positions from padding_idx + 1, so it needs two positions beyond the longest caption.
        max_position_embeddings=sizes.max_text_length + 2,
        type_vocab_size=1,
        pad_token_id=pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
    )
    return vision, text


def build_vtde(vocab_size: int, pad_token_id: int, sizes: TowerSizes, seed: int) -> Any:
    """A randomly initialised `VisionTextDualEncoderModel` over the tiny towers."""
    from transformers import VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    vision, text = tower_configs(vocab_size, pad_token_id, sizes)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vision, text, projection_dim=sizes.projection_dim)
    torch.manual_seed(seed)
    return VisionTextDualEncoderModel(config)


def seeyou_from_vtde(vtde: Any, text_pooling: str = "pooler") -> Any:
    """A `SeeYouModel` with the towers, projections and temperature of `vtde`.

    With `text_pooling="pooler"` (VTDE's: the text tower's tanh pooler over the first token) it computes the same
    embeddings and loss as `vtde`; `"mean"`/`"cls"` keep every weight but read the caption out another way.
    """
    from seeyou_ml import SeeYouConfig, SeeYouModel

    config = SeeYouConfig.from_vision_text_configs(
        vtde.config.vision_config,
        vtde.config.text_config,
        projection_dim=vtde.config.projection_dim,
        projection="linear",
        text_pooling="pooler",
        logit_scale_init_value=vtde.config.logit_scale_init_value,
    )
    model = SeeYouModel(config)
    missing, unexpected = model.load_state_dict(vtde.state_dict(), strict=False)
    if unexpected or any("position_ids" not in key for key in missing):
        raise RuntimeError(f"VTDE and SeeYouModel weights do not line up: missing {missing}, unexpected {unexpected}.")
    model.config.text_pooling = text_pooling
    return model


def fastest_adamw(parameters, **kwargs: Any) -> torch.optim.AdamW:
    """`torch.optim.AdamW` with the fastest step torch offers for these parameters: the fused kernel where their
    device has one, else the multi-tensor (`foreach`) loop; never the per-tensor loop.

    Args:
        parameters: parameters or parameter groups, as for `torch.optim.AdamW`.
        **kwargs: `lr`, `weight_decay`, ... as for `torch.optim.AdamW`.
    """
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    parameters = list(parameters)
    first = parameters[0]["params"][0] if isinstance(parameters[0], dict) else parameters[0]
    if first.device.type in _get_fused_kernels_supported_devices():
        return torch.optim.AdamW(parameters, fused=True, **kwargs)
    return torch.optim.AdamW(parameters, foreach=True, **kwargs)


def optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    """`"fused"`, `"foreach"` or `"per-tensor"`: which implementation `optimizer.step()` runs."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch optimizer
    defaults = optimizer.defaults
    if defaults.get("fused"):
        return "fused"
    if defaults.get("foreach"):
        return "foreach"
    # `foreach=None` lets torch choose; it picks the multi-tensor loop only for CUDA tensors.
    devices = {p.device.type for group in optimizer.param_groups for p in group["params"]}
    return "foreach" if defaults.get("foreach") is None and devices == {"cuda"} else "per-tensor"


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """Median and the 25th/75th percentiles of `values`."""
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
    return quartiles[1], quartiles[0], quartiles[2]


def flickr_tokenizer(cache_dir: Path = CACHE_DIR / "flickr8k_tokenizer", vocab_size: int = 8000) -> Any:
    """A SentencePiece tokenizer (XLM-R layout) trained on all flickr8k-multi train captions, cached on disk."""
    from transformers import XLMRobertaTokenizer

    if (cache_dir / "tokenizer.json").exists():
        return XLMRobertaTokenizer.from_pretrained(str(cache_dir))
    from seeyou_ml.data.tokenizer import train_sentencepiece_tokenizer

    texts = []
    with open(FLICKR_DIR / "train.jsonl", encoding="utf-8") as f:
        for line in f:
            for _, captions in sorted(json.loads(line)["captions"].items()):
                texts += captions
    tokenizer = train_sentencepiece_tokenizer(texts, vocab_size=vocab_size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(cache_dir))
    return tokenizer


def load_flickr(split: str, max_images: Optional[int] = None) -> Any:
    """flickr8k-multi `split` as one row per caption (`image`, `caption`, `lang`, `image_id`).

    Args:
        split: `train` or `val`.
        max_images: keep only the captions of the first `max_images` images (in file order); all when `None`.
    """
    from seeyou_ml.data import load_corpus

    if not FLICKR_DIR.exists():
        raise FileNotFoundError(f"{FLICKR_DIR} is missing; the benchmarks read flickr8k-multi from there.")
    dataset = load_corpus(str(FLICKR_DIR), split=split, verify_images=False)
    if max_images is not None:
        with open(FLICKR_DIR / f"{split}.jsonl", encoding="utf-8") as f:
            keep = {json.loads(line)["image_id"] for _, line in zip(range(max_images), f)}
        ids = dataset["image_id"]
        dataset = dataset.select([i for i, image_id in enumerate(ids) if image_id in keep])
    return dataset


class NormalizedFeatures(torch.nn.Module):
    """A dual encoder whose `get_image_features`/`get_text_features` return L2-normalised `pooler_output`s.

    `seeyou_ml.evaluation.evaluate_retrieval` expects normalised embeddings; `SeeYouModel` returns them, while
    `VisionTextDualEncoderModel` returns the raw projections (it normalises only inside `forward`).
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, **kwargs) -> Any:
        outputs = self.model.get_image_features(**kwargs)
        outputs.pooler_output = F.normalize(outputs.pooler_output, dim=-1)  # (B, D)
        return outputs

    def get_text_features(self, **kwargs) -> Any:
        outputs = self.model.get_text_features(**kwargs)
        outputs.pooler_output = F.normalize(outputs.pooler_output, dim=-1)  # (B, D)
        return outputs


def evaluate_per_language(model: Any, processor: Any, dataset: Any, batch_size: int = 128) -> dict[str, dict]:
    """Val R@1/5/10 per caption language (image→text and text→image) with `seeyou_ml.evaluation.evaluate_retrieval`.

    Returns:
        `{lang: {"image_to_text/R@k": ..., "text_to_image/R@k": ..., "rsum": ..., ...}}` in percent.
    """
    from seeyou_ml.evaluation.evaluator import evaluate_retrieval

    model.eval()
    results = evaluate_retrieval(NormalizedFeatures(model), processor, dataset, batch_size=batch_size,
                                 text_to_text=False, progress=False)
    return results["per_language"]


# glibc places every block of 64 KB or more in its own mapping, so that freeing a tensor returns its pages and resident
# memory follows the live tensors (by default freed heap pages stay resident and later allocations reuse them).
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def resident_mb(field: str) -> float:
    """`VmRSS` (now) or `VmHWM` (peak since the last reset) of this process, in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} line; this benchmark needs Linux.")


def reset_peak() -> None:
    """Sets this process's `VmHWM` back to its current resident size (Linux `clear_refs` code 5)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with right-aligned columns (floats to 2 decimals)."""
    cells = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(str(h).rjust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def load_average() -> str:
    """The 1-minute load average (the machine is shared; a high value explains noisy timings)."""
    return f"{os.getloadavg()[0]:.1f}"


def trainer_header(recipe: Any, trainer: Any, detail: str) -> str:
    """The first line of a table that times a recipe's trainer: batch, threads, CPU kernels, precision, `detail`."""
    return (f"{recipe.name}: batch {recipe.data.batch_size}, {torch.get_num_threads()} threads, kernels "
            f"{torch.backends.cpu.get_cpu_capability()}, precision {trainer.accelerator.mixed_precision}, {detail}")


def print_medians(label: str, times: dict[str, list[float]], digits: int) -> None:
    """One row per variant: its median in ms and its ratio to the first variant's."""
    base = statistics.median(next(iter(times.values())))
    print(f"{label:>34}  {'median ms':>9}  {'ratio':>7}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:>34}  {1000 * median:9.{digits}f}  {median / base:6.3f}x")
