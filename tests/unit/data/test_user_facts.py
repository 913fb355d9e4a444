"""Your facts, your templates: fact files as targets, templates per relation, one line per bad row."""

import json

import pandas as pd
import pytest
from conftest import REPO_ROOT, split_choices

from knowsubnet.core.errors import InputError
from knowsubnet.data import relations, user_facts
from knowsubnet.data.splits import make_splits
from knowsubnet.data.triplets import COLUMNS, normalize_entity, read_facts_table

EXAMPLE = REPO_ROOT / "docs" / "examples" / "capitals"


@pytest.fixture(scope="module")
def triplets_table(repo_facts_table_path=REPO_ROOT / "data" / "facts" / "conceptnet_facts.tsv"):
    """The repo's ConceptNet facts (the 'builtin' source), the default ControlKG pool."""
    return pd.DataFrame(
        [(f.uuid, f.head, f.rel, f.tail, f.source) for f in read_facts_table(repo_facts_table_path)], columns=COLUMNS
    )


@pytest.fixture
def capitals(fresh_relations):
    user_facts.register_templates({"capitals": {"facts": "x.csv", "templates": str(EXAMPLE / "templates.yaml")}})


def test_the_example_templates_verbalise_a_new_relation_with_its_held_out_wordings(capitals):
    assert relations.verbalize("CapitalOf", 0, "France", "Paris") == ("The capital of France is", " Paris")
    held = [relations.verbalize("CapitalOf", i, "France", "Paris") for i in relations.heldout_wording_ids("CapitalOf")]
    assert held == [
        ("If you fly to the capital of France, you land in", " Paris"),
        ("The seat of power in France is", " Paris"),
    ]
    assert [i for i, *_ in relations.all_verbalizations("CapitalOf", "France", "Paris")] == [0, 1, 2]
    val = [
        relations.verbalize("CapitalOf", i, "France", "Paris") for i in relations.validation_wording_ids("CapitalOf")
    ]
    assert val == [
        ("The capital city of France is", " Paris"),
        ("Government offices of France are located in", " Paris"),
    ]


def test_a_fact_file_reads_alike_as_csv_jsonl_and_parquet(capitals, tmp_path):
    csv = user_facts.read_fact_file(EXAMPLE / "facts.csv")
    assert list(csv.columns) == COLUMNS and len(csv) == 48 and set(csv["rel"]) == {"CapitalOf"}
    rows = pd.read_csv(EXAMPLE / "facts.csv")
    (tmp_path / "f.jsonl").write_text("\n".join(json.dumps(r) for r in rows.to_dict("records")) + "\n\n")
    rows.rename(columns={"relation": "rel"}).to_parquet(tmp_path / "f.parquet")
    for name in ("f.jsonl", "f.parquet"):
        pd.testing.assert_frame_equal(user_facts.read_fact_file(tmp_path / name), csv)


def test_relations_of_the_repo_need_no_templates_and_any_case_reads(fresh_relations, tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("head,relation,tail\nkettle,usedfor,boiling water\nkettle,UsedFor,boiling water\n")
    facts = user_facts.read_fact_file(path)
    assert facts[["head", "rel", "tail"]].values.tolist() == [["kettle", "UsedFor", "boiling water"]]


@pytest.mark.parametrize(
    "text, where, says",
    [
        ("head,relation,tail\nFrance,CapitalOf,Paris\nSpain,,Madrid\n", ":3:", "column 'relation'"),
        ("head,relation\nFrance,CapitalOf\n", ":2:", "column 'tail' is missing"),
        ("head,relation,tail\nFrance,CapitalOf,Paris\nMars,MoonOf,Phobos\n", ":3:", "'MoonOf' has no templates"),
    ],
)
def test_a_bad_row_stops_with_its_file_and_line(capitals, tmp_path, text, where, says):
    path = tmp_path / "facts.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=says) as err:
        user_facts.read_fact_file(path)
    assert f"{path}{where}" in str(err.value) and "\n" not in str(err.value)


def test_a_bad_jsonl_line_and_a_wrong_suffix_are_named(fresh_relations, tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text('{"head": "kettle", "relation": "UsedFor", "tail": "tea"}\n{"head": \n')
    with pytest.raises(InputError, match=f"{path}:2: not a JSON object"):
        user_facts.read_fact_file(path)
    with pytest.raises(InputError, match="expected a fact file ending in .csv, .jsonl, .parquet"):
        user_facts.read_fact_file(tmp_path / "facts.txt")


@pytest.mark.parametrize(
    "yaml_text, says",
    [
        ("R:\n  templates: ['The {h} of {o} is']\n  heldout: ['x {o}']\n", "must end with the tail"),
        ("R:\n  templates: ['{q} is {o}']\n  heldout: ['x {o}']\n", "unknown field {q}"),
        ("R:\n  templates: ['{h} is {o}']\n", "the keys templates and heldout"),
        ("R:\n  templates: ['{h} is {o}']\n  heldout: ['x {o}']\n  test: ['y {o}']\n", "optionally validation"),
        ("R:\n  templates: ['{h} is {o}']\n  heldout: ['{h} is {o}']\n", "both templates and heldout"),
        (
            "R:\n  templates: ['{h} is {o}']\n  heldout: ['x {o}']\n  validation: ['x {o}']\n",
            "both heldout and validation",
        ),
        ("IsA:\n  templates: ['{h} is {o}']\n  heldout: ['{h} counts as {o}']\n", "built-in relation"),
        ("R: [", "not valid YAML"),
    ],
)
def test_a_bad_templates_file_is_one_line_naming_its_key(fresh_relations, tmp_path, yaml_text, says):
    path = tmp_path / "templates.yaml"
    path.write_text(yaml_text)
    with pytest.raises(InputError, match=says) as err:
        user_facts.register_templates({"t": {"facts": "f.csv", "templates": str(path)}})
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def _split(spec, triplets, holdout=True):
    return make_splits(
        triplets,
        "capitals",
        spec,
        seed=0,
        fractions={"train": 0.6, "val": 0.2, "test": 0.2},
        targetkg_holdout=holdout,
        max_targetkg=None,
        max_controlkg={"train": 50, "val": 10, "test": 10},
        **split_choices(),
    )


def test_a_fact_file_target_splits_its_own_facts_against_the_repo_controls(capitals, triplets_table):
    spec = {"facts": str(EXAMPLE / "facts.csv"), "templates": str(EXAMPLE / "templates.yaml")}
    splits = _split(spec, triplets_table)
    target = pd.concat([splits[f"targetkg_{s}"] for s in ("train", "val", "test")])
    assert len(target) == 48 and set(target["source"]) == {"user"}
    entities = set(map(normalize_entity, target["head"])) | set(map(normalize_entity, target["tail"]))
    for split in ("train", "val", "test"):
        control = splits[f"controlkg_{split}"]
        assert len(control) and set(control["source"]) != {"user"}
        control_entities = set(map(normalize_entity, control["head"])) | set(map(normalize_entity, control["tail"]))
        assert not entities & control_entities
    train_heads = set(splits["targetkg_train"]["head"])
    assert not train_heads & set(splits["targetkg_test"]["head"])  # entity-disjoint held-out facts


def test_a_controls_file_replaces_the_repo_facts(capitals, triplets_table, tmp_path):
    controls = tmp_path / "keep.csv"
    controls.write_text(
        "head,relation,tail\n" + "".join(f"thing{i},IsA,object{i}\n" for i in range(30)) + "Paris,IsA,city\n"
    )  # shares an entity with the TargetKG: never a control
    spec = {"facts": str(EXAMPLE / "facts.csv"), "controls": str(controls)}
    splits = _split(spec, triplets_table, holdout=False)
    control = pd.concat([splits[f"controlkg_{s}"] for s in ("train", "val", "test")])
    assert len(control) == 30 and control["head"].str.startswith("thing").all()


def test_paper_controls_are_refused_for_a_fact_file_target(capitals, triplets_table):
    with pytest.raises(InputError, match="split.controlkg paper has no ControlKG for a fact-file target"):
        make_splits(
            triplets_table,
            "capitals",
            {"facts": str(EXAMPLE / "facts.csv")},
            seed=0,
            fractions={"train": 0.6, "val": 0.2, "test": 0.2},
            targetkg_holdout=False,
            max_targetkg=None,
            max_controlkg={"train": 5, "val": 5, "test": 5},
            **split_choices(controlkg="paper"),
        )


def test_a_controls_file_serves_under_paper_controls_too(capitals, triplets_table, tmp_path):
    controls = tmp_path / "keep.csv"
    controls.write_text("head,relation,tail\n" + "".join(f"thing{i},IsA,object{i}\n" for i in range(30)))
    splits = make_splits(
        triplets_table,
        "capitals",
        {"facts": str(EXAMPLE / "facts.csv"), "controls": str(controls)},
        seed=0,
        fractions={"train": 0.6, "val": 0.2, "test": 0.2},
        targetkg_holdout=False,
        max_targetkg=None,
        max_controlkg={"train": 50, "val": 10, "test": 10},
        **split_choices(controlkg="paper"),
    )
    assert sum(len(splits[f"controlkg_{s}"]) for s in ("train", "val", "test")) == 30
