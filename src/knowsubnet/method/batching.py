"""Batches of training facts: draws without replacement, and groups of similar length."""

from __future__ import annotations

import math

import torch


def draw(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """`size` distinct indices out of n (all of them, in order, when size >= n)."""
    if size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:size]


def length_groups(lengths: torch.Tensor, overhead: int = 48) -> list[torch.Tensor]:
    """Split rows into groups of similar length so that padding each group to its longest row
    costs the fewest positions, counting `overhead` positions for every extra forward.

    Returns index tensors (ascending within a group) covering every row once. The partition is
    optimal over contiguous runs of the rows sorted by length (dynamic programming over the
    distinct lengths, at most a few dozen)."""
    lengths = lengths.cpu()
    values, counts = torch.unique(lengths, return_counts=True)  # ascending distinct lengths
    values, counts = values.tolist(), counts.tolist()
    n = len(values)
    prefix = [0]
    for c in counts:
        prefix.append(prefix[-1] + c)
    best = [0] + [math.inf] * n  # best[j]: cost of the first j distinct lengths
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # group = distinct lengths i..j-1, padded to values[j - 1]
            cost = best[i] + (prefix[j] - prefix[i]) * values[j - 1] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    bounds, j = [], n
    while j > 0:
        bounds.append((values[cut[j]], values[j - 1]))
        j = cut[j]
    return [torch.nonzero((lengths >= lo) & (lengths <= hi)).flatten() for lo, hi in reversed(bounds)]
