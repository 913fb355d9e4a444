"""Held-out TargetKG splits: which of one target's facts the mask trains on (train), is selected on
(val) and is tested on (test), with `split.targetkg_holdout: true`.

Two modes (params `split.holdout`):
- entity (the default): no val or test fact shares a head or a tail with a train fact, and val and
  test share none with each other. A held-out fact that shares an entity with training facts can
  look removed only because the mask learned to suppress that entity's tokens; with no entity
  shared, a held-out score measures spread to other knowledge. Only `shared` entities may be in
  every split: a concept target's concept and a WordNet target's root synset, which the target is
  about by design and which would otherwise join most of its facts into one group.
- fact: the facts, in their seeded order, cut by `split.fractions` (the earlier behaviour): val and
  test facts may share entities with train facts.

Entities are compared normalised (`triplets.normalize_entity`), as everywhere. The entity split
depends only on the set of facts, the fractions and the seed, never on the order rows arrive in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from knowsubnet.core.errors import InputError
from knowsubnet.data.triplets import SORT_KEYS, normalize_entity

HOLDOUT_MODES = ("entity", "fact")
SPLITS = ("train", "val", "test")
HELD_OUT = ("test", "val")  # the order a tie is broken in: test first
_RNG_HELDOUT = 2  # a random stream of its own, beside splits.py's TargetKG (0) and ControlKG (1)


def check_mode(mode: Any) -> str:
    if mode not in HOLDOUT_MODES:
        raise InputError(
            f"params key 'split.holdout': expected one of {', '.join(HOLDOUT_MODES)} "
            f"(entity: no val / test fact shares a head or tail with a train fact; "
            f"fact: cut per fact), got {mode!r}"
        )
    return mode


def shared_entities(spec: Mapping) -> set[str]:
    """Entities every split may hold: a concept target's concept, a WordNet target's root synset.
    Holding them out too would leave nothing to split (the concept joins its facts into one
    component), and every split of the target is about them by design."""
    if "concept" in spec:
        return {normalize_entity(str(spec["concept"]))}
    if "wordnet" in spec:
        return {normalize_entity(str(spec["wordnet"]))}
    return set()


def split_sizes(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Rounded sizes summing to n; a split with a positive fraction gets at least one fact when
    there are enough (small TargetKGs held out would otherwise lose their test split)."""
    end_train = math.floor(n * fractions["train"] + 0.5)
    end_val = math.floor(n * (fractions["train"] + fractions["val"]) + 0.5)
    sizes = {"train": end_train, "val": end_val - end_train, "test": n - end_val}
    for split in ("val", "test", "train"):
        if fractions[split] > 0 and sizes[split] == 0:
            donor = max(SPLITS, key=lambda s: sizes[s])
            if sizes[donor] > 1:
                sizes[donor] -= 1
                sizes[split] += 1
    return sizes


def split_by_fractions(frame: pd.DataFrame, fractions: Mapping[str, float]) -> dict[str, pd.DataFrame]:
    """Consecutive train/val/test slices of an already shuffled frame (the `fact` mode's cut)."""
    sizes = split_sizes(len(frame), fractions)
    end_train, end_val = sizes["train"], sizes["train"] + sizes["val"]
    return {"train": frame.iloc[:end_train], "val": frame.iloc[end_train:end_val], "test": frame.iloc[end_val:]}


def split_target(
    target: pd.DataFrame, fractions: Mapping[str, float], seed: int, mode: str, shared: set[str]
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """One target's TargetKG train / val / test and the report of how it was held out.

    `target`: the selected facts, shuffled with the seed and capped (the `fact` mode cuts them in
    that order). Report: mode, facts selected, the sizes asked for and kept per split, facts
    dropped, the shared entities and, per held-out split, the share of its facts that share an
    entity (outside `shared`) with train, measured on the result; in `entity` mode a share above
    0, or an entity in both val and test, is a bug and raises.
    """
    check_mode(mode)
    if mode == "fact":
        parts = split_by_fractions(target, fractions)
    else:
        parts = _entity_split(target, fractions, seed, shared)
    overlap = shares_with_train(parts, shared)
    if mode == "entity":
        crossing = (_entity_set(parts["val"]) & _entity_set(parts["test"])) - shared
        if any(overlap.values()) or crossing:
            raise RuntimeError(
                f"entity-disjoint split check failed: shares with train {overlap}, "
                f"val / test share {sorted(crossing)[:5]}"
            )
    kept = {split: int(len(parts[split])) for split in SPLITS}
    report = {
        "mode": mode,
        "selected": int(len(target)),
        "asked": split_sizes(len(target), fractions),
        "kept": kept,
        "dropped": int(len(target)) - sum(kept.values()),
        "shared": sorted(shared),
        "shares_entity_with_train": {split: round(share, 4) for split, share in overlap.items()},
    }
    return parts, report


def _entity_set(frame: pd.DataFrame) -> set[str]:
    return set(frame["head"].map(normalize_entity)) | set(frame["tail"].map(normalize_entity))


def shares_with_train(parts: Mapping[str, pd.DataFrame], shared: set[str]) -> dict[str, float]:
    """Per held-out split, the share of its facts whose head or tail (outside `shared`) is an
    entity of a train fact: computed from the splits alone, whatever built them."""
    train = _entity_set(parts["train"]) - shared
    out = {}
    for split in ("val", "test"):
        frame = parts[split]
        hits = [
            normalize_entity(h) in train or normalize_entity(t) in train for h, t in zip(frame["head"], frame["tail"])
        ]
        out[split] = sum(hits) / len(hits) if hits else 0.0
    return out


# -- the entity-disjoint split ------------------------------------------------------------------
# Each fact joins its head and tail (minus `shared`): an edge of an undirected entity graph. A split
# labels entities; a fact is kept in its entities' split when they agree, else dropped. Exact
# minimum-drop partitioning is NP-hard; this is a greedy over candidate groups of entities:
# 1. Every connected component is a candidate that drops nothing.
# 2. Components are peeled: the entity with the most facts left in its piece becomes a train
#    entity (its facts stay in train), which splits the piece into smaller pieces; repeated until no
#    entity joins two facts. Each piece is a candidate: moved to val / test it keeps its inner facts
#    and drops its facts to the peeled entities above it (frequent entities join most facts of an
#    uncapped relation: 880 of AtLocation's 1,121 facts are one component).
# 3. Candidates go to whichever of test / val has more room and fits them, best ratio of kept to
#    dropped facts first (components first, in seeded order among equals), skipping any that
#    overlaps a group already moved and any that drops more facts than it keeps. Room is each
#    split's share of the facts *kept*, so that drops never starve train.
#    Ranking every piece first matters: moving each piece as soon as its hub was peeled dropped
#    82 / 89 / 73 facts of the uncapped AtLocation / HasProperty / UsedFor (0.5 / 0.2 / 0.3); this
#    drops 59 / 56 / 45, with fuller val and test.
# Two groups never share an entity unless one contains the other (pieces of the same component
# are separated by peeled entities), and a piece's dropped facts end in peeled entities, which are
# in train whenever the piece moves: any set of non-overlapping groups is an entity-disjoint split.


def _place(size: int, links: int, counts: dict[str, int], kept: int, fractions: Mapping[str, float]) -> str | None:
    """The held-out split that takes a group of `size` facts (dropping `links`), or None."""
    sizes = split_sizes(kept - links, fractions)
    room = {split: sizes[split] - counts[split] for split in HELD_OUT}
    fits = [split for split in HELD_OUT if 0 < size <= room[split]]
    return max(fits, key=lambda split: room[split]) if fits else None


def _components(entities: set[str], facts: list[int], ends: list[tuple[str, ...]]) -> list[set[str]]:
    """Connected components of `entities` joined by `facts` (each fact's ends inside `entities`),
    in the order of their first entity."""
    parent = {e: e for e in entities}

    def find(e: str) -> str:
        while parent[e] != e:
            parent[e] = parent[parent[e]]
            e = parent[e]
        return e

    for i in facts:
        if len(ends[i]) == 2:
            a, b = find(ends[i][0]), find(ends[i][1])
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[str, set[str]] = {}
    for e in sorted(entities):
        groups.setdefault(find(e), set()).add(e)
    return list(groups.values())


def _groups(
    facts_of: dict[str, list[int]], ends: list[tuple[str, ...]], largest: int
) -> list[tuple[frozenset[str], list[int], list[int]]]:
    """Every candidate group (entities, facts kept if moved, facts dropped then) of at most
    `largest` kept facts: components and the pieces peeling leaves of them."""
    out = []
    stack = _components(set(facts_of), sorted({i for fs in facts_of.values() for i in fs}), ends)
    stack.reverse()
    while stack:
        piece = stack.pop()
        facts = sorted({i for e in piece for i in facts_of[e]})
        inner = [i for i in facts if all(x in piece for x in ends[i])]
        if len(inner) <= largest:
            out.append((frozenset(piece), inner, sorted(set(facts) - set(inner))))
        degree = {e: sum(all(x in piece for x in ends[i]) for i in facts_of[e]) for e in piece}
        hub = min(piece, key=lambda e: (-degree[e], e))
        if degree[hub] < 2:
            continue  # a single fact or a lone entity: nothing to peel
        rest = piece - {hub}
        pieces = _components(rest, [i for i in inner if hub not in ends[i]], ends)
        stack.extend(reversed(pieces))
    return out


def _entity_split(
    target: pd.DataFrame, fractions: Mapping[str, float], seed: int, shared: set[str]
) -> dict[str, pd.DataFrame]:
    frame = target.sort_values(
        SORT_KEYS + [c for c in target.columns if c not in SORT_KEYS], kind="stable"
    ).reset_index(drop=True)
    heads, tails = frame["head"].map(normalize_entity), frame["tail"].map(normalize_entity)
    ends = [tuple(sorted({h, t} - shared)) for h, t in zip(heads, tails)]
    facts_of: dict[str, list[int]] = {}
    for i, fact_ends in enumerate(ends):
        for e in fact_ends:
            facts_of.setdefault(e, []).append(i)
    largest = max(split_sizes(len(frame), fractions)[split] for split in HELD_OUT)
    groups = _groups(facts_of, ends, largest)
    # a fact with no entity outside `shared` is a group of its own, free to go anywhere
    groups += [(frozenset(), [i], []) for i, fact_ends in enumerate(ends) if not fact_ends]
    ties = np.random.default_rng([seed, _RNG_HELDOUT]).random(len(groups))
    order = sorted(
        range(len(groups)),
        key=lambda k: (-len(groups[k][1]) / len(groups[k][2]) if groups[k][2] else -math.inf, ties[k]),
    )
    where = ["train"] * len(frame)  # per fact: train, val, test or dropped
    counts, kept, moved = {"val": 0, "test": 0}, len(frame), set()
    for k in order:
        entities, held, links = groups[k]
        if len(held) < len(links) or not entities.isdisjoint(moved):
            continue
        split = _place(len(held), len(links), counts, kept, fractions)
        if split is None:
            continue
        moved |= entities
        for i in held:
            where[i] = split
        for i in links:
            where[i] = "dropped"
        counts[split] += len(held)
        kept -= len(links)
    labels = pd.Series(where)
    return {split: frame[(labels == split).to_numpy()] for split in SPLITS}
