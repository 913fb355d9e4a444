"""What a subnetwork looks like: overlap between masks, and structure (seed combinations are
`method.combination`).

A mask here is a dict {layer module path: bool tensor} (True = in the subnetwork), as produced by
`masking.binary_masks` from a mask file's logits. Everything runs on CPU tensors and is
deterministic; tables are pandas DataFrames.

Units: a mask entry is a weight (granularity `weight`) or a neuron (`neuron_in` / `neuron_out`);
counts, densities and Jaccard overlaps below are over mask entries.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from knowsubnet.core.errors import InputError
from knowsubnet.method.combination import check_compatible, ordered_layers, to_binary

ATTENTION_WORDS = ("attn", "attention")
MLP_WORDS = ("mlp", "feed_forward", "ffn")


# ----------------------------------------------------------------------------------------------
# overlap


@dataclass(frozen=True)
class PackedMask:
    """A mask as one bit array over all layers (natural layer order): 1/8 of the memory of bools.

    Lets the report hold one combined mask per target of a large model at once for overlaps.
    """

    layout: tuple[tuple[str, tuple[int, ...]], ...]  # (layer, shape) in packing order
    bits: np.ndarray  # uint8, np.packbits of the flattened concatenation


def pack(masks: Mapping[str, torch.Tensor]) -> PackedMask:
    binary = to_binary(masks)
    names = ordered_layers(binary)
    layout = tuple((name, tuple(binary[name].shape)) for name in names)
    flat = np.concatenate([binary[name].reshape(-1).numpy() for name in names]) if names else np.zeros(0, bool)
    return PackedMask(layout, np.packbits(flat))


AnyMask = Mapping[str, torch.Tensor] | PackedMask


def jaccard(a: AnyMask, b: AnyMask) -> float:
    """|a ∩ b| / |a ∪ b| over all layers jointly; two empty subnetworks are identical (1.0)."""
    if isinstance(a, PackedMask) or isinstance(b, PackedMask):
        a = a if isinstance(a, PackedMask) else pack(a)
        b = b if isinstance(b, PackedMask) else pack(b)
        if a.layout != b.layout:
            raise InputError("jaccard: the two masks cover different layers or shapes")
        # packbits pads with zero bits, which count in neither the intersection nor the union
        inter = int(np.bitwise_count(a.bits & b.bits).sum())
        uni = int(np.bitwise_count(a.bits | b.bits).sum())
    else:
        check_compatible([a, b], what="jaccard")
        a, b = to_binary(a), to_binary(b)
        inter = sum(int((a[n] & b[n]).sum()) for n in a)
        uni = sum(int((a[n] | b[n]).sum()) for n in a)
    return 1.0 if uni == 0 else inter / uni


def jaccard_matrix(named: Mapping[str, AnyMask]) -> pd.DataFrame:
    """Square table of pairwise Jaccard overlaps, rows and columns in the given order."""
    labels = list(named)
    matrix = np.eye(len(labels))
    for i, j in itertools.combinations(range(len(labels)), 2):
        matrix[i, j] = matrix[j, i] = jaccard(named[labels[i]], named[labels[j]])
    return pd.DataFrame(matrix, index=labels, columns=labels)


def pairwise_jaccard(named: Mapping[str, AnyMask]) -> pd.DataFrame:
    """Long form: one row per unordered pair (a, b, jaccard)."""
    rows = [{"a": a, "b": b, "jaccard": jaccard(named[a], named[b])} for a, b in itertools.combinations(named, 2)]
    return pd.DataFrame(rows, columns=["a", "b", "jaccard"])


def seed_overlap(masks_by_seed: Mapping[Any, Mapping[str, torch.Tensor]]) -> pd.DataFrame:
    """Jaccard between the seeds of one model × target (labels `seed<S>`)."""
    return jaccard_matrix({f"seed{seed}": masks for seed, masks in masks_by_seed.items()})


# ----------------------------------------------------------------------------------------------
# structure


def parse_layer(name: str) -> dict[str, Any]:
    """Block index, kind (attention / mlp / other) and matrix name from a layer's module path."""
    parts = name.split(".")
    block_at = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    block = int(parts[block_at]) if block_at is not None else -1
    inside = parts[block_at + 1 : -1] if block_at is not None else parts[:-1]
    kind = "other"
    for part in inside:
        lowered = part.lower()
        if any(word in lowered for word in ATTENTION_WORDS):
            kind = "attention"
            break
        if any(word in lowered for word in MLP_WORDS):
            kind = "mlp"
            break
    return {"block": block, "kind": kind, "matrix": parts[-1]}


def structure_by_matrix(masks: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """One row per masked matrix: entries, entries in the subnetwork, density, share of the subnetwork."""
    binary = to_binary(masks)
    rows = []
    for name in ordered_layers(binary):
        info = parse_layer(name)
        rows.append({"layer": name, **info, "n_total": binary[name].numel(), "n_subnetwork": int(binary[name].sum())})
    frame = pd.DataFrame(rows, columns=["layer", "block", "kind", "matrix", "n_total", "n_subnetwork"])
    return _add_density(frame)


def _add_density(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["density"] = frame["n_subnetwork"] / frame["n_total"]
    total = frame["n_subnetwork"].sum()
    # share of the whole subnetwork; undefined (NaN) for an empty subnetwork
    frame["share"] = frame["n_subnetwork"] / total if total else np.nan
    return frame


def _group(masks: Mapping[str, torch.Tensor], by: str) -> pd.DataFrame:
    per_matrix = structure_by_matrix(masks)
    grouped = per_matrix.groupby(by, sort=True)[["n_total", "n_subnetwork"]].sum().reset_index()
    return _add_density(grouped)


def structure_by_block(masks: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """Per transformer block: density (share of its entries in the subnetwork) and share of the subnetwork."""
    return _group(masks, "block")


def structure_by_kind(masks: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """Attention vs MLP (vs other) layers."""
    return _group(masks, "kind")


# --- attention heads


def attention_geometry(config: Any) -> dict[str, int]:
    """n_heads, n_kv_heads, head_dim, hidden from a HF config object or its dict (GPT-2 or Llama names)."""

    def get(*names):
        for key in names:
            value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
            if value is not None:
                return int(value)
        return None

    n_heads = get("num_attention_heads", "n_head")
    hidden = get("hidden_size", "n_embd")
    if n_heads is None or hidden is None:
        raise InputError("model config: expected num_attention_heads / n_head and hidden_size / n_embd")
    head_dim = get("head_dim") or hidden // n_heads
    n_kv_heads = get("num_key_value_heads") or n_heads
    return {"n_heads": n_heads, "n_kv_heads": n_kv_heads, "head_dim": head_dim, "hidden": hidden}


# How each known attention matrix lays its heads out:
#   layout:  "conv1d" (GPT-2, weight [in, out]) or "linear" (weight [out, in]);
#   feature: the feature dimension the heads lie along ("in" or "out");
#   groups:  the labels of consecutive head groups along it (GPT-2's fused c_attn: q, k, v);
#   heads:   which head count applies ("n_heads" or "n_kv_heads").
_HEAD_LAYOUTS = {
    "c_attn": ("conv1d", "out", ("q", "k", "v"), "n_heads"),
    "c_proj": ("conv1d", "in", ("o",), "n_heads"),
    "q_proj": ("linear", "out", ("q",), "n_heads"),
    "k_proj": ("linear", "out", ("k",), "n_kv_heads"),
    "v_proj": ("linear", "out", ("v",), "n_kv_heads"),
    "o_proj": ("linear", "in", ("o",), "n_heads"),
    "out_proj": ("linear", "in", ("o",), "n_heads"),
}


def _head_axis(layout: str, feature: str, granularity: str) -> int | None:
    """Axis of the mask tensor the heads lie along, or None when this mask has no per-head split."""
    if granularity == "weight":
        # conv1d weight [in, out]; linear weight [out, in]
        return {("conv1d", "in"): 0, ("conv1d", "out"): 1, ("linear", "out"): 0, ("linear", "in"): 1}[(layout, feature)]
    if granularity == f"neuron_{feature}":
        return 0
    return None


def head_structure(masks: Mapping[str, torch.Tensor], config: Any, granularity: str = "weight") -> pd.DataFrame:
    """Per attention head of q / k / v / o: entries, entries in the subnetwork, density.

    GPT-2's fused `c_attn` (Conv1D [hidden, 3·hidden]) splits its columns into q, k, v, then each
    into heads of head_dim; `attn.c_proj` splits its input rows by head. Llama-style q/k/v/o_proj
    (Linear [out, in]) split their output rows (q, k, v; k and v by num_key_value_heads) or input
    columns (o) by head. Matrices of other layouts are left out.
    """
    geometry = attention_geometry(config)
    binary = to_binary(masks)
    rows = []
    for name in ordered_layers(binary):
        info = parse_layer(name)
        if info["kind"] != "attention" or info["matrix"] not in _HEAD_LAYOUTS:
            continue
        layout, feature, groups, heads_key = _HEAD_LAYOUTS[info["matrix"]]
        axis = _head_axis(layout, feature, granularity)
        if axis is None:
            continue
        n_heads, head_dim = geometry[heads_key], geometry["head_dim"]
        mask = binary[name]
        expected = len(groups) * n_heads * head_dim
        if mask.dim() <= axis or mask.shape[axis] != expected:
            raise InputError(
                f"layer {name}: mask shape {tuple(mask.shape)} does not fit {len(groups)} x "
                f"{n_heads} heads x {head_dim} along axis {axis} (granularity {granularity})"
            )
        along = mask.movedim(axis, 0).reshape(len(groups), n_heads, head_dim, -1)
        counts = along.sum(dim=(2, 3))
        per_head = head_dim * along.shape[3]
        for g, label in enumerate(groups):
            for head in range(n_heads):
                rows.append(
                    {
                        "layer": name,
                        "block": info["block"],
                        "matrix": label,
                        "head": head,
                        "n_total": per_head,
                        "n_subnetwork": int(counts[g, head]),
                    }
                )
    frame = pd.DataFrame(rows, columns=["layer", "block", "matrix", "head", "n_total", "n_subnetwork"])
    frame["density"] = frame["n_subnetwork"] / frame["n_total"]
    return frame


# --- neurons


def neuron_summary(masks: Mapping[str, torch.Tensor], granularity: str) -> pd.DataFrame:
    """Neuron masks (`neuron_in` / `neuron_out`): how many neurons of each layer are masked."""
    if granularity not in ("neuron_in", "neuron_out"):
        raise InputError(f"neuron summary needs a neuron-level mask, got granularity '{granularity}'")
    binary = to_binary(masks)
    rows = []
    for name in ordered_layers(binary):
        mask = binary[name]
        if mask.dim() != 1:
            raise InputError(f"layer {name}: a {granularity} mask is one-dimensional, got shape {tuple(mask.shape)}")
        rows.append(
            {
                "layer": name,
                **parse_layer(name),
                "side": granularity.split("_")[1],
                "n_neurons": mask.numel(),
                "n_masked": int(mask.sum()),
            }
        )
    frame = pd.DataFrame(rows, columns=["layer", "block", "kind", "matrix", "side", "n_neurons", "n_masked"])
    frame["share_masked"] = frame["n_masked"] / frame["n_neurons"]
    return frame
