"""Weights rounded as a gguf file would store them (Q8_0, Q4_0), in torch: on the model's device, any
input width, and differentiable through a straight-through estimate where a caller wants one.

The schemes are gguf's (`gguf.quants`, the same rounding as ggml-quants.c), written here in torch
so they run on the model's device and accept any input width; `tests/unit/evaluation/test_quantize`
checks them bit for bit against the gguf package. One scale per group of `group` consecutive
weights along the input dimension (a row of ggml's [out, in] layout), stored as float16:

- 8 bits (Q8_0): d = absmax / 127, q = round-half-away(w / d) in [-127, 127], w' = q * d.
- 4 bits (Q4_0): m = the group's weight of largest magnitude (with its sign), d = m / -8,
  q = trunc(w / d + 8.5) clipped to [0, 15], w' = (q - 8) * d; m itself lands exactly on -8 * d,
  so the 16 levels span [-8, 7] * d with no level wasted on the side m is not on.

Both map 0 to 0. The robustness stage rounds a remaining model with them (`evaluation.quantize`); the mask's
training can meet the same rounding (`method.adversary`).
"""

from __future__ import annotations

import torch

BITS = (8, 4)
GROUP = 32  # weights per scale: gguf's block size for Q8_0 and Q4_0


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """Round half away from zero, as ggml's roundf (`gguf.quants.np_roundf`, op for op)."""
    a = x.abs()
    floored = torch.floor(a)
    return torch.sign(x) * (floored + torch.floor(2 * (a - floored)))


def _quantize_groups(groups: torch.Tensor, bits: int) -> torch.Tensor:
    """Dequantized values of float32 groups [G, group] (a row each)."""
    if bits == 8:
        d = groups.abs().amax(dim=1, keepdim=True) / 127
        inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        q = _roundf(groups * inverse)
        return q * d.half().float()
    if bits == 4:
        where = groups.abs().argmax(dim=1, keepdim=True)  # the first of equal magnitudes, as numpy
        d = groups.gather(1, where) / -8
        inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        q = torch.trunc(groups * inverse + 8.5).clamp(0, 15)
        return d.half().float() * (q - 8)
    raise ValueError(f"quantization to {bits} bits: expected one of {', '.join(map(str, BITS))}")


def quantize_weight(weight: torch.Tensor, bits: int, group: int = GROUP, transposed: bool = False) -> torch.Tensor:
    """A weight matrix rounded as gguf would store it (a new tensor of the weight's dtype and
    device). `transposed`: the weight is [in, out] (GPT-2's Conv1D), so its groups run down columns."""
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    rows = (weight.t() if transposed else weight).float()  # [out, in]: groups along the input
    width = rows.shape[1]
    padded = -(-width // group) * group
    if padded != width:
        rows = torch.nn.functional.pad(rows, (0, padded - width))  # zeros change neither scale
    out = _quantize_groups(rows.reshape(-1, group), bits).reshape(rows.shape[0], padded)[:, :width]
    out = out.t() if transposed else out
    return out.to(weight.dtype).contiguous()
