"""Which floating-point precision a forward runs in: exact fp32, or bf16 autocast where the hardware has it."""

from __future__ import annotations

from typing import Literal

import torch

Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bfloat16 for ``"bf16"``, and for ``"auto"`` on CUDA with bf16 and CPUs with AVX512-BF16 or AMX; else None
    (fp32, no autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; choose one of {list(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    cpu_bf16 = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
    return torch.bfloat16 if device.type == "cpu" and cpu_bf16 else None
