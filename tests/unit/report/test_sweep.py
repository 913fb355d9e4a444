"""The search on validation (method.sweep, report.sweep): a point's overlay, its validation numbers
from a mask's or a baseline's meta.json, the two-sided choice, and a table whose choice never
depends on a test file."""

import json
import math

import pandas as pd
import pytest
from conftest import REPO_ROOT

from knowsubnet.core import config
from knowsubnet.core.config import Bars
from knowsubnet.core.errors import InputError
from knowsubnet.method.sweep import choose_point, point_overlay, val_row, wording_row
from knowsubnet.report.sweep import sweep_table

SCHEMA = REPO_ROOT / "config" / "params.schema.yaml"
BARS = Bars(
    min_sparsity=0.98, min_target_ratio=10.0, max_random_share=0.1, max_controlkg_ratio=1.10, max_controllm_ratio=1.05
)
ORIGINAL = {"targetkg": 100.0, "controlkg": 50.0, "controllm": 20.0}


def row(t, ckg, clm, sparsity=0.99):
    return {"val_targetkg_x": t, "val_controlkg_x": ckg, "val_controllm_x": clm, "val_sparsity": sparsity}


def mask_meta(t, ckg, clm, step=200, seed=0, sparsity=0.995, wall=60.0):
    chosen = {
        "step": step,
        "val_sparsity": sparsity,
        "val_targetkg_ppl": 100.0 * t,
        "val_controlkg_ppl": 50.0 * ckg,
        "val_controllm_ppl": 20.0 * clm,
    }
    return {
        "model": "m",
        "target": "A",
        "seed": seed,
        "wall_time_s": wall,
        "selection": {"step": step, "original": ORIGINAL, "chosen": chosen, "curve": [chosen]},
    }


def unlearn_meta(method, t, ckg, clm, selected=40, wall=30.0):
    curve = [
        {
            "point": s,
            "removed_weights": 0,
            "val_targetkg_ppl": 100.0 * (t if s == selected else 1.0),
            "val_controlkg_ppl": 50.0 * (ckg if s == selected else 1.0),
            "val_controllm_ppl": 20.0 * (clm if s == selected else 1.0),
        }
        for s in (20, 40, 60)
    ]
    return {
        "model": "m",
        "target": "A",
        "seed": 0,
        "method": method,
        "wall_time_s": wall,
        "validation": {"original": ORIGINAL, "curve": curve, "selected": selected, "tuning": None},
    }


def test_val_row_reads_the_kept_checkpoint_of_a_mask_and_the_selected_step_of_a_baseline():
    r = val_row(mask_meta(30.0, 1.02, 0.99, step=150))
    assert r["method"] == "mask" and r["kept"] == "step 150" and r["wall_s"] == 60.0
    assert r["val_targetkg_x"] == pytest.approx(30.0) and r["val_controlkg_x"] == pytest.approx(1.02)
    b = val_row(unlearn_meta("graddiff", 12.0, 1.05, 1.01, selected=40))
    assert b["method"] == "graddiff" and b["kept"] == "step 40" and math.isnan(b["val_sparsity"])
    assert b["val_targetkg_x"] == pytest.approx(12.0) and b["val_controllm_x"] == pytest.approx(1.01)


def test_val_row_of_a_sized_baseline_names_the_setting_kept():
    meta = unlearn_meta("attribution", 15.0, 1.0, 1.0, selected=1.0)
    meta["validation"]["curve"] = [{**c, "point": f} for c, f in zip(meta["validation"]["curve"], (0.5, 1.0, 2.0))]
    meta["validation"]["curve"][1].update(val_targetkg_ppl=1500.0)
    meta["validation"]["tuning"] = {
        "tried": [
            {"signed": True, "contrast": 30.0, "point": 1.0, "val_targetkg_ppl": 1.0},
            {"signed": False, "contrast": 300.0, "point": 1.0},
        ],
        "kept": 1,
    }
    r = val_row(meta)
    assert r["kept"] == "signed False, contrast 300.0" and r["val_targetkg_x"] == pytest.approx(15.0)


def test_choice_is_two_sided_and_prefers_every_bar_met():
    rows = [
        row(50.0, 0.85, 1.0),  # target met, ControlKG fell out of its band: damage |log 0.85|
        row(20.0, 1.04, 1.02),  # every bar met
        row(200.0, 1.0, 1.0, sparsity=0.9),  # sparsity bar missed
        row(5.0, 1.0, 1.0),
    ]  # target missed
    assert choose_point(rows, BARS, "damage") == (1, "every bar on validation")
    # without the point meeting every bar, the least two-sided damage among those reaching the target:
    # a falling ControlKG (x0.85) is damage, so x1.12 (|log| 0.113 < 0.163) wins
    kept, why = choose_point([rows[0], row(15.0, 1.12, 1.0), rows[3]], BARS, "damage")
    assert (kept, why) == (1, "TargetKG bar on validation, least control damage")
    # no point reaches the target: the largest log TargetKG ratio minus damage
    kept, why = choose_point([row(2.0, 1.0, 1.0), row(8.0, 1.5, 1.0), row(6.0, 1.01, 1.0)], BARS, "damage")
    assert kept == 2 and why.startswith("no bar met")


def test_choice_by_validation_wordings_ranks_the_points_meeting_every_bar_by_sentences_suppressed():
    def checked(r, suppressed, control=1.0):
        return {**r, "val_wordings_suppressed": suppressed, "val_wordings_controlkg_x": control}

    rows = [
        checked(row(20.0, 1.00, 1.00), 0.10),  # the least damage
        checked(row(90.0, 1.06, 1.02), 0.40),  # the most suppressed
        checked(row(300.0, 1.5, 1.0), 0.90),  # ControlKG bar missed: not a candidate
        checked(row(50.0, 1.01, 1.00), math.nan),  # no check: ranks last
        checked(row(60.0, 1.01, 1.00), 0.95, control=0.5),  # other facts easier in other wordings: not either
    ]
    assert choose_point(rows, BARS, "damage") == (0, "every bar on validation")
    kept, why = choose_point(rows, BARS, by="wordings")
    assert kept == 1 and "validation wordings" in why
    # ties on the share go to the least damage; with no control held in the wordings, the damage rule
    tied = [{**r, "val_wordings_suppressed": 0.4} for r in rows[:2]]
    assert choose_point(tied, BARS, by="wordings")[0] == 0
    assert choose_point([rows[4], rows[0]], BARS, by="wordings")[0] == 1
    assert choose_point([rows[4]], BARS, by="wordings") == (0, "every bar on validation")
    assert choose_point([rows[2], checked(row(15.0, 1.12, 1.0), 0.5)], BARS, by="wordings")[1].startswith("TargetKG")
    with pytest.raises(InputError, match="sweep.choose_by"):
        choose_point(rows, BARS, by="test")


def test_choice_by_relearning_ranks_the_points_meeting_every_bar_by_the_removal_relearned_on_validation_text():
    def checked(r, suppressed, recovered, control=1.0):
        return {
            **r,
            "val_wordings_suppressed": suppressed,
            "val_wordings_controlkg_x": control,
            "val_relearn_text": recovered,
        }

    rows = [
        checked(row(90.0, 1.06, 1.02), 0.40, 0.30),  # the most suppressed
        checked(row(20.0, 1.00, 1.00), 0.10, 0.12),  # the least relearned
        checked(row(300.0, 1.5, 1.0), 0.90, 0.01),  # ControlKG bar missed: not a candidate
        checked(row(50.0, 1.01, 1.00), 0.95, 0.05, control=0.5),  # other facts easier in other wordings
        checked(row(60.0, 1.01, 1.00), 0.30, math.nan),  # no check (nothing removed on val): ranks last
    ]
    assert choose_point(rows, BARS, by="wordings")[0] == 0
    kept, why = choose_point(rows, BARS, by="relearning")
    assert kept == 1 and "relearned" in why
    # equal shares relearned: the wordings decide
    assert choose_point([{**r, "val_relearn_text": 0.2} for r in rows[:2]], BARS, by="relearning")[0] == 0
    assert choose_point([rows[4], rows[0]], BARS, by="relearning")[0] == 1


def test_wording_row_reads_the_relearning_check_and_leaves_it_empty_where_undefined():
    share = {"removed": {"share": 0.5}, "random": {"share": 0.0}}
    check = {"targetkg_val": {"suppressed_share": share}, "controlkg_val": {"removed": {"ratio": 1.02}}}
    relearned = {**check, "relearn_text": {"removed_held": {"recovered": 0.25}}}
    assert wording_row(relearned)["val_relearn_text"] == 0.25
    for older in (
        check,
        {**check, "relearn_text": None},
        {**check, "relearn_text": {"removed_held": {"recovered": None}}},
    ):
        assert math.isnan(wording_row(older)["val_relearn_text"])
    assert all(math.isnan(x) for x in wording_row(None).values())


def test_point_overlay_is_checked_against_the_params():
    base = config.read_yaml(REPO_ROOT / "config" / "base.yaml")
    ok = config.deep_merge(base, {"sweep": {"points": {"p": {"method": "mask", "set": {"mask": {"top_k_blocks": 2}}}}}})
    assert point_overlay(ok, "p", SCHEMA) == {"mask": {"top_k_blocks": 2}}
    with pytest.raises(InputError, match="no point 'q'"):
        point_overlay(ok, "q", SCHEMA)
    bad = config.deep_merge(
        base, {"sweep": {"points": {"p": {"method": "mask", "set": {"mask": {"granularity": "row"}}}}}}
    )
    with pytest.raises(InputError, match="mask.granularity"):
        point_overlay(bad, "p", SCHEMA)
    shared = config.deep_merge(base, {"sweep": {"points": {"p": {"method": "mask", "set": {"split": {"seed": 1}}}}}})
    with pytest.raises(InputError, match="sweep.points.p.set"):  # a stage the point shares with the run
        config.validate(shared, SCHEMA)


def _write_points(root):
    """Three mask points (preset, a, b) and two GradDiff points (g1, g2), each with a test headline."""
    metas = {
        "preset": mask_meta(30.0, 1.12, 1.0),
        "a": mask_meta(25.0, 1.03, 1.01, wall=80.0),
        "b": mask_meta(400.0, 0.8, 1.0),
        "g1": unlearn_meta("graddiff", 11.0, 1.2, 1.0),
        "g2": unlearn_meta("graddiff", 4.0, 1.0, 1.0),
    }
    points = []
    for name, meta in metas.items():
        folder = root / name
        (folder / "eval").mkdir(parents=True)
        (folder / "meta.json").write_text(json.dumps(meta | {"provenance": {"code_version": f"0.1.0+g{name}"}}))
        (folder / "eval" / "headline.json").write_text(
            json.dumps(
                {
                    "ratio_removed_targetkg": 20.0,
                    "ratio_removed_controlkg": 1.05,
                    "ratio_removed_controllm": 1.0,
                    "verdict": "all met",
                }
            )
        )
        points.append((name, folder / "meta.json", folder / "eval" / "headline.json"))
    return points


def test_table_chooses_on_validation_and_reads_only_the_kept_points_test_files(tmp_path):
    points = _write_points(tmp_path / "points")
    frame = sweep_table(points, BARS, tmp_path / "out", dpi=30, choose_by="damage")
    kept = frame[frame["chosen"]].set_index("method")["point"].to_dict()
    assert kept == {"mask": "a", "graddiff": "g1"}
    assert frame.loc[frame["chosen"], "test_targetkg_x"].eq(20.0).all()
    assert frame.loc[~frame["chosen"], "test_targetkg_x"].isna().all()
    assert (frame.loc[~frame["chosen"], "test_verdict"].fillna("") == "").all()
    table = pd.read_csv(tmp_path / "out" / "selection.csv")
    assert table["point"].tolist() == ["g1", "g2", "a", "b", "preset"]
    assert table["code_version"].tolist() == [f"0.1.0+g{p}" for p in table["point"]]  # from each point's meta
    assert "## Kept per method" in (tmp_path / "out" / "selection.md").read_text()
    assert (tmp_path / "out" / "frontier.png").stat().st_size > 0

    # the test files of the points not kept are never opened: deleted or corrupt, the table is the same;
    # and other test numbers for the kept ones change only the test columns
    for name, _, headline in points:
        if name in ("b", "preset", "g2"):
            headline.unlink()
        else:
            headline.write_text(
                json.dumps(
                    {
                        "ratio_removed_targetkg": 1.0,
                        "ratio_removed_controlkg": 9.0,
                        "ratio_removed_controllm": 9.0,
                        "verdict": "min_target_ratio",
                    }
                )
            )
    (tmp_path / "points" / "b" / "eval" / "headline.json").write_text("{not json")
    again = sweep_table(points, BARS, tmp_path / "again", dpi=30, choose_by="damage")
    validation = [c for c in frame.columns if not c.startswith("test_")]
    pd.testing.assert_frame_equal(again[validation], frame[validation])
    assert again.loc[again["chosen"], "test_targetkg_x"].eq(1.0).all()


def _check(suppressed, random=0.0, control=1.0):
    return {
        "targetkg_val": {"suppressed_share": {"removed": {"share": suppressed}, "random": {"share": random}}},
        "controlkg_val": {"removed": {"ratio": control}},
    }


def test_table_reads_each_points_validation_wording_check(tmp_path):
    points = _write_points(tmp_path / "points")
    checks = []
    for k, (_, meta, _) in enumerate(points):
        path = meta.parent / "eval" / "val_wordings.json"
        path.write_text(json.dumps(_check(0.1 * k, control=1.0 + k / 100)))
        checks.append(path)
    frame = sweep_table(points, BARS, tmp_path / "out", dpi=30, wordings=checks, choose_by="wordings")
    a = frame.set_index("point").loc["a"]
    assert a["val_wordings_suppressed"] == pytest.approx(0.1) and a["val_wordings_controlkg_x"] == pytest.approx(1.01)
    assert frame[frame["chosen"]].set_index("method")["point"].to_dict() == {"mask": "a", "graddiff": "g1"}
    assert "sweep.choose_by: wordings" in (tmp_path / "out" / "selection.md").read_text()
    # without checks the columns are empty, not invented
    assert (
        sweep_table(points, BARS, tmp_path / "none", dpi=30, choose_by="damage")["val_wordings_suppressed"].isna().all()
    )
    checks[1].write_text(json.dumps({"targetkg_val": {}}))
    with pytest.raises(InputError, match="val_wordings.json"):
        sweep_table(points, BARS, tmp_path / "bad", dpi=30, wordings=checks, choose_by="damage")


def test_the_chooser_sees_no_test_column(tmp_path, monkeypatch):
    """choose_point is handed the validation rows only: no key of a row it sees names a test number."""
    from knowsubnet.report import sweep as report_sweep

    seen = []

    def spy(rows, bars, by):
        seen.extend(rows)
        return choose_point(rows, bars, by)

    monkeypatch.setattr(report_sweep, "choose_point", spy)
    sweep_table(_write_points(tmp_path / "points"), BARS, tmp_path / "out", dpi=30, choose_by="damage")
    assert seen and not any(key.startswith("test") for r in seen for key in r)


SWEEP_OVERLAYS = sorted((REPO_ROOT / "config" / "overlays").glob("demo-sweep*.yaml"))


@pytest.mark.parametrize("overlay", SWEEP_OVERLAYS, ids=lambda p: p.stem)
def test_every_sweep_overlays_points_validate(overlay):
    """Each config/overlays/demo-sweep*.yaml over the demo preset and the main job: every point's params type."""
    files = [REPO_ROOT / "config" / name for name in ("base.yaml", "mirror-local.yaml", "presets/demo.yaml")]
    mapping = config.merge_files([*files, REPO_ROOT / "config" / "overlays" / "demo-short.yaml", overlay])
    config.validate(mapping, SCHEMA)
    points = mapping["sweep"]["points"]
    assert points or "preset" in mapping["sweep"]["robustness"]  # no point: the preset, through robustness
    if overlay.stem == "demo-sweep":  # the first screen: every method
        assert {p["method"] for p in points.values()} == {"mask", "graddiff", "npo", "rmu", "attribution"}
    for name in points:
        point_overlay(mapping, name, SCHEMA)
