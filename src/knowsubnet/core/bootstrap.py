"""Percentile bootstrap intervals: the one place the library resamples, for the robustness stage's
ratios and shares (`evaluation.robustness_stats`, `evaluation.relearning`) and CommonsenseQA's
accuracies (`downstream.csqa.stats`) alike.

A function here returns the bootstrap draws of a statistic and `interval` turns draws into the 95 %
percentile interval. `seed` is anything `numpy.random.default_rng` takes (an int, or a list such as
[seed, stream] for independent streams of one seed). Each resampling scheme draws its indices in a
fixed order, so a seed gives the same interval on every machine and in every release.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

LEVELS = (2.5, 97.5)  # the 95 % percentile interval


def interval(draws: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """The 95 % percentile interval (low, high) of bootstrap draws."""
    low, high = np.percentile(draws, LEVELS)
    return float(low), float(high)


def means(values: np.ndarray, n_boot: int, seed) -> np.ndarray:
    """`n_boot` means of `values` [N] (one per unit, e.g. per fact), each resampling the N units
    with replacement: one [n_boot, N] index draw."""
    return values[np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)


def ratios_of_sums(numerators: np.ndarray, denominators: np.ndarray, n_boot: int, seed) -> np.ndarray:
    """`n_boot` values of sum(numerators) / sum(denominators) over resampled units ([N] each, e.g.
    per fact: its hits and its sentences), one [n_boot, N] index draw."""
    draws = np.random.default_rng(seed).integers(0, len(numerators), size=(n_boot, len(numerators)))
    return numerators[draws].sum(axis=1) / denominators[draws].sum(axis=1)


def seed_unit_draws(
    n_seeds: int, n_units: int, n_boot: int, seed, units_first: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`n_boot` resamples of seeds and units together, one (seed indices [n_seeds], unit indices
    [n_units]) pair per draw, for statistics of a [seeds, units] table. Each draw takes the seeds
    then the units from one generator (the units first with `units_first`)."""
    generator = np.random.default_rng(seed)
    for _ in range(n_boot):
        if units_first:
            units = generator.integers(0, n_units, n_units)
            seeds = generator.integers(0, n_seeds, n_seeds)
        else:
            seeds = generator.integers(0, n_seeds, n_seeds)
            units = generator.integers(0, n_units, n_units)
        yield seeds, units


def seed_item_means(groups: list[np.ndarray], n_boot: int, seed) -> np.ndarray:
    """Bootstrap means of each array of `groups` (each [seeds, items_g], all with the same seeds),
    paired across groups: one draw resamples the seeds once for all groups (not at all for a single
    seed), and each group's items. Returns [len(groups), n_boot]; NaN draws for a group of no items."""
    rng = np.random.default_rng(seed)
    n_seeds = groups[0].shape[0]
    seed_idx = rng.integers(0, n_seeds, size=(n_boot, n_seeds)) if n_seeds > 1 else np.zeros((n_boot, 1), int)
    out = []
    for values in groups:
        if values.shape[1] == 0:
            out.append(np.full(n_boot, np.nan))
            continue
        q_idx = rng.integers(0, values.shape[1], size=(n_boot, values.shape[1]))
        out.append(values[seed_idx[:, :, None], q_idx[:, None, :]].mean(axis=(1, 2)))
    return np.stack(out)


def mean_interval(values: np.ndarray, n_boot: int, seed) -> tuple[float, float]:
    """95 % interval of the mean of `values` ([seeds, items] or [items]), seeds and items resampled
    (`seed_item_means`)."""
    return interval(seed_item_means([np.atleast_2d(values)], n_boot, seed)[0])
