"""Uncertainty of CSQA accuracies: percentile bootstrap intervals of a group's accuracy and of the
paired difference between two model versions on the same questions."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from knowsubnet.downstream.csqa.data import GROUPS


def bootstrap_ci(correct: np.ndarray, samples: int, seed: int, stream: int) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of 0/1 `correct`."""
    rng = np.random.default_rng([seed, 1000 + stream])
    idx = rng.integers(0, len(correct), size=(samples, len(correct)))
    means = correct[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_delta(a: np.ndarray, b: np.ndarray, samples: int, seed: int, stream: int) -> dict[str, float]:
    """mean(a) - mean(b) on the same questions, with a paired 95 % bootstrap interval."""
    rng = np.random.default_rng([seed, 2000 + stream])
    idx = rng.integers(0, len(a), size=(samples, len(a)))
    diffs = a[idx].mean(axis=1) - b[idx].mean(axis=1)
    return {"diff": float(a.mean() - b.mean()), "ci95": [float(np.percentile(diffs, 2.5)),
                                                        float(np.percentile(diffs, 97.5))], "n": int(len(a))}


def group_accuracies(correct: Mapping[str, np.ndarray], samples: int, seed: int) -> dict[str, dict[str, Any]]:
    """{group: {acc, ci95, n}} of one model version, from its 0/1 `correct` per group."""
    out = {}
    for i, group in enumerate(GROUPS):
        values = correct[group]
        lo, hi = bootstrap_ci(values, samples, seed, i)
        out[group] = {"acc": float(values.mean()), "ci95": [lo, hi], "n": int(len(values))}
    return out


def deltas_vs_original(correct: Mapping[str, Mapping[str, np.ndarray]], samples: int,
                       seed: int) -> dict[str, dict[str, dict[str, float]]]:
    """{variant: {group: paired_delta(variant, original)}} for every variant of `correct` but `original`."""
    return {v: {g: paired_delta(correct[v][g], correct["original"][g], samples, seed, i) for i, g in enumerate(GROUPS)}
            for v in correct if v != "original"}
