"""The comparison across seeds (report.seed_comparison): each method's kept points pooled over seeds from
the evaluation's per-fact table, intervals over seeds and facts, and the differences from the mask that
the intervals support, both ways for ControlKG."""

import math

import numpy as np
import pandas as pd
import pytest

from knowsubnet.core.config import Bars
from knowsubnet.core.errors import InputError
from knowsubnet.report.seed_comparison import seed_comparison

BARS = Bars(
    min_sparsity=0.98, min_target_ratio=10.0, max_random_share=0.1, max_controlkg_ratio=1.10, max_controllm_ratio=1.05
)
N_TARGET, N_CONTROL = 40, 60


def write_facts(path, target_shift, control_shift, seed, n_target=N_TARGET):
    """A facts.parquet whose known facts' NLL rises by `*_shift` (+ noise) under the removal, and one
    unknown fact per set whose rise must count nowhere."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, n, shift in (("targetkg", n_target, target_shift), ("controlkg", N_CONTROL, control_shift)):
        original = rng.uniform(1.0, 5.0, n)
        removed = original + shift + rng.normal(0.0, 0.3, n)
        rows += [
            {"set": name, "uuid": f"{name}{k}", "known": True, "nll_original": o, "nll_removed": r}
            for k, (o, r) in enumerate(zip(original, removed))
        ]
        rows.append({"set": name, "uuid": f"{name}-unknown", "known": False, "nll_original": 1.0, "nll_removed": 99.0})
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path


def kept_runs(tmp_path, methods, seeds=(0, 1, 2)):
    """`methods`: {method: (TargetKG log shift, ControlKG log shift, ControlLM x, verdict)}; one kept row
    per method x seed, and its facts file by the row's index."""
    rows, facts = [], {}
    for method, (target, control, controllm, verdict) in methods.items():
        for seed in seeds:
            facts[len(rows)] = write_facts(tmp_path / method / f"seed{seed}.parquet", target, control, seed + 10)
            rows.append(
                {
                    "model": "m",
                    "target": "A",
                    "seed": seed,
                    "method": method,
                    "point": f"{method}-p",
                    "test_controllm_x": controllm,
                    "test_verdict": verdict,
                }
            )
    return pd.DataFrame(rows), facts


def per_seed_ratio(path, name):
    frame = pd.read_parquet(path)
    known = frame[(frame["set"] == name) & frame["known"]]
    return math.exp((known["nll_removed"] - known["nll_original"]).mean())


def test_pooled_ratio_is_the_geometric_mean_of_the_seeds_and_ignores_unknown_facts(tmp_path):
    kept, facts = kept_runs(tmp_path, {"mask": (3.0, 0.0, 1.0, "all met")})
    table = seed_comparison(kept, facts, BARS, 400, tmp_path / "out", 30)
    (row,) = table.to_dict("records")
    for name in ("targetkg", "controlkg"):
        expected = math.exp(np.mean([math.log(per_seed_ratio(facts[i], name)) for i in kept.index]))
        assert row[f"{name}_x"] == pytest.approx(expected)
        assert row[f"{name}_low"] < row[f"{name}_x"] < row[f"{name}_high"]
    assert row["seeds"] == 3 and row["points"] == "mask-p" and row["bars_missed"] == ""
    assert (tmp_path / "out" / "comparison.md").read_text().count("| m / A |") == 1


def test_the_intervals_decide_which_differences_from_the_mask_are_supported(tmp_path):
    kept, facts = kept_runs(
        tmp_path,
        {
            "mask": (3.0, 0.0, 1.0, "all met"),
            "same": (3.0, 0.0, 1.0, "min_sparsity"),  # the mask's numbers, other noise
            "stronger": (4.5, 0.0, 1.0, "min_sparsity"),
            "falling": (3.0, -0.3, 1.0, "min_sparsity, max_controlkg_ratio"),  # ControlKG x0.74: damage too
        },
    )
    table = seed_comparison(kept, facts, BARS, 400, tmp_path / "out", 30).set_index("method")
    assert table.loc["same", "supported"] == "no difference from the mask"
    assert table.loc["same", "targetkg_vs_mask_low"] < 1.0 < table.loc["same", "targetkg_vs_mask_high"]
    assert table.loc["stronger", "supported"] == "removes more TargetKG than the mask"
    assert table.loc["stronger", "targetkg_vs_mask"] == pytest.approx(
        table.loc["stronger", "targetkg_x"] / table.loc["mask", "targetkg_x"]
    )
    assert table.loc["falling", "supported"] == "moves ControlKG more than the mask"
    assert table.loc["falling", "controlkg_x"] < 1.0 < table.loc["falling", "controlkg_vs_mask"]
    assert table.loc["falling", "bars_missed"] == "min_sparsity, max_controlkg_ratio"
    assert table.loc["mask", "supported"] == "" and math.isnan(table.loc["mask", "targetkg_vs_mask"])


def test_bars_on_the_pooled_numbers(tmp_path):
    kept, facts = kept_runs(tmp_path, {"mask": (1.0, 0.0, 1.2, "min_target_ratio, max_controllm_ratio")})
    (row,) = seed_comparison(kept, facts, BARS, 100, tmp_path / "out", 30).to_dict("records")
    assert row["bars_missed"] == "min_target_ratio, max_controllm_ratio"
    assert row["controllm_x"] == pytest.approx(1.2) and row["controllm_min"] == row["controllm_max"] == 1.2


def test_one_seed_resamples_facts_only_and_the_table_is_the_same_bytes_twice(tmp_path):
    kept, facts = kept_runs(tmp_path, {"mask": (3.0, 0.0, 1.0, "all met"), "other": (2.0, 0.1, 1.0, "")}, seeds=(0,))
    seed_comparison(kept, facts, BARS, 200, tmp_path / "a", 30)
    seed_comparison(kept, facts, BARS, 200, tmp_path / "b", 30)
    for name in ("comparison.csv", "comparison.md", "comparison.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    row = pd.read_csv(tmp_path / "a" / "comparison.csv").set_index("method").loc["other"]
    assert row["seeds"] == 1 and row["targetkg_low"] < row["targetkg_x"] < row["targetkg_high"]


def test_a_seed_scored_on_other_facts_stops_naming_its_file(tmp_path):
    kept, facts = kept_runs(tmp_path, {"mask": (3.0, 0.0, 1.0, "all met")})
    odd = write_facts(tmp_path / "odd.parquet", 3.0, 0.0, 99, n_target=N_TARGET - 1)
    facts[2] = odd
    with pytest.raises(InputError, match="odd.parquet: scores 39 known facts"):
        seed_comparison(kept, facts, BARS, 50, tmp_path / "out", 30)
    assert not (tmp_path / "out" / "comparison.csv").exists()


def test_a_facts_file_without_the_columns_stops_naming_it(tmp_path):
    kept, facts = kept_runs(tmp_path, {"mask": (3.0, 0.0, 1.0, "all met")}, seeds=(0,))
    pd.DataFrame({"set": ["targetkg"]}).to_parquet(facts[0])
    with pytest.raises(InputError, match="seed0.parquet: cannot read the evaluation's facts table"):
        seed_comparison(kept, facts, BARS, 50, tmp_path / "out", 30)


def test_no_known_test_fact_leaves_the_numbers_and_the_differences_undefined(tmp_path):
    kept, facts = kept_runs(tmp_path, {"mask": (3.0, 0.0, 1.0, "all met"), "other": (2.0, 0.0, 1.0, "")}, seeds=(0,))
    for i in facts:
        write_facts(facts[i], 3.0, 0.0, i, n_target=0)
    table = seed_comparison(kept, facts, BARS, 50, tmp_path / "out", 30).set_index("method")
    assert table["targetkg_x"].isna().all() and table.loc["mask", "bars_missed"] == "min_target_ratio"
    assert table.loc["other", "supported"] == "undefined: no known test fact in a set"


def test_a_targets_rows_are_the_same_alone_and_beside_another_target(tmp_path):
    kept, facts = kept_runs(tmp_path, {"mask": (3.0, 0.0, 1.0, "all met"), "other": (2.0, 0.1, 1.0, "")})
    alone = seed_comparison(kept, facts, BARS, 200, tmp_path / "alone", 30)
    # another target sorting before "A" ("0"), which took the first stream when streams went by position
    other = kept.assign(target="0")
    both = pd.concat([kept, other], ignore_index=True)
    both_facts = {**facts, **{len(kept) + i: path for i, path in facts.items()}}
    beside = seed_comparison(both, both_facts, BARS, 200, tmp_path / "beside", 30)
    beside = beside[beside["target"] == "A"].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, beside)


def test_a_methods_row_is_the_same_beside_a_method_that_sorts_before_it(tmp_path):
    # methods drew their seeds in turn from the target's stream: adding "attribution" moved the mask's interval
    methods = {"mask": (3.0, 0.0, 1.0, "all met"), "other": (2.0, 0.1, 1.0, "")}
    kept, facts = kept_runs(tmp_path / "a", methods)
    before, facts_before = kept_runs(tmp_path / "b", {"attribution": (1.0, 0.2, 1.0, ""), **methods})
    alone = seed_comparison(kept, facts, BARS, 200, tmp_path / "alone", 30)
    beside = seed_comparison(before, facts_before, BARS, 200, tmp_path / "beside", 30)
    beside = beside[beside["method"] != "attribution"].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, beside)


def test_the_table_names_the_code_that_made_its_points(tmp_path):
    kept, facts = kept_runs(tmp_path, {"mask": (3.0, 0.0, 1.0, "all met")})
    kept["code_version"] = ["0.1.0+gaaa", "0.1.0+gbbb", "0.1.0+gaaa"]
    seed_comparison(kept, facts, BARS, 50, tmp_path / "out", 30)
    text = (tmp_path / "out" / "comparison.md").read_text()
    assert "from 3 kept points, made by: `0.1.0+gaaa` (2), `0.1.0+gbbb` (1)." in text
    assert "Pooled by knowsubnet `" in text
