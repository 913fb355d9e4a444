"""The report's comparison of the learned mask with the baselines: one row per method, the same bars,
and a trade-off figure from the validation curves."""

import json

import pandas as pd
import pytest
from conftest import metrics

from knowsubnet.core.errors import InputError
from knowsubnet.report.ablation import load_metrics
from knowsubnet.report.comparison import Comparison, comparison_section

BARS = {
    "min_sparsity": 0.98,
    "min_target_ratio": 10.0,
    "max_random_share": 0.1,
    "max_controlkg_ratio": 1.1,
    "max_controllm_ratio": 1.05,
}


def write(path, record):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def test_one_row_per_method_with_its_own_verdict_and_a_tradeoff_figure(tmp_path):
    curve = [
        {
            "point": p,
            "removed_weights": 10,
            "val_targetkg_ppl": 10.0 * p,
            "val_controlkg_ppl": 10.0 + p,
            "val_controllm_ppl": 10.0,
        }
        for p in (0.5, 1.0, 2.0)
    ]
    original = {"targetkg": 10.0, "controlkg": 10.0, "controllm": 10.0}
    mask_metrics = [
        write(tmp_path / "eval/m/A/seed0/metrics.json", metrics("m", "A", 0, (200.0, 0.5, 0.2), (1.0, 0.1, 0.1)))
    ]
    mask_metas = [
        write(
            tmp_path / "masks/m/A/seed0/meta.json",
            {
                "model": "m",
                "target": "A",
                "seed": 0,
                "wall_time_s": 60.0,
                "selection": {"original": original, "curve": [dict(r, step=r["point"]) for r in curve]},
            },
        )
    ]
    baseline_metrics, baseline_metas = [], []
    # attribution: removes well but damages ControlKG; npo: new weights, every weight changed, no kept model
    for method, removed, changed in (
        ("attribution", (150.0, 20.0, 1.0), None),
        ("npo", (300.0, 0.2, 0.1), {"changed_weights": 1000, "changed_share_masked_layers": 1.0, "delta_l2": 3.0}),
    ):
        record = metrics("m", "A", 0, removed, (5.0, 0.5, 0.1), sparsity=0.0 if changed else 0.98)
        record["method"] = method
        if changed:
            record.update(kind="weights", changed=changed, kept=None)
        root = tmp_path / "baselines/m/A" / method / "seed0"
        baseline_metrics.append(write(root / "eval/metrics.json", record))
        baseline_metas.append(
            write(
                root / "meta.json",
                {
                    "model": "m",
                    "target": "A",
                    "seed": 0,
                    "method": method,
                    "wall_time_s": 5.0,
                    "validation": {"original": original, "curve": curve},
                },
            )
        )
    section = comparison_section(
        load_metrics(mask_metrics),
        mask_metas,
        [],
        baseline_metrics,
        baseline_metas,
        [],
        BARS,
        tmp_path / "tables",
        tmp_path / "figures",
        60,
    )
    rows = pd.read_csv(section.files["comparison_csv"])
    assert list(rows["method"]) == ["mask", "attribution", "npo"]  # the reference first
    verdicts = dict(zip(rows["method"], rows["verdict"]))
    assert verdicts["mask"] == "all met"
    assert "max_controlkg_ratio" in verdicts["attribution"]
    assert "min_sparsity" in verdicts["npo"]  # changing every weight misses the sparsity bar
    assert rows.set_index("method").loc["npo", "changed_weights"] == 1000
    assert section.files["comparison_tradeoff"].stat().st_size > 0
    assert "learned mask" in section.markdown and "NPO" in section.markdown
    # the table is a Comparison: read and written back, the same bytes
    table = Comparison.read(section.files["comparison_csv"])
    assert [row.method for row in table.rows] == ["mask", "attribution", "npo"] and table.rows[0].delta_l2 is None
    table.write(tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_bytes() == section.files["comparison_csv"].read_bytes()
    bad = tmp_path / "bad.csv"
    bad.write_text("model,target\nm,A\n")
    with pytest.raises(InputError, match=r"bad\.csv: missing column 'method'"):
        Comparison.read(bad)


def test_no_section_without_baselines(tmp_path):
    assert comparison_section([], [], [], [], [], [], BARS, tmp_path, tmp_path, 60) is None
