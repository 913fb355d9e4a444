"""The bootstrap: each scheme's draws in their fixed order (a seed gives the same interval in every
release), and intervals that cover the truth."""

import numpy as np
import pytest

from knowsubnet.core import bootstrap


def test_mean_interval_covers_the_share():
    values = np.array([1.0] * 30 + [0.0] * 70)
    lo, hi = bootstrap.mean_interval(values, 500, [0, 3000])
    assert lo < 0.3 < hi and 0.15 < lo and hi < 0.45
    assert bootstrap.mean_interval(np.ones(10), 50, 0) == (1.0, 1.0)


def test_means_and_ratios_of_sums_draw_one_index_table():
    x, counts = np.arange(7, dtype=np.float64), np.arange(1, 8, dtype=np.float64)
    index = np.random.default_rng(4).integers(0, 7, size=(20, 7))
    np.testing.assert_array_equal(bootstrap.means(x, 20, 4), x[index].mean(axis=1))
    np.testing.assert_array_equal(
        bootstrap.ratios_of_sums(x, counts, 20, 4), x[index].sum(axis=1) / counts[index].sum(axis=1)
    )
    assert bootstrap.interval(bootstrap.means(x, 20, 4)) == tuple(np.percentile(x[index].mean(axis=1), [2.5, 97.5]))


@pytest.mark.parametrize("units_first", [False, True])
def test_seed_unit_draws_take_seeds_and_units_in_a_fixed_order(units_first):
    generator = np.random.default_rng(9)
    for seeds, units in bootstrap.seed_unit_draws(3, 5, 4, 9, units_first=units_first):
        first, second = (5, 3) if units_first else (3, 5)
        a, b = generator.integers(0, first, first), generator.integers(0, second, second)
        want_seeds, want_units = (b, a) if units_first else (a, b)
        np.testing.assert_array_equal(seeds, want_seeds)
        np.testing.assert_array_equal(units, want_units)


def test_seed_item_means_pair_the_groups_and_skip_empty_ones():
    a = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    draws = bootstrap.seed_item_means([a, a, a[:, :0]], 300, 1)
    assert draws.shape == (3, 300)
    assert np.array_equal(draws[0], draws[0]) and not np.array_equal(draws[0], draws[1])  # own items per group
    assert np.isnan(draws[2]).all()
    one_seed = bootstrap.seed_item_means([a[:1]], 300, 1)[0]  # a single seed is not resampled
    index = np.random.default_rng(1).integers(0, 4, size=(300, 4))
    np.testing.assert_allclose(one_seed, a[0][index].mean(axis=1))
