"""Your facts, your templates: a fact file as a target, and a YAML of templates per relation.

A target `{facts: <file>, templates: <yaml>, controls: <file>}` (params `targets.<name>`; only
`facts` is required) reads its TargetKG from a CSV, JSONL or parquet file with the columns head,
relation (or rel) and tail. Its ControlKG is the `controls` file when given, else the repo's
ConceptNet facts; either way minus every fact that shares an entity with the TargetKG
(`data.splits.make_splits`). A relation is one of the repo's (`data.relations`, any case) or one
the templates file defines:

    CapitalOf:
      templates:               # what template choice and the mask's training read (at least 1)
        - "The capital of {h} is {o}"
        - "{S}'s capital city is {o}"
      heldout:                 # wordings only the robustness probes read (at least 1)
        - "The seat of government of {h} is {o}"
      validation:              # optional: wordings only the sweep's choice reads (evaluation.val_wordings)
        - "{h} is governed from {o}"

Templates use `data.relations`' syntax, the tail last. Bad rows stop with file:line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from knowsubnet.core.errors import InputError
from knowsubnet.data import relations
from knowsubnet.data.triplets import COLUMNS, normalize_entity, stable_uuid

FACT_FORMATS = (".csv", ".jsonl", ".parquet")
USER_SOURCE = "user"  # the source tag of a fact file's facts in a split
WORDING_KEYS = ("templates", "heldout", "validation")  # a templates file's lists per relation; validation optional


def is_user_target(spec: Any) -> bool:
    """A `{facts: <file>}` target: `facts` without `concept` or `wordnet` (whose `facts` is a
    source tag of the paper's lists)."""
    return isinstance(spec, Mapping) and "facts" in spec and not {"concept", "wordnet"} & set(spec)


def read_templates(path: str | Path) -> dict[str, tuple[list[str], list[str], list[str]]]:
    """{relation: (templates, heldout, validation)} from a templates YAML (module docstring), each
    checked; `validation` is empty when the file gives none."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(f"{path}: cannot read the templates file ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise InputError(f"{path}: expected a mapping of relation -> {{templates: [...], heldout: [...]}}")
    out = {}
    for rel, entry in data.items():
        where = f"{path}: key '{rel}'"
        if not isinstance(entry, dict) or not {"templates", "heldout"} <= set(entry) <= set(WORDING_KEYS):
            raise InputError(
                f"{where}: expected the keys templates and heldout, and optionally validation "
                "(each a list of templates)"
            )
        lists = {}
        for key in WORDING_KEYS:
            if key not in entry:
                lists[key] = []
                continue
            items = entry[key]
            if not isinstance(items, list) or not items:
                raise InputError(f"{where}.{key}: expected a list of at least one template")
            lists[key] = [relations.check_template(t, f"{where}.{key}[{i}]") for i, t in enumerate(items)]
        for first, second in (("templates", "heldout"), ("templates", "validation"), ("heldout", "validation")):
            if set(lists[first]) & set(lists[second]):
                raise InputError(f"{where}: a wording is in both {first} and {second}; they must differ")
        out[str(rel)] = (lists["templates"], lists["heldout"], lists["validation"])
    return out


def register_templates(targets: Mapping[str, Any]) -> None:
    """Add the relations of every target's templates file to `data.relations`, so that every stage
    verbalises them (each stage process calls this once, after loading its params)."""
    for spec in targets.values():
        if is_user_target(spec) and spec.get("templates"):
            path = spec["templates"]
            for rel, (templates, heldout, validation) in read_templates(path).items():
                relations.add_relation(rel, templates, heldout, f"{path}: key '{rel}'", validation)


def _rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) for every row of a fact file; `where` is file:line (file:row for parquet)."""
    suffix = path.suffix.lower()
    if suffix not in FACT_FORMATS:
        raise InputError(f"{path}: expected a fact file ending in {', '.join(FACT_FORMATS)}")
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
            return [(f"{path}: row {i + 1}", row) for i, row in enumerate(frame.to_dict("records"))]
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read the fact file ({err})") from None
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        return [(f"{path}:{reader.line_num}", row) for row in reader]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{number}: not a JSON object ({err.msg})") from None
        rows.append((f"{path}:{number}", row))
    return rows


def read_fact_file(path: str | Path) -> pd.DataFrame:
    """The facts of a fact file as triplet rows (uuid, head, rel, tail, source), one per distinct
    fact, sorted; a relation is canonicalised (isa -> IsA) and must have templates by now
    (`register_templates`). The first bad row stops with its file:line."""
    path = Path(path)
    facts = {}
    for where, row in _rows(path):
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected an object with head, relation and tail")
        rel_key = "relation" if "relation" in row else "rel"
        fields = {}
        for key in ("head", rel_key, "tail"):
            value = row.get(key)
            if not isinstance(value, str) or not value.strip():
                raise InputError(
                    f"{where}: column '{key}' is {'missing' if value is None else f'{value!r}'}; "
                    f"expected text (columns: head, relation, tail)"
                )
            fields[key] = " ".join(value.split())
        rel = relations.canonical_relation(fields[rel_key])
        if rel is None:
            raise InputError(
                f"{where}: relation {fields[rel_key]!r} has no templates: define it in the target's "
                f"templates file, or use one of {', '.join(relations.RELATIONS)}"
            )
        head, tail = fields["head"], fields["tail"]
        try:
            relations.verbalize(rel, 0, head, tail)
        except InputError as err:
            raise InputError(f"{where}: {err}") from None
        key = (normalize_entity(head), rel, normalize_entity(tail))
        facts.setdefault(key, (stable_uuid(*key), head, rel, tail, USER_SOURCE))
    if not facts:
        raise InputError(f"{path}: no facts (expected rows with head, relation, tail)")
    frame = pd.DataFrame(list(facts.values()), columns=COLUMNS)
    return frame.sort_values(["rel", "head", "tail"], kind="stable").reset_index(drop=True)
