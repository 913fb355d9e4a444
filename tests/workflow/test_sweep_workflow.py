"""The search on validation (params `sweep`, workflow/rules/sweep.smk; docs/SEARCH.md) on the tiny
preset cut to seconds (tests/smoke.yaml): three points beside the run's own mask (a mask recipe, a
GradDiff setting, a wider attribution grid) run with Snakemake into results/sweep/, the table keeps
per method the point the criterion picks from the validation columns, three of them go through the
robustness stage and the goal table (`sweep_robustness`), and dvc.yaml's generated sweep stages are
the same stages (`dvc commit` then `dvc status`: nothing to do)."""

import json

import pandas as pd
import pytest
import yaml
from conftest import BIN, MIRROR, project_copy, run

from knowsubnet.core.config import Bars
from knowsubnet.method.sweep import choose_point

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not MIRROR.is_dir(), reason="local data mirror not present")]

POINTS = {
    "blocks2": {"method": "mask", "set": {"mask": {"top_k_blocks": 2}}},
    "graddiff-lr3e-3": {
        "method": "graddiff",
        "set": {"baselines": {"graddiff": {"lr": 3.0e-3, "steps": 4, "select_every": 2}}},
    },
    "attribution-wide": {
        "method": "attribution",
        "set": {"baselines": {"attribution": {"contrast": [0.0, 1000.0], "signed": [True]}}},
    },
}


def merge(base: dict, over: dict) -> dict:
    for key, value in over.items():
        base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def test_sweep_runs_with_snakemake_chooses_on_validation_and_dvc_has_the_same_stages(tmp_path):
    proj = project_copy(tmp_path)
    params = merge(
        yaml.safe_load((proj / "params.yaml").read_text()), yaml.safe_load((proj / "tests" / "smoke.yaml").read_text())
    )
    params["sweep"]["points"] = POINTS
    params["sweep"]["robustness"] = ["preset", "blocks2", "graddiff-lr3e-3"]
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([BIN / "python", "workflow/dvc_yaml.py", "dvc.yaml"], proj)
    stages = yaml.safe_load((proj / "dvc.yaml").read_text())["stages"]
    assert stages["sweep_mask"]["matrix"]["point"] == ["blocks2"]
    assert stages["sweep_graddiff"]["matrix"]["point"] == ["graddiff-lr3e-3"]
    assert "--params params.yaml results/sweep/points/${item.point}.yaml" in stages["sweep_mask"]["cmd"]
    assert "sweep.points.${item.point}" in stages["sweep_point"]["params"]
    assert "sweep_npo" not in stages and "report" in stages
    assert stages["sweep_robustness_mask"]["matrix"]["point"] == ["blocks2"]
    assert stages["sweep_robustness_baseline"]["matrix"]["point"] == ["graddiff-lr3e-3"]
    assert "sweep_goals" in stages

    run([BIN / "snakemake", "--cores", "2", "sweep"], proj)
    sweep = proj / "results" / "sweep"
    frame = pd.read_csv(sweep / "selection.csv")
    assert sorted(frame["point"]) == sorted(["preset", *POINTS])
    assert (sweep / "frontier.png").is_file() and "## Kept per method" in (sweep / "selection.md").read_text()
    # each point ran its own recipe: the overlay reached the stage
    meta = json.loads((sweep / "tiny-gpt2/IsA/blocks2/seed0/meta.json").read_text())
    assert meta["top_k_blocks"] == 2 and meta["provenance"]["params"]["mask"]["top_k_blocks"] == 2
    graddiff = json.loads((sweep / "tiny-gpt2/IsA/graddiff-lr3e-3/seed0/meta.json").read_text())
    assert graddiff["provenance"]["params"]["baselines"]["graddiff"]["lr"] == 3.0e-3
    attribution = json.loads((sweep / "tiny-gpt2/IsA/attribution-wide/seed0/meta.json").read_text())
    assert len(attribution["validation"]["tuning"]["tried"]) == 2

    # one point kept per method, the one the criterion picks from the validation columns alone
    bars = Bars(**params["report"]["bars"])
    for method, group in frame.groupby("method"):
        rows = group[[c for c in group.columns if c.startswith("val_") and c != "val_bars"]].to_dict("records")
        kept, _ = choose_point(rows, bars, "damage")
        assert group["chosen"].tolist() == [i == kept for i in range(len(group))], method
        chosen = group[group["chosen"]].iloc[0]
        assert pd.notna(chosen["test_targetkg_x"]) and group[~group["chosen"]]["test_targetkg_x"].isna().all()
    assert set(frame["method"]) == {"mask", "graddiff", "attribution"}
    # every point's validation-wording check ran on its own removal (the preset's beside its evaluation)
    check = json.loads((sweep / "tiny-gpt2/IsA/graddiff-lr3e-3/seed0/eval/val_wordings.json").read_text())
    assert check["method"] == "graddiff" and check["provenance"]["mask"].endswith(
        "graddiff-lr3e-3/seed0/removal.safetensors"
    )
    assert (proj / "results/eval/tiny-gpt2/IsA/seed0/val_wordings.json").is_file()
    assert {"val_wordings_suppressed", "val_wordings_random", "val_wordings_controlkg_x"} <= set(frame.columns)
    assert sorted(stages["sweep_val_wordings_baseline"]["matrix"]["point"]) == ["attribution-wide", "graddiff-lr3e-3"]

    # the kept points pooled over the seeds (one here), from their test facts: the headline's ratios
    comparison = pd.read_csv(sweep / "comparison.csv").set_index("method")
    assert sorted(comparison.index) == ["attribution", "graddiff", "mask"] and comparison["seeds"].eq(1).all()
    for method, chosen in frame[frame["chosen"]].set_index("method").iterrows():
        for name in ("targetkg", "controlkg"):
            assert comparison.loc[method, f"{name}_x"] == pytest.approx(chosen[f"test_{name}_x"], rel=1e-3)
    assert comparison.loc["graddiff", "supported"] and "| tiny-gpt2 / IsA |" in (sweep / "comparison.md").read_text()

    # the points of sweep.robustness through the robustness stage (with their overlays), and the goal table
    run([BIN / "snakemake", "--cores", "2", "sweep_robustness"], proj)
    goals = pd.read_csv(sweep / "goals.csv")
    assert list(goals["point"]) == ["preset", "blocks2", "graddiff-lr3e-3"]
    assert list(goals["method"]) == ["mask", "mask", "graddiff"]
    robust = json.loads((sweep / "tiny-gpt2/IsA/blocks2/seed0/robustness/robustness.json").read_text())
    assert robust["provenance"]["mask"] == "results/sweep/tiny-gpt2/IsA/blocks2/seed0/mask.safetensors"
    assert robust["provenance"]["params"]["train"] == {"targetkg_templates": "best"}

    # DVC: the outputs Snakemake wrote are exactly the sweep stages' outputs
    for stage in ("sweep_select", "sweep_goals"):
        run([BIN / "dvc", "commit", "--force", "--quiet", "--with-deps", stage], proj)
        status = run([BIN / "dvc", "status", "--with-deps", stage], proj).stdout
        assert "up to date" in status, status
