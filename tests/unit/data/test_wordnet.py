"""WordNet: the wndb(5) noun reader, synset names, subtree targets (against the paper's seven lists),
the Hypernym relation, WordNet targets and ControlKG in split_controls, and fetching the files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import MIRROR, base_params, split_choices

from knowsubnet.core.errors import InputError
from knowsubnet.data.relations import all_verbalizations
from knowsubnet.data.splits import make_splits, select_target, splits_from_params
from knowsubnet.data.triplets import PAPER_SYNSETS, TABLE_COLUMNS, Fact, merge_facts
from knowsubnet.data.wordnet import build_target, read_noun_database, synset_lemma

# A made-up database in the real format: entity <- {structure, thing}; structure <- building (+ an
# instance hypernym that must not be followed); building <- house, house(2nd sense of "house");
# thing <- living_thing <- animal <- dog.
LICENCE = "  1 This software and database is being provided\n  2 under the licence.\n"
DATA = LICENCE + "".join(
    line + "  \n"
    for line in (
        "00000001 03 n 01 entity 0 000 | that which exists",
        "00000002 06 n 02 structure 0 construction 0 001 @ 00000001 n 0000 | a thing constructed",
        "00000003 03 n 01 thing 0 001 @ 00000001 n 0000 | a separate entity",
        "00000004 06 n 02 building 0 edifice 0 002 @ 00000002 n 0000 @i 00000003 n 0000 | a structure",
        "00000005 06 n 01 house 0 001 @ 00000004 n 0000 | a dwelling",
        "00000006 14 n 01 House 0 001 @ 00000004 n 0000 | a legislative body (made up)",
        "00000007 06 n 01 living_thing 0 001 @ 00000003 n 0000 | alive",
        "00000008 05 n 01 animal 0 001 @ 00000007 n 0000 | a living thing that moves",
        "00000009 05 n 01 dog 0 001 @ 00000008 n 0000 | a barking animal",
    )
)
INDEX = LICENCE + "".join(
    line + "  \n"
    for line in (
        "animal n 1 1 @ 1 0 00000008",
        "building n 1 1 @ 1 0 00000004",
        "construction n 1 1 @ 1 0 00000002",
        "dog n 1 1 @ 1 0 00000009",
        "edifice n 1 1 @ 1 0 00000004",
        "entity n 1 0 1 0 00000001",
        "house n 2 1 @ 2 0 00000006 00000005",
        "living_thing n 1 1 @ 1 0 00000007",
        "structure n 1 1 @ 1 0 00000002",
        "thing n 1 1 @ 1 0 00000003",
    )
)


@pytest.fixture
def small_db(tmp_path):
    (tmp_path / "data.noun").write_text(DATA)
    (tmp_path / "index.noun").write_text(INDEX)
    return tmp_path


def test_reader_names_synsets_by_sense_order_and_follows_only_hypernyms(small_db):
    db = read_noun_database(small_db)
    assert len(db) == 9
    names = {s.offset: s.name for s in db.synsets.values()}
    # "house" lists 00000006 first: that synset is house.n.01 (names are lower-cased first lemmas)
    assert names[6] == "house.n.01" and names[5] == "house.n.02"
    assert db.synsets[2].words == ("structure", "construction")
    assert ("building.n.01", "thing.n.01") not in db.hypernym_edges()  # @i is not a hypernym edge
    assert db.graph.subtree_edges("structure.n.01") == [
        ("building.n.01", "structure.n.01"),
        ("house.n.01", "building.n.01"),
        ("house.n.02", "building.n.01"),
    ]
    assert db.graph.subtree_edges("structure.n.01", depth=1) == [("building.n.01", "structure.n.01")]
    assert build_target(db, "building.n.01", ancestors=2) == [
        ("building.n.01", "structure.n.01"),
        ("house.n.01", "building.n.01"),
        ("house.n.02", "building.n.01"),
        ("structure.n.01", "entity.n.01"),
    ]
    assert synset_lemma("living_thing.n.01") == "living thing"


def test_sampling_is_seeded_and_capped(small_db):
    db = read_noun_database(small_db)
    a = build_target(db, "entity.n.01", max_facts=2, seed=3)
    assert len(a) == 2 and a == build_target(db, "entity.n.01", max_facts=2, seed=3)
    assert set(a) <= set(build_target(db, "entity.n.01"))
    draws = {tuple(build_target(db, "entity.n.01", max_facts=2, seed=s)) for s in range(10)}
    assert len(draws) > 1  # the seed matters


def test_unknown_synset_and_bad_lines_are_named(small_db):
    db = read_noun_database(small_db)
    with pytest.raises(InputError, match=r"targets\.x\.wordnet.*'castle\.n\.01'"):
        build_target(db, "castle.n.01", key="targets.x.wordnet")
    with pytest.raises(InputError, match=r"'house\.n\.07'.*house\.n\.01, house\.n\.02"):
        build_target(db, "house.n.07")
    with pytest.raises(InputError, match="no hyponyms"):
        build_target(db, "house.n.01")
    (small_db / "data.noun").write_text(DATA + "00000008 03 n zz broken\n")
    with pytest.raises(InputError, match=r"data\.noun:\d+: expected a wndb\(5\) data\.noun line"):
        read_noun_database(small_db)


def test_hypernym_templates_read_synset_names_as_words():
    sentences = [p + t for _, p, t in all_verbalizations("Hypernym", "bathhouse.n.02", "house.n.12")]
    assert sentences[0] == "A bathhouse is a house"
    assert "A bathhouse is a kind of house" in sentences
    assert all(s.endswith(" house") and ".n." not in s for s in sentences)
    _, prompt, tail = all_verbalizations("Hypernym", "living_thing.n.01", "organism.n.01")[0]
    assert tail == " organism" and prompt.endswith(" an") and "living thing" in prompt.lower()


# -- against the real database and the paper's lists ----------------------------------------------

# Paper edges found in the pool built from the noun database (depth 2 below the synset, 2 levels
# above it), per synset: every one of them (docs/PAPER.md, "WordNet TargetKGs").
PAPER_OVERLAP = {
    "building.n.01": (11, 177),
    "change.n.01": (13, 103),
    "communication.n.02": (16, 192),
    "location.n.01": (19, 154),
    "magnitude.n.01": (12, 54),
    "representation.n.02": (12, 119),
    "statement.n.01": (16, 173),
}


def paper_edges(mirror: Path, synset: str) -> set[tuple[str, str]]:
    path = mirror / "know_subnet_derived" / "wordnet" / "targetkg" / f"Synset('{synset}')_best_format.json"
    return {(item["head"], item["tail"]) for item in json.loads(path.read_text())}


@pytest.fixture(scope="module")
def real_db():
    mirror = MIRROR
    if not (mirror / "wordnet-3.0" / "data.noun").is_file():
        pytest.skip("no WordNet files in the local data mirror")
    return mirror, read_noun_database(mirror / "wordnet-3.0")


def test_building_from_the_noun_database_gives_the_papers_edges(real_db):
    mirror, db = real_db
    paper = paper_edges(mirror, "building.n.01")
    built = set(build_target(db, "building.n.01", depth=2, ancestors=2))
    assert len(paper) == 11 and paper <= built and len(built) == 177
    # without the two edges above the synset, the subtree alone holds 9 of the 11
    assert len(paper & set(db.graph.subtree_edges("building.n.01"))) == 9
    with pytest.raises(InputError, match=r"no WordNet noun synset 'buildingz\.n\.01'"):
        build_target(db, "buildingz.n.01")


def test_all_seven_paper_lists_are_samples_of_the_built_pool(real_db):
    mirror, db = real_db
    assert set(PAPER_OVERLAP) == set(PAPER_SYNSETS)
    for synset, (n_paper, n_pool) in PAPER_OVERLAP.items():
        paper = paper_edges(mirror, synset)
        pool = set(build_target(db, synset, depth=2, ancestors=2))
        assert (len(paper), len(paper & pool), len(pool)) == (n_paper, n_paper, n_pool), synset
    # and beyond the paper: any noun synset with hyponyms
    dog = build_target(db, "dog.n.01", max_facts=25, seed=0)
    assert len(dog) == 25 and ("puppy.n.01", "dog.n.01") in db.hypernym_edges()


# -- WordNet targets in split_controls -----------------------------------------------------------


def _facts(rows, source):
    return [Fact(h, r, t, None, source, "test") for h, r, t in rows]


@pytest.fixture
def mixed_triplets(small_db):
    from knowsubnet.data.triplets import read_wordnet_database

    facts = list(read_wordnet_database(small_db))
    facts += _facts(
        [("house.n.01", "Hypernym", "building.n.01"), ("building.n.01", "Hypernym", "structure.n.01")],
        "know_subnet/wordnet/building.n.01",
    )
    facts += _facts(
        [("living_thing.n.01", "Hypernym", "thing.n.01"), ("thing.n.01", "Hypernym", "entity.n.01")],
        "know_subnet/wordnet/controlkg_val",
    )
    conceptnet = [(f"h{i}", "IsA", f"t{i}") for i in range(30)] + [("pear", "IsA", "fruit")]
    facts += _facts(conceptnet, "builtin")
    facts += _facts([("h1", "IsA", "t1"), ("h2", "IsA", "t2")], "know_subnet/controlkg_train")
    facts += _facts([("h3", "IsA", "t3")], "know_subnet/controlkg_val")
    return merge_facts(facts)


SPLIT = dict(
    seed=0,
    fractions={"train": 0.5, "val": 0.25, "test": 0.25},
    targetkg_holdout=False,
    # no caps (params never hold null here: the typed params validate on replace)
    max_targetkg=10**6,
    max_controlkg={"train": 10**6, "val": 10**6, "test": 10**6},
)


def _params(targets: dict):
    """Base params with exactly these targets and the SPLIT settings."""
    params = base_params()
    return dataclasses.replace(params, targets=targets, split=dataclasses.replace(params.split, **SPLIT))


def test_wordnet_targets_paper_list_and_built(mixed_triplets):
    listed = select_target(
        mixed_triplets, "b", {"wordnet": "building.n.01", "facts": "know_subnet/wordnet/building.n.01"}
    )
    assert sorted(zip(listed["head"], listed["tail"])) == [
        ("building.n.01", "structure.n.01"),
        ("house.n.01", "building.n.01"),
    ]
    built = select_target(mixed_triplets, "b", {"wordnet": "structure.n.01", "depth": 1, "ancestors": 1})
    assert sorted(zip(built["head"], built["tail"])) == [
        ("building.n.01", "structure.n.01"),
        ("structure.n.01", "entity.n.01"),
    ]
    assert set(built["rel"]) == {"Hypernym"} and list(built.columns) == TABLE_COLUMNS
    with pytest.raises(InputError, match=r"targets\.b\.wordnet.*'castle\.n\.01'"):
        select_target(mixed_triplets, "b", {"wordnet": "castle.n.01"})
    with pytest.raises(InputError, match=r"targets\.b"):
        select_target(mixed_triplets, "b", {"wordnet": "building.n.01", "facts": "x", "depth": 2})


def test_wordnet_controlkg_is_wordnet_outside_every_subtree(mixed_triplets):
    targets = {
        "b": {"wordnet": "building.n.01", "facts": "know_subnet/wordnet/building.n.01"},
        "s": {"wordnet": "structure.n.01", "depth": 1},
        "fruit": {"concept": "pear", "hops": 1},
    }
    out = splits_from_params(mixed_triplets, _params(targets))
    control = pd.concat([out["b"][f"controlkg_{s}"] for s in ("train", "val", "test")])
    assert set(control["rel"]) == {"Hypernym"}
    # structure.n.01's subtree (a target's) and building's entities stay out
    edges = set(zip(control["head"], control["tail"]))
    assert edges == {
        ("living_thing.n.01", "thing.n.01"),
        ("thing.n.01", "entity.n.01"),
        ("animal.n.01", "living_thing.n.01"),
        ("dog.n.01", "animal.n.01"),
    }
    # ConceptNet targets never get WordNet facts, and keep the ControlKG they had without them
    fruit_control = pd.concat([out["fruit"][f"controlkg_{s}"] for s in ("train", "val", "test")])
    assert "Hypernym" not in set(fruit_control["rel"])
    conceptnet_only = mixed_triplets[mixed_triplets["rel"] != "Hypernym"]
    alone = splits_from_params(conceptnet_only, _params({"fruit": targets["fruit"]}))
    for name in out["fruit"]:
        assert out["fruit"][name].equals(alone["fruit"][name]), name


def test_paper_controlkg_uses_the_papers_files_in_file_order(mixed_triplets):
    order = {
        "know_subnet/wordnet/controlkg_val": [
            ("thing.n.01", "Hypernym", "entity.n.01"),
            ("living_thing.n.01", "Hypernym", "thing.n.01"),
        ],
        "know_subnet/controlkg_train": [("h2", "IsA", "t2"), ("h1", "IsA", "t1")],
    }
    wn = make_splits(
        mixed_triplets,
        "b",
        {"wordnet": "building.n.01", "facts": "know_subnet/wordnet/building.n.01"},
        **SPLIT,
        **split_choices(controlkg="paper", paper_wordnet_controlkg=1),
        paper_order=order,
    )
    for split in ("val", "test"):  # the first edge of the file
        assert list(zip(wn[f"controlkg_{split}"]["head"], wn[f"controlkg_{split}"]["tail"])) == [
            ("thing.n.01", "entity.n.01")
        ]
    # train: the authors' file is not released; edges of the noun database, never a val / test edge,
    # none touching the TargetKG, so that ControlKG test stays held out
    train = set(zip(wn["controlkg_train"]["head"], wn["controlkg_train"]["tail"]))
    assert train and ("thing.n.01", "entity.n.01") not in train
    assert set(wn["controlkg_train"]["rel"]) == {"Hypernym"}
    target = set(wn["targetkg_train"]["head"]) | set(wn["targetkg_train"]["tail"])
    assert not target & {e for edge in train for e in edge}

    cn = make_splits(
        mixed_triplets,
        "p",
        {"rel": "IsA"},
        **{**SPLIT, "max_controlkg": 1},
        **split_choices(controlkg="paper"),
        paper_order=order,
    )
    assert cn["controlkg_train"]["head"].tolist() == ["h2"]  # first in the file, capped at 1
    assert cn["controlkg_test"]["head"].tolist() == ["h3"]  # val file = test
    with pytest.raises(InputError, match="split.controlkg"):
        make_splits(mixed_triplets, "p", {"rel": "IsA"}, **SPLIT, **split_choices(controlkg="theirs"))


# -- fetching --------------------------------------------------------------------------------------


def test_fetch_gets_wordnet_and_wiki_train_only_when_the_params_need_them(tmp_path):
    from knowsubnet.data.fetch import fetch_data, optional_files

    assert optional_files(base_params({"triplets": {"sources": ["builtin"]}})) == []
    assert optional_files(
        base_params({"triplets": {"sources": ["wordnet"]}, "controllm": {"train_text": "train"}})
    ) == ["wordnet", "wiki_train"]
    mirror = MIRROR
    if not (mirror / "wordnet-3.0").is_dir():
        pytest.skip("no local data mirror")
    manifest = fetch_data(tmp_path / "raw", mirror, optional=["wordnet"])
    assert manifest["files"]["wordnet-3.0/data.noun"]["verified"]
    assert (tmp_path / "raw" / "wordnet-3.0" / "index.noun").is_file()
    assert manifest["files"]["know_subnet_derived/wordnet/targetkg/Synset('building.n.01')_best_format.json"][
        "verified"
    ]
    with pytest.raises(InputError, match="wiki.train.raw.*controllm.train_text"):
        fetch_data(tmp_path / "raw2", mirror, optional=["wiki_train"])


def test_download_path_unpacks_the_wndb_tarball_and_records_unsummed_files(tmp_path, monkeypatch):
    """mirror=None: a WNdb-3.0.tar.gz-shaped archive served by file:// stands in for Princeton's."""
    import io
    import tarfile
    import zipfile

    from knowsubnet.core.io import sha256_file
    from knowsubnet.data import fetch
    from knowsubnet.data.fetch import Origin, RawFile, fetch_data

    served = tmp_path / "served"
    served.mkdir()
    data, index = DATA.encode(), INDEX.encode()
    with tarfile.open(served / "WNdb-3.0.tar.gz", "w:gz") as archive:
        for name, payload in (("dict/data.noun", data), ("dict/index.noun", index)):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    with zipfile.ZipFile(served / "wikitext.zip", "w") as archive:
        archive.writestr("wikitext-2-raw/wiki.train.raw", " = Train = \n")
    tgz = (served / "WNdb-3.0.tar.gz").as_uri()
    specs = tuple(
        RawFile(f"wordnet-3.0/{name}", hashlib.sha256(payload).hexdigest(), (Origin(tgz, "tar_gz", f"dict/{name}"),))
        for name, payload in (("data.noun", data), ("index.noun", index))
    )
    wiki = RawFile(
        "wikitext-2-raw/wiki.train.raw",
        None,
        (Origin((served / "wikitext.zip").as_uri(), "zip", "wikitext-2-raw/wiki.train.raw"),),
    )
    monkeypatch.setattr(fetch, "RAW_FILES", ())
    monkeypatch.setattr(fetch, "OPTIONAL_FILES", {"wordnet": specs, "wiki_train": (wiki,)})
    manifest = fetch_data(tmp_path / "raw", None, optional=["wordnet", "wiki_train"])
    assert manifest["files"]["wordnet-3.0/data.noun"]["verified"]
    assert not manifest["files"]["wikitext-2-raw/wiki.train.raw"]["verified"]  # no published sum
    assert manifest["files"]["wikitext-2-raw/wiki.train.raw"]["sha256"] == sha256_file(
        tmp_path / "raw" / "wikitext-2-raw" / "wiki.train.raw"
    )
    assert len(read_noun_database(tmp_path / "raw" / "wordnet-3.0")) == 9


def test_wordnet_sums_are_the_mirror_readmes(shared_data_mirror):
    from knowsubnet.data.fetch import WORDNET_FILES

    readme = (shared_data_mirror / "README.md").read_text(encoding="utf-8")
    for spec in WORDNET_FILES:
        assert spec.sha256 in readme and (shared_data_mirror / spec.path).is_file(), spec.path
