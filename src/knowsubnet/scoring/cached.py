"""Facts scored through the top blocks only: the hidden states entering the first masked block are
computed once (`CachedFacts`), since the blocks below the mask are the same in every version of the
model (original, removed, random, finetuned masked layers). Scores are the tail cross-entropy of
`facts`, on the positions `scoring.facts` scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from knowsubnet.data.encoding import IGNORE, FactSet
from knowsubnet.models.top_blocks import TopBlocks


class CachedFacts:
    """Facts with the hidden states entering the first masked block, computed once: the lower
    blocks never change while the masked layers train. `layers`: the masked layers
    (`method.masking.MaskableLayer`, anything with the `block` it sits in)."""

    def __init__(
        self,
        model: torch.nn.Module,
        layers: Sequence,
        facts: FactSet,
        device: str | torch.device,
        chunk: int = 64,
        compute_dtype: torch.dtype = torch.float32,
    ):
        # compute_dtype: of the top blocks' forwards (bf16 for relearning's steps; scores stay fp32)
        self.top = TopBlocks(model, min(layer.block for layer in layers), compute_dtype)
        self.facts = facts
        lengths = facts.lengths
        width = int(lengths.max())
        self.hidden = None
        order = torch.sort(lengths, stable=True).indices  # similar lengths together: less padding
        with torch.no_grad():
            for start in range(0, len(facts), chunk):
                index = order[start : start + chunk]
                part = self.top.prefix(facts.input_ids[index, : int(lengths[index].max())].to(device))
                if self.hidden is None:
                    self.hidden = part.new_zeros(len(facts), width, part.shape[-1])
                self.hidden[index.to(part.device), : part.shape[1]] = part
        self.targets = facts.targets[:, :width].to(device)

    def __len__(self) -> int:
        return len(self.facts)

    def tail_logits(
        self, index: torch.Tensor, weights: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Through the top blocks (`weights` replacing layers' weights, as `TopBlocks.forward`), for the
        facts `index`: logits at the tail positions [P, V] (float32), the row of each in `index` [P],
        the gold token [P] (as `scoring.tail_logits`)."""
        targets = self.targets[index]
        width = int(targets.ne(IGNORE).nonzero()[:, 1].max()) + 1
        hidden = self.top.forward(self.hidden[index, :width], weights)
        where = targets[:, :width] != IGNORE
        return self.top.logits(hidden[where]).float(), where.nonzero()[:, 0], targets[:, :width][where]

    def tail_ce(self, index: torch.Tensor, weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Cross-entropy of every tail position of the facts `index`, through the top blocks."""
        logits, _, gold = self.tail_logits(index, weights)
        return F.cross_entropy(logits, gold, reduction="none")

    @torch.no_grad()
    def nll(self, batch: int = 64) -> torch.Tensor:
        """Mean tail cross-entropy of every fact, float64 [N] on the CPU (batched by length)."""
        out = torch.zeros(len(self), dtype=torch.float64)
        order = torch.sort(self.facts.lengths, stable=True).indices
        for start in range(0, len(self), batch):
            index = order[start : start + batch]
            logits, rows, gold = self.tail_logits(index)
            ce = F.cross_entropy(logits, gold, reduction="none").double()
            sums = torch.zeros(len(index), dtype=torch.float64, device=ce.device).index_add_(0, rows, ce)
            out[index] = (sums / torch.bincount(rows, minlength=len(index))).cpu()
        return out

    def mean_nll(self, batch: int = 64) -> float:
        """Mean over facts of the mean tail cross-entropy (log PPL of the set)."""
        return float(self.nll(batch).mean())
