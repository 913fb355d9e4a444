"""The report builds from a small set of metrics, mask and log files written here."""

from __future__ import annotations

import json
import math
import statistics

import pandas as pd
import pytest
from conftest import REPORT_LAYERS as LAYERS
from conftest import base_params, metrics
from conftest import write_report_inputs as write_inputs

from knowsubnet.core.errors import InputError
from knowsubnet.report import build as report


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    metrics_paths, mask_paths, log_paths = write_inputs(root)
    params = base_params({"report": {"combine": "majority", "top_n": 3, "dpi": 50}, "eval": {"random_draws": 3}})
    written = report.build_report(metrics_paths, mask_paths, log_paths, out_dir=root, params=params)
    return root, written


def test_files_written(built):
    root, written = built
    for rel in (
        "tables/ablation.csv",
        "tables/ablation.md",
        "tables/seed_combinations.csv",
        "tables/structure_blocks.csv",
        "tables/structure_kinds.md",
        "tables/structure_heads.csv",
        "tables/overlap_seeds.csv",
        "tables/overlap_targets.csv",
        "tables/overlap.md",
        "tables/training_final.csv",
        "figures/delta_ppl.png",
        "figures/density_blocks.png",
        "figures/overlap_seeds.png",
        "figures/overlap_targets.png",
        "figures/training_m_A.png",
        "figures/training_m_B.png",
        "report.md",
    ):
        assert (root / rel).is_file(), rel
    for path in written.values():
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(root.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_ablation_table_numbers(built):
    root, _ = built
    table = pd.read_csv(root / "tables" / "ablation.csv").set_index("target")
    assert table.loc["A", "n_seeds"] == 2 and table.loc["B", "n_seeds"] == 1
    assert table.loc["A", "targetkg_dppl_removed_mean"] == pytest.approx(110.0)
    assert table.loc["A", "targetkg_dppl_removed_std"] == pytest.approx(statistics.stdev([100.0, 120.0]))
    assert table.loc["A", "controlkg_dppl_random_mean"] == pytest.approx(0.3)
    assert table.loc["A", "controllm_dppl_removed_mean"] == pytest.approx(1.0)
    assert table.loc["A", "sparsity_mean"] == pytest.approx(0.98)
    assert math.isnan(table.loc["B", "targetkg_dppl_removed_std"])  # one seed: no spread
    assert table.loc["B", "targetkg_dppl_removed_mean"] == pytest.approx(50.0)
    md = (root / "tables" / "ablation.md").read_text()
    assert "| m | A | 2 | 98.00 % | 110.0 ± 14.1 | 3.000 ± 1.414 |" in md
    assert "| m | B | 1 | 98.00 % | 50.0 | 1.000 |" in md
    combos = pd.read_csv(root / "tables" / "seed_combinations.csv")
    assert combos["combination"].tolist() == ["majority"]
    assert combos.loc[0, "targetkg_dppl_removed"] == pytest.approx(90.0)


def test_structure_and_overlap_tables(built):
    root, _ = built
    blocks = pd.read_csv(root / "tables" / "structure_blocks.csv")
    assert set(blocks["target"]) == {"A", "B"} and blocks["block"].unique().tolist() == [1]
    assert (blocks["n_total"] == sum(a * b for a, b in LAYERS.values())).all()
    heads = pd.read_csv(root / "tables" / "structure_heads.csv")
    assert len(heads) == 3 * 8  # three masks x (q, k, v, o) x 2 heads
    seeds = pd.read_csv(root / "tables" / "overlap_seeds.csv")
    assert seeds[["target", "a", "b"]].values.tolist() == [["A", "seed0", "seed1"]]
    assert 0.0 <= seeds.loc[0, "jaccard"] <= 1.0
    targets = pd.read_csv(root / "tables" / "overlap_targets.csv")
    assert targets[["a", "b"]].values.tolist() == [["A", "B"]]


def test_report_md(built):
    root, _ = built
    text = (root / "report.md").read_text()
    assert "## How to read this" in text and "## Provenance" in text
    assert "110.0 ± 14.1" in text  # the ablation table is embedded
    assert "figures/delta_ppl.png" in text and "figures/overlap_targets.png" in text
    assert "figures/training_m_A.png" in text
    assert "0.1.0+gtest" in text and "abc123" in text and "1,234" in text and "random_draws: 3" in text


def test_empty_and_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="no metrics files"):
        report.build_report([], out_dir=tmp_path, params=base_params())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "m", "target": "A", "seed": 0}))
    with pytest.raises(InputError, match="bad.json"):
        report.build_report([bad], out_dir=tmp_path, params=base_params())
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(InputError, match="broken.json"):
        report.build_report([broken], out_dir=tmp_path, params=base_params())
    with pytest.raises(InputError, match="report.combine"):
        base_params({"report": {"combine": "all"}})


def test_duplicate_runs_are_rejected(tmp_path):
    paths = []
    for name in ("one", "two"):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(metrics("m", "A", 0, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))))
        paths.append(path)
    with pytest.raises(InputError, match="same model / target / seed"):
        report.build_report(paths, out_dir=tmp_path, params=base_params())


def test_report_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        metrics_paths, mask_paths, log_paths = write_inputs(root)
        report.build_report(
            metrics_paths,
            mask_paths,
            log_paths,
            out_dir=root / "out",
            params=base_params({"report": {"dpi": 40}}),
            models_root=root / "models",
        )
    for path in sorted((a / "out").rglob("*")):
        if path.is_file() and path.name != "report.md":  # report.md names its code version only
            assert path.read_bytes() == (b / "out" / path.relative_to(a / "out")).read_bytes(), path


def test_numbers_read_across_magnitudes():
    """fmt: few digits at every magnitude; a removal of x10^28 in 3 significant digits, not 29."""
    from knowsubnet.report.format import fmt

    assert fmt(8.3797e28) == "8.38e+28" and fmt(-2.5e7) == "-2.5e+07"
    assert fmt(18342.4) == "18,342" and fmt(241.44) == "241.4" and fmt(0.9687) == "0.969"
    assert fmt(4e-5) == "4.00e-05" and fmt(float("inf")) == "∞" and fmt(None) == "–" and fmt(7) == "7"
