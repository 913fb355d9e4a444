"""A removal, whatever method made it: the one thing evaluation, robustness and the report apply.

Two kinds, both over the linear layers of a model's top blocks (`masking.find_maskable_layers`):

- "mask":    a binary mask; its weights are zeroed (the learned mask, attribution pruning, neuron
             ablation, random draws). Files: `masking.save_mask` (logits; subnetwork = logit > 0).
- "weights": new values for those weights (finetuning unlearning: GradDiff, NPO, RMU). Files:
             `save_weights_edit` (one float32 tensor per layer, metadata `kind: weights`).

Every removal has a random counterpart of the same size (`random_like`): for a mask, as many
entries per matrix drawn at random (whole input neurons for a neuron mask); for new weights, a
change of the same Frobenius norm per matrix in a random direction. `change_stats` says how many
weights a removal changed and by how much.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from knowsubnet.core.errors import InputError
from knowsubnet.core.io import write_safetensors
from knowsubnet.method import masking

KINDS = ("mask", "weights")
# metadata `unit` of a mask: single weights, or whole input neurons of a layer (neuron ablation)
UNITS = ("weight", "input_neuron")


@dataclass
class Edit:
    kind: str  # "mask" | "weights"
    tensors: dict[str, torch.Tensor]  # mask: bool per layer (in its granularity); weights: the new weight
    metadata: dict[str, str]

    @property
    def granularity(self) -> str:
        return self.metadata.get("granularity", "weight")

    @property
    def unit(self) -> str:
        return self.metadata.get("unit", "weight")


def mask_edit(
    masks_or_logits: dict[str, torch.Tensor], granularity: str = "weight", metadata: dict[str, str] | None = None
) -> Edit:
    """A mask removal from boolean masks or logits (subnetwork = logit > 0)."""
    masks = {k: (v if v.dtype == torch.bool else v > 0).cpu() for k, v in masks_or_logits.items()}
    return Edit("mask", masks, {**(metadata or {}), "granularity": granularity})


def save_weights_edit(path: str | Path, weights: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tensors = {name: value.detach().float().cpu().contiguous() for name, value in weights.items()}
    write_safetensors(path, tensors, {**{k: str(v) for k, v in metadata.items()}, "kind": "weights"})


def load_edit(path: str | Path) -> Edit:
    """A removal file of either kind (a mask file without `kind` is a mask)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(sorted((f.metadata() or {}).items()))
    except FileNotFoundError:
        raise InputError(f"{path}: removal file not found") from None
    except Exception as err:  # safetensors raises its own SafetensorError on a corrupt file
        raise InputError(f"{path}: not a readable removal file ({err})") from None
    kind = metadata.get("kind", "mask")
    if kind not in KINDS:
        raise InputError(f"{path}: metadata 'kind' = {kind!r}: expected one of {', '.join(KINDS)}")
    if metadata.get("unit", "weight") not in UNITS:
        raise InputError(f"{path}: metadata 'unit' = {metadata['unit']!r}: expected one of {', '.join(UNITS)}")
    if kind == "mask":
        logits, metadata = masking.load_mask(path)
        return mask_edit(logits, metadata["granularity"], metadata)
    return Edit("weights", load_file(str(path)), {**metadata, "granularity": "weight"})


def edit_layers(model: nn.Module, edit: Edit, source: str) -> list[masking.MaskableLayer]:
    """The model's layers an edit applies to (its metadata records the resolved `top_k_blocks`),
    checked to fit it."""
    top_k = edit.metadata.get("top_k_blocks")
    if top_k is None or not str(top_k).isdigit():
        raise InputError(
            f"{source}: metadata 'top_k_blocks' = {top_k!r}: expected the integer written by "
            "discover_mask or remove_baseline"
        )
    layers = masking.find_maskable_layers(model, int(top_k))
    masking.check_mask_matches(layers, edit.tensors, edit.granularity, source=source)
    return layers


def edited_weights(layers: list[masking.MaskableLayer], edit: Edit, keep: str = "remaining") -> dict[str, torch.Tensor]:
    """{layer name: its weight under the edit} (new tensors). keep="subnetwork" (masks only): only
    the subnetwork kept."""
    if edit.kind == "mask":
        return masking.apply_mask(layers, edit.tensors, edit.granularity, keep)
    if keep != "remaining":
        raise ValueError("only a mask has a subnetwork to keep")
    return {layer.name: edit.tensors[layer.name].to(layer.weight.device, layer.weight.dtype) for layer in layers}


def applied(layers: list[masking.MaskableLayer], edit: Edit, keep: str = "remaining"):
    """The edit written into the model in place for the block; the weights are restored on exit."""
    return masking.written_weights(layers, edited_weights(layers, edit, keep))


def random_input_neurons_like(
    layers: list[masking.MaskableLayer], masks: dict[str, torch.Tensor], generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Weight masks zeroing as many whole input neurons per matrix as `masks` do, chosen at random."""
    out = {}
    for layer in sorted(layers, key=lambda maskable: maskable.name):
        mask = masks[layer.name]
        columns = int(mask.sum()) // layer.out_features
        chosen = torch.zeros(layer.in_features, dtype=torch.bool)
        chosen[torch.randperm(layer.in_features, generator=generator)[:columns]] = True
        out[layer.name] = masking.expand_to_weight(chosen, layer, "neuron_in").clone()
    return out


def random_like(edit: Edit, layers: list[masking.MaskableLayer], generator: torch.Generator) -> Edit:
    """The random counterpart of `edit` (see module doc), drawn from `generator`."""
    if edit.kind == "mask":
        if edit.unit == "input_neuron":
            masks = random_input_neurons_like(layers, edit.tensors, generator)
        else:
            masks = masking.random_masks_like(edit.tensors, generator)
        return dataclasses.replace(edit, tensors=masks)
    new = {}
    for layer in sorted(layers, key=lambda maskable: maskable.name):
        weight = layer.weight.detach().float().cpu()
        delta = edit.tensors[layer.name].float().cpu() - weight
        direction = torch.randn(weight.shape, generator=generator)
        new[layer.name] = weight + direction * (delta.norm() / direction.norm().clamp_min(1e-12))
    return dataclasses.replace(edit, tensors=new)


def change_stats(model: nn.Module, layers: list[masking.MaskableLayer], edit: Edit) -> dict[str, float]:
    """How many weights the edit changed, their share of the edited layers and of the whole model,
    and by how much: the L2 norm of the change and its mean absolute value over changed weights."""
    new = edited_weights(layers, edit)
    changed, sq, total_abs = 0, 0.0, 0.0
    for layer in layers:
        delta = (new[layer.name].float() - layer.weight.detach().float()).cpu()
        nonzero = delta != 0
        changed += int(nonzero.sum())
        sq += float(delta.double().pow(2).sum())
        total_abs += float(delta.double().abs().sum())
    in_layers = sum(layer.weight.numel() for layer in layers)
    return {
        "changed_weights": changed,
        "changed_share_masked_layers": changed / in_layers,
        "changed_share_all_weights": changed / sum(p.numel() for p in model.parameters()),
        "delta_l2": sq**0.5,
        "mean_abs_delta": total_abs / changed if changed else 0.0,
    }
