"""Scores of a model on facts and text: tail-token PPL, rank and accuracy; ControlLM perplexity.

Every forward pass runs without gradients in eval mode. Verbalisation, discovery's validation and
the ablation all score through these functions, so a number means the same thing everywhere.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Iterator

import numpy as np
import torch
from torch import nn

from knowsubnet.core.errors import InputError
from knowsubnet.core.progress import progress_bar
from knowsubnet.data.encoding import IGNORE

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# ControlLM perplexity: exp(mean CE over every token) (default: one number for the whole text,
# independent of batching), or the paper's mean over batches of exp(mean CE of the batch).
CONTROLLM_PPL = ("token_mean", "batch_mean")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    # Dropout must be off for deterministic scores; restore the caller's mode afterwards.
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def ppl_from_nll(x: float) -> float:
    # exp of a mean CE; a wrecked model (e.g. "kept") can overflow, which is +inf, not an error.
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf




# ----------------------------------------------------------------------------------------------
# per-fact scores


def _hidden_states(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    # The final hidden state (after the last norm); the LM head is applied only where needed.
    return model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state


def tail_logits(model: nn.Module, input_ids: torch.Tensor,
                targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict a tail token only.

    Returns (logits [P, V] float32, row index [P] of each position, gold token id [P]); positions
    are in row-major order, so each fact's first tail position comes first among its own.
    """
    where = targets != IGNORE
    # Causal LM: the columns after the last tail position cannot change earlier logits; skip them.
    last = int(where.any(dim=0).nonzero().max()) + 1 if where.any() else 0
    hidden = _hidden_states(model, input_ids[:, :last])
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


def fact_scores_from_logits(logits: torch.Tensor, rows: torch.Tensor, gold: torch.Tensor,
                            n_facts: int) -> dict[str, torch.Tensor]:
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
def score_facts(model: nn.Module, factset, batch_size: int, device: str | torch.device,
                desc: str = "facts") -> dict[str, torch.Tensor]:
    """Per-fact `nll` [N] float64, `rank` [N] long (first tail token, 1 = best), `correct` [N] bool."""
    n = factset.input_ids.shape[0]
    if n == 0:
        raise InputError(f"{desc}: no facts to score")
    empty = (factset.targets != IGNORE).sum(dim=1) == 0
    if bool(empty.any()):
        raise InputError(f"{desc}: fact {factset.uuids[int(empty.nonzero()[0])]} has no tail token to score")
    parts: list[dict[str, torch.Tensor]] = []
    with _eval_mode(model):
        for start in progress_bar(range(0, n, batch_size), desc=desc, leave=False):
            ids = factset.input_ids[start:start + batch_size].to(device)
            tg = factset.targets[start:start + batch_size].to(device)
            logits, rows, gold = tail_logits(model, ids, tg)
            parts.append(fact_scores_from_logits(logits, rows, gold, ids.shape[0]))
    return {key: torch.cat([p[key] for p in parts]) for key in ("nll", "rank", "correct")}


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


@torch.no_grad()
def lm_nll(model: nn.Module, blocks: torch.Tensor, batch_size: int, device: str | torch.device,
           desc: str = "controllm") -> tuple[float, int]:
    """Sum of next-token CE over every position of the blocks, and the number of tokens scored."""
    if blocks.dim() != 2 or blocks.shape[0] == 0 or blocks.shape[1] < 2:
        raise InputError(f"{desc}: expected ControlLM blocks [n >= 1, block_size >= 2], got {tuple(blocks.shape)}")
    head = model.get_output_embeddings()
    total, count = 0.0, 0
    with _eval_mode(model):
        for start in progress_bar(range(0, blocks.shape[0], batch_size), desc=desc, leave=False):
            ids = blocks[start:start + batch_size].to(device)
            hidden = _hidden_states(model, ids[:, :-1])
            # One block at a time through the LM head: [T, V] logits, not [B, T, V].
            for row in range(ids.shape[0]):
                logits = head(hidden[row]).float()
                ce = torch.nn.functional.cross_entropy(logits, ids[row, 1:], reduction="sum")
                total += float(ce.double())
                count += ids.shape[1] - 1
    return total, count


def lm_ppl(model: nn.Module, blocks: torch.Tensor, batch_size: int, device: str | torch.device,
           averaging: str = "token_mean") -> float:
    """ControlLM perplexity of the blocks. `token_mean`: exp(mean next-token CE over every token);
    `batch_mean` (the paper's): the mean over batches of `batch_size` blocks of exp(batch mean CE)."""
    if averaging == "token_mean":
        total, count = lm_nll(model, blocks, batch_size, device)
        return ppl_from_nll(total / count)
    if averaging != "batch_mean":
        raise InputError(f"params key 'eval.controllm_ppl' = {averaging!r}: expected one of {', '.join(CONTROLLM_PPL)}")
    ppls = []
    for start in range(0, blocks.shape[0], batch_size):
        total, count = lm_nll(model, blocks[start:start + batch_size], batch_size, device)
        ppls.append(ppl_from_nll(total / count))
    return float(np.mean(ppls))


