"""The sentences the robustness probes score (`evaluation.robustness`): which facts, in which
wording, with which tails. Pure table work: no model here, so every choice is seeded and testable.

One row per sentence: `probe` (what it measures), `uuid` (the fact it belongs to), `rel`,
`template_id` (`data.relations.verbalize`; ids past a relation's TEMPLATES are its PARAPHRASES),
`is_true` (False for a candidate with a wrong tail or a fact with a foreign head), `prompt`,
`tail_text`. Probes:

- targetkg_train / targetkg_test / controlkg_test: the known facts of a split in their best
  template (in-sample, held-out when `split.targetkg_holdout`, and the control);
- wording:<facts>:<wordings>: facts in a set of wordings, to tell surface form from knowledge:
  train (the facts that trained the mask) or test facts, controlkg test facts, in the held-out
  wordings (`relations.heldout_wording_ids`: no stage before this one scores them) or the trained
  ones (every template a TargetKG train fact was trained in, `trained_wordings`);
- other_head:<probe>: each sentence of a wording probe with other heads (`other_heads`), scored
  under the original only: whether the original knows the fact in that wording (`known`, as
  verbalize's head gain, per wording);
- in_context:<k>: test facts in their best template preceded by k true facts of the same relation
  that share no head or tail with them, in the same wording;
- choice_targetkg / choice_controlkg: test facts in their best template with the true tail and
  `candidates - 1` other tails of the relation that the facts table does not pair with that head;
- foreign_heads: TargetKG test facts in their best template with the head of a ControlKG fact;
- same_head: facts about a TargetKG head that are not TargetKG facts (a relation target: in other
  relations), in every template of their relation (the best one is picked under the original model);
- other:<target>: another run target's known TargetKG test facts in their best template.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from knowsubnet.data import relations

COLUMNS = ["probe", "uuid", "rel", "template_id", "is_true", "prompt", "tail_text"]
# separate random streams per probe, so that changing one probe's size leaves the others' draws alone
_STREAMS = {"sample": 1, "choice": 2, "foreign": 3, "same_head": 4, "halves": 5, "other_head": 6, "context": 7}


def rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), _STREAMS[stream]])


def sample(facts: pd.DataFrame, n: int, seed: int, stream: str = "sample") -> pd.DataFrame:
    """At most n rows, a seeded sample in the frame's order (all of them when there are fewer)."""
    if len(facts) <= n:
        return facts
    keep = np.sort(rng(seed, stream).choice(len(facts), size=n, replace=False))
    return facts.iloc[keep]


def _rows(
    probe: str,
    facts: pd.DataFrame,
    template_ids: Iterable[int] | None = None,
    heads: Iterable[str] | None = None,
    tails: Iterable[str] | None = None,
    is_true: Iterable[bool] | None = None,
) -> pd.DataFrame:
    """Sentences for `facts` (uuid, head, rel, tail, template_id), with the template, head or tail
    replaced where given (one value per fact row)."""
    n = len(facts)
    template_ids = list(facts["template_id"] if template_ids is None else template_ids)
    heads = list(facts["head"] if heads is None else heads)
    tails = list(facts["tail"] if tails is None else tails)
    is_true = [True] * n if is_true is None else list(is_true)
    rows = []
    for (uuid, rel), tid, head, tail, true in zip(
        facts[["uuid", "rel"]].itertuples(index=False, name=None), template_ids, heads, tails, is_true
    ):
        prompt, tail_text = relations.verbalize(rel, int(tid), head, tail)
        rows.append((probe, uuid, rel, int(tid), bool(true), prompt, tail_text))
    return _frame(rows)


def _frame(rows: list[tuple]) -> pd.DataFrame:
    # Typed even when empty: an empty probe must not turn `is_true` into objects when the probes
    # are concatenated (`~is_true` would then be -1 / -2, not a mask).
    return pd.DataFrame(rows, columns=COLUMNS).astype({"template_id": "int64", "is_true": bool})


def best_template(probe: str, facts: pd.DataFrame) -> pd.DataFrame:
    """The facts as their verbalised rows read (prompt and tail of their best template)."""
    out = facts[["uuid", "rel", "template_id", "prompt", "tail_text"]].copy()
    out.insert(0, "probe", probe)
    out.insert(4, "is_true", True)
    return out[COLUMNS].reset_index(drop=True)


def _in_templates(probe: str, facts: pd.DataFrame, template_ids) -> pd.DataFrame:
    """Each fact in each template `template_ids(fact)` gives."""
    expanded = [(fact, tid) for fact in facts.itertuples(index=False) for tid in template_ids(fact)]
    frame = pd.DataFrame([f for f, _ in expanded], columns=facts.columns)
    return _rows(probe, frame, template_ids=[t for _, t in expanded])


def in_wordings(probe: str, facts: pd.DataFrame, wordings: dict[str, list[int]]) -> pd.DataFrame:
    """Each fact in each wording `wordings[relation]` lists (none for a relation it lacks)."""
    return _in_templates(probe, facts, lambda fact: wordings.get(fact.rel, []))


def heldout_wordings(relations_: list[str]) -> dict[str, list[int]]:
    return {rel: list(relations.heldout_wording_ids(rel)) for rel in relations_}


def validation_wordings(relations_: list[str]) -> dict[str, list[int]]:
    return {rel: list(relations.validation_wording_ids(rel)) for rel in relations_}


def trained_wordings(train: pd.DataFrame, templates: str) -> dict[str, list[int]]:
    """Per relation, every wording a TargetKG train sentence of the mask was written in: the train
    facts' best templates (`train.targetkg_templates: best`) or all the relation's templates (all)."""
    if templates == "all":
        return {rel: list(range(len(relations.TEMPLATES[rel]))) for rel in sorted(set(train["rel"]))}
    return {rel: sorted(int(t) for t in set(group)) for rel, group in train.groupby("rel")["template_id"]}


def other_heads(probe: str, facts: pd.DataFrame, wordings: dict[str, list[int]], n: int, seed: int) -> pd.DataFrame:
    """What `in_wordings(probe, facts, wordings)` writes, with `n` heads of other facts of the set
    (same relation) in place of each fact's own, probe `other_head:<probe>`: the original's tail NLL
    there is the baseline of the per-wording `known` test (verbalize's head gain, per wording)."""
    generator = rng(seed, "other_head")
    rows = []
    for rel, group in facts.groupby("rel", sort=True):
        heads = sorted(set(group["head"]))
        for fact in group.itertuples(index=False):
            pool = [h for h in heads if h != fact.head]
            for tid in wordings.get(rel, []):
                for head in generator.choice(pool, size=min(n, len(pool)), replace=False) if pool else []:
                    rows.append(
                        (
                            f"other_head:{probe}",
                            fact.uuid,
                            rel,
                            int(tid),
                            False,
                            *relations.verbalize(rel, int(tid), str(head), fact.tail),
                        )
                    )
    return _frame(rows)


def in_context(probe: str, facts: pd.DataFrame, pool: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """Each fact in its best template preceded by k true facts of its relation from `pool` that
    share no head or tail with it, written in the same template ("A is B. C is D. E is"): knowledge
    that is hidden rather than removed may come back when the context primes the relation."""
    generator = rng(seed, "context")
    rows = []
    for fact in facts.itertuples(index=False):
        same = pool[
            (pool["rel"] == fact.rel)
            & ~pool["head"].isin([fact.head, fact.tail])
            & ~pool["tail"].isin([fact.head, fact.tail])
        ]
        drawn = (
            same.iloc[np.sort(generator.choice(len(same), size=min(k, len(same)), replace=False))]
            if k
            else same.iloc[:0]
        )
        context = [
            ("".join(relations.verbalize(fact.rel, int(fact.template_id), c.head, c.tail)) + ".")
            for c in drawn.itertuples(index=False)
        ]
        prompt, tail_text = relations.verbalize(fact.rel, int(fact.template_id), fact.head, fact.tail)
        rows.append((probe, fact.uuid, fact.rel, int(fact.template_id), True, " ".join(context + [prompt]), tail_text))
    return _frame(rows)


def true_tails(triplets: pd.DataFrame) -> dict[tuple[str, str], set[str]]:
    """(head, rel) -> every tail the facts table gives it."""
    out: dict[tuple[str, str], set[str]] = {}
    for head, rel, tail in triplets[["head", "rel", "tail"]].itertuples(index=False, name=None):
        out.setdefault((head, rel), set()).add(tail)
    return out


def surface(rel: str, tail: str) -> str:
    """A tail as a sentence writes it (WordNet synset names become their first lemma)."""
    return relations.synset_lemma(tail) if rel in relations.WORDNET_RELATIONS else tail


def choices(probe: str, facts: pd.DataFrame, triplets: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """Each fact's true tail and up to k - 1 false ones: tails of the same relation that the facts
    table never pairs with the fact's head. The same draw serves every model variant."""
    known = true_tails(triplets)
    pools = {rel: sorted(set(group)) for rel, group in triplets.groupby("rel")["tail"]}
    generator = rng(seed, "choice")
    frames = []
    for fact in facts.itertuples(index=False):
        # compared as written: two WordNet synsets can share a word ("building")
        words = {surface(fact.rel, t) for t in known.get((fact.head, fact.rel), set()) | {fact.tail}}
        pool = list(
            {surface(fact.rel, t): t for t in pools.get(fact.rel, []) if surface(fact.rel, t) not in words}.values()
        )
        false = list(generator.choice(pool, size=min(k - 1, len(pool)), replace=False)) if pool else []
        one = pd.DataFrame([fact] * (1 + len(false)), columns=facts.columns)
        frames.append(_rows(probe, one, tails=[fact.tail, *false], is_true=[True] + [False] * len(false)))
    return pd.concat(frames, ignore_index=True) if frames else _frame([])


def foreign_heads(probe: str, facts: pd.DataFrame, heads: list[str], seed: int) -> pd.DataFrame:
    """Each fact in its best template with a head drawn from `heads` (not its own): if the
    removal broke the template rather than the facts, these sentences degrade alike."""
    generator = rng(seed, "foreign")
    drawn = []
    for head in facts["head"]:
        pool = [h for h in heads if h != head]
        drawn.append(str(generator.choice(pool)) if pool else head)
    return _rows(probe, facts, heads=drawn, is_true=[False] * len(facts))


def same_head_facts(
    triplets: pd.DataFrame, targetkg: pd.DataFrame, relation: str | None, n: int, seed: int
) -> pd.DataFrame:
    """Facts about the TargetKG's heads that are not TargetKG facts (for a relation target, facts in
    other relations), a seeded sample of at most n, with every template of their relation."""
    about = triplets[triplets["head"].isin(set(targetkg["head"])) & ~triplets["uuid"].isin(set(targetkg["uuid"]))]
    if relation is not None:
        about = about[about["rel"] != relation]
    about = sample(about.sort_values("uuid", kind="stable"), n, seed, "same_head")
    return _in_templates("same_head", about, lambda fact: range(len(relations.TEMPLATES[fact.rel])))


def halves(uuids: list[str], seed: int) -> tuple[list[str], list[str]]:
    """A seeded split of facts into two halves (relearn on one, score the other)."""
    order = rng(seed, "halves").permutation(len(uuids))
    cut = len(uuids) // 2
    return [uuids[i] for i in sorted(order[:cut])], [uuids[i] for i in sorted(order[cut:])]
