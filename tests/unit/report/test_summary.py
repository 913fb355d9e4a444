"""The report's Summary: one row per run with its verdict against the bars, the same as headline.json's."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
from conftest import base_params, metrics

from knowsubnet.evaluation import ablation
from knowsubnet.evaluation.ablation_results import AblationMetrics
from knowsubnet.report import build as report
from knowsubnet.report import summary

BARS = dataclasses.asdict(base_params().report.bars)  # 0.98, x10, 0.1, 1.10, 1.05


def records():
    """Original PPL 10 everywhere: removed (190, ...) is TargetKG x20."""
    return [
        AblationMetrics.from_dict(m)
        for m in (
            metrics("m", "B", 0, (50.0, 0.0, 0.0), (10.0, 0.0, 0.0), sparsity=0.97),  # x6, share 0.2, sparse 97 %
            metrics("m", "A", 1, (190.0, 2.0, 0.2), (1.0, 0.1, 0.1), sparsity=0.99),  # ControlKG x1.2
            metrics("m", "A", 0, (190.0, 0.5, 0.2), (1.0, 0.1, 0.1), sparsity=0.99),  # every bar met
            metrics("m", "A", None, (190.0, 0.5, 0.2), (1.0, 0.1, 0.1), combination="majority"),
        )
    ]


def test_summary_has_one_row_per_run_with_its_verdict():
    table = summary.summary_table(records(), BARS)
    assert table[["model", "target", "seed"]].values.tolist() == [["m", "A", 0], ["m", "A", 1], ["m", "B", 0]]
    assert table["verdict"].tolist() == [
        "all met",
        "max_controlkg_ratio",
        "min_sparsity, min_target_ratio, max_random_share",
    ]
    assert not table.loc[1, "met_max_controlkg_ratio"] and table.loc[1, "met_min_target_ratio"]
    assert table.loc[1, "ratio_removed_controlkg"] == pytest.approx(1.2)
    assert table.loc[0, "ratio_removed_targetkg"] == pytest.approx(20.0)
    assert table.loc[0, "ratio_random_targetkg"] == pytest.approx(1.1)
    assert table.loc[2, "random_share"] == pytest.approx(0.2)
    # the same verdict as each run's headline.json
    for rec in records()[:3]:
        row = table[(table["target"] == rec.target) & (table["seed"] == rec.seed)].iloc[0]
        assert row["verdict"] == ablation.headline(rec, BARS).verdict
    shown = summary.summary_markdown(table, BARS)
    assert shown.loc[1, "ControlKG × removed (random) (0.909–1.1)"] == "1.200 ✗ (1.010)"
    assert shown.loc[0, "TargetKG × removed (random) (≥ 10)"] == "20.0 (1.100)"
    assert shown.loc[2, "Sparsity (≥ 98 %)"] == "97.00 % ✗" and shown.loc[2, "Random share (≤ 0.1)"] == "0.200 ✗"


def test_report_starts_with_the_summary(tmp_path):
    paths = []
    for i, rec in enumerate(records()):
        paths.append(tmp_path / f"metrics{i}.json")
        rec.write(paths[-1])
    params = base_params({"report": {"dpi": 40}})
    written = report.build_report(paths, out_dir=tmp_path / "out", params=params)
    csv = pd.read_csv(written["summary_csv"])
    assert len(csv) == 3 and csv["verdict"].tolist()[1] == "max_controlkg_ratio"
    assert written["summary_md"].read_text().count("\n| m |") == 3
    text = written["report"].read_text()
    assert text.index("## Summary") < text.index("## How to read this") < text.index("## Ablation")
    assert "1 of 3 runs meet every bar" in text and "min_sparsity, min_target_ratio, max_random_share" in text
