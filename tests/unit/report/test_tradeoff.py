"""The precision views of the report: bars, the trade-off over checkpoints, ControlKG per relation."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import base_params, metrics

from knowsubnet.core.errors import InputError
from knowsubnet.evaluation.ablation_results import AblationMetrics
from knowsubnet.report import build as report
from knowsubnet.report import tradeoff


def with_relations(rec, removed, random):
    """Per-relation ControlKG PPL: original 10 for both relations."""
    rec["original"]["controlkg_by_relation"] = {"IsA": 10.0, "UsedFor": 10.0}
    rec["removed"]["controlkg_by_relation"] = {"IsA": 10.0 * removed[0], "UsedFor": 10.0 * removed[1]}
    rec["random"]["controlkg_by_relation"] = {"IsA": 10.0 * random[0], "UsedFor": 10.0 * random[1]}
    rec["counts"] = {"controlkg_by_relation": {"IsA": 3, "UsedFor": 5}}
    return rec


def meta(target, seed, curve, chosen):
    original = {"targetkg": 10.0, "controlkg": 20.0, "controllm": 40.0}
    rows = [
        {
            "step": step,
            "val_sparsity": sp,
            "val_targetkg_ppl": 10.0 * t,
            "val_controlkg_ppl": 20.0 * c,
            "val_controllm_ppl": 40.0 * lm,
            "val_random_targetkg_ppl": 10.5,
            "val_random_controlkg_ppl": 20.1,
            "val_random_controllm_ppl": 40.2,
        }
        for step, sp, t, c, lm in curve
    ]
    return {
        "model": "m",
        "target": target,
        "seed": seed,
        "selection": {"step": chosen, "original": original, "curve": rows},
    }


def test_bars_mark_each_missed_bar():
    bars = dataclasses.asdict(base_params({"report": {"bars": {"max_controlkg_ratio": 1.2}}}).report.bars)
    assert bars["max_controlkg_ratio"] == 1.2 and bars["min_target_ratio"] == 10.0
    good = metrics("m", "A", 0, (190.0, 1.0, 0.2), (1.0, 0.1, 0.1), sparsity=0.99)  # TargetKG 10 -> 200: x20
    leaky = metrics("m", "A", 1, (190.0, 5.0, 2.0), (1.0, 0.1, 0.1), sparsity=0.99)  # ControlKG x1.5, LM x1.2
    weak = metrics("m", "B", 0, (50.0, 0.0, 0.0), (10.0, 0.0, 0.0), sparsity=0.97)  # x6, random share 0.2
    table = tradeoff.bars_table([AblationMetrics.from_dict(m) for m in (good, leaky, weak)], bars)
    assert table["all_bars"].tolist() == [True, False, False]
    assert table.loc[0, "targetkg_x"] == pytest.approx(20.0)
    assert table.loc[0, "random_share"] == pytest.approx(0.1 / 19.0)
    assert table.loc[1, "meets"] == {
        "min_sparsity": True,
        "min_target_ratio": True,
        "max_random_share": True,
        "max_controlkg_ratio": False,
        "max_controllm_ratio": False,
    }
    assert table.loc[2, "meets"] == {
        "min_sparsity": False,
        "min_target_ratio": False,
        "max_random_share": False,
        "max_controlkg_ratio": True,
        "max_controllm_ratio": True,
    }
    shown = tradeoff.bars_markdown(table, bars)
    assert shown.iloc[1]["ControlKG × (0.833–1.2)"].endswith("✗") and shown.iloc[0]["all bars"] == "yes"
    assert shown.iloc[2]["random share (≤ 0.1)"].endswith("✗") and shown.iloc[2]["all bars"] == "no"
    with pytest.raises(InputError, match="report.bars"):
        base_params({"report": {"bars": {"max_ppl": 2}}})


def test_tradeoff_curve_marks_the_kept_checkpoint_and_averages_seeds():
    metas = [
        meta("A", 0, [(50, 0.97, 30.0, 1.2, 1.1), (100, 0.99, 20.0, 1.05, 1.02)], chosen=100),
        meta("A", 1, [(50, 0.97, 10.0, 1.4, 1.3), (100, 0.99, 40.0, 1.15, 1.04)], chosen=100),
    ]
    table = tradeoff.tradeoff_table(metas)
    assert len(table) == 4 and table["selected"].tolist() == [False, True, False, True]
    assert table.loc[1, "controlkg_x_removed"] == pytest.approx(1.05)
    assert table.loc[1, "targetkg_x_random"] == pytest.approx(1.05)
    shown = tradeoff.tradeoff_markdown(table)
    assert shown["kept by seeds"].tolist() == [0, 2]
    assert shown.iloc[1]["TargetKG ×"].startswith("30.000")  # mean of x20 and x40


def test_relation_table_averages_seeds_per_relation():
    recs = [
        with_relations(metrics("m", "A", 0, (1.0, 1.0, 1.0), (0.1, 0.1, 0.1)), (4.0, 1.0), (1.0, 1.0)),
        with_relations(metrics("m", "A", 1, (1.0, 1.0, 1.0), (0.1, 0.1, 0.1)), (2.0, 1.2), (1.0, 1.1)),
    ]
    table = tradeoff.relation_table([AblationMetrics.from_dict(r) for r in recs]).set_index("relation")
    assert table.loc["IsA", "removed_x"] == pytest.approx(3.0)
    assert table.loc["UsedFor", "random_x"] == pytest.approx(1.05)
    assert table.loc["UsedFor", "n"] == 5


def test_report_has_the_precision_section(tmp_path):
    paths, metas = [], []
    for seed in (0, 1):
        rec = with_relations(
            metrics("m", "A", seed, (190.0, 0.5, 0.2), (1.0, 0.1, 0.1), sparsity=0.99), (1.05, 1.0), (1.0, 1.0)
        )
        path = tmp_path / f"metrics{seed}.json"
        path.write_text(json.dumps(rec))
        paths.append(path)
        meta_path = tmp_path / f"meta{seed}.json"
        meta_path.write_text(
            json.dumps(meta("A", seed, [(50, 0.97, 30.0, 1.2, 1.1), (100, 0.99, 20.0, 1.05, 1.02)], chosen=100))
        )
        metas.append(meta_path)
    written = report.build_report(paths, out_dir=tmp_path / "out", meta_paths=metas, params=base_params())
    text = written["report"].read_text()
    assert "## Precision: does only the target go?" in text and "figures/tradeoff.png" in text
    assert written["fig_tradeoff"].is_file() and written["tradeoff_csv"].is_file()
    assert "ControlKG damage per relation" in text
