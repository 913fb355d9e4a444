"""The compute dtype of the stages that train (discovery, baselines, relearning, CSQA features).

`auto` picks bfloat16 where the hardware multiplies it natively, float32 elsewhere:
- a CUDA GPU that supports bf16;
- a CPU whose flags include `amx_bf16` or `avx512_bf16` (oneDNN runs bf16 matrix products on them
  at about 20x the fp32 rate on one core; without them bf16 is emulated and slower than fp32).

What stays fp32 in the bf16 path (the callers' business, listed here once): the mask logits and
Adam's state, the loss reductions and log-softmax, the reference distributions, and evaluation.
"""

from __future__ import annotations

import torch

from knowsubnet.core.errors import InputError
from knowsubnet.core.provenance import cpu_bf16_flags

DTYPES = ("auto", "float32", "bfloat16")


def resolve(pref: str, device: torch.device, key: str = "dtype") -> torch.dtype:
    """The compute dtype for `pref` (auto | float32 | bfloat16) on `device`."""
    if pref not in DTYPES:
        raise InputError(f"params key '{key}' = {pref!r}: expected one of {', '.join(DTYPES)}")
    if pref == "float32":
        return torch.float32
    if pref == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if device.type == "cpu" and cpu_bf16_flags() else torch.float32


def adam(params: list[torch.Tensor], lr: float, dtype: torch.dtype) -> torch.optim.Adam:
    """Adam on fp32 parameters for a run in `dtype`: fp32 keeps torch's default implementation (its
    numbers as they were); bf16 takes the fused kernel (one pass over the state instead of five)."""
    return torch.optim.Adam(params, lr=lr, fused=dtype != torch.float32 or None)


def name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def provenance(dtype: torch.dtype, device: torch.device) -> dict[str, str]:
    """What a trained artifact records of how it was computed, beside its `device` (the CPU's bf16
    flags are in every artifact's `environment`)."""
    return {"compute_dtype": name(dtype), "torch_threads": str(torch.get_num_threads())}
