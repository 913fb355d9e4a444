"""Tail scoring under a model, and the best template per fact (lowest tail perplexity).

`tail_nll` batches facts by length and scores them with `evaluation.tail_logits`, which runs the
model's body, gathers the hidden states at the positions that predict a tail token and applies
the output embedding there only, so memory stays small for large vocabularies.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

import pandas as pd
import torch
import torch.nn.functional as F

from knowsubnet.core.errors import InputError
from knowsubnet.core.progress import progress_bar
from knowsubnet.data.encoding import IGNORE, FactSet, encode_facts
from knowsubnet.evaluation.scoring import tail_logits

log = logging.getLogger(__name__)

Verbalizer = Callable[[str, str, str], list[tuple[int, str, str]]]  # (rel, head, tail) -> [(tid, prompt, tail_text)]

OUTPUT_COLUMNS = ["uuid", "head", "rel", "tail", "template_id", "prompt", "tail_text", "tail_ppl"]
# With other_heads > 0: the tail's perplexity with other heads in the fact's best template
# (geometric mean), and head_gain = baseline_ppl / tail_ppl: how much more likely the model finds
# the tail given THIS head. A fact is "known" relative to the model's own distribution when the
# head matters, not only when the tail is frequent (see factsets.known_mask).
BASELINE_COLUMNS = ["baseline_ppl", "head_gain"]


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def tail_nll(model, factset: FactSet, batch_size: int = 64, *, device: torch.device | str | None = None,
             return_predictions: bool = False, progress: bool | str = False):
    """Mean cross-entropy over each fact's tail tokens: FloatTensor [N] (float32, CPU).

    With `return_predictions=True` also returns the top-1 token ids, LongTensor [N, T] (CPU),
    at the tail-predicting positions (-100 elsewhere): a fact is top-1 correct when they all
    equal `factset.targets` there. Facts are batched by length; results come in factset order.
    """
    if batch_size < 1:
        raise InputError(f"batch size {batch_size}: expected a positive integer")
    device = torch.device(device) if device is not None else _model_device(model)
    n, width = factset.input_ids.shape
    nll = torch.zeros(n, dtype=torch.float32)
    preds = torch.full((n, width), IGNORE, dtype=torch.long) if return_predictions else None
    if n == 0:
        return (nll, preds) if return_predictions else nll
    lengths = factset.lengths
    order = torch.sort(lengths, stable=True).indices  # similar lengths together: less padding
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    desc = progress if isinstance(progress, str) else "tail NLL"
    for index in progress_bar(batches, desc=desc, disable=not progress, leave=False):
        t = int(lengths[index].max())
        ids = factset.input_ids[index, :t].to(device)
        tgt = factset.targets[index, :t].to(device)
        logits, row, gold = tail_logits(model, ids, tgt)  # row-major tail positions, as tgt[sel]
        sel = tgt != IGNORE
        ce = F.cross_entropy(logits, gold, reduction="none")
        per_fact = torch.zeros(len(index), device=device, dtype=torch.float32).index_add_(0, row, ce)
        per_fact = per_fact / sel.sum(dim=1).clamp_min(1)
        nll[index] = per_fact.cpu()
        if preds is not None:
            top = torch.full_like(tgt, IGNORE)
            top[sel] = logits.argmax(dim=-1)
            preds[index, :t] = top.cpu()
    return (nll, preds) if return_predictions else nll


def _default_verbalizer() -> Verbalizer:
    from knowsubnet.data import relations

    return relations.all_verbalizations


def candidate_sentences(triplets: pd.DataFrame, verbalizer: Verbalizer | None = None,
                        source: str = "triplets") -> pd.DataFrame:
    """One row per (fact, template): uuid, head, rel, tail, template_id, prompt, tail_text."""
    missing = {"uuid", "head", "rel", "tail"} - set(triplets.columns)
    if missing:
        raise InputError(f"{source}: missing columns {sorted(missing)}; expected uuid, head, rel, tail")
    verbalizer = verbalizer or _default_verbalizer()
    rows = []
    for fact in triplets[["uuid", "head", "rel", "tail"]].itertuples(index=False):
        try:
            options = verbalizer(fact.rel, fact.head, fact.tail)
        except InputError as err:
            raise InputError(f"{source}: fact {fact.uuid} ({fact.head} {fact.rel} {fact.tail}): {err}") from None
        for template_id, prompt, tail_text in options:
            rows.append((fact.uuid, fact.head, fact.rel, fact.tail, int(template_id), prompt, tail_text))
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS[:-1])


def score_candidates(model, tokenizer, candidates: pd.DataFrame, batch_size: int,
                     device: torch.device | str | None = None, *, max_length: int | None = None,
                     progress: bool | str = "scoring templates",
                     scored_positions: str = "all_tail_tokens") -> torch.Tensor:
    """Mean tail cross-entropy of each candidate sentence under the model: FloatTensor [len]
    (over the tail positions `scored_positions` names, see `encoding.encode_facts`)."""
    labels = [f"{u} (template {t})" for u, t in zip(candidates["uuid"], candidates["template_id"])]
    factset = encode_facts(tokenizer, candidates["prompt"].tolist(), candidates["tail_text"].tolist(), labels,
                           max_length=max_length, scored_positions=scored_positions)
    return tail_nll(model, factset, batch_size, device=device, progress=progress)


def pick_best(candidates: pd.DataFrame, nll: Iterable[float], order: Iterable[str] | None = None) -> pd.DataFrame:
    """Lowest tail NLL per uuid (ties -> lowest template_id), in `order` of uuids (default: first seen)."""
    frame = candidates.copy()
    frame["_nll"] = torch.as_tensor(list(nll) if not isinstance(nll, torch.Tensor) else nll,
                                    dtype=torch.float64).numpy()
    frame = frame.sort_values(["uuid", "_nll", "template_id"], kind="mergesort")
    best = frame.drop_duplicates("uuid", keep="first").set_index("uuid")
    uuids = list(dict.fromkeys(order if order is not None else candidates["uuid"]))
    best = best.loc[uuids].reset_index()
    best["tail_ppl"] = best["_nll"].map(lambda x: float(torch.exp(torch.tensor(x, dtype=torch.float64))))
    best["template_id"] = best["template_id"].astype("int64")
    return best[OUTPUT_COLUMNS]


def head_baseline(model, tokenizer, best: pd.DataFrame, other_heads: int, seed: int, batch_size: int,
                  device: torch.device | str | None = None, *, verbalizer: Verbalizer | None = None,
                  max_length: int | None = None, scored_positions: str = "all_tail_tokens") -> pd.DataFrame:
    """`best` with BASELINE_COLUMNS: the fact's tail scored in its best template with
    `other_heads` heads drawn (seeded) from the other facts of the set."""
    import numpy as np

    verbalizer = verbalizer or _default_verbalizer()
    heads = sorted(set(best["head"]))
    rng = np.random.default_rng(seed)
    rows = []
    for i, fact in enumerate(best.itertuples(index=False)):
        pool = [h for h in heads if h != fact.head]
        if not pool:
            raise InputError(f"verbalize.other_heads: the set has no head other than {fact.head!r} to compare with")
        for head in rng.choice(pool, size=min(other_heads, len(pool)), replace=False):
            options = {tid: (prompt, tail) for tid, prompt, tail in verbalizer(fact.rel, str(head), fact.tail)}
            prompt, tail_text = options[int(fact.template_id)]
            rows.append((i, prompt, tail_text))
    frame = pd.DataFrame(rows, columns=["fact", "prompt", "tail_text"])
    labels = [f"{best['uuid'].iloc[i]} (other head)" for i in frame["fact"]]
    factset = encode_facts(tokenizer, frame["prompt"].tolist(), frame["tail_text"].tolist(), labels,
                           max_length=max_length, scored_positions=scored_positions)
    nll = tail_nll(model, factset, batch_size, device=device, progress="scoring other heads").double()
    mean_nll = torch.zeros(len(best), dtype=torch.float64).index_add_(0, torch.as_tensor(frame["fact"].values), nll)
    mean_nll /= torch.bincount(torch.as_tensor(frame["fact"].values), minlength=len(best)).double()
    out = best.copy()
    out["baseline_ppl"] = mean_nll.exp().numpy()
    out["head_gain"] = out["baseline_ppl"] / out["tail_ppl"]
    return out


def best_templates(model, tokenizer, triplets_df: pd.DataFrame, batch_size: int,
                   device: torch.device | str | None = None, *, verbalizer: Verbalizer | None = None,
                   max_length: int | None = None, source: str = "triplets",
                   scored_positions: str = "all_tail_tokens") -> pd.DataFrame:
    """For each fact, the template with the lowest tail perplexity under the model.

    Returns one row per fact, in input order: uuid, head, rel, tail, template_id, prompt,
    tail_text, tail_ppl. `verbalizer(rel, head, tail) -> [(template_id, prompt, tail_text)]`
    defaults to `knowsubnet.relations.all_verbalizations`.
    """
    candidates = candidate_sentences(triplets_df, verbalizer, source=source)  # checks the columns
    duplicated = triplets_df["uuid"].duplicated()
    if duplicated.any():
        raise InputError(f"{source}: uuid {triplets_df.loc[duplicated, 'uuid'].iloc[0]} appears more than once; "
                         f"expected one row per fact")
    if candidates.empty:
        return pd.DataFrame(columns=OUTPUT_COLUMNS)
    log.info("scoring %d sentences (%d facts x their templates)", len(candidates), len(triplets_df))
    nll = score_candidates(model, tokenizer, candidates, batch_size, device, max_length=max_length,
                           scored_positions=scored_positions)
    return pick_best(candidates, nll, order=triplets_df["uuid"].tolist())
