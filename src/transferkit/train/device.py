"""Where and in which precision models run: the one resolver every path uses."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from ..config import PRECISIONS
from ..errors import ConfigError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (or None): the GPU when there is one, else the CPU; else the named device."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return default_device()
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"Unknown device '{device}': use auto, cpu, cuda or cuda:N.") from e


def cpu_has_fast_bf16() -> bool:
    """bf16 matrix products are ~3x fp32 on CPUs with AVX512-BF16 or AMX; elsewhere slower."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, c, lambda: False)() for c in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(
            f"Unknown precision '{precision}'. Choose one of: {', '.join(PRECISIONS)}."
        )
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 needs a GPU; on CPU use --precision bf16 or fp32.")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"


def autocast_for(precision: str, device: torch.device) -> Any:
    """The autocast context of a resolved precision (none for fp32)."""
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtypes[precision])


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


