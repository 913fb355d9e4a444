"""Which weights a mask covers, how a binary mask is applied to a model, and mask files.

A mask covers the linear layers (GPT-2 `Conv1D`, `nn.Linear`) of the top k transformer blocks.
The blocks and layers are found from the model itself, so GPT-2 and Llama-family models both
work without a per-architecture list of names. Embeddings, norms and the LM head are never masked.

A mask is stored as float logits per layer; the subnetwork is `logits > 0` (sigmoid > 0.5).
Granularity:
- `weight`:     one logit per weight, shaped like the layer's weight in its native layout
                (`Conv1D`: [in, out]; `nn.Linear`: [out, in]);
- `neuron_in`:  one logit per input feature  ([in]);  a masked input removes a whole column of W;
- `neuron_out`: one logit per output feature ([out]); a masked output removes a whole row of W.

The trainable logits and the samplers that draw training masks from them are `samplers`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from knowsubnet.core.errors import InputError
from knowsubnet.core.io import write_safetensors
from knowsubnet.models.top_blocks import find_blocks

GRANULARITIES = ("weight", "neuron_in", "neuron_out")


@dataclass(frozen=True)
class MaskableLayer:
    name: str  # module path, e.g. "transformer.h.9.mlp.c_fc"
    module: nn.Module
    block: int  # index of the transformer block it sits in
    transposed: bool  # True for GPT-2 Conv1D, whose weight is [in, out]
    in_features: int
    out_features: int

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    def mask_shape(self, granularity: str) -> tuple[int, ...]:
        if granularity == "weight":
            return tuple(self.module.weight.shape)
        if granularity == "neuron_in":
            return (self.in_features,)
        if granularity == "neuron_out":
            return (self.out_features,)
        raise InputError(f"mask granularity '{granularity}': expected one of {', '.join(GRANULARITIES)}")


def _is_conv1d(module: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D: a linear layer with its weight stored as [in, out].
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2


def resolve_top_k(top_k: float, n_blocks: int) -> int:
    """`top_k` blocks, or a share of them when 0 < top_k < 1 (0.5: the top half, as the paper)."""
    return max(1, round(top_k * n_blocks)) if 0 < top_k < 1 else int(top_k)


def find_maskable_layers(model: nn.Module, top_k: float) -> list[MaskableLayer]:
    """The Conv1D / nn.Linear layers of the top `top_k` blocks, in module order."""
    blocks_name, blocks = find_blocks(model)
    top_k = resolve_top_k(top_k, len(blocks))
    if not 1 <= top_k <= len(blocks):
        raise InputError(f"params key 'mask.top_k_blocks' = {top_k}: the model has {len(blocks)} blocks")
    layers = []
    for index in range(len(blocks) - top_k, len(blocks)):
        for sub_name, module in blocks[index].named_modules():
            if _is_conv1d(module):
                in_f, out_f, transposed = module.weight.shape[0], module.weight.shape[1], True
            elif isinstance(module, nn.Linear):
                in_f, out_f, transposed = module.in_features, module.out_features, False
            else:
                continue
            name = f"{blocks_name}.{index}.{sub_name}" if blocks_name else f"{index}.{sub_name}"
            layers.append(MaskableLayer(name, module, index, transposed, in_f, out_f))
    if not layers:
        raise InputError(f"{type(model).__name__}: no linear layers in the top {top_k} blocks")
    return layers


def expand_to_weight(mask: torch.Tensor, layer: MaskableLayer, granularity: str) -> torch.Tensor:
    """A mask in its own space, broadcast to the layer's weight shape (a view, no copy)."""
    shape = layer.weight.shape
    if granularity == "weight":
        return mask
    if granularity == "neuron_in":
        view = mask[:, None] if layer.transposed else mask[None, :]
    elif granularity == "neuron_out":
        view = mask[None, :] if layer.transposed else mask[:, None]
    else:
        layer.mask_shape(granularity)  # raises the clear error
    return view.expand(shape)


def binary_masks(logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The deterministic subnetwork: True where sigmoid(logit) > 0.5."""
    return {name: value > 0 for name, value in logits.items()}


def apply_mask(
    layers: list[MaskableLayer],
    masks: dict[str, torch.Tensor],
    granularity: str,
    keep: str = "remaining",
    weights: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The one way a binary mask is applied: {layer name: its weight with the mask applied} (new tensors).
    `weights` ({layer name: W}) gives the weights to mask (bf16 copies, say); by default the layers' own.

    keep="remaining": the subnetwork (mask True) is removed (zeroed), the rest kept;
    keep="subnetwork": only the subnetwork is kept, everything else in the masked layers zeroed.
    Training's validation runs these weights through `torch.func.functional_call`; evaluation
    writes them into the model for a while (`masked_weights`).
    """
    if keep not in ("remaining", "subnetwork"):
        raise ValueError(f"keep must be 'remaining' or 'subnetwork', got {keep!r}")
    out = {}
    for layer in layers:
        weight = layer.weight if weights is None else weights[layer.name]
        in_subnet = expand_to_weight(masks[layer.name].to(weight.device, torch.bool), layer, granularity)
        out[layer.name] = weight.detach().masked_fill(in_subnet if keep == "remaining" else ~in_subnet, 0.0)
    return out


@contextlib.contextmanager
def written_weights(layers: list[MaskableLayer], weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """`weights` ({layer name: tensor}) written into the layers in place for the block; restored on exit."""
    saved = []
    try:
        with torch.no_grad():
            for layer in layers:
                saved.append((layer, layer.weight.detach().clone()))
                layer.weight.copy_(weights[layer.name])
        yield
    finally:
        with torch.no_grad():
            for layer, original in saved:
                layer.weight.copy_(original)


def masked_weights(
    layers: list[MaskableLayer], masks: dict[str, torch.Tensor], granularity: str, keep: str = "remaining"
):
    """`apply_mask`'s weights written into the model in place for the block; restored on exit."""
    return written_weights(layers, apply_mask(layers, masks, granularity, keep))


def random_masks_like(masks: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random masks with exactly as many True entries as each given mask (per matrix)."""
    out = {}
    for name in sorted(masks):
        mask = masks[name]
        count = int(mask.sum())
        order = torch.randperm(mask.numel(), generator=generator)
        flat = torch.zeros(mask.numel(), dtype=torch.bool)
        flat[order[:count]] = True
        out[name] = flat.view(mask.shape)
    return out


def subnetwork_size(layers: list[MaskableLayer], masks: dict[str, torch.Tensor], granularity: str) -> int:
    """Number of weights in the subnetwork (neuron masks count every weight of a masked neuron)."""
    return sum(int(expand_to_weight(masks[layer.name], layer, granularity).sum()) for layer in layers)


def sparsity(
    model: nn.Module, layers: list[MaskableLayer], masks: dict[str, torch.Tensor], granularity: str
) -> dict[str, float]:
    """Share of weights NOT in the subnetwork: over the masked layers, and over all weights."""
    in_subnet = subnetwork_size(layers, masks, granularity)
    masked_total = sum(layer.weight.numel() for layer in layers)
    all_total = sum(p.numel() for p in model.parameters())
    return {"masked_layers": 1.0 - in_subnet / masked_total, "all_weights": 1.0 - in_subnet / all_total}


def save_mask(path: str | Path, logits: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tensors = {name: value.detach().float().cpu().contiguous() for name, value in logits.items()}
    write_safetensors(path, tensors, metadata)


def load_mask(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Mask logits and metadata (keys sorted: the file's header order varies); checks the file is a
    knowsubnet mask."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(sorted((f.metadata() or {}).items()))
        logits = load_file(str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: mask file not found") from None
    except Exception as err:  # safetensors raises its own SafetensorError on a corrupt file
        raise InputError(f"{path}: not a readable mask file ({err})") from None
    if metadata.get("granularity") not in GRANULARITIES:
        raise InputError(f"{path}: metadata 'granularity' must be one of {', '.join(GRANULARITIES)}")
    return logits, metadata


def mask_seed(metadata: dict[str, str], source: str) -> int:
    """The seed a discovered mask records in its metadata (discover_mask writes it)."""
    seed = metadata.get("seed", "")
    if not str(seed).isdigit():
        raise InputError(f"{source}: metadata 'seed' = {seed!r}: expected the integer seed of a discovered mask")
    return int(seed)


def check_mask_matches(
    layers: list[MaskableLayer], logits: dict[str, torch.Tensor], granularity: str, source: str
) -> None:
    """Fail clearly if a mask file does not fit the model's maskable layers."""
    expected = {layer.name: layer.mask_shape(granularity) for layer in layers}
    if set(expected) != set(logits):
        missing = sorted(set(expected) - set(logits))[:3]
        extra = sorted(set(logits) - set(expected))[:3]
        raise InputError(f"{source}: mask layers do not match the model (missing {missing}, unexpected {extra})")
    for name, shape in expected.items():
        if tuple(logits[name].shape) != shape:
            raise InputError(f"{source}: layer {name} has mask shape {tuple(logits[name].shape)}, expected {shape}")
