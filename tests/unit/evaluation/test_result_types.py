"""Each typed result file (core.records.Record) writes and reads back equal, keeps keys it does not
name, and a malformed file stops with one InputError naming the file and the key."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from conftest import metrics, robustness_dict

from knowsubnet.core.errors import InputError
from knowsubnet.evaluation.ablation_results import AblationMetrics, Headline
from knowsubnet.evaluation.csqa_result import CsqaResult, Difference, GroupAccuracy, LengthCheck
from knowsubnet.evaluation.robustness_results import RobustnessHeadline, RobustnessResult


def csqa_result():
    acc = GroupAccuracy(acc=0.5, ci95=[0.4, 0.6], n=10)
    diff = Difference(diff=-0.1, ci95=[-0.2, 0.0], se=0.05, mde=0.14, n=10, n_reference=12)
    length = LengthCheck(
        picked_multiword=0.2,
        answer_multiword=0.2,
        options_multiword=0.3,
        acc_one_word=0.5,
        n_one_word=8,
        acc_multiword=None,
        n_multiword=0,
        biased=False,
    )
    return CsqaResult(
        model="m",
        target="csqa1",
        seed=0,
        mode="head",
        finetune_seeds=[0, 1],
        accuracy={"original": {"dev": acc}},
        delta={"remaining - original": {"dev": diff}},
        diff_of_diffs={"remaining - original": {"removed_known vs kept": diff}},
        length={"original": {"dev": length}},
        extra={"n_train": 12, "runs": {}},
    )


def headline():
    values = {f"ratio_{v}_{s}": 1.5 for v in ("removed", "random") for s in ("targetkg", "controlkg", "controllm")}
    values.update({f"dppl_{v}_{s}": 0.5 for v in ("removed", "random") for s in ("targetkg", "controlkg", "controllm")})
    return Headline(
        sparsity=0.99,
        random_share=0.1,
        targetkg_acc_original=0.9,
        met_min_sparsity=True,
        met_min_target_ratio=False,
        met_max_random_share=True,
        met_max_controlkg_ratio=True,
        met_max_controllm_ratio=True,
        verdict="min_target_ratio",
        **values,
    )


def robustness_headline():
    return RobustnessHeadline(**{f.name: 1.0 for f in dataclasses.fields(RobustnessHeadline) if f.name != "extra"})


INSTANCES = {
    "metrics": lambda: AblationMetrics.from_dict(metrics("m", "A", 0, (1.0, 2.0, 3.0), (0.1, 0.2, 0.3))),
    "combined": lambda: AblationMetrics.from_dict(
        metrics("m", "A", None, (1.0, 2.0, 3.0), (0.1, 0.2, 0.3), combination="majority")
    ),
    "headline": headline,
    "robustness": lambda: RobustnessResult.from_dict(robustness_dict()),
    "robustness_headline": robustness_headline,
    "csqa": csqa_result,
}


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_a_record_writes_and_reads_back_equal(name, tmp_path):
    record = INSTANCES[name]()
    path = tmp_path / f"{name}.json"
    record.write(path)
    again = type(record).read(path)
    assert again == record
    again.write(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()


def test_values_and_unnamed_keys_are_kept_as_read(tmp_path):
    data = robustness_dict()
    record = RobustnessResult.from_dict(data)
    assert record.to_dict() == data  # every key, the unnamed ones (counts, random_draws) in `extra`
    assert record.extra == {"counts": data["counts"], "random_draws": 2}
    runs = record.relearning.points[0].data["targetkg"]
    assert runs.removed_held.recovered is None and "recovered" not in runs.original.to_dict()
    assert record.relearning.points[0].data["wikitext"] is None
    combined = INSTANCES["combined"]()
    assert combined.seed is None and combined.combination == "majority" and combined.method is None
    assert "method" not in combined.to_dict()  # left out, as the writer leaves it out


@pytest.mark.parametrize(
    "name, break_it, key",
    [
        ("metrics", lambda d: d["removed"]["targetkg"].pop("ppl"), "removed.targetkg.ppl"),
        ("metrics", lambda d: d.update(original=3.0), "original"),
        ("robustness", lambda d: d["held_out"].pop("holdout"), "held_out.holdout"),
        ("robustness", lambda d: d["relearning"]["points"][0].pop("scope"), "relearning.points[0].scope"),
        ("robustness_headline", lambda d: d.pop("held_out_ratio"), "held_out_ratio"),
        ("headline", lambda d: d.pop("verdict"), "verdict"),
        (
            "csqa",
            lambda d: d["diff_of_diffs"]["remaining - original"]["removed_known vs kept"].pop("mde"),
            "diff_of_diffs.remaining - original.removed_known vs kept.mde",
        ),
    ],
)
def test_a_malformed_file_names_the_file_and_the_key(name, break_it, key, tmp_path):
    record = INSTANCES[name]()
    data = record.to_dict()
    data = json.loads(json.dumps(data))  # a plain copy to break
    break_it(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=rf"bad\.json: .*'{re.escape(key)}'"):
        type(record).read(path)


def test_a_file_that_is_not_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match=r"broken\.json:1: not valid JSON"):
        AblationMetrics.read(path)
    with pytest.raises(InputError, match=r"missing\.json: cannot read"):
        Headline.read(tmp_path / "missing.json")
