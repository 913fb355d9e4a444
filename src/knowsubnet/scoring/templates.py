"""The best template per fact (lowest tail perplexity under the model), and how much the head
matters to the tail (`head_baseline`): what the verbalize stage writes (`verbalize_facts`).

Sentences come from `data.relations.candidate_sentences`; they are scored by `scoring.facts.score_facts`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from knowsubnet.core.config import Params
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import write_parquet
from knowsubnet.data.encoding import encode_facts
from knowsubnet.data.factsets import read_facts
from knowsubnet.data.relations import SENTENCE_COLUMNS, Verbalizer, all_verbalizations, candidate_sentences
from knowsubnet.models.prepare import context_length, load_model, pick_device
from knowsubnet.scoring.facts import score_facts

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = SENTENCE_COLUMNS + ["tail_ppl"]
# With other_heads > 0: the tail's perplexity with other heads in the fact's best template
# (geometric mean), and head_gain = baseline_ppl / tail_ppl: how much more likely the model finds
# the tail given THIS head. A fact is "known" relative to the model's own distribution when the
# head matters, not only when the tail is frequent (see factsets.known_mask).
BASELINE_COLUMNS = ["baseline_ppl", "head_gain"]


def score_candidates(
    model,
    tokenizer,
    candidates: pd.DataFrame,
    batch_size: int,
    device: torch.device | str | None = None,
    *,
    max_length: int | None = None,
    progress: bool | str = "scoring templates",
    scored_positions: str,
) -> torch.Tensor:
    """Mean tail cross-entropy of each candidate sentence under the model: float64 [len]
    (over the tail positions `scored_positions` names, see `encoding.encode_facts`)."""
    labels = [f"{u} (template {t})" for u, t in zip(candidates["uuid"], candidates["template_id"])]
    factset = encode_facts(
        tokenizer,
        candidates["prompt"].tolist(),
        candidates["tail_text"].tolist(),
        labels,
        max_length=max_length,
        scored_positions=scored_positions,
    )
    desc = progress if isinstance(progress, str) else "tail NLL"
    return score_facts(model, factset, batch_size, device, desc=desc, progress=bool(progress))["nll"]


def pick_best(candidates: pd.DataFrame, nll: Iterable[float], order: Iterable[str] | None = None) -> pd.DataFrame:
    """Lowest tail NLL per uuid (ties -> lowest template_id), in `order` of uuids (default: first seen)."""
    frame = candidates.copy()
    frame["_nll"] = torch.as_tensor(
        list(nll) if not isinstance(nll, torch.Tensor) else nll, dtype=torch.float64
    ).numpy()
    frame = frame.sort_values(["uuid", "_nll", "template_id"], kind="mergesort")
    best = frame.drop_duplicates("uuid", keep="first").set_index("uuid")
    uuids = list(dict.fromkeys(order if order is not None else candidates["uuid"]))
    best = best.loc[uuids].reset_index()
    best["tail_ppl"] = best["_nll"].map(lambda x: float(torch.exp(torch.tensor(x, dtype=torch.float64))))
    best["template_id"] = best["template_id"].astype("int64")
    return best[OUTPUT_COLUMNS]


def head_baseline(
    model,
    tokenizer,
    best: pd.DataFrame,
    other_heads: int,
    seed: int,
    batch_size: int,
    device: torch.device | str | None = None,
    *,
    verbalizer: Verbalizer | None = None,
    max_length: int | None = None,
    scored_positions: str,
) -> pd.DataFrame:
    """`best` with BASELINE_COLUMNS: the fact's tail scored in its best template with
    `other_heads` heads drawn (seeded) from the other facts of the set."""
    if best.empty:
        return best.assign(baseline_ppl=pd.Series(dtype="float64"), head_gain=pd.Series(dtype="float64"))
    verbalizer = verbalizer or all_verbalizations
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
    factset = encode_facts(
        tokenizer,
        frame["prompt"].tolist(),
        frame["tail_text"].tolist(),
        labels,
        max_length=max_length,
        scored_positions=scored_positions,
    )
    nll = score_facts(model, factset, batch_size, device, desc="scoring other heads")["nll"]
    mean_nll = torch.zeros(len(best), dtype=torch.float64).index_add_(0, torch.as_tensor(frame["fact"].values), nll)
    mean_nll /= torch.bincount(torch.as_tensor(frame["fact"].values), minlength=len(best)).double()
    out = best.copy()
    out["baseline_ppl"] = mean_nll.exp().numpy()
    out["head_gain"] = out["baseline_ppl"] / out["tail_ppl"]
    return out


def best_templates(
    model,
    tokenizer,
    triplets_df: pd.DataFrame,
    batch_size: int,
    device: torch.device | str | None = None,
    *,
    verbalizer: Verbalizer | None = None,
    max_length: int | None = None,
    source: str = "triplets",
    scored_positions: str,
) -> pd.DataFrame:
    """For each fact, the template with the lowest tail perplexity under the model.

    Returns one row per fact, in input order: uuid, head, rel, tail, template_id, prompt,
    tail_text, tail_ppl. `verbalizer(rel, head, tail) -> [(template_id, prompt, tail_text)]`
    defaults to `knowsubnet.relations.all_verbalizations`.
    """
    candidates = candidate_sentences(triplets_df, verbalizer, source=source)  # checks the columns
    duplicated = triplets_df["uuid"].duplicated()
    if duplicated.any():
        raise InputError(
            f"{source}: uuid {triplets_df.loc[duplicated, 'uuid'].iloc[0]} appears more than once; "
            f"expected one row per fact"
        )
    if candidates.empty:
        return pd.DataFrame(columns=OUTPUT_COLUMNS)
    log.info("scoring %d sentences (%d facts x their templates)", len(candidates), len(triplets_df))
    nll = score_candidates(
        model, tokenizer, candidates, batch_size, device, max_length=max_length, scored_positions=scored_positions
    )
    return pick_best(candidates, nll, order=triplets_df["uuid"].tolist())


def verbalize_facts(params: Params, *, model_dir: Path, facts: list[Path], out: Path) -> pd.DataFrame:
    """The verbalize stage: the best template of every fact in `facts` (parquet files or split
    folders, their union) under the model in `model_dir`, with the head baseline when params
    `verbalize.other_heads` asks for it, written to the parquet file `out`; returns the table."""
    settings = params.verbalize
    table = read_facts(list(facts))
    device = pick_device(settings.device, key="verbalize.device")
    model, tokenizer = load_model(model_dir, device)
    max_length, scored_positions = context_length(model), settings.scored_positions
    best = best_templates(
        model,
        tokenizer,
        table,
        settings.batch_size,
        device,
        max_length=max_length,
        source=str(facts[0]),
        scored_positions=scored_positions,
    )
    if settings.other_heads and len(best):
        best = head_baseline(
            model,
            tokenizer,
            best,
            settings.other_heads,
            settings.seed,
            settings.batch_size,
            device,
            max_length=max_length,
            scored_positions=scored_positions,
        )
    write_parquet(out, best)
    mean_nll = float(best["tail_ppl"].map(math.log).mean()) if len(best) else float("nan")
    log.info(
        "%d facts -> %s; tail PPL of the set %.3f; templates used %s",
        len(best),
        out,
        math.exp(mean_nll),
        best["template_id"].value_counts().sort_index().to_dict(),
    )
    return best
