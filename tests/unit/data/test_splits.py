"""Target selection and TargetKG / ControlKG splits: invariants, determinism, errors, end to end."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import REPO_ROOT, split_choices

from knowsubnet.core.config import from_mapping, read_yaml
from knowsubnet.core.errors import InputError
from knowsubnet.data.relations import RELATIONS
from knowsubnet.data.splits import SPLIT_NAMES, make_splits, select_target, splits_from_params, write_splits
from knowsubnet.data.triplets import COLUMNS, build_triplets, stable_uuid

REPO_ROOT = REPO_ROOT
FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
CAPS = {"train": 40, "val": 10, "test": 10}


def table(rows) -> pd.DataFrame:
    """A triplets table from (head, rel, tail[, source]) tuples."""
    out = []
    for row in rows:
        head, rel, tail = row[:3]
        source = row[3] if len(row) > 3 else "builtin"
        out.append((stable_uuid(head, rel, tail), head, rel, tail, source))
    return pd.DataFrame(out, columns=COLUMNS)


@pytest.fixture
def toy_triplets() -> pd.DataFrame:
    """~640 facts over all relations with shared entities, plus a tagged 'fruit' list."""
    rows = {(f"h{i % 97}", RELATIONS[i % 16], f"t{(i * 7) % 113}") for i in range(640)}
    rows = [(h, r, t) for h, r, t in sorted(rows)]
    rows += [
        ("pear", "IsA", "fruit", "builtin;know_subnet/targetkg/fruit"),
        ("fruit", "AtLocation", "orchard", "builtin;know_subnet/targetkg/fruit"),
        ("orchard", "HasA", "ladder"),
        ("ladder", "MadeOf", "wood"),
    ]
    return table(rows)


def split(triplets, name="IsA", spec=None, seed=0, holdout=False, max_t=None, caps=None, mode="entity"):
    return make_splits(
        triplets,
        name,
        spec or {"rel": "IsA"},
        seed=seed,
        fractions=FRACTIONS,
        targetkg_holdout=holdout,
        max_targetkg=max_t,
        max_controlkg=caps,
        **split_choices(holdout=mode),
    )


def entities(frame: pd.DataFrame) -> set[str]:
    return set(frame["head"]) | set(frame["tail"])


def key_set(frame: pd.DataFrame) -> set[tuple]:
    return set(zip(frame["head"], frame["rel"], frame["tail"]))


def test_selectors(toy_triplets):
    assert set(select_target(toy_triplets, "IsA", {"rel": "IsA"})["rel"]) == {"IsA"}
    fruit = select_target(toy_triplets, "fruit", {"concept": "fruit", "facts": "know_subnet/targetkg/fruit"})
    assert key_set(fruit) == {("pear", "IsA", "fruit"), ("fruit", "AtLocation", "orchard")}
    one = select_target(toy_triplets, "f", {"concept": " Fruit "})
    two = select_target(toy_triplets, "f", {"concept": "fruit", "hops": 2})
    three = select_target(toy_triplets, "f", {"concept": "fruit", "hops": 3})
    assert key_set(one) == key_set(fruit)
    assert key_set(two) == key_set(one) | {("orchard", "HasA", "ladder")}
    assert key_set(three) == key_set(two) | {("ladder", "MadeOf", "wood")}


@pytest.mark.parametrize(
    "name, spec", [("IsA", {"rel": "IsA"}), ("UsedFor", {"rel": "UsedFor"}), ("fruit", {"concept": "fruit", "hops": 2})]
)
@pytest.mark.parametrize("holdout, mode", [(False, "entity"), (True, "fact"), (True, "entity")])
def test_no_entity_shared_and_caps_respected(toy_triplets, name, spec, holdout, mode):
    if holdout and name == "fruit" and mode == "entity":
        # 3 facts, 2 entity groups (fruit shared): no entity-disjoint train / val / test exists
        with pytest.raises(
            InputError,
            match=r"'targets.fruit': TargetKG \w+ split is empty .*"
            r"split.holdout entity.*set split.holdout fact",
        ):
            split(toy_triplets, name, spec, holdout=holdout, max_t=20, caps=CAPS, mode=mode)
        return
    out = split(toy_triplets, name, spec, holdout=holdout, max_t=20, caps=CAPS, mode=mode)
    assert set(out) == set(SPLIT_NAMES)
    target = pd.concat([out[f"targetkg_{s}"] for s in ("train", "val", "test")])
    control = pd.concat([out[f"controlkg_{s}"] for s in ("train", "val", "test")])
    assert not entities(target) & entities(control)
    assert len(key_set(target)) <= 20
    for s in ("train", "val", "test"):
        assert 0 < len(out[f"controlkg_{s}"]) <= CAPS[s]
        assert list(out[f"controlkg_{s}"].columns) == COLUMNS
    assert len(key_set(control)) == len(control)  # ControlKG splits are disjoint
    if holdout:
        assert len(key_set(target)) == len(target)  # held-out TargetKG splits are disjoint
    else:
        assert out["targetkg_train"].equals(out["targetkg_val"])
        assert out["targetkg_train"].equals(out["targetkg_test"])


def test_paper_mode_keeps_every_selected_fact_and_caps_targetkg(toy_triplets):
    every = split(toy_triplets)
    assert len(every["targetkg_train"]) == (toy_triplets["rel"] == "IsA").sum()
    capped = split(toy_triplets, max_t=5)
    assert len(capped["targetkg_train"]) == 5
    # a smaller TargetKG excludes fewer entities: the ControlKG pool grows
    assert len(split(toy_triplets, max_t=5)["controlkg_train"]) >= len(every["controlkg_train"])


def test_same_seed_gives_byte_identical_files_whatever_the_row_order(toy_triplets, tmp_path):
    shuffled = toy_triplets.sample(frac=1.0, random_state=7).reset_index(drop=True)
    targets = {"IsA": {"rel": "IsA"}, "fruit": {"concept": "fruit", "hops": 2}}
    for out, frame in (("a", toy_triplets), ("b", shuffled)):
        write_splits(
            tmp_path / out, {name: split(frame, name, spec, seed=3, caps=CAPS) for name, spec in targets.items()}
        )
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 * 6 + 1
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_different_seed_gives_a_different_split(toy_triplets):
    a, b = split(toy_triplets, seed=0, max_t=10), split(toy_triplets, seed=1, max_t=10)
    assert not a["controlkg_train"].equals(b["controlkg_train"])
    assert not a["targetkg_train"].equals(b["targetkg_train"])


def test_write_splits_summary_and_replacement(toy_triplets, tmp_path):
    out = tmp_path / "splits"
    (out / "stale").mkdir(parents=True)
    summary = write_splits(out, {"IsA": split(toy_triplets, caps=CAPS)}, provenance={"x": 1})
    assert not (out / "stale").exists()
    written = json.loads((out / "summary.json").read_text())
    assert written == summary and summary["provenance"] == {"x": 1}
    counts = summary["counts"]["IsA"]
    for name in SPLIT_NAMES:
        assert len(pd.read_parquet(out / "IsA" / f"{name}.parquet")) == counts[name]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["splits"]


def test_split_targets_stage_writes_one_or_every_target(toy_triplets, tmp_path):
    """split_controls' library call: the triplets file -> one target's folder (--target) or every
    target's folders, as splits_from_params computes them, with the params stamped."""
    from knowsubnet.data.split_stage import split_targets

    mapping = read_yaml(REPO_ROOT / "params.yaml")
    mapping["targets"] = {"IsA": {"rel": "IsA"}, "UsedFor": {"rel": "UsedFor"}}
    mapping["split"]["max_controlkg"] = CAPS
    params = from_mapping(mapping)
    path = tmp_path / "triplets.parquet"
    toy_triplets.to_parquet(path, index=False)
    one = split_targets(params, triplets=path, raw=tmp_path / "raw", out=tmp_path / "one", target="IsA")
    expected = splits_from_params(toy_triplets, params)
    assert one["target"] == "IsA" and one["provenance"]["params"]["targets"] == params.section("targets")
    assert json.loads((tmp_path / "one" / "summary.json").read_text()) == one
    for name in SPLIT_NAMES:
        written = pd.read_parquet(tmp_path / "one" / f"{name}.parquet")
        assert list(written["uuid"]) == list(expected["IsA"][name]["uuid"]), name
    every = split_targets(params, triplets=path, raw=tmp_path / "raw", out=tmp_path / "all")
    assert set(every["counts"]) == {"IsA", "UsedFor"}
    assert every["counts"]["IsA"] == one["counts"]
    with pytest.raises(InputError, match="cannot read the triplets table"):
        split_targets(params, triplets=tmp_path / "missing.parquet", raw=tmp_path, out=tmp_path / "x")


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, message",
    [
        ("IsA", r"'targets.t': expected a mapping"),
        ({"rel": "IsA", "concept": "fruit"}, r"'targets.t': expected exactly one selector"),
        ({"concept": "fruit", "hops": 1, "facts": "x"}, r"'targets.t': expected exactly one selector"),
        ({"relation": "IsA"}, r"'targets.t': expected exactly one selector.*relation"),
        ({"rel": "BornIn"}, r"'targets.t.rel': unknown relation 'BornIn'; expected one of"),
        ({"concept": "fruit", "hops": 0}, r"'targets.t.hops': expected an integer >= 1"),
        ({"concept": ""}, r"'targets.t.concept': expected a word"),
        ({"concept": "zebra"}, r"'targets.t': the target selects no facts .*'zebra' is in no fact"),
        (
            {"concept": "fruit", "facts": "know_subnet/targetkg/sun"},
            r"'targets.t': the target selects no facts .*'know_subnet/targetkg/sun'",
        ),
    ],
)
def test_bad_target_specs_name_the_params_key(toy_triplets, spec, message):
    with pytest.raises(InputError, match=message):
        split(toy_triplets, "t", spec)


def test_relation_with_no_facts_is_an_empty_selection():
    facts = table([("a", "IsA", "b"), ("c", "HasA", "d")])
    with pytest.raises(InputError, match=r"'targets.MadeOf': the target selects no facts"):
        split(facts, "MadeOf", {"rel": "MadeOf"})


def test_empty_controlkg_names_the_target():
    star = table([("hub", "IsA", f"x{i}") for i in range(5)] + [(f"y{i}", "HasA", "hub") for i in range(5)])
    with pytest.raises(InputError, match=r"'targets.IsA': the ControlKG is empty"):
        split(star, "IsA", {"rel": "IsA"})
    few = table([("a", "IsA", "b"), ("c", "HasA", "d"), ("e", "HasA", "f")])
    with pytest.raises(InputError, match=r"'targets.IsA': ControlKG (val|test) split is empty"):
        split(few, "IsA", {"rel": "IsA"})
    with pytest.raises(InputError, match=r"'targets.IsA': TargetKG val split is empty"):
        split(few, "IsA", {"rel": "IsA"}, holdout=True)


def test_bad_split_params_name_their_keys(toy_triplets):
    def run(**kw):
        args = dict(seed=0, fractions=FRACTIONS, targetkg_holdout=False, max_targetkg=None, max_controlkg=None)
        args.update(split_choices())
        args.update(kw)
        return make_splits(toy_triplets, "IsA", {"rel": "IsA"}, **args)

    with pytest.raises(InputError, match=r"'split.seed'"):
        run(seed=-1)
    with pytest.raises(InputError, match=r"'split.fractions'"):
        run(fractions={"train": 0.8, "test": 0.2})
    with pytest.raises(InputError, match=r"'split.fractions.val'"):
        run(fractions={"train": 0.8, "val": -1, "test": 0.2})
    with pytest.raises(InputError, match=r"'split.max_targetkg'"):
        run(max_targetkg=0)
    with pytest.raises(InputError, match=r"'split.max_controlkg.val'"):
        run(max_controlkg={"train": 5, "val": "many"})
    with pytest.raises(InputError, match=r"'targets.a/b': a target name must be"):
        make_splits(toy_triplets, "a/b", {"rel": "IsA"}, 0, FRACTIONS, False, None, None, **split_choices())


# -- end to end on the real mirror --------------------------------------------------------------


def test_fetch_extract_split_on_the_real_mirror(shared_data_mirror, tmp_path, repo_facts_table):
    from knowsubnet.data.fetch import fetch_data

    params = read_yaml(REPO_ROOT / "params.yaml")
    raw = tmp_path / "data" / "raw"
    manifest = fetch_data(raw, shared_data_mirror, verify=True)
    assert all(entry["verified"] for entry in manifest["files"].values())

    triplets = build_triplets(raw, ["builtin", "know_subnet"], facts_table=repo_facts_table)
    assert set(triplets["rel"]) == set(RELATIONS) | {"Hypernym"}  # + the paper's WordNet lists
    builtin = build_triplets(raw, ["builtin"], facts_table=repo_facts_table)
    conceptnet = triplets[triplets["rel"] != "Hypernym"]
    assert key_set(builtin) == key_set(conceptnet)  # the in-repo table is the mirror's ConceptNet facts

    targets = {rel: {"rel": rel} for rel in RELATIONS}
    targets.update({c: {"concept": c, "facts": f"know_subnet/targetkg/{c}"} for c in ("fruit", "sun", "swimming")})
    params["targets"] = {**targets, **params["targets"]}
    splits = splits_from_params(triplets, from_mapping(params), names=list(targets))
    summary = write_splits(tmp_path / "splits", splits)
    assert len(summary["counts"]) == 19
    for name, counts in summary["counts"].items():
        assert all(n > 0 for n in counts.values()), (name, counts)
        target = splits[name]["targetkg_train"]
        control = pd.concat([splits[name][f"controlkg_{s}"] for s in ("train", "val", "test")])
        assert not entities(target) & entities(control), name
    assert summary["counts"]["fruit"]["targetkg_train"] == 37
    assert summary["counts"]["sun"]["targetkg_train"] == 36
    assert summary["counts"]["swimming"]["targetkg_train"] == 40


def test_the_facts_table_rebuilds_byte_identical_from_the_mirror(shared_data_mirror, tmp_path, repo_facts_table):
    from knowsubnet.data.facts_table import build_facts_table

    build_facts_table(shared_data_mirror, tmp_path / "facts.tsv")
    assert (tmp_path / "facts.tsv").read_bytes() == repo_facts_table.read_bytes()
    with pytest.raises(InputError, match="is missing"):
        build_facts_table(tmp_path / "no-mirror", tmp_path / "other.tsv")
