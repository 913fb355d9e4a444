"""Fact readers in every supported format, normalisation, merging, and their error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from knowsubnet.core.errors import InputError
from knowsubnet.data.relations import RELATIONS
from knowsubnet.data.triplets import (
    KNOW_SUBNET_DIR,
    KNOW_SUBNET_FILES,
    KNOW_SUBNET_WORDNET_FILES,
    TABLE_COLUMNS,
    build_triplets,
    merge_facts,
    read_best_format,
    read_facts_table,
    read_lama,
    read_lama_jsonl,
    read_lama_parquet,
    stable_uuid,
)

# Made-up rows in each source's shape (no dataset sentences).
LAMA_ORIGINAL = [
    {
        "sub": "Guitar",
        "obj": "instrument",
        "pred": "IsA",
        "obj_label": "instrument",
        "masked_sentences": ["placeholder [MASK] one", "placeholder [MASK] two"],
        "uuid": "u-guitar",
    },
    {
        "sub": " kettle ",
        "obj": "kitchen",
        "pred": "AtLocation",
        "obj_label": "kitchen",
        "masked_sentences": ["placeholder [MASK]"],
        "uuid": "u-kettle",
    },
]
HF_ROWS = [
    {
        "uuid": "u-guitar",
        "sub": "guitar",
        "obj": "instrument",
        "pred": "IsA",
        "obj_label": "instrument",
        "masked_sentence": "placeholder [MASK]",
        "negated": "",
    },
    {
        "uuid": "u-guitar",
        "sub": "guitar",
        "obj": "instrument",
        "pred": "IsA",
        "obj_label": "instrument",
        "masked_sentence": "another placeholder [MASK]",
        "negated": "",
    },
    {
        "uuid": "u-ice",
        "sub": "ice",
        "obj": "cold",
        "pred": "HasProperty",
        "obj_label": "cold",
        "masked_sentence": "placeholder [MASK]",
        "negated": "not [MASK]",
    },
]
TARGETKG_ROWS = [  # the paper's lists: masked_sentence null, some labels capitalised
    {"sub": "pear", "obj": "tree", "pred": "AtLocation", "obj_label": "Tree", "masked_sentence": None, "uuid": "u-pear"}
]
BEST_FORMAT = [
    {"head": "guitar", "tail": "instrument", "rel": "IsA", "gpt2_perp": 1.5},
    {"head": "Drum  Kit", "tail": "stage", "rel": "AtLocation", "id": "q-123"},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_tsv(path: Path, lines) -> Path:
    path.write_text("".join("\t".join(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_lama_original_jsonl(tmp_path):
    facts = list(read_lama_jsonl(write_jsonl(tmp_path / "test.jsonl", LAMA_ORIGINAL)))
    assert [(f.head, f.rel, f.tail, f.uuid, f.source) for f in facts] == [
        ("guitar", "IsA", "instrument", "u-guitar", "lama"),
        ("kettle", "AtLocation", "kitchen", "u-kettle", "lama"),
    ]
    assert facts[1].where.endswith("test.jsonl:2")


def test_hf_lama_rows_jsonl_and_parquet(tmp_path):
    from_jsonl = list(read_lama(write_jsonl(tmp_path / "hf.jsonl", HF_ROWS)))
    parquet = tmp_path / "hf.parquet"
    pd.DataFrame(HF_ROWS).to_parquet(parquet, index=False)
    from_parquet = list(read_lama_parquet(parquet))
    key = [(f.head, f.rel, f.tail, f.uuid) for f in from_jsonl]
    assert key == [(f.head, f.rel, f.tail, f.uuid) for f in from_parquet]
    assert key[2] == ("ice", "HasProperty", "cold", "u-ice")
    assert from_parquet[2].where.endswith("hf.parquet: row 3")
    assert [(f.head, f.rel, f.tail) for f in read_lama(parquet)] == [k[:3] for k in key]


def test_targetkg_jsonl_prefers_label_and_lowercases(tmp_path):
    facts = list(read_lama_jsonl(write_jsonl(tmp_path / "fruit.jsonl", TARGETKG_ROWS), "know_subnet/targetkg/fruit"))
    assert [(f.head, f.rel, f.tail, f.uuid, f.source) for f in facts] == [
        ("pear", "AtLocation", "tree", "u-pear", "know_subnet/targetkg/fruit")
    ]


def test_best_format_json_list(tmp_path):
    path = tmp_path / "x_best_format.json"
    path.write_text(json.dumps(BEST_FORMAT, indent=2), encoding="utf-8")
    facts = list(read_best_format(path, "know_subnet/controlkg_train"))
    assert [(f.head, f.rel, f.tail, f.uuid, f.ref) for f in facts] == [
        ("guitar", "IsA", "instrument", None, None),
        ("drum kit", "AtLocation", "stage", None, "q-123"),
    ]
    assert facts[1].where == f"{path}:8: item 1"  # pretty-printed: item 1 starts on line 8


def test_facts_table_with_and_without_lists(tmp_path):
    path = write_tsv(
        tmp_path / "facts.tsv",
        [
            ("uuid", "head", "rel", "tail", "lists"),
            ("u-pear", "pear", "AtLocation", "tree", "targetkg/fruit;targetkg/sun"),
            (stable_uuid("ice", "HasProperty", "cold"), "ice", "HasProperty", "cold", ""),
        ],
    )
    facts = list(read_facts_table(path))
    assert facts[0].source == "builtin;know_subnet/targetkg/fruit;know_subnet/targetkg/sun"
    assert facts[1].source == "builtin"
    four = write_tsv(tmp_path / "four.tsv", [("uuid", "head", "rel", "tail"), ("u1", "pear", "IsA", "fruit")])
    assert [(f.head, f.source) for f in read_facts_table(four)] == [("pear", "builtin")]


def make_raw_dir(tmp_path: Path) -> Path:
    """A data/raw with every know_subnet file present (small, made-up contents)."""
    raw = tmp_path / "raw"
    for tag, rel in KNOW_SUBNET_FILES.items():
        path = raw / KNOW_SUBNET_DIR / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".jsonl":
            write_jsonl(path, TARGETKG_ROWS if tag.endswith("fruit") else [])
        else:
            chosen = BEST_FORMAT if tag == "know_subnet/controlkg_train" else []
            path.write_text(json.dumps(chosen), encoding="utf-8")
    for rel in KNOW_SUBNET_WORDNET_FILES.values():  # the paper's WordNet lists, empty here
        (raw / KNOW_SUBNET_DIR / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / KNOW_SUBNET_DIR / rel).write_text("[]", encoding="utf-8")
    return raw


def test_build_triplets_merges_sources_and_prefers_lama_uuids(tmp_path):
    raw = make_raw_dir(tmp_path)
    facts = write_tsv(
        tmp_path / "facts.tsv",
        [
            ("uuid", "head", "rel", "tail", "lists"),
            (stable_uuid("guitar", "IsA", "instrument"), "guitar", "IsA", "instrument", ""),
            ("u-pear", "pear", "AtLocation", "tree", "targetkg/fruit"),
        ],
    )
    lama = write_jsonl(tmp_path / "lama.jsonl", LAMA_ORIGINAL)
    table = build_triplets(raw, ["builtin", "know_subnet", "lama"], lama_path=lama, facts_table=facts)
    assert list(table.columns) == TABLE_COLUMNS
    rows = {(r.head, r.rel, r.tail): (r.uuid, r.source) for r in table.itertuples()}
    assert rows[("guitar", "IsA", "instrument")] == ("u-guitar", "builtin;know_subnet/controlkg_train;lama")
    assert rows[("pear", "AtLocation", "tree")] == ("u-pear", "builtin;know_subnet/targetkg/fruit")
    assert rows[("drum kit", "AtLocation", "stage")] == (
        stable_uuid("drum kit", "AtLocation", "stage"),
        "know_subnet/controlkg_train",
    )
    assert table.equals(table.sort_values(["rel", "head", "tail"]).reset_index(drop=True))
    assert table.duplicated(["head", "rel", "tail"]).sum() == 0
    # finer source names select single files
    only = build_triplets(raw, ["know_subnet/targetkg"], facts_table=facts)
    assert only["source"].tolist() == ["know_subnet/targetkg/fruit"]


def test_merge_is_order_independent(tmp_path):
    facts = list(read_lama(write_jsonl(tmp_path / "hf.jsonl", HF_ROWS)))
    facts += list(read_best_format(_json(tmp_path / "b.json", BEST_FORMAT), "x"))
    assert merge_facts(facts).equals(merge_facts(reversed(facts)))


def test_repo_facts_table_covers_all_relations_and_the_paper_lists(repo_facts_table):
    table = build_triplets(Path("/nonexistent"), ["builtin"], facts_table=repo_facts_table)
    assert set(table["rel"]) == set(RELATIONS)
    tags = table["source"].str.split(";")
    for concept, n in (("fruit", 37), ("sun", 36), ("swimming", 40)):
        tag = f"know_subnet/targetkg/{concept}"
        assert sum(tag in ts for ts in tags) == n
    assert table.loc[table["head"].eq("eating") & table["tail"].eq("appetite"), "uuid"].tolist() == [
        "05db20992e1b656179e85b47a63aac59"
    ]


# -- bad input ----------------------------------------------------------------------------------


def _json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps(LAMA_ORIGINAL[0])


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"sub": "a", "pred": "IsA"', r"bad\.jsonl:2: expected a JSON object, got invalid JSON"),
        ('["sub", "pred"]', r"bad\.jsonl:2: expected a JSON object .*got list"),
        ('{"sub": "a", "obj_label": "b", "uuid": "u"}', r"bad\.jsonl:2: expected key 'pred'"),
        ('{"pred": "IsA", "obj_label": "b"}', r"bad\.jsonl:2: expected key 'sub'"),
        ('{"sub": "a", "pred": "IsA"}', r"bad\.jsonl:2: expected key 'obj'"),
        (
            '{"sub": 5, "pred": "IsA", "obj": "b"}',
            r"bad\.jsonl:2: expected a string for 'sub', got "
            r"int 5",
        ),
        ('{"sub": "  ", "pred": "IsA", "obj": "b"}', r"bad\.jsonl:2: expected a non-empty 'sub'"),
        (
            '{"sub": "a", "pred": "BornIn", "obj": "b"}',
            r"bad\.jsonl:2: unknown relation 'BornIn'; "
            r"expected one of: AtLocation",
        ),
    ],
)
def test_lama_jsonl_errors_name_file_and_line(tmp_path, bad_line, message):
    path = _lines(tmp_path / "bad.jsonl", GOOD, bad_line)
    with pytest.raises(InputError, match=message):
        list(read_lama_jsonl(path))


def test_parquet_errors_name_file_and_row(tmp_path):
    path = tmp_path / "bad.parquet"
    pd.DataFrame(
        [{"sub": "a", "pred": "IsA", "obj_label": "b"}, {"sub": "a", "pred": "Nope", "obj_label": "b"}]
    ).to_parquet(path)
    with pytest.raises(InputError, match=r"bad\.parquet: row 2: unknown relation 'Nope'"):
        list(read_lama_parquet(path))
    with pytest.raises(InputError, match=r"expected a LAMA ConceptNet file ending in"):
        read_lama(tmp_path / "lama.csv")


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"head": "a"}', r"b\.json:1: expected a JSON list of facts"),
        (
            '[{"head": "a", "rel": "IsA", "tail": "b"},\n {"head": "a", "rel": "IsA"}]',
            r"b\.json:2: item 1: expected key 'tail'",
        ),
        (
            '[{"head": "a", "rel": "IsA", "tail": 3}]',
            r"b\.json:1: item 0: expected a string for "
            r"'tail', got int",
        ),
        (
            '[{"head": "a", "rel": "IsA", "tail": "b"},\n {"head": "a", "rel": ]',
            r"b\.json:2: expected a JSON value \(item 1\), got invalid JSON",
        ),
        (
            '[{"head": "a", "rel": "IsA", "tail": "b"} {"head": "c"}]',
            r"b\.json:1: expected ',' or "
            r"'\]' after item 0",
        ),
        ('[\n"just a string"]', r"b\.json:2: item 0: expected a JSON object"),
        (
            '[{"head": "a", "rel": "isa", "tail": "b"},\n{"head": "a", "rel": "Has", "tail": "b"}]',
            r"b\.json:2: item 1: unknown relation 'Has'",
        ),
    ],
)
def test_best_format_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "b.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        list(read_best_format(path, "x"))


def test_facts_table_errors(tmp_path):
    header = ("uuid", "head", "rel", "tail", "lists")
    short = write_tsv(tmp_path / "f.tsv", [header, ("u1", "a", "IsA", "b", ""), ("u2", "a", "IsA")])
    with pytest.raises(InputError, match=r"f\.tsv:3: expected 5 tab-separated fields"):
        list(read_facts_table(short))
    unknown = write_tsv(tmp_path / "g.tsv", [header, ("u1", "a", "Likes", "b", "")])
    with pytest.raises(InputError, match=r"g\.tsv:2: unknown relation 'Likes'"):
        list(read_facts_table(unknown))
    empty = write_tsv(tmp_path / "h.tsv", [header, ("u1", "", "IsA", "b", "")])
    with pytest.raises(InputError, match=r"h\.tsv:2: expected a non-empty 'head'"):
        list(read_facts_table(empty))
    no_header = write_tsv(tmp_path / "i.tsv", [("u1", "a", "IsA", "b", "")])
    with pytest.raises(InputError, match=r"i\.tsv:1: expected the header"):
        list(read_facts_table(no_header))


def test_source_selection_errors(tmp_path):
    raw = make_raw_dir(tmp_path)
    with pytest.raises(InputError, match=r"'triplets.sources': unknown source 'wikidata'"):
        build_triplets(raw, ["wikidata"])
    with pytest.raises(InputError, match=r"'triplets.sources': expected at least one"):
        build_triplets(raw, [])
    with pytest.raises(InputError, match=r"'triplets.lama_path'.*got null"):
        build_triplets(raw, ["lama"])
    with pytest.raises(InputError, match=r"'triplets.lama_path': no such file .*nope.jsonl"):
        build_triplets(raw, ["lama"], lama_path=tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match=r"controlkg_val_best_format.json: missing input"):
        build_triplets(tmp_path / "empty", ["know_subnet/controlkg_val"])
    with pytest.raises(InputError, match=r"missing\.tsv: the in-repo facts table"):
        build_triplets(raw, ["builtin"], facts_table=tmp_path / "missing.tsv")
