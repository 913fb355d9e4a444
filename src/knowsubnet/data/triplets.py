"""Readers for every fact format, and their normalisation into the one triplets table.

Facts arrive as LAMA-ConceptNet jsonl rows (original release, the Hugging Face `lama` dataset's
rows, or the paper's TargetKG lists), the paper's `*_best_format.json` lists, and the in-repo
facts table. Whatever the format, a fact becomes (head, rel, tail) lower-cased and stripped, with
its LAMA uuid when the source knows it; the table holds each distinct fact once and names every
source it came from, so a target can select "the paper's fruit list" as well as "all IsA facts".
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from knowsubnet.core.config import Params
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import jsonl_rows, open_text, write_parquet
from knowsubnet.data.relations import ALL_RELATIONS, canonical_relation
from knowsubnet.data.wordnet import is_synset_name, read_noun_database

log = logging.getLogger(__name__)

COLUMNS = ["uuid", "head", "rel", "tail", "source"]
# The CommonsenseQA question ids a fact is linked to (the paper's csqa*_targetkg files), ';'-joined
# and sorted; empty for every other fact. Optional for readers of older tables.
CSQA_IDS = "csqa_ids"
TABLE_COLUMNS = COLUMNS + [CSQA_IDS]
CSQA_SOURCE_PREFIX = "know_subnet/csqa/"
SORT_KEYS = ["rel", "head", "tail"]

# The in-repo facts table, relative to the repository root (the working directory of the stages).
DEFAULT_FACTS_TABLE = Path("data/facts/conceptnet_facts.tsv")
FACTS_TABLE_COLUMNS = ("uuid", "head", "rel", "tail", "lists")

# The paper's derived files, by source tag, relative to data/raw/know_subnet_derived/.
KNOW_SUBNET_FILES: dict[str, str] = {
    "know_subnet/controlkg_train": "conceptnet_lama/controlkg_train_best_format.json",
    "know_subnet/controlkg_val": "conceptnet_lama/controlkg_val_best_format.json",
    "know_subnet/targetkg/fruit": "conceptnet_lama/targetkg/fruit.jsonl",
    "know_subnet/targetkg/sun": "conceptnet_lama/targetkg/sun.jsonl",
    "know_subnet/targetkg/swimming": "conceptnet_lama/targetkg/swimming.jsonl",
    "know_subnet/csqa/csqa_targetkg": "csqa/csqa_targetkg_best_format.json",
    "know_subnet/csqa/csqa1_targetkg": "csqa/csqa1_targetkg_best_format.json",
    "know_subnet/csqa/csqa2_targetkg": "csqa/csqa2_targetkg_best_format.json",
    "know_subnet/csqa/csqa_controlkg_train": "csqa/csqa_controlkg_best_format_train.json",
    "know_subnet/csqa/csqa_controlkg_val": "csqa/csqa_controlkg_best_format_val.json",
}
KNOW_SUBNET_DIR = "know_subnet_derived"
# The paper's WordNet lists (hypernym edges between synset names, no `rel` key), by source tag.
PAPER_SYNSETS = (
    "building.n.01",
    "change.n.01",
    "communication.n.02",
    "location.n.01",
    "magnitude.n.01",
    "representation.n.02",
    "statement.n.01",
)
KNOW_SUBNET_WORDNET_FILES: dict[str, str] = {
    **{f"know_subnet/wordnet/{name}": f"wordnet/targetkg/Synset('{name}')_best_format.json" for name in PAPER_SYNSETS},
    "know_subnet/wordnet/controlkg_val": "wordnet/controlkg/controlkg_val_best_format.json",
}
# Source `wordnet`: every noun hypernym edge of the WordNet 3.0 database in data/raw/<this>/.
WORDNET_SOURCE = "wordnet"
WORDNET_RAW_DIR = "wordnet-3.0"
# Where fetch_data puts a user's LAMA file inside data/raw (suffix kept: .jsonl or .parquet).
LAMA_RAW_STEM = "lama/conceptnet_test"


@dataclass(frozen=True)
class Fact:
    """One normalised fact as read from one place in one file."""

    head: str
    rel: str
    tail: str
    uuid: str | None  # LAMA uuid when the source gives one
    source: str  # source tag(s), ';'-joined
    where: str  # "file:line", for messages
    ref: str | None = None  # a record id that is not a LAMA uuid (e.g. a CSQA question id)


def normalize_entity(text: str) -> str:
    """Lower-case, strip, and collapse inner whitespace: how entities are compared everywhere."""
    return " ".join(text.split()).lower()


def stable_uuid(head: str, rel: str, tail: str) -> str:
    """A uuid for facts that have no LAMA uuid: the md5 of "head\\trel\\ttail" (normalised)."""
    return hashlib.md5(f"{head}\t{rel}\t{tail}".encode()).hexdigest()


# -- field checks -------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _get_str(row: dict, key: str, where: str, what: str, *, required: bool = True) -> str | None:
    """row[key] as a non-empty string; InputError naming file:line and the key otherwise."""
    if key not in row or (row[key] is None and not required):
        if required:
            raise InputError(f"{where}: expected key {key!r} in {what}, got keys {sorted(map(str, row))}")
        return None
    value = row[key]
    if not isinstance(value, str):
        raise InputError(f"{where}: expected a string for {key!r}, got {_type_name(value)} {value!r}")
    if not value.strip():
        if required:
            raise InputError(f"{where}: expected a non-empty {key!r}, got {value!r}")
        return None
    return value


def _make_fact(
    head: str, rel: str, tail: str, uuid: str | None, source: str, where: str, ref: str | None = None
) -> Fact:
    canonical = canonical_relation(rel)
    if canonical is None:
        raise InputError(f"{where}: unknown relation {rel!r}; expected one of: {', '.join(ALL_RELATIONS)}")
    return Fact(
        normalize_entity(head), canonical, normalize_entity(tail), uuid.strip() if uuid else None, source, where, ref
    )


def _lama_fact(row: Any, where: str, source: str) -> Fact:
    """A LAMA-style row: original release, HF `lama` conceptnet rows, or the paper's lists."""
    what = "a LAMA ConceptNet row (sub, pred, obj_label or obj)"
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object ({what}), got {_type_name(row)}")
    head = _get_str(row, "sub", where, what)
    rel = _get_str(row, "pred", where, what)
    # obj_label is the probe's answer; obj is the same word as ConceptNet spells it. Prefer the
    # label, fall back to obj (the paper's lists capitalise some labels; normalisation evens that).
    tail = _get_str(row, "obj_label", where, what, required=False)
    if tail is None:
        tail = _get_str(row, "obj", where, what)
    uuid = _get_str(row, "uuid", where, what, required=False)
    return _make_fact(head, rel, tail, uuid, source, where)


def _best_format_fact(item: Any, where: str, source: str) -> Fact:
    """An item of the paper's `*_best_format.json` lists. Its optional `id` is a CSQA question
    id, not a LAMA uuid, so it is kept as `ref` only."""
    what = "an object with head, rel, tail"
    if not isinstance(item, dict):
        raise InputError(f"{where}: expected a JSON object ({what}), got {_type_name(item)}")
    head = _get_str(item, "head", where, what)
    rel = _get_str(item, "rel", where, what)
    tail = _get_str(item, "tail", where, what)
    ref = _get_str(item, "id", where, what, required=False)
    return _make_fact(head, rel, tail, None, source, where, ref)


def _wordnet_edge_fact(item: Any, where: str, source: str) -> Fact:
    """An item of the paper's WordNet lists: {head: <synset>, tail: <synset>, ...}, a hypernym edge."""
    what = "an object with head and tail synset names"
    if not isinstance(item, dict):
        raise InputError(f"{where}: expected a JSON object ({what}), got {_type_name(item)}")
    head = _get_str(item, "head", where, what)
    tail = _get_str(item, "tail", where, what)
    for key, value in (("head", head), ("tail", tail)):
        if not is_synset_name(value):
            raise InputError(f"{where}: expected a noun synset name such as building.n.01 for {key!r}, got {value!r}")
    return _make_fact(head, "Hypernym", tail, None, source, where)


# -- readers ------------------------------------------------------------------------------------


def read_lama_jsonl(path: str | os.PathLike, source: str = "lama") -> Iterator[Fact]:
    """LAMA ConceptNet jsonl: the original release (`masked_sentences`), rows exported from the
    Hugging Face `lama` dataset (`masked_sentence`, `negated`), or the paper's TargetKG lists.
    Sentences are ignored: only the fact is kept."""
    path = Path(path)
    for where, _, row in jsonl_rows(path):
        yield _lama_fact(row, where, source)


def read_lama_parquet(path: str | os.PathLike, source: str = "lama") -> Iterator[Fact]:
    """The Hugging Face `lama` dataset's conceptnet rows saved as parquet (`Dataset.to_parquet`)."""
    path = Path(path)
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read parquet ({err})") from None
    for i, row in enumerate(frame.to_dict(orient="records"), 1):
        yield _lama_fact(row, f"{path}: row {i}", source)


def read_lama(path: str | os.PathLike, source: str = "lama") -> Iterator[Fact]:
    """A LAMA ConceptNet file in either supported format, chosen by its suffix."""
    path = Path(path)
    if path.suffix == ".parquet":
        return read_lama_parquet(path, source)
    if path.suffix in (".jsonl", ".json"):
        return read_lama_jsonl(path, source)
    raise InputError(f"{path}: expected a LAMA ConceptNet file ending in .jsonl, .json or .parquet")


def _json_list_items(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, item) for each item of a top-level JSON list, with the line each item starts on,
    so errors point into pretty-printed files as well as one-line ones."""
    with open_text(path, "facts file") as f:
        try:
            text = f.read()
        except UnicodeDecodeError:
            raise InputError(f"{path}: expected UTF-8 text") from None
    decoder = json.JSONDecoder()
    n = len(text)

    def skip(pos: int) -> int:
        while pos < n and text[pos] in " \t\r\n":
            pos += 1
        return pos

    counted = [0, 1]  # (position, line at that position): items only move forward

    def line_of(pos: int) -> int:
        if pos < counted[0]:
            return text.count("\n", 0, pos) + 1
        counted[1] += text.count("\n", counted[0], pos)
        counted[0] = pos
        return counted[1]

    pos = skip(0)
    if pos >= n or text[pos] != "[":
        got = "an empty file" if pos >= n else repr(text[pos])
        raise InputError(f"{path}:{line_of(pos)}: expected a JSON list of facts, got {got}")
    pos = skip(pos + 1)
    index = 0
    if pos < n and text[pos] == "]":
        return
    while True:
        where = f"{path}:{line_of(pos)}: item {index}"
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise InputError(
                f"{path}:{err.lineno}: expected a JSON value (item {index}), got "
                f"invalid JSON ({err.msg} at column {err.colno})"
            ) from None
        yield where, item
        index += 1
        pos = skip(pos)
        if pos < n and text[pos] == ",":
            pos = skip(pos + 1)
            continue
        if pos < n and text[pos] == "]":
            break
        got = "end of file" if pos >= n else repr(text[pos])
        raise InputError(f"{path}:{line_of(pos)}: expected ',' or ']' after item {index - 1}, got {got}")
    if skip(pos + 1) < n:
        raise InputError(f"{path}:{line_of(skip(pos + 1))}: expected end of file after the list")


def read_best_format(path: str | os.PathLike, source: str) -> Iterator[Fact]:
    """The paper's `*_best_format.json` lists: objects with head, rel, tail (and more)."""
    path = Path(path)
    for where, item in _json_list_items(path):
        yield _best_format_fact(item, where, source)


def read_wordnet_list(path: str | os.PathLike, source: str) -> Iterator[Fact]:
    """The paper's WordNet `*_best_format.json` lists: hypernym edges between synset names."""
    path = Path(path)
    for where, item in _json_list_items(path):
        yield _wordnet_edge_fact(item, where, source)


def read_wordnet_database(folder: str | os.PathLike, source: str = WORDNET_SOURCE) -> Iterator[Fact]:
    """Every noun hypernym edge of a WordNet 3.0 database folder (data.noun, index.noun)."""
    db = read_noun_database(folder)
    where = str(Path(folder) / "data.noun")
    for head, tail in db.hypernym_edges():
        yield Fact(head, "Hypernym", tail, None, source, where)


def read_facts_table(path: str | os.PathLike, source: str = "builtin") -> Iterator[Fact]:
    """The in-repo facts table: TSV with a header uuid, head, rel, tail[, lists].

    `lists` names the paper's fact lists a fact belongs to (e.g. `targetkg/fruit`); each adds the
    source tag `know_subnet/<list>`, so the paper's neighbourhood targets work with no mirror.
    """
    path = Path(path)
    with open_text(path, "facts file") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = next(reader, None)
            expected = list(FACTS_TABLE_COLUMNS)
            if header not in (expected, expected[:4]):
                raise InputError(
                    f"{path}:1: expected the header {'<TAB>'.join(expected)} (lists optional), got {header!r}"
                )
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if not row or row == [""]:
                    continue
                if len(row) != len(header):
                    raise InputError(
                        f"{where}: expected {len(header)} tab-separated fields ({', '.join(header)}), got {len(row)}"
                    )
                record = dict(zip(header, row))
                what = "a facts-table row"
                uuid = _get_str(record, "uuid", where, what)
                head = _get_str(record, "head", where, what)
                rel = _get_str(record, "rel", where, what)
                tail = _get_str(record, "tail", where, what)
                lists = [x.strip() for x in record.get("lists", "").split(";") if x.strip()]
                tags = [source] + [f"know_subnet/{name}" for name in lists]
                yield _make_fact(head, rel, tail, uuid, ";".join(tags), where)
        except UnicodeDecodeError:
            raise InputError(f"{path}:{reader.line_num + 1}: expected UTF-8 text") from None
        except csv.Error as err:
            raise InputError(f"{path}:{reader.line_num}: expected tab-separated fields ({err})") from None


# -- the triplets table -------------------------------------------------------------------------


def merge_facts(facts: Iterable[Fact]) -> pd.DataFrame:
    """One row per distinct (head, rel, tail); sources merged with ';'; LAMA uuid preferred; the
    CSQA question ids of the paper's CSQA-linked files kept in `csqa_ids` (';'-joined)."""
    merged: dict[tuple[str, str, str], tuple[set[str], set[str]]] = {}
    question_ids: dict[tuple[str, str, str], set[str]] = {}
    for fact in facts:
        key = (fact.head, fact.rel, fact.tail)
        sources, uuids = merged.setdefault(key, (set(), set()))
        sources.update(tag for tag in fact.source.split(";") if tag)
        if fact.uuid:
            uuids.add(fact.uuid)
        ids = question_ids.setdefault(key, set())
        if fact.ref and fact.source.startswith(CSQA_SOURCE_PREFIX):
            ids.add(fact.ref.strip())
    rows = []
    for (head, rel, tail), (sources, uuids) in merged.items():
        fallback = stable_uuid(head, rel, tail)
        real = sorted(u for u in uuids if u != fallback)
        if len(real) > 1:
            log.warning("fact (%s, %s, %s) has %d LAMA uuids; keeping %s", head, rel, tail, len(real), real[0])
        rows.append(
            (
                real[0] if real else fallback,
                head,
                rel,
                tail,
                ";".join(sorted(sources, key=_source_order)),
                ";".join(sorted(question_ids[(head, rel, tail)])),
            )
        )
    frame = pd.DataFrame(rows, columns=TABLE_COLUMNS, dtype=str)
    return frame.sort_values(SORT_KEYS, kind="stable").reset_index(drop=True)


def _source_order(tag: str) -> tuple[int, str]:
    # builtin first, then the paper's files, then lama: a stable, readable order.
    rank = 0 if tag == "builtin" else 2 if tag == "lama" else 1
    return rank, tag


def resolve_sources(sources: Iterable[str]) -> tuple[bool, list[str], bool]:
    """Split `triplets.sources` into (builtin?, know_subnet tags, lama?).

    Entries: `builtin`, `lama`, `know_subnet` (all of the paper's files), or any source tag or tag
    prefix of them (`know_subnet/controlkg_train`, `know_subnet/csqa`).
    """
    sources = list(sources)
    if not sources:
        raise InputError("params key 'triplets.sources': expected at least one source, got none")
    builtin = lama = False
    tags: list[str] = []
    for entry in sources:
        if not isinstance(entry, str):
            raise InputError(f"params key 'triplets.sources': expected source names, got {entry!r}")
        name = entry.strip().rstrip("/")
        if name == "builtin":
            builtin = True
        elif name == "lama":
            lama = True
        else:
            matched = [
                t for t in {**KNOW_SUBNET_FILES, **KNOW_SUBNET_WORDNET_FILES} if t == name or t.startswith(name + "/")
            ]
            if not matched:
                raise InputError(
                    f"params key 'triplets.sources': unknown source {entry!r}; expected builtin, "
                    f"lama, wordnet, know_subnet or one of: "
                    f"{', '.join([*KNOW_SUBNET_FILES, *KNOW_SUBNET_WORDNET_FILES])}"
                )
            tags.extend(t for t in matched if t not in tags)
    return builtin, tags, lama


def find_lama_file(raw_dir: str | os.PathLike, lama_path: str | os.PathLike | None) -> Path:
    """The LAMA file to read: fetch_data's checksummed copy in raw_dir, else `lama_path`."""
    for suffix in (".jsonl", ".parquet"):
        copy = Path(raw_dir) / f"{LAMA_RAW_STEM}{suffix}"
        if copy.is_file():
            return copy
    if lama_path is None:
        raise InputError(
            "params key 'triplets.lama_path': the source 'lama' needs a LAMA "
            "ConceptNet file (jsonl or parquet), got null"
        )
    path = Path(lama_path)
    if not path.is_file():
        raise InputError(f"params key 'triplets.lama_path': no such file {path}")
    return path


def read_source_files(
    raw_dir: str | os.PathLike,
    sources: Iterable[str],
    lama_path: str | os.PathLike | None = None,
    facts_table: str | os.PathLike = DEFAULT_FACTS_TABLE,
) -> Iterator[Fact]:
    """Every fact of the selected sources, unmerged, in a fixed order."""
    sources = list(sources)
    wordnet = any(isinstance(s, str) and s.strip() == WORDNET_SOURCE for s in sources)
    others = [s for s in sources if not (isinstance(s, str) and s.strip() == WORDNET_SOURCE)]
    builtin, tags, lama = resolve_sources(others) if others or not wordnet else (False, [], False)
    raw_dir = Path(raw_dir)
    if builtin:
        if not Path(facts_table).is_file():
            raise InputError(f"{facts_table}: the in-repo facts table (source 'builtin') is missing")
        yield from read_facts_table(facts_table)
    for tag in tags:
        path = raw_dir / KNOW_SUBNET_DIR / {**KNOW_SUBNET_FILES, **KNOW_SUBNET_WORDNET_FILES}[tag]
        if not path.is_file():
            raise InputError(
                f"{path}: missing input for source {tag!r} (run fetch_data with "
                f"params key 'data.mirror' set, or drop the source from "
                f"'triplets.sources')"
            )
        if tag in KNOW_SUBNET_WORDNET_FILES:
            yield from read_wordnet_list(path, tag)
        else:
            yield from (read_lama_jsonl(path, tag) if path.suffix == ".jsonl" else read_best_format(path, tag))
    if wordnet:
        yield from read_wordnet_database(raw_dir / WORDNET_RAW_DIR)
    if lama:
        yield from read_lama(find_lama_file(raw_dir, lama_path), "lama")


def build_triplets(
    raw_dir: str | os.PathLike,
    sources: Iterable[str],
    lama_path: str | os.PathLike | None = None,
    facts_table: str | os.PathLike = DEFAULT_FACTS_TABLE,
) -> pd.DataFrame:
    """The triplets table (uuid, head, rel, tail, source, csqa_ids) from the selected sources."""
    sources = list(sources)
    facts = list(read_source_files(raw_dir, sources, lama_path, facts_table))
    table = merge_facts(facts)
    if table.empty:
        raise InputError(f"params key 'triplets.sources': the sources {list(sources)} hold no facts")
    log.info(
        "%d facts read, %d distinct; per relation: %s",
        len(facts),
        len(table),
        table["rel"].value_counts().sort_index().to_dict(),
    )
    return table


def extract_triplets(
    params: Params, *, raw_dir: str | os.PathLike, facts_table: str | os.PathLike, out: str | os.PathLike
) -> pd.DataFrame:
    """The extract_triplets stage: the triplets table of params triplets.sources (and
    triplets.lama_path) written to the parquet file `out`; returns the table."""
    table = build_triplets(
        raw_dir, params.triplets.sources, lama_path=params.triplets.lama_path, facts_table=facts_table
    )
    write_parquet(out, table)
    return table
