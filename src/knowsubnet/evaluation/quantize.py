"""Round a model's block weights as a gguf file would store them, to see whether removed knowledge
comes back after quantization.

After finetuning-based unlearning, 4-bit quantization brings most "forgotten" facts back (Zhang et
al., ICLR 2025): the finetune moved the weights by less than one rounding step, so rounding undoes
it. A mask's removed weights are exactly zero, and zero rounds to zero; whether the rest of the
remaining model then still hides the facts is what the robustness stage measures.

The schemes are gguf's Q8_0 and Q4_0 (`models.gguf_rounding`); both map 0 to 0. `quantized` rounds every
2-D weight of the transformer blocks' linear layers (nn.Linear, GPT-2's Conv1D) in place and restores the
exact originals on exit; embeddings, norms and the LM head keep full precision. A last group narrower than
`group` (an input width that is not a multiple) is quantized on its own, as if zero-padded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from knowsubnet.method import masking
from knowsubnet.models.gguf_rounding import BITS, GROUP, quantize_weight  # noqa: F401  (re-exported)
from knowsubnet.models.top_blocks import find_blocks


def block_layers(model: nn.Module) -> list[masking.MaskableLayer]:
    """The linear layers of every transformer block (what a mask could cover with all blocks)."""
    _, blocks = find_blocks(model)
    return masking.find_maskable_layers(model, len(blocks))


def _stats(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """How much rounding changed the weights: counts, and the relative Frobenius error overall and
    averaged over matrices."""
    total = changed = zeros = zeros_kept = 0
    squared_error = squared_norm = 0.0
    per_matrix = []
    for before, after in pairs:
        before, after = before.double(), after.double()
        error = float((after - before).pow(2).sum())
        norm = float(before.pow(2).sum())
        total += before.numel()
        changed += int((after != before).sum())
        zero = before == 0
        zeros += int(zero.sum())
        zeros_kept += int((after[zero] == 0).sum())
        squared_error += error
        squared_norm += norm
        per_matrix.append((error / norm) ** 0.5 if norm > 0 else 0.0)
    return {
        "weights": total,
        "changed": changed,
        "changed_share": changed / total if total else 0.0,
        "zeros": zeros,
        "zeros_kept": zeros_kept,
        "relative_error": (squared_error / squared_norm) ** 0.5 if squared_norm > 0 else 0.0,
        "mean_relative_error": sum(per_matrix) / len(per_matrix) if per_matrix else 0.0,
    }


@torch.no_grad()
def quantization_stats(model: nn.Module, bits: int, group: int = GROUP) -> dict[str, float]:
    """What `quantized` would do to the model's current weights, the model left as it is: `weights`
    rounded, how many `changed` (and their share), how many were zero and stayed zero, and the
    relative error |W' - W| / |W| (Frobenius) over all of them (`relative_error`) and its mean over
    the matrices (`mean_relative_error`)."""
    pairs = [
        (layer.weight.detach(), quantize_weight(layer.weight.detach(), bits, group, layer.transposed))
        for layer in block_layers(model)
    ]
    return _stats(pairs)


@contextlib.contextmanager
def quantized(model: nn.Module, bits: int, group: int = GROUP) -> Iterator[dict[str, float]]:
    """The model with its block weights rounded in place for the block (yields `quantization_stats`);
    the exact original values are restored on exit. Apply an edit first (`edits.applied`) to round
    the edited model: this restores the edited weights, and the edit then the originals."""
    saved: list[tuple[masking.MaskableLayer, torch.Tensor]] = []
    try:
        with torch.no_grad():
            pairs = []
            for layer in block_layers(model):
                original = layer.weight.detach().clone()
                saved.append((layer, original))
                layer.weight.copy_(quantize_weight(original, bits, group, layer.transposed))
                pairs.append((original, layer.weight.detach()))
            stats = _stats(pairs)
            del pairs
        yield stats
    finally:
        with torch.no_grad():
            for layer, original in saved:
                layer.weight.copy_(original)
