"""WordNet 3.0 noun hypernyms: a small reader of the `wndb(5)` noun files, and hyponym subtrees.

Why not NLTK's `WordNetCorpusReader`: on construction it reads `lexnames` and the index and
exception files of all four parts of speech (`index.{adj,adv,noun,verb}`, `{adj,adv,noun,verb}.exc`);
the data mirror (and anyone who keeps only the noun files) has `data.noun`, `index.noun` and
`noun.exc` only, and NLTK is not otherwise a dependency. The two noun files are simple enough to
read here, exactly as `wndb(5)` documents them:

`data.noun`, one synset per line (lines starting with two spaces are the licence header):

    synset_offset lex_filenum ss_type w_cnt [word lex_id]*w_cnt p_cnt [ptr]*p_cnt [frames] | gloss

with `w_cnt` two hexadecimal digits, `p_cnt` three decimal digits and each pointer
`pointer_symbol synset_offset pos source/target`. `@` is a hypernym pointer, `@i` an instance
hypernym (not followed: NLTK's `hypernyms()` / `hyponyms()` leave instances out too, and so did
the paper's lists).

`index.noun`, one lemma per line:

    lemma pos synset_cnt p_cnt [ptr_symbol]*p_cnt sense_cnt tagsense_cnt [synset_offset]*synset_cnt

Synset names. A synset is named as NLTK names it: its first word, lower-cased, `.n.`, and the
two-digit sense number of that word, i.e. the 1-based position of the synset's offset in the
word's `index.noun` line (the sense order: most frequent first). `building.n.01` is the synset at
the first offset of `building`. A fact's words are the name's lemma with `_` read as a space.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from knowsubnet.core.errors import InputError

log = logging.getLogger(__name__)

DATA_FILE = "data.noun"
INDEX_FILE = "index.noun"
HYPERNYM = "@"
_NAME = re.compile(r"^(?P<lemma>.+)\.n\.(?P<sense>\d{2,})$")


@dataclass(frozen=True)
class Synset:
    offset: int
    name: str  # building.n.01
    words: tuple[str, ...]  # the synset's lemmas as data.noun spells them (building, edifice)
    hypernyms: tuple[int, ...]  # offsets of its `@` pointers, in file order


def synset_lemma(name: str) -> str:
    """The words of a synset name, as a phrase: `living_thing.n.01` -> `living thing`."""
    match = _NAME.match(name.strip())
    lemma = match.group("lemma") if match else name.strip()
    return lemma.replace("_", " ")


def is_synset_name(text: str) -> bool:
    return bool(_NAME.match(text.strip()))


class HypernymGraph:
    """Noun synsets linked by hypernym edges (hyponym -> hypernym), by synset name.

    Built from the noun database (`NounDatabase.graph`) or from the Hypernym facts of the
    triplets table, so that split_controls selects subtrees without re-reading the database.
    """

    def __init__(self, edges, source: str):
        self.source = source
        self.hypernyms: dict[str, set[str]] = defaultdict(set)
        self.hyponyms: dict[str, set[str]] = defaultdict(set)
        for hyponym, hypernym in edges:
            self.hypernyms[hyponym].add(hypernym)
            self.hyponyms[hypernym].add(hyponym)
        self.nodes = set(self.hypernyms) | set(self.hyponyms)

    def check(self, name: str, key: str = "synset") -> str:
        """`name` normalised; InputError naming it (and the params key) if it is not a synset."""
        name = str(name).strip().lower()
        if name not in self.nodes:
            lemma = synset_lemma(name).replace(" ", "_")
            senses = sorted(n for n in self.nodes if n.rsplit(".n.", 1)[0] == lemma)
            hint = (
                f"; {lemma!r} has: {', '.join(senses[:12])}"
                if senses
                else "; expected a noun synset name such as building.n.01 (instance synsets "
                "such as paris.n.01 have no hypernym edges)"
            )
            raise InputError(f"params key '{key}': no WordNet noun synset {name!r} in {self.source}{hint}")
        return name

    def subtree(self, name: str, key: str = "synset", depth: int | None = None) -> dict[str, int]:
        """Synset -> depth (fewest hypernym steps below `name`) for `name` and every hyponym
        below it, at most `depth` levels down (None: the whole subtree)."""
        root = self.check(name, key)
        levels, queue = {root: 0}, deque([root])
        while queue:
            node = queue.popleft()
            if depth is not None and levels[node] >= depth:
                continue
            for child in sorted(self.hyponyms.get(node, ())):
                if child not in levels:
                    levels[child] = levels[node] + 1
                    queue.append(child)
        return levels

    def subtree_edges(self, name: str, key: str = "synset", depth: int | None = None) -> list[tuple[str, str]]:
        """The hypernym edges inside the synset's hyponym subtree: (hyponym, hypernym) pairs with
        both ends in the subtree (the root's own edges upward are outside), the hyponym at most
        `depth` levels below the synset."""
        inside = self.subtree(name, key, depth)
        return sorted((h, p) for h in inside for p in self.hypernyms.get(h, ()) if p in inside)

    def ancestor_edges(self, name: str, levels: int, key: str = "synset") -> list[tuple[str, str]]:
        """Every hypernym edge on the paths up to `levels` steps above the synset (the paper's
        lists carry such edges: building.n.01 -> structure.n.01 -> artifact.n.01)."""
        edges, frontier = set(), {self.check(name, key)}
        for _ in range(levels):
            step = {(node, parent) for node in frontier for parent in self.hypernyms.get(node, ())}
            edges |= step
            frontier = {parent for _, parent in step}
        return sorted(edges)


class NounDatabase:
    """The noun synsets of a WordNet database folder (`data.noun` + `index.noun`)."""

    def __init__(self, synsets: dict[int, Synset], source: str):
        self.synsets = synsets
        self.source = source
        self.by_name = {s.name: s.offset for s in synsets.values()}
        self.graph = HypernymGraph(self.hypernym_edges(), source)

    def __len__(self) -> int:
        return len(self.synsets)

    def hypernym_edges(self) -> list[tuple[str, str]]:
        """Every (hyponym, hypernym) `@` edge of the noun database, sorted."""
        return sorted((s.name, self.synsets[p].name) for s in self.synsets.values() for p in s.hypernyms)


def build_target(
    graph: HypernymGraph | NounDatabase,
    name: str,
    *,
    depth: int | None = None,
    ancestors: int = 0,
    max_facts: int | None = None,
    seed: int = 0,
    key: str = "synset",
) -> list[tuple[str, str]]:
    """A WordNet TargetKG, as sorted (hyponym, hypernym) pairs: the hypernym edges inside the
    synset's hyponym subtree down to `depth` levels, plus the edges up to `ancestors` levels
    above it; of that pool, a uniform sample of `max_facts` drawn with `seed` when it is larger.

    The paper's seven lists are samples of exactly this pool with depth 2 and ancestors 2
    (docs/PAPER.md gives the overlap per synset).
    """
    if isinstance(graph, NounDatabase):
        graph = graph.graph
    edges = sorted(set(graph.subtree_edges(name, key, depth)) | set(graph.ancestor_edges(name, ancestors, key)))
    if not edges:
        raise InputError(
            f"params key '{key}': the WordNet synset {name!r} has no hyponyms, so its "
            f"subtree holds no hypernym edge; pick a synset with hyponyms"
        )
    if max_facts is not None and len(edges) > max_facts:
        pick = np.random.default_rng(seed).choice(len(edges), size=max_facts, replace=False)
        edges = [edges[i] for i in sorted(pick)]
    return edges


# -- reading the files --------------------------------------------------------------------------


def _open(path: Path):
    try:
        return open(path, encoding="utf-8")
    except OSError as err:
        raise InputError(
            f"{path}: cannot read the WordNet noun file ({err.strerror}); expected "
            f"the WordNet 3.0 database folder (run fetch_data)"
        ) from None


def _read_data(path: Path) -> dict[int, tuple[tuple[str, ...], tuple[int, ...]]]:
    """offset -> (words, hypernym offsets) from data.noun."""
    out = {}
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith("  ") or not line.strip():
                continue  # licence header
            where = f"{path}:{lineno}"
            fields = line.split(" | ", 1)[0].split()
            try:
                offset = int(fields[0])
                if fields[2] != "n":
                    raise ValueError(f"ss_type {fields[2]!r}, expected n")
                w_cnt = int(fields[3], 16)
                words = tuple(fields[4 + 2 * i] for i in range(w_cnt))
                at = 4 + 2 * w_cnt
                p_cnt = int(fields[at])
                hypernyms = []
                for i in range(p_cnt):
                    symbol, target, pos = fields[at + 1 + 4 * i : at + 4 + 4 * i]
                    if symbol == HYPERNYM and pos == "n":
                        hypernyms.append(int(target))
            except (IndexError, ValueError) as err:
                raise InputError(
                    f"{where}: expected a wndb(5) data.noun line (offset lex_filenum "
                    f"n w_cnt words p_cnt pointers | gloss), got {line[:60]!r} "
                    f"({err})"
                ) from None
            out[offset] = (words, tuple(hypernyms))
    if not out:
        raise InputError(f"{path}: no synsets; expected the WordNet 3.0 data.noun file")
    return out


def _read_index(path: Path) -> dict[str, list[int]]:
    """lemma -> synset offsets in sense order, from index.noun."""
    out = {}
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith("  ") or not line.strip():
                continue
            fields = line.split()
            try:
                synset_cnt, p_cnt = int(fields[2]), int(fields[3])
                offsets = [int(x) for x in fields[6 + p_cnt : 6 + p_cnt + synset_cnt]]
                if len(offsets) != synset_cnt:
                    raise ValueError(f"{synset_cnt} offsets announced, {len(offsets)} found")
            except (IndexError, ValueError) as err:
                raise InputError(
                    f"{path}:{lineno}: expected a wndb(5) index.noun line (lemma n "
                    f"synset_cnt p_cnt ptrs sense_cnt tagsense_cnt offsets), got "
                    f"{line[:60]!r} ({err})"
                ) from None
            out[fields[0]] = offsets
    return out


def read_noun_database(folder: str | os.PathLike) -> NounDatabase:
    """Read `data.noun` and `index.noun` from a WordNet database folder (wndb(5) format)."""
    folder = Path(folder)
    data = _read_data(folder / DATA_FILE)
    index = _read_index(folder / INDEX_FILE)
    synsets = {}
    for offset, (words, hypernyms) in data.items():
        lemma = words[0].lower()
        # data.noun may mark adjective positions "(p)"; nouns have none, but be safe as NLTK is.
        lemma = re.sub(r"\([a-z]+\)$", "", lemma)
        senses = index.get(lemma)
        if not senses or offset not in senses:
            raise InputError(
                f"{folder / INDEX_FILE}: the lemma {lemma!r} of synset {offset:08d} "
                f"in {DATA_FILE} has no index entry for that synset; expected "
                f"matching WordNet 3.0 files"
            )
        name = f"{lemma}.n.{senses.index(offset) + 1:02d}"
        synsets[offset] = Synset(offset, name, words, tuple(p for p in hypernyms if p in data))
    log.info("WordNet nouns: %d synsets from %s", len(synsets), folder)
    return NounDatabase(synsets, str(folder))
