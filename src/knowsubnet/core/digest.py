"""Content hashes of tensors, models and fact sets: what a training checkpoint must match to resume."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import torch
from torch import nn


def _update(h: hashlib._Hash, tensor: torch.Tensor) -> None:
    t = tensor.detach()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    t = t.to("cpu").contiguous()
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def tensors(items: Iterable[tuple[str, torch.Tensor | None]]) -> str:
    """sha256 over named tensors (name, dtype, shape and bytes, in the given order); None hashes as absent."""
    h = hashlib.sha256()
    for name, tensor in items:
        h.update(f"{name}:".encode())
        if tensor is None:
            h.update(b"none;")
        else:
            _update(h, tensor)
            h.update(b";")
    return h.hexdigest()


def state_dict(model: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """sha256 of a model's weights and buffers (sorted by name): equal iff the weights are equal."""
    sd = model.state_dict() if isinstance(model, nn.Module) else model
    return tensors(sorted(sd.items()))


def factset(facts) -> str | None:
    """sha256 of a FactSet-like object's token tensors (`input_ids`, `targets`), or None."""
    if facts is None:
        return None
    return tensors([("input_ids", facts.input_ids), ("targets", facts.targets)])


def training_inputs(targetkg, controlkg, controllm: torch.Tensor | None) -> dict[str, str | None]:
    """Content hashes of a mask trainer's data: TargetKG and ControlKG tokens, ControlLM blocks."""
    return {
        "targetkg": factset(targetkg),
        "controlkg": factset(controlkg),
        "controllm": None if controllm is None else tensors([("blocks", controllm)]),
    }
