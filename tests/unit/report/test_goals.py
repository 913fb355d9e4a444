"""The goal table (report.goals): each goal against a hand-made robustness result (the table on the
robustness stage's own files: tests/unit/evaluation/test_robustness.py)."""

from __future__ import annotations

import copy
import math

import pytest
from conftest import robustness_dict

from knowsubnet.core.config import Bars, Goals
from knowsubnet.core.io import write_json
from knowsubnet.evaluation.robustness_results import RobustnessResult
from knowsubnet.report import goals as goal_report

BARS, GOALS = Bars(), Goals()


def a_removal_meeting_every_goal() -> dict:
    """robustness_dict, edited until every number meets its goal."""
    result = copy.deepcopy(robustness_dict())
    result["held_out"]["held_out"]["removed"] |= {"ratio": 40.0, "low": 20.0, "high": 80.0}
    result["held_out"]["controlkg"]["removed"] |= {"ratio": 1.02, "low": 1.0, "high": 1.04}
    for group in ("train_heldout", "test_heldout"):
        result["wordings"][group] = copy.deepcopy(result["wordings"][group])
        result["wordings"][group]["suppressed_share"]["removed"] |= {"share": 0.9, "low": 0.8, "high": 1.0}
    probe = {"share": 0.2, "low": 0.1, "high": 0.3, "n_facts": 10}
    result["readouts"]["linear_probe"] = {
        "accuracy": {"original": probe, "removed": probe, "random": {**probe, "share": 0.3}, "prior_only": probe},
        "n_train": 10,
        "n_test": 10,
        "candidates_per_fact": 5.0,
    }
    result["quantized"]["none"]["ratio"]["removed"] = {"targetkg": 40.0, "controlkg": 1.02, "controllm": 1.01}
    four_bit = copy.deepcopy(result["quantized"]["none"])
    four_bit["ratio"]["removed"] = {"targetkg": 30.0, "controlkg": 1.0, "controllm": 1.0}
    result["quantized"]["4"] = four_bit
    held = {"ppl_before": 2.0, "ppl_after": 1.5, "ppl_after_per_seed": [1.5]}
    text = {"n_train": 4, "n_scored": 3, "wall_time_s": 0.5, "original": held}
    text["removed_held"] = {**held, "recovered": 0.1, "low": 0.05, "high": 0.15, "per_seed": [0.1]}
    result["relearning"]["points"][0]["data"]["wikitext"] = text
    return result


def row_of(mapping: dict, tmp_path) -> dict:
    path = tmp_path / "robustness.json"
    write_json(path, mapping)
    return goal_report.goal_row("p", RobustnessResult.read(path), BARS, GOALS)


def test_a_removal_meeting_every_goal_misses_none(tmp_path):
    row = row_of(a_removal_meeting_every_goal(), tmp_path)
    assert row["missed"] == ""
    assert row["targetkg_x"] == 40.0 and row["suppressed_test"] == 0.9 and row["relearn_text_recovered"] == 0.1
    assert row["quantized_recovered"] == pytest.approx(1 - math.log(30.0) / math.log(40.0))  # 0.078
    assert row["targetkg_x_ci"] == "40 [20, 80]"
    assert row["false_tails_x"] == 2.0 and row["foreign_heads_x"] == 2.0  # beside the goal, not in it
    # what the attacks leave: the removed PPL after relearning ÷ the original's after it; x at 4 bits
    assert row["relearn_text_x"] == 1.0 and row["quantized_x"] == 30.0
    unequal = a_removal_meeting_every_goal()
    unequal["relearning"]["points"][0]["data"]["wikitext"]["removed_held"]["ppl_after"] = 6.0
    assert row_of(unequal, tmp_path)["relearn_text_x"] == 4.0


@pytest.mark.parametrize(
    "edit, missed",
    [
        (lambda r: r["held_out"]["held_out"]["removed"].update(ratio=9.0), "targetkg"),
        (lambda r: r["held_out"]["controlkg"]["removed"].update(ratio=0.85), "controlkg"),  # a fall is damage too
        (lambda r: r["quantized"]["none"]["ratio"]["removed"].update(controllm=1.06), "controllm"),
        (lambda r: r["wordings"]["train_heldout"]["suppressed_share"]["removed"].update(share=0.79), "wordings_train"),
        (lambda r: r["wordings"]["test_heldout"]["suppressed_share"]["removed"].update(share=None), "wordings_test"),
        (lambda r: r["readouts"]["linear_probe"]["accuracy"]["removed"].update(share=0.31), "probe"),
        (lambda r: r["relearning"]["points"][0]["data"].update(wikitext=None), "relearning"),
        (lambda r: r["quantized"]["4"]["ratio"]["removed"].update(targetkg=10.0), "quantization"),  # 1 - ln10/ln40
    ],
)
def test_each_goal_missed_alone(edit, missed, tmp_path):
    result = a_removal_meeting_every_goal()
    edit(result)
    assert row_of(result, tmp_path)["missed"] == missed


def test_the_test_facts_per_held_out_wording_stand_beside_the_goal(tmp_path):
    result = a_removal_meeting_every_goal()
    result["wordings"]["test_heldout"]["suppressed_by_template"] = {"5": 0.66, "6": 0.14}
    row = row_of(result, tmp_path)
    assert row["suppressed_test_by_wording"] == "5: 66 %, 6: 14 %" and row["suppressed_test_trained"] == 0.5
    assert row["missed"] == ""  # beside the goal, not part of it: the pooled share decides
    assert row_of(robustness_dict(), tmp_path)["suppressed_test_by_wording"] == "–"  # a file written before it
