"""Entity-disjoint held-out TargetKG splits (split.holdout: entity): no val / test fact shares a head
or tail with a train fact, nor val with test; the demo's real splits, hub graphs, determinism, the
per-fact mode unchanged, and the errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT, base_params, split_choices

from knowsubnet.core import config
from knowsubnet.core.errors import InputError
from knowsubnet.data import heldout
from knowsubnet.data.splits import make_splits, select_target, splits_from_params
from knowsubnet.data.triplets import COLUMNS, build_triplets, normalize_entity, stable_uuid

HALVES = {"train": 0.5, "val": 0.2, "test": 0.3}  # the demo's fractions


def table(rows) -> pd.DataFrame:
    """A triplets table from (head, rel, tail) tuples."""
    return pd.DataFrame([(stable_uuid(h, r, t), h, r, t, "builtin") for h, r, t in rows], columns=COLUMNS)


def with_control(rows) -> pd.DataFrame:
    """`rows` plus unrelated HasA facts, so that every ControlKG split has some."""
    return table(list(rows) + [(f"c{i}", "HasA", f"d{i}") for i in range(30)])


def split(triplets, spec=None, mode="entity", seed=0, fractions=HALVES, report=None):
    return make_splits(
        triplets,
        "t",
        spec or {"rel": "IsA"},
        seed=seed,
        fractions=fractions,
        targetkg_holdout=True,
        max_targetkg=None,
        max_controlkg=None,
        **split_choices(holdout=mode),
        report=report,
    )


def leaks(out: dict[str, pd.DataFrame], shared: set[str]) -> list[str]:
    """Every entity (outside `shared`) of a val / test fact found in train, or in both val and test:
    worked out here from the splits alone, not with the library's own check."""

    def entities(frame):
        return {normalize_entity(e) for e in pd.concat([frame["head"], frame["tail"]])} - shared

    train, val, test = (entities(out[f"targetkg_{s}"]) for s in ("train", "val", "test"))
    return sorted((val | test) & train) + sorted(val & test)


# -- the demo preset's real splits --------------------------------------------------------------


def test_the_demo_splits_share_no_entity_between_train_val_and_test(shared_data_mirror, repo_facts_table):
    params = base_params(config.read_yaml(REPO_ROOT / "config" / "presets" / "demo.yaml"))
    assert params.split.targetkg_holdout and params.split.holdout == "entity"
    triplets = build_triplets(shared_data_mirror, params.triplets.sources, facts_table=repo_facts_table)
    reports: dict[str, dict] = {}
    splits = splits_from_params(triplets, params, names=["IsA", "AtLocation", "fruit"], reports=reports)
    for name, shared in (("IsA", set()), ("AtLocation", set()), ("fruit", {"fruit"})):
        out, report = splits[name], reports[name]
        assert leaks(out, shared) == [], name
        kept = {s: len(out[f"targetkg_{s}"]) for s in ("train", "val", "test")}
        assert report["mode"] == "entity" and report["shared"] == sorted(shared)
        assert report["kept"] == kept and report["dropped"] == report["selected"] - sum(kept.values())
        assert report["shares_entity_with_train"] == {"val": 0.0, "test": 0.0}
        assert min(kept.values()) > 0 and report["selected"] == (300 if name != "fruit" else 37)


# -- small graphs -------------------------------------------------------------------------------


def hub_graph(leaves: int = 30) -> list[tuple[str, str, str]]:
    """One component: chains z_i IsA y_i IsA x_i IsA animal, joined only by the hub 'animal'."""
    return [
        fact
        for i in range(leaves)
        for fact in ((f"x{i}", "IsA", "animal"), (f"y{i}", "IsA", f"x{i}"), (f"z{i}", "IsA", f"y{i}"))
    ]


def test_a_hub_is_peeled_into_train_and_only_its_links_are_dropped():
    report: dict = {}
    out = split(with_control(hub_graph()), report=report)
    assert leaks(out, set()) == []
    train, val, test = (out[f"targetkg_{s}"] for s in ("train", "val", "test"))
    assert "animal" in set(train["tail"])
    # each chain moved out keeps 2 facts and drops its link to the hub: 1 dropped per 2 held out
    assert report["dropped"] > 0 and 2 * report["dropped"] == len(val) + len(test)
    assert report["dropped"] + len(train) + len(val) + len(test) == 90 == report["selected"]
    kept = 90 - report["dropped"]
    assert abs(len(test) - 0.3 * kept) <= 2 and abs(len(val) - 0.2 * kept) <= 2  # its share of kept facts


def test_the_shared_concept_joins_nothing():
    star = [("fruit", "AtLocation", f"place{i}") for i in range(20)]
    report: dict = {}
    out = split(with_control(star), spec={"concept": "fruit"}, report=report)
    assert report["shared"] == ["fruit"] and report["dropped"] == 0
    assert {s: len(out[f"targetkg_{s}"]) for s in ("train", "val", "test")} == {"train": 10, "val": 4, "test": 6}
    assert leaks(out, {"fruit"}) == []
    assert leaks(out, set()) == ["fruit"] * 2  # fruit itself is in every split, by design


def test_the_split_depends_on_the_facts_and_seed_not_the_row_order():
    rows = hub_graph(12) + [(f"a{i}", "IsA", f"b{i % 7}") for i in range(25)]
    facts = with_control(rows)
    first_report, second_report = {}, {}
    first = split(facts, report=first_report)
    second = split(facts.sample(frac=1.0, random_state=3).reset_index(drop=True), report=second_report)
    assert first_report == second_report
    for name, frame in first.items():
        assert frame.equals(second[name]), name
    other = split(facts, seed=1)
    assert any(not first[f"targetkg_{s}"].equals(other[f"targetkg_{s}"]) for s in ("val", "test"))


def test_the_fact_mode_is_the_per_fact_cut():
    """split.holdout fact: the selected facts in the seeded order, cut by the fractions, as before."""
    facts = with_control(hub_graph(10) + [(f"a{i}", "IsA", f"b{i % 4}") for i in range(10)])
    report: dict = {}
    out = split(facts, mode="fact", seed=5, report=report)
    selected = select_target(facts, "t", {"rel": "IsA"})
    order = selected.iloc[np.random.default_rng([5, 0]).permutation(len(selected))]["uuid"].tolist()
    end_train, end_val = math.floor(40 * 0.5 + 0.5), math.floor(40 * 0.7 + 0.5)
    expected = {"train": order[:end_train], "val": order[end_train:end_val], "test": order[end_val:]}
    for s, uuids in expected.items():
        assert set(out[f"targetkg_{s}"]["uuid"]) == set(uuids), s
    assert report["mode"] == "fact" and report["dropped"] == 0
    assert report["shares_entity_with_train"]["test"] > 0  # the reason the entity mode exists
    assert leaks(out, set()) != []


def test_the_summary_records_how_the_targetkg_was_held_out(tmp_path):
    from knowsubnet.data.split_stage import split_targets

    mapping = config.deep_merge(
        config.read_yaml(REPO_ROOT / "config" / "base.yaml"),
        {
            "run": {"targets": ["IsA"]},
            "split": {
                "targetkg_holdout": True,
                "fractions": HALVES,
                "max_controlkg": {"train": 10, "val": 5, "test": 5},
            },
        },
    )
    mapping["targets"] = {"IsA": {"rel": "IsA"}}
    params = config.from_mapping(mapping, REPO_ROOT / "config" / "params.schema.yaml")
    path = tmp_path / "triplets.parquet"
    with_control(hub_graph()).to_parquet(path, index=False)
    one = split_targets(params, triplets=path, raw=tmp_path / "raw", out=tmp_path / "IsA", target="IsA")
    written = json.loads((tmp_path / "IsA" / "summary.json").read_text())
    assert written["holdout"] == one["holdout"]
    assert written["holdout"]["mode"] == "entity" and written["holdout"]["dropped"] > 0
    every = split_targets(params, triplets=path, raw=tmp_path / "raw", out=tmp_path / "all")
    assert every["holdout"] == {"IsA": one["holdout"]}


# -- errors -------------------------------------------------------------------------------------


def test_a_bad_mode_names_split_holdout():
    with pytest.raises(InputError, match=r"'split.holdout': expected one of entity, fact .*got 'entities'"):
        split(with_control(hub_graph(5)), mode="entities")
    with pytest.raises(InputError, match=r"'split.holdout': 'per_fact' is not allowed; expected one of: entity, fact"):
        base_params({"split": {"holdout": "per_fact"}})


def test_a_graph_with_no_entity_disjoint_split_says_what_to_do():
    star = [(f"x{i}", "IsA", "animal") for i in range(10)]  # every fact shares 'animal'
    with pytest.raises(
        InputError,
        match=r"TargetKG \w+ split is empty .*split.holdout entity.*"
        r"set split.holdout fact",
    ):
        split(with_control(star))


def test_a_split_that_shares_an_entity_is_refused(monkeypatch):
    """The zero share is measured on the result, not assumed: a split that leaks raises."""
    monkeypatch.setattr(
        heldout, "_entity_split", lambda target, fractions, seed, shared: heldout.split_by_fractions(target, fractions)
    )
    with pytest.raises(RuntimeError, match="entity-disjoint split check failed"):
        split(with_control(hub_graph()))
