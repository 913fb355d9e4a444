"""ControlLM perplexity: next-token cross-entropy of a model over blocks of text."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from knowsubnet.core.errors import InputError
from knowsubnet.core.progress import progress_bar
from knowsubnet.scoring.facts import eval_mode, hidden_states, ppl_from_nll

# ControlLM perplexity: exp(mean CE over every token) (default: one number for the whole text,
# independent of batching), or the paper's mean over batches of exp(mean CE of the batch).
CONTROLLM_PPL = ("token_mean", "batch_mean")


@torch.no_grad()
def lm_nll(
    model: nn.Module, blocks: torch.Tensor, batch_size: int, device: str | torch.device, desc: str = "controllm"
) -> tuple[float, int]:
    """Sum of next-token CE over every position of the blocks, and the number of tokens scored."""
    if blocks.dim() != 2 or blocks.shape[0] == 0 or blocks.shape[1] < 2:
        raise InputError(f"{desc}: expected ControlLM blocks [n >= 1, block_size >= 2], got {tuple(blocks.shape)}")
    head = model.get_output_embeddings()
    total, count = 0.0, 0
    with eval_mode(model):
        for start in progress_bar(range(0, blocks.shape[0], batch_size), desc=desc, leave=False):
            ids = blocks[start : start + batch_size].to(device)
            hidden = hidden_states(model, ids[:, :-1])
            # One block at a time through the LM head: [T, V] logits, not [B, T, V].
            for row in range(ids.shape[0]):
                logits = head(hidden[row]).float()
                ce = torch.nn.functional.cross_entropy(logits, ids[row, 1:], reduction="sum")
                total += float(ce.double())
                count += ids.shape[1] - 1
    return total, count


def lm_ppl(
    model: nn.Module, blocks: torch.Tensor, batch_size: int, device: str | torch.device, averaging: str = "token_mean"
) -> float:
    """ControlLM perplexity of the blocks. `token_mean`: exp(mean next-token CE over every token);
    `batch_mean` (the paper's): the mean over batches of `batch_size` blocks of exp(batch mean CE)."""
    if averaging == "token_mean":
        total, count = lm_nll(model, blocks, batch_size, device)
        return ppl_from_nll(total / count)
    if averaging != "batch_mean":
        raise InputError(f"params key 'eval.controllm_ppl' = {averaging!r}: expected one of {', '.join(CONTROLLM_PPL)}")
    ppls = []
    for start in range(0, blocks.shape[0], batch_size):
        total, count = lm_nll(model, blocks[start : start + batch_size], batch_size, device)
        ppls.append(ppl_from_nll(total / count))
    return float(np.mean(ppls))
