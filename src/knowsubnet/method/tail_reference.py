"""The original model at the TargetKG training facts' tail positions, for the objectives that compare the
remaining model with it there: NPO's loss on the tail token (`train.suppress_objective: npo`) and the other
tails kept (`train.lambda_other_tails`).

Both are flat over tail positions, fact by fact, in the order the trainer's `_kg_tail_logits` returns
logits (ControlKG's reference has the same layout); `rows` finds a batch's positions in them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from knowsubnet.data.encoding import IGNORE
from knowsubnet.method import objectives
from knowsubnet.method.batching import flat_rows, per_row


class TailReference:
    """targets: the TargetKG facts' targets [N, T] (IGNORE off the tail); original_logits(idx): the original
    model's logits at the tail positions of facts idx [P, V]; `other_tails`: also cache the original's
    distribution over every token but the tail (a [P, V] cache: fp16 where fp32 would pass 2 GiB)."""

    @torch.no_grad()
    def __init__(
        self,
        targets: torch.Tensor,
        original_logits: Callable[[torch.Tensor], torch.Tensor],
        chunk: int,
        other_tails: bool,
    ):
        self.targets = targets
        self.count, self.offset = per_row(targets != IGNORE)
        token_parts, rest_parts = [], []
        for start in range(0, len(targets), chunk):
            idx = torch.arange(start, min(start + chunk, len(targets)))
            logits, tokens = original_logits(idx), self.tokens(idx)
            token_parts.append(objectives.token_logprobs(logits, tokens))
            if other_tails:
                rest_parts.append(objectives.other_tails_logprobs(logits, tokens))
        self.token_logprob = torch.cat(token_parts)  # log p_orig(tail token) [P]
        self.other_tails = None
        if other_tails:
            rest = torch.cat(rest_parts)
            self.other_tails = rest if rest.numel() * 4 <= (1 << 31) else rest.half()

    def tokens(self, idx: torch.Tensor) -> torch.Tensor:
        """The tail tokens of facts `idx`, tail positions row-major (the order of their logits)."""
        where = self.targets[idx.to(self.targets.device)]
        return where[where != IGNORE]

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        return flat_rows(self.count, self.offset, idx).to(self.targets.device)

    def npo(self, logits: torch.Tensor, idx: torch.Tensor, beta: float) -> torch.Tensor:
        return objectives.npo_loss(logits, self.tokens(idx), self.token_logprob[self.rows(idx)], beta)

    def other_tails_loss(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return objectives.other_tails_loss(logits, self.tokens(idx), self.other_tails[self.rows(idx)])
