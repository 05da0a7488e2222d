"""Which precision a run trains in: `mixed_precision: auto` picks bf16 where the hardware runs it natively.

bf16 autocast halves the memory traffic of matrix products and convolutions where the hardware has bf16 units:
CUDA devices of compute capability 8.0 and newer, and CPUs with AVX512-BF16 or AMX. Elsewhere bf16 is emulated, and
on an AVX2-only CPU a training step of the main job's model runs several times slower in bf16 than in fp32 (see
`benchmarks/precision.py`), so `auto` trains in fp32 there.

Precedence, highest first: a command-line override (`--mixed_precision no`), the recipe's value, the setting of
`accelerate launch --mixed_precision` / `accelerate config` (`ACCELERATE_MIXED_PRECISION`). A recipe value that
disagrees with an explicit launcher setting wins and is warned about. The launcher's `no` is also its default, so it
counts as no setting.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
LAUNCHER_ENV = "ACCELERATE_MIXED_PRECISION"


class PrecisionWarning(UserWarning):
    """A precision setting that trains slower than it could, or a recipe overriding the launcher."""


@dataclass(frozen=True)
class PrecisionChoice:
    """A resolved precision and why it was chosen.

    Args:
        mixed_precision: what accelerate gets: `no`, `bf16` or `fp16`.
        reason: one sentence for the log.
    """

    mixed_precision: str
    reason: str


def native_bf16(device: str) -> tuple[bool, str]:
    """Whether `device` (`cpu` or `cuda`) runs bf16 natively, and what the answer rests on.

    On CPUs oneDNN must report bf16 support (it does not under `ONEDNN_MAX_CPU_ISA=AVX2`) and the processor must have
    AVX512-BF16 or AMX tiles; AVX-512 without them still emulates bf16.
    """
    if device == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device is available"
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{name} supports bf16"
        return False, f"{name} has no native bf16"
    capability = torch.backends.cpu.get_cpu_capability()
    hardware = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if hardware and torch.ops.mkldnn._is_mkldnn_bf16_supported() and capability.startswith("AVX512"):
        return True, f"the CPU has native bf16 (AVX512-BF16 or AMX; kernels {capability})"
    return False, f"the CPU has no native bf16 (kernels {capability}), where bf16 is emulated"


def run_device() -> str:
    """`cuda` when this process will train on a GPU, else `cpu` (as accelerate decides: `ACCELERATE_USE_CPU`)."""
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes")
    return "cuda" if torch.cuda.is_available() and not use_cpu else "cpu"


def launcher_precision() -> Optional[str]:
    """The precision `accelerate launch` / `accelerate config` set, or None where it set none (or its default `no`)."""
    value = os.environ.get(LAUNCHER_ENV, "").strip().lower()
    return value if value and value != "no" else None


def resolve_mixed_precision(
    requested: Optional[str], device: Optional[str] = None, launcher: Optional[str] = None
) -> PrecisionChoice:
    """The precision to train in.

    Args:
        requested: the recipe's `mixed_precision` (after command-line overrides): `auto`, `no`, `bf16`, `fp16`,
            or None to follow the launcher.
        device: `cpu` or `cuda`; None = [`run_device`].
        launcher: the launcher's setting; None = [`launcher_precision`].

    Returns:
        The choice and its reason. Warns ([`PrecisionWarning`]) when an explicit `bf16` will be emulated, and when
        the recipe's choice differs from an explicit launcher setting.

    Example:

    ```python
    >>> resolve_mixed_precision("no", device="cpu", launcher=None).mixed_precision
    'no'

    ```
    """
    device = device or run_device()
    launcher = launcher_precision() if launcher is None else (launcher if launcher != "no" else None)
    if requested is not None and requested not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision={requested!r} is unknown; use one of {', '.join(MIXED_PRECISION)}, or "
                         "null to follow accelerate launch.")
    if requested is None:
        if launcher is None:
            return PrecisionChoice("no", "fp32: neither the recipe nor accelerate launch set mixed_precision")
        return PrecisionChoice(launcher, f"{launcher}: set by accelerate launch / accelerate config")
    native, why = native_bf16(device)
    if requested == "auto":
        choice = PrecisionChoice("bf16", f"bf16 (auto): {why}") if native else PrecisionChoice(
            "no", f"fp32 (auto): {why}")
    elif requested == "bf16" and not native:
        warnings.warn(
            f"mixed_precision=bf16 but {why}: a training step is typically 3-4x slower than in fp32 there. Use "
            "mixed_precision: auto (bf16 only where it is native) or no.",
            PrecisionWarning,
            stacklevel=2,
        )
        choice = PrecisionChoice("bf16", f"bf16 (set by the recipe; emulated: {why})")
    else:
        label = "fp32" if requested == "no" else requested
        choice = PrecisionChoice(requested, f"{label}: set by the recipe")
    if launcher is not None and launcher != choice.mixed_precision:
        warnings.warn(
            f"The recipe's mixed_precision={requested} ({choice.mixed_precision} here) overrides accelerate launch's "
            f"{launcher}. Set mixed_precision: null in the recipe (or --mixed_precision null) to use the launcher's.",
            PrecisionWarning,
            stacklevel=2,
        )
    return choice


__all__ = [
    "LAUNCHER_ENV",
    "MIXED_PRECISION",
    "PrecisionChoice",
    "PrecisionWarning",
    "launcher_precision",
    "native_bf16",
    "resolve_mixed_precision",
    "run_device",
]
