"""Scores of a model on facts: tail-token NLL, rank and accuracy per fact, and their summary.

Every forward pass runs without gradients in eval mode. Verbalisation, discovery's validation, the
ablation and the robustness probes all score facts through `tail_logits` and
`fact_scores_from_logits`, so a number means the same thing everywhere.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from knowsubnet.core.errors import InputError
from knowsubnet.core.progress import progress_bar
from knowsubnet.data.encoding import IGNORE, row_lengths

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    # Dropout must be off for deterministic scores; restore the caller's mode afterwards.
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def ppl_from_nll(x: float) -> float:
    # exp of a mean CE; a wrecked model (e.g. "kept") can overflow, which is +inf, not an error.
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


# ----------------------------------------------------------------------------------------------
# per-fact scores


def hidden_states(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    # The final hidden state (after the last norm); the LM head is applied only where needed.
    return model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state


def tail_logits(
    model: nn.Module, input_ids: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict a tail token only.

    Returns (logits [P, V] float32, row index [P] of each position, gold token id [P]); positions
    are in row-major order, so each fact's first tail position comes first among its own.
    """
    where = targets != IGNORE
    # Causal LM: the columns after the last tail position cannot change earlier logits; skip them.
    last = int(where.any(dim=0).nonzero().max()) + 1 if where.any() else 0
    hidden = hidden_states(model, input_ids[:, :last])
    where = where[:, :last]
    rows = where.nonzero()[:, 0]
    logits = model.get_output_embeddings()(hidden[where]).float()
    return logits, rows, targets[:, :last][where]


def token_ranks(logits: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Rank of the gold token per row of logits: 1 + number of tokens with a strictly higher logit.

    Ties count in the gold token's favour (a tie for first place is rank 1).
    """
    gold_logit = logits.gather(1, gold[:, None])
    return 1 + (logits > gold_logit).sum(dim=1)


def fact_scores_from_logits(
    logits: torch.Tensor, rows: torch.Tensor, gold: torch.Tensor, n_facts: int
) -> dict[str, torch.Tensor]:
    """Per-fact nll / rank / correct from the tail-position logits of `n_facts` facts.

    nll: mean CE over the fact's tail tokens (float64); rank: rank of its FIRST tail token;
    correct: every tail token is top-1 under teacher forcing.
    """
    counts = torch.bincount(rows, minlength=n_facts)
    if bool((counts == 0).any()):
        raise ValueError(f"fact {int((counts == 0).nonzero()[0])} of the batch has no tail token")
    ce = torch.nn.functional.cross_entropy(logits, gold, reduction="none").double()
    nll = torch.zeros(n_facts, dtype=torch.float64, device=ce.device).index_add_(0, rows, ce) / counts
    ranks = token_ranks(logits, gold)
    first = torch.ones_like(rows, dtype=torch.bool)
    first[1:] = rows[1:] != rows[:-1]
    wrong = torch.zeros(n_facts, dtype=torch.long, device=rows.device).index_add_(0, rows, (ranks != 1).long())
    return {"nll": nll.cpu(), "rank": ranks[first].cpu(), "correct": (wrong == 0).cpu()}


@torch.no_grad()
def score_facts(
    model: nn.Module,
    factset,
    batch_size: int,
    device: str | torch.device | None = None,
    desc: str = "facts",
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Per-fact `nll` [N] float64 (mean CE over the tail tokens), `rank` [N] long (first tail token,
    1 = best) and `correct` [N] bool (every tail token top-1), on the CPU, in factset order.

    Facts run in batches of similar length (less padding); `device` defaults to the model's.
    """
    if batch_size < 1:
        raise InputError(f"{desc}: batch size {batch_size}: expected a positive integer")
    n = factset.input_ids.shape[0]
    if n == 0:
        raise InputError(f"{desc}: no facts to score")
    scored = factset.targets != IGNORE
    empty = scored.sum(dim=1) == 0
    if bool(empty.any()):
        raise InputError(f"{desc}: fact {factset.uuids[int(empty.nonzero()[0])]} has no tail token to score")
    device = torch.device(device) if device is not None else _model_device(model)
    # Sorted by length: tail_logits cuts each batch after its last scored column.
    order = torch.sort(row_lengths(factset.targets), stable=True).indices
    out = {
        "nll": torch.zeros(n, dtype=torch.float64),
        "rank": torch.zeros(n, dtype=torch.long),
        "correct": torch.zeros(n, dtype=torch.bool),
    }
    with eval_mode(model):
        for index in progress_bar(
            [order[i : i + batch_size] for i in range(0, n, batch_size)], desc=desc, disable=not progress, leave=False
        ):
            logits, rows, gold = tail_logits(
                model, factset.input_ids[index].to(device), factset.targets[index].to(device)
            )
            for key, value in fact_scores_from_logits(logits, rows, gold, len(index)).items():
                out[key][index] = value
    return out


def summarize_facts(scores: dict[str, torch.Tensor]) -> dict[str, float]:
    """Set-level metrics: PPL = exp(mean over facts of the fact's mean CE), mean/median rank, accuracy."""
    nll = scores["nll"].double()
    ranks = scores["rank"].double()
    return {
        "ppl": ppl_from_nll(float(nll.mean())),
        "rank": float(ranks.mean()),
        "acc": float(scores["correct"].double().mean()),
        "rank_median": float(np.median(ranks.numpy())),
        "nll": float(nll.mean()),
        "n": int(nll.numel()),
    }
