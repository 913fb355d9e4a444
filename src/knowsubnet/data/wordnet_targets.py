"""WordNet targets: a synset's hypernym edges, from the paper's fixed lists or built from the noun
database (params `targets.<name>: {wordnet: <synset>, ...}`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from knowsubnet.core.errors import InputError
from knowsubnet.data.relations import WORDNET_RELATIONS
from knowsubnet.data.triplets import WORDNET_SOURCE, normalize_entity
from knowsubnet.data.wordnet import HypernymGraph, build_target

# {wordnet: <synset>, facts: <source tag>}: the paper's fixed list (know_subnet/wordnet/<synset>).
# {wordnet: <synset>[, depth: n][, ancestors: n][, max_facts: n][, seed: n]}: built from the noun
# database's hypernym edges (source `wordnet`): the edges inside the synset's hyponym subtree down
# to `depth` levels (default: all), plus those up to `ancestors` levels above it (default 0); a
# seeded sample of `max_facts` of them when there are more (knowsubnet.wordnet.build_target).

_WORDNET_BUILD_KEYS = {"depth", "ancestors", "max_facts", "seed"}


def is_wordnet_spec(spec: Any) -> bool:
    return isinstance(spec, Mapping) and "wordnet" in spec


def check_spec(key: str, spec: Mapping) -> None:
    extra = set(spec) - {"wordnet", "facts"} - _WORDNET_BUILD_KEYS
    if extra or ("facts" in spec and set(spec) & _WORDNET_BUILD_KEYS):
        raise InputError(
            f"params key '{key}': expected {{wordnet: <synset>, facts: <source tag>}} "
            f"or {{wordnet: <synset>[, depth, ancestors, max_facts, seed]}}; got keys "
            f"{sorted(map(str, spec))}"
        )
    name = spec["wordnet"]
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"params key '{key}.wordnet': expected a noun synset name such as building.n.01, got {name!r}")
    for field, low in (("depth", 1), ("ancestors", 0), ("max_facts", 1), ("seed", 0)):
        value = spec.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise InputError(f"params key '{key}.{field}': expected an integer >= {low}, got {value!r}")


def hypernym_graph(frame: pd.DataFrame, database_only: bool = False):
    """The WordNet hypernym graph of the triplets' Hypernym facts (only those read from the noun
    database with `database_only`)."""
    rows = frame[frame["rel"].isin(WORDNET_RELATIONS)]
    if database_only:
        rows = rows[rows["source"].str.split(";").map(lambda ts: WORDNET_SOURCE in ts)]
    return HypernymGraph(
        zip(rows["head"], rows["tail"]), "the triplets' WordNet facts" + (" (source wordnet)" if database_only else "")
    )


def select(frame: pd.DataFrame, key: str, spec: Mapping) -> pd.DataFrame:
    synset = normalize_entity(spec["wordnet"])
    hypernyms = frame[frame["rel"].isin(WORDNET_RELATIONS)]
    if "facts" in spec:
        tag = str(spec["facts"]).strip()
        mask = hypernyms["source"].str.split(";").map(lambda ts: tag in ts).to_numpy(dtype=bool)
        selected = hypernyms[mask]
        if selected.empty:
            raise InputError(
                f"params key '{key}.facts': no WordNet fact has the source tag "
                f"{tag!r} (add know_subnet to 'triplets.sources'; the paper's lists "
                f"are know_subnet/wordnet/<synset>)"
            )
        return selected.reset_index(drop=True)
    graph = hypernym_graph(frame, database_only=True)
    if not graph.nodes:
        raise InputError(
            f"params key '{key}': a WordNet target built from the noun database needs "
            f"the source 'wordnet' in 'triplets.sources' (or use facts: "
            f"know_subnet/wordnet/<synset> for the paper's lists)"
        )
    edges = build_target(
        graph,
        synset,
        depth=spec.get("depth"),
        ancestors=spec.get("ancestors", 0),
        max_facts=spec.get("max_facts"),
        seed=spec.get("seed", 0),
        key=f"{key}.wordnet",
    )
    pairs = pd.MultiIndex.from_tuples(edges)
    mask = pd.MultiIndex.from_arrays([hypernyms["head"], hypernyms["tail"]]).isin(pairs)
    return hypernyms[mask].reset_index(drop=True)
