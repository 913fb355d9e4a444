"""Seed combinations of masks: union, intersection and majority of several seeds' subnetworks.

A mask here is a dict {layer module path: bool tensor} (True = in the subnetwork); float tensors
are taken as mask logits (subnetwork = logit > 0). Everything runs on CPU tensors and is
deterministic. A mask entry is a weight or a neuron, as the masks' granularity says.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

from knowsubnet.core.errors import InputError

Masks = dict[str, torch.Tensor]


def to_binary(masks_or_logits: Mapping[str, torch.Tensor]) -> Masks:
    """Bool masks on CPU; float tensors are logits (subnetwork = logit > 0)."""
    return {name: (v if v.dtype == torch.bool else v > 0).detach().cpu() for name, v in masks_or_logits.items()}


def _natural_key(name: str) -> list:
    # "h.10" after "h.9": layer order, not string order.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def ordered_layers(masks: Mapping[str, torch.Tensor]) -> list[str]:
    return sorted(masks, key=_natural_key)


def check_compatible(masks_list: Sequence[Mapping[str, torch.Tensor]], what: str = "masks") -> None:
    """All masks cover the same layers with the same shapes."""
    if not masks_list:
        raise InputError(f"{what}: no masks given")
    first = masks_list[0]
    for index, other in enumerate(masks_list[1:], start=1):
        if set(other) != set(first):
            diff = sorted(set(other) ^ set(first))[:3]
            raise InputError(f"{what}: mask {index} covers other layers than mask 0 (e.g. {diff})")
        for name in first:
            if other[name].shape != first[name].shape:
                raise InputError(
                    f"{what}: layer {name} has shape {tuple(other[name].shape)} in mask {index}, "
                    f"{tuple(first[name].shape)} in mask 0"
                )


def at_least(masks_list: Sequence[Mapping[str, torch.Tensor]], k: int) -> Masks:
    """Entries in the subnetwork of at least `k` of the masks."""
    check_compatible(masks_list)
    if not 1 <= k <= len(masks_list):
        raise ValueError(f"k must be between 1 and {len(masks_list)}, got {k}")
    binary = [to_binary(m) for m in masks_list]
    out = {}
    for name in ordered_layers(binary[0]):
        votes = torch.stack([m[name] for m in binary]).sum(dim=0)
        out[name] = votes >= k
    return out


def union(masks_list: Sequence[Mapping[str, torch.Tensor]]) -> Masks:
    return at_least(masks_list, 1)


def intersection(masks_list: Sequence[Mapping[str, torch.Tensor]]) -> Masks:
    return at_least(masks_list, len(masks_list))


def majority(masks_list: Sequence[Mapping[str, torch.Tensor]]) -> Masks:
    """Kept by a strict majority: at least n // 2 + 1 of n masks (two of three)."""
    return at_least(masks_list, len(masks_list) // 2 + 1)


COMBINATIONS = {"union": union, "intersection": intersection, "majority": majority}


def combine(masks_list: Sequence[Mapping[str, torch.Tensor]], how: str) -> Masks:
    if how not in COMBINATIONS:
        raise InputError(f"seed combination '{how}': expected one of {', '.join(COMBINATIONS)}")
    return COMBINATIONS[how](masks_list)


def count(masks: Mapping[str, torch.Tensor]) -> int:
    return sum(int(v.sum()) for v in to_binary(masks).values())
