"""Target selection and the TargetKG / ControlKG splits.

A target is a named selection of facts (params `targets.<name>`): a relation, a ConceptNet concept's
neighbourhood, or a WordNet synset's hypernym subtree. Its ControlKG is every fact of the same graph
(ConceptNet or WordNet) that shares no entity with the TargetKG, so that maintaining ControlKG never
asks the model to keep what it is asked to forget; or, with `split.controlkg: paper`, the paper's
fixed ControlKG files. Splits depend only on the set of facts and the seed, never on the
order rows arrive in: same inputs and seed, byte-identical files.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from knowsubnet.core.config import Params
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import atomic_path, write_json, write_parquet
from knowsubnet.data import heldout, user_facts, wordnet_targets
from knowsubnet.data.heldout import split_by_fractions
from knowsubnet.data.relations import RELATIONS, WORDNET_RELATIONS
from knowsubnet.data.triplets import COLUMNS, CSQA_IDS, SORT_KEYS, normalize_entity

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_NAMES = tuple(f"{kg}_{split}" for kg in ("targetkg", "controlkg") for split in SPLITS)
_SELECTOR_FORMS = ({"rel"}, {"concept"}, {"concept", "hops"}, {"concept", "facts"}, {"csqa"})
# `csqa: csqa1` / `csqa: csqa2`: the paper's CSQA-linked halves, by their source tag.
CSQA_HALVES = {"csqa1": "know_subnet/csqa/csqa1_targetkg", "csqa2": "know_subnet/csqa/csqa2_targetkg"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # as in config/params.schema.yaml
_RNG_TARGET, _RNG_CONTROL = 0, 1  # independent random streams derived from the one seed


def _canonical(triplets: pd.DataFrame) -> pd.DataFrame:
    """The facts in one fixed order, whatever order they came in."""
    missing = [c for c in COLUMNS if c not in triplets.columns]
    if missing:
        raise InputError(f"triplets table: expected columns {', '.join(COLUMNS)}, missing {', '.join(missing)}")
    columns = _columns(triplets)
    frame = triplets[columns].drop_duplicates()
    return frame.sort_values(SORT_KEYS + ["uuid", "source"] + columns[len(COLUMNS) :], kind="stable").reset_index(
        drop=True
    )


def _columns(frame: pd.DataFrame) -> list[str]:
    """COLUMNS, plus `csqa_ids` when the table has it (tables from before it existed lack it)."""
    return COLUMNS + [CSQA_IDS] if CSQA_IDS in frame.columns else list(COLUMNS)


def csqa_ids(frame: pd.DataFrame) -> set[str]:
    """Every CSQA question id the facts of `frame` are linked to (empty without the column)."""
    if CSQA_IDS not in frame.columns:
        return set()
    return {q for value in frame[CSQA_IDS].fillna("") for q in str(value).split(";") if q}


def _entities(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    return frame["head"].map(normalize_entity), frame["tail"].map(normalize_entity)


def _neighbourhood(frame: pd.DataFrame, concept: str, hops: int) -> pd.Series:
    """Mask of facts within `hops` hops of `concept` in the undirected head-tail graph: hops=1 is
    every fact touching the concept, hops=2 adds facts touching its neighbours, and so on."""
    heads, tails = _entities(frame)
    adjacent: dict[str, set[str]] = defaultdict(set)
    for h, t in zip(heads, tails):
        adjacent[h].add(t)
        adjacent[t].add(h)
    reached, frontier = {concept}, {concept}
    for _ in range(hops - 1):
        frontier = {n for e in frontier for n in adjacent[e]} - reached
        reached |= frontier
    return heads.isin(reached) | tails.isin(reached)


def select_target(triplets: pd.DataFrame, name: str, spec: Any) -> pd.DataFrame:
    """The TargetKG facts the spec `targets.<name>` selects (before any cap).

    Forms: {rel: X}; {concept: w, hops: n} (n defaults to 1); {concept: w, facts: <source tag>}
    (the fact list with that tag; `concept` then only names the neighbourhood).
    """
    key = f"targets.{name}"
    _check_spec(key, spec)
    return _select(_canonical(triplets), key, spec)


def _check_spec(key: str, spec: Any) -> None:
    if isinstance(spec, Mapping) and "wordnet" in spec:
        wordnet_targets.check_spec(key, spec)
        return
    if user_facts.is_user_target(spec):
        extra = set(spec) - {"facts", "templates", "controls"}
        if extra:
            raise InputError(
                f"params key '{key}': a fact-file target takes facts, templates and controls; got {sorted(extra)}"
            )
        return
    if not isinstance(spec, Mapping):
        raise InputError(
            f"params key '{key}': expected a mapping such as {{rel: IsA}} or {{concept: fruit, hops: 1}}, got {spec!r}"
        )
    if set(spec) not in _SELECTOR_FORMS:
        raise InputError(
            f"params key '{key}': expected exactly one selector - {{rel: X}}, "
            f"{{concept: w, hops: n}}, {{concept: w, facts: <source tag>}} or "
            f"{{csqa: csqa1 | csqa2 | [question ids]}} or {{facts: <your fact file>}}; "
            f"got keys {sorted(map(str, spec))}"
        )


def _select(frame: pd.DataFrame, key: str, spec: Mapping) -> pd.DataFrame:
    """select_target on an already canonical frame, after the spec's form was checked."""
    if "wordnet" in spec:
        return wordnet_targets.select(frame, key, spec)
    if user_facts.is_user_target(spec):  # make_splits added the file's facts under this tag
        mask, what = frame["source"] == user_facts.USER_SOURCE, f"{spec['facts']} has no facts"
    elif "rel" in spec:
        rel = spec["rel"]
        if rel not in RELATIONS:
            raise InputError(
                f"params key '{key}.rel': unknown relation {rel!r}; expected one of: {', '.join(RELATIONS)}"
            )
        mask, what = frame["rel"] == rel, f"no fact has relation {rel}"
    elif "csqa" in spec:
        mask, what = _select_csqa(frame, key, spec["csqa"])
    else:
        concept = spec["concept"]
        if not isinstance(concept, str) or not concept.strip():
            raise InputError(f"params key '{key}.concept': expected a word, got {concept!r}")
        concept = normalize_entity(concept)
        if "facts" in spec:
            tag = spec["facts"]
            if not isinstance(tag, str) or not tag.strip():
                raise InputError(f"params key '{key}.facts': expected a source tag, got {tag!r}")
            tag = tag.strip()
            tags = frame["source"].str.split(";")
            mask = tags.map(lambda ts: tag in ts)
            known = sorted({t for ts in tags for t in ts})
            what = f"no fact has the source tag {tag!r} (tags in the triplets: {', '.join(known)})"
        else:
            hops = spec.get("hops", 1)
            if isinstance(hops, bool) or not isinstance(hops, int) or hops < 1:
                raise InputError(f"params key '{key}.hops': expected an integer >= 1, got {hops!r}")
            mask = _neighbourhood(frame, concept, hops)
            what = f"the concept {concept!r} is in no fact"
    selected = frame[mask.to_numpy(dtype=bool)].reset_index(drop=True)
    if selected.empty:
        raise InputError(f"params key '{key}': the target selects no facts ({what})")
    return selected


def wordnet_excluded(triplets: pd.DataFrame, targets: Mapping[str, Any]) -> set[str]:
    """Every synset in the hyponym subtree (whole, any depth) of any WordNet target: a WordNet
    ControlKG keeps none of them, so no target's knowledge is maintained while another's is
    suppressed."""
    specs = {name: spec for name, spec in targets.items() if wordnet_targets.is_wordnet_spec(spec)}
    if not specs:
        return set()
    graph = wordnet_targets.hypernym_graph(_canonical(triplets))
    out: set[str] = set()
    for name, spec in specs.items():
        synset = normalize_entity(str(spec["wordnet"]))
        if synset in graph.nodes:  # a missing synset is reported by its own target's selection
            out |= set(graph.subtree(synset, f"targets.{name}.wordnet"))
    return out


# -- the paper's fixed ControlKG (split.controlkg: paper) ----------------------------------------
# ConceptNet targets: controlkg_train_best_format.json (train), controlkg_val_best_format.json
# (val and test). WordNet targets: the first `split.paper_wordnet_controlkg` (the paper: 50) edges
# of wordnet/controlkg/controlkg_val_best_format.json for train, val and test (its train file is
# empty). CSQA-linked targets: the authors' CSQA ControlKG, csqa_controlkg_best_format_{train,val}.json
# (val and test). Taken as they are: the paper's ConceptNet ControlKG shares facts with its concept targets.
PAPER_CONTROLKG = {
    "conceptnet": {
        "train": "know_subnet/controlkg_train",
        "val": "know_subnet/controlkg_val",
        "test": "know_subnet/controlkg_val",
    },
    "csqa": {
        "train": "know_subnet/csqa/csqa_controlkg_train",
        "val": "know_subnet/csqa/csqa_controlkg_val",
        "test": "know_subnet/csqa/csqa_controlkg_val",
    },
    # WordNet train: edges of the noun database (`_wordnet_controlkg_train`), not this file
    "wordnet": {
        "train": "know_subnet/wordnet/controlkg_val",
        "val": "know_subnet/wordnet/controlkg_val",
        "test": "know_subnet/wordnet/controlkg_val",
    },
}
CONTROLKG_MODES = ("own", "paper")


def _paper_list(
    frame: pd.DataFrame, key: str, tag: str, order: Mapping[str, list[tuple[str, str, str]]] | None
) -> pd.DataFrame:
    """The facts of one paper ControlKG file, in the file's order when `order` gives it."""
    tagged = frame[frame["source"].str.split(";").map(lambda ts: tag in ts).to_numpy(dtype=bool)]
    if tagged.empty:
        raise InputError(
            f"params key 'split.controlkg' = paper: no fact has the source tag {tag!r}; "
            f"add know_subnet to 'triplets.sources' ({key})"
        )
    if order is None or tag not in order:
        return tagged
    index = {
        (h, r, t): i for i, (h, r, t) in enumerate(tagged[["head", "rel", "tail"]].itertuples(index=False, name=None))
    }
    rows = [index[fact] for fact in dict.fromkeys(order[tag]) if fact in index]
    return tagged.iloc[rows]


def paper_controlkg(
    frame: pd.DataFrame,
    key: str,
    kind: str,
    caps: Mapping[str, int | None],
    wordnet_size: int,
    order: Mapping[str, list[tuple[str, str, str]]] | None = None,
) -> dict[str, pd.DataFrame]:
    """The paper's ControlKG files of a target `kind` (a key of PAPER_CONTROLKG)."""
    out = {}
    for split, tag in PAPER_CONTROLKG[kind].items():
        part = _paper_list(frame, key, tag, order)
        cap = wordnet_size if kind == "wordnet" else caps.get(split)
        out[split] = part.iloc[:cap] if cap is not None else part
    return out


def _wordnet_controlkg_train(
    own: pd.DataFrame, held: pd.DataFrame, key: str, seed: int, cap: int | None
) -> pd.DataFrame:
    """ControlKG train of a WordNet target in paper mode. The authors' WordNet ControlKG train file
    is not released (only val), and training on the val edges would leave no held-out ControlKG:
    train on edges of the noun database instead (outside every WordNet target's subtree, sharing no
    entity with the TargetKG), none of them a val / test edge."""
    if own.empty:
        raise InputError(
            f"params key '{key}': the WordNet ControlKG train edges come from the noun "
            f"database with split.controlkg paper; add wordnet to 'triplets.sources'"
        )
    keys = set(zip(held["head"], held["rel"], held["tail"]))
    fresh = own[[k not in keys for k in zip(own["head"], own["rel"], own["tail"])]]
    fresh = _shuffled(fresh, seed, _RNG_CONTROL)
    return fresh.iloc[:cap] if cap is not None else fresh


def _select_csqa(frame: pd.DataFrame, key: str, value: Any) -> tuple[pd.Series, str]:
    """Facts linked to CSQA questions: a paper half (csqa1 / csqa2) or a list of question ids."""
    if isinstance(value, str) and value in CSQA_HALVES:
        tag = CSQA_HALVES[value]
        return (
            frame["source"].str.split(";").map(lambda ts: tag in ts),
            f"no fact has the source tag {tag!r}; add know_subnet/csqa to 'triplets.sources'",
        )
    if not isinstance(value, list) or not value or not all(isinstance(q, str) and q.strip() for q in value):
        raise InputError(
            f"params key '{key}.csqa': expected csqa1, csqa2 or a non-empty list of CSQA question ids, got {value!r}"
        )
    wanted = {q.strip() for q in value}
    linked = csqa_ids(frame)
    unknown = sorted(wanted - linked)
    if unknown:
        raise InputError(
            f"params key '{key}.csqa': question id {unknown[0]!r} is linked to no fact "
            f"of the triplets table ({len(unknown)} unknown of {len(wanted)}; "
            f"{len(linked)} linked question ids known)"
        )
    ids = frame[CSQA_IDS].fillna("").map(lambda v: bool(wanted.intersection(str(v).split(";"))))
    return ids, "no fact is linked to these questions"


# -- split parameters ---------------------------------------------------------------------------


def check_target_name(name: Any) -> str:
    """Target names become folder names: keep them plain."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise InputError(
            f"params key 'targets.{name}': a target name must be a plain file name "
            f"(letters, digits, _ . -), got {name!r}"
        )
    return name


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"params key 'split.seed': expected an integer >= 0, got {seed!r}")
    return seed


def _check_fractions(fractions: Any) -> dict[str, float]:
    key = "split.fractions"
    if not isinstance(fractions, Mapping) or set(fractions) != set(SPLITS):
        raise InputError(f"params key '{key}': expected a mapping with train, val, test, got {fractions!r}")
    for split, value in fractions.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise InputError(f"params key '{key}.{split}': expected a number >= 0, got {value!r}")
    total = float(sum(fractions.values()))
    if total <= 0 or fractions["train"] <= 0:
        raise InputError(f"params key '{key}': expected a positive train fraction, got {dict(fractions)!r}")
    return {split: float(fractions[split]) / total for split in SPLITS}


def _check_cap(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"params key '{key}': expected an integer >= 1 or null, got {value!r}")
    return value


def _check_control_caps(caps: Any) -> dict[str, int | None]:
    key = "split.max_controlkg"
    if caps is None or isinstance(caps, int) and not isinstance(caps, bool):
        cap = _check_cap(caps, key)
        return {split: cap for split in SPLITS}
    if not isinstance(caps, Mapping) or not set(caps) <= set(SPLITS):
        raise InputError(
            f"params key '{key}': expected an integer, null, or a mapping with train, val, test, got {caps!r}"
        )
    return {split: _check_cap(caps.get(split), f"{key}.{split}") for split in SPLITS}


def _shuffled(frame: pd.DataFrame, seed: int, stream: int) -> pd.DataFrame:
    order = np.random.default_rng([seed, stream]).permutation(len(frame))
    return frame.iloc[order]


def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(SORT_KEYS, kind="stable").reset_index(drop=True)[_columns(frame)]


def make_splits(
    triplets: pd.DataFrame,
    name: str,
    spec: Any,
    seed: int,
    fractions: Mapping[str, float],
    targetkg_holdout: bool,
    max_targetkg: int | None,
    max_controlkg: Any,
    *,
    controlkg: str,
    wordnet_exclude: set[str] | None = None,
    paper_wordnet_controlkg: int,
    paper_order: Mapping[str, list[tuple[str, str, str]]] | None = None,
    holdout: str,
    report: dict | None = None,
    _prepared: tuple[pd.DataFrame, tuple[pd.Series, pd.Series]] | None = None,
) -> dict[str, pd.DataFrame]:
    """TargetKG and ControlKG train/val/test for one target.

    The TargetKG is shuffled with the seed and capped at `max_targetkg` first; the ControlKG is
    then every fact with no head or tail among the TargetKG's entities (and, for a relation
    target, not of that relation), shuffled, split by `fractions` and capped per split. With
    `targetkg_holdout` false (the paper) the TargetKG is not split: train = val = test = all
    selected facts; true splits it as `holdout` says
    (`heldout.py`: entity-disjoint, or per fact). A `report` dict given is filled with how.

    ControlKG facts come from the target's own graph: WordNet (Hypernym) facts for a WordNet
    target, minus every edge touching `wordnet_exclude` (the subtrees of all WordNet targets);
    ConceptNet facts otherwise. `controlkg="paper"` takes the paper's fixed files instead
    (`paper_controlkg`; `paper_order` gives each file's facts in file order).
    """
    key = f"targets.{name}"
    check_target_name(name)
    seed = _check_seed(seed)
    fractions = _check_fractions(fractions)
    max_targetkg = _check_cap(max_targetkg, "split.max_targetkg")
    control_caps = _check_control_caps(max_controlkg)
    holdout = heldout.check_mode(holdout)
    if controlkg not in CONTROLKG_MODES:
        raise InputError(
            f"params key 'split.controlkg': expected one of {', '.join(CONTROLKG_MODES)}, got {controlkg!r}"
        )
    # _prepared: the canonical frame and its entities, computed once by splits_from_params (the
    # WordNet source makes the table ~80k facts; normalising it again per target dominated the stage)
    frame, (heads, tails) = _prepared if _prepared is not None else (None, (None, None))
    if frame is None:
        frame = _canonical(triplets)
        heads, tails = _entities(frame)

    _check_spec(key, spec)
    if user_facts.is_user_target(spec):
        frame, (heads, tails) = _with_user_facts(frame, key, spec, controlkg)
        controlkg = "own"  # its pool is the controls file or ConceptNet, split like any own ControlKG
    target = _shuffled(_select(frame, key, spec), seed, _RNG_TARGET)
    if max_targetkg is not None:
        target = target.iloc[:max_targetkg]
    t_heads, t_tails = _entities(target)
    excluded = set(t_heads) | set(t_tails)
    shared = heads.isin(excluded) | tails.isin(excluded)
    wordnet = wordnet_targets.is_wordnet_spec(spec)
    # The two graphs never mix: a WordNet TargetKG is controlled by WordNet edges, and ConceptNet
    # targets keep the ControlKG they had before WordNet facts existed.
    shared |= frame["rel"].isin(WORDNET_RELATIONS) != wordnet
    if wordnet and wordnet_exclude:
        shared |= heads.isin(wordnet_exclude) | tails.isin(wordnet_exclude)
    if "rel" in spec:
        # A relation-level removal should remove every fact of that relation: keeping some of
        # them in ControlKG would ask the remaining model for the very knowledge it must lose.
        shared |= frame["rel"] == spec["rel"]
    control = frame[~shared.to_numpy()]
    if control.empty and controlkg != "paper":
        raise InputError(
            f"params key '{key}': the ControlKG is empty: every fact shares a head "
            f"or tail with the {len(target)} TargetKG facts (lower "
            f"'split.max_targetkg' or add facts)"
        )
    if controlkg == "paper":
        kind = "wordnet" if wordnet else "csqa" if "csqa" in spec else "conceptnet"
        control_parts = paper_controlkg(frame, key, kind, control_caps, paper_wordnet_controlkg, paper_order)
        if wordnet:
            control_parts["train"] = _wordnet_controlkg_train(
                control, control_parts["val"], key, seed, control_caps["train"]
            )
        control_caps = {split: None for split in SPLITS}  # applied in file order above
    else:
        control_parts = split_by_fractions(_shuffled(control, seed, _RNG_CONTROL), fractions)

    if targetkg_holdout:
        target_parts, how = heldout.split_target(target, fractions, seed, holdout, heldout.shared_entities(spec))
    else:
        target_parts, how = {split: target for split in SPLITS}, {"mode": "none", "selected": len(target)}
    if report is not None:
        report.update(how)

    out: dict[str, pd.DataFrame] = {}
    for split in SPLITS:
        part = target_parts[split]
        if part.empty:
            raise InputError(
                f"params key '{key}': TargetKG {split} split is empty ({len(target)} "
                f"facts, split.fractions {fractions}, split.holdout {holdout}: "
                f"{how.get('dropped', 0)} dropped); set split.holdout fact, "
                f"split.targetkg_holdout false, or select more facts"
            )
        out[f"targetkg_{split}"] = _tidy(part)
    for split in SPLITS:
        part = control_parts[split]
        if control_caps[split] is not None:
            part = part.iloc[: control_caps[split]]
        if part.empty:
            raise InputError(
                f"params key '{key}': ControlKG {split} split is empty "
                f"({len(control)} ControlKG facts, split.fractions {fractions})"
            )
        out[f"controlkg_{split}"] = _tidy(part)
    log.info("target %s: %s", name, {k: len(v) for k, v in out.items()})
    return out


def _with_user_facts(
    frame: pd.DataFrame, key: str, spec: Mapping, controlkg: str
) -> tuple[pd.DataFrame, tuple[pd.Series, pd.Series]]:
    """The facts a fact-file target splits: its file's facts (source `user`) and its ControlKG pool,
    the `controls` file or else the ConceptNet facts of `frame`; with their entities."""
    if spec.get("controls"):
        pool = user_facts.read_fact_file(spec["controls"]).assign(source="controls")
    elif controlkg == "paper":
        raise InputError(
            f"params key '{key}': split.controlkg paper has no ControlKG for a fact-file target; "
            f"set split.controlkg own, or give {key}.controls"
        )
    else:
        pool = frame[~frame["rel"].isin(WORDNET_RELATIONS).to_numpy()]
    combined = _canonical(pd.concat([pool, user_facts.read_fact_file(spec["facts"])], ignore_index=True))
    if CSQA_IDS in combined.columns:
        combined[CSQA_IDS] = combined[CSQA_IDS].fillna("")
    return combined, _entities(combined)


def splits_from_params(
    triplets: pd.DataFrame,
    params: Params,
    names: list[str] | None = None,
    paper_order: Mapping[str, list[tuple[str, str, str]]] | None = None,
    reports: dict | None = None,
) -> dict[str, dict[str, pd.DataFrame]]:
    """Splits for every target in params `targets` (or the given names), with params `split`;
    `reports`, when given, gets each target's held-out report (make_splits)."""
    targets, split = params.targets, params.split
    frame = _canonical(triplets)
    prepared = (frame, _entities(frame))
    exclude = wordnet_excluded(frame, targets)
    out = {}
    for name in names if names is not None else list(targets):
        if name not in targets:
            raise InputError(f"params key 'targets': no target named {name!r}")
        out[name] = make_splits(
            triplets,
            name,
            targets[name],
            seed=split.seed,
            fractions=split.fractions,
            targetkg_holdout=split.targetkg_holdout,
            max_targetkg=split.max_targetkg,
            max_controlkg=split.max_controlkg,
            controlkg=split.controlkg,
            wordnet_exclude=exclude,
            paper_wordnet_controlkg=split.paper_wordnet_controlkg,
            paper_order=paper_order,
            holdout=split.holdout,
            report=reports.setdefault(name, {}) if reports is not None else None,
            _prepared=prepared,
        )
    return out


def write_splits(
    out_dir: str | os.PathLike,
    splits_by_target: Mapping[str, Mapping[str, pd.DataFrame]],
    provenance: dict | None = None,
    holdout: Mapping[str, dict] | None = None,
) -> dict:
    """Write {out}/{target}/{split}.parquet and {out}/summary.json, all or nothing; `holdout`: each
    target's held-out report (splits_from_params' `reports`), recorded in the summary."""
    counts: dict[str, dict[str, int]] = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for target, splits in splits_by_target.items():
            check_target_name(target)
            missing = [s for s in SPLIT_NAMES if s not in splits]
            if missing:
                raise ValueError(f"splits for {target} lack {', '.join(missing)}")
            for split in SPLIT_NAMES:
                write_parquet(tmp / target / f"{split}.parquet", splits[split][_columns(splits[split])])
            counts[target] = {split: int(len(splits[split])) for split in SPLIT_NAMES}
        summary: dict[str, Any] = {"counts": counts}
        if holdout is not None:
            summary["holdout"] = dict(holdout)
        if provenance is not None:
            summary["provenance"] = provenance
        write_json(tmp / "summary.json", summary)
    return summary


def write_target_splits(
    out_dir: str | os.PathLike,
    target: str,
    splits: Mapping[str, pd.DataFrame],
    provenance: dict | None = None,
    holdout: dict | None = None,
) -> dict:
    """Write one target's {out}/{split}.parquet and {out}/summary.json, all or nothing; `holdout`:
    its held-out report (make_splits' `report`), recorded in the summary."""
    check_target_name(target)
    missing = [s for s in SPLIT_NAMES if s not in splits]
    if missing:
        raise ValueError(f"splits for {target} lack {', '.join(missing)}")
    summary: dict[str, Any] = {"target": target, "counts": {s: int(len(splits[s])) for s in SPLIT_NAMES}}
    if holdout is not None:
        summary["holdout"] = holdout
    if provenance is not None:
        summary["provenance"] = provenance
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for split in SPLIT_NAMES:
            write_parquet(tmp / f"{split}.parquet", splits[split][_columns(splits[split])])
        write_json(tmp / "summary.json", summary)
    return summary
