"""Batches of training facts: draws without replacement, groups of similar length, and the rows of a
batch's facts in a flat per-position cache."""

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


def per_row(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a flat per-position cache of the `positions` [B, T] (bool) set in each row: (counts, offsets)."""
    counts = positions.sum(dim=1).cpu()
    return counts, torch.cumsum(counts, 0) - counts


def flat_rows(counts: torch.Tensor, offsets: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows of a flat per-position cache (fact by fact, `counts[i]` rows from `offsets[i]`) for the
    facts `idx`, in batch order: the order in which a batch's positions are gathered row-major."""
    counts, starts = counts[idx], offsets[idx]
    first_of_each = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    return torch.repeat_interleave(starts, counts) + (torch.arange(int(counts.sum())) - first_of_each)
