"""The versions of one model a probe scores: the original, the remaining model (the removal
applied) and random-removed models of the same per-matrix counts, entered one at a time
(`Variants`). The random draws are the evaluation's own (`eval.random_draws`, drawn in the order
`evaluate_ablation` draws them), so the robustness stage and the summary read one set of random
removals.
"""

from __future__ import annotations

import contextlib

import torch

from knowsubnet.method import edits


class Variants:
    """The original, remaining and random-removed versions of one model, entered one at a time."""

    def __init__(self, model, layers, edit: edits.Edit, seed: int, draws: int = 1):
        self.model, self.layers = model, layers
        # the evaluation's random draws: evaluate_ablation draws them from the same generator in order
        generator = torch.Generator().manual_seed(int(seed))
        self.random_draws = [edits.random_like(edit, layers, generator) for _ in range(draws)]
        self.edits = {"original": None, "removed": edit, "random": self.random_draws[0]}

    def entered(self, variant: str, draw: int = 0):
        edit = self.random_draws[draw] if variant == "random" else self.edits[variant]
        return contextlib.nullcontext() if edit is None else edits.applied(self.layers, edit)

    def draws(self, variant: str) -> range:
        """The draws a variant is averaged over: every random draw, one of the others."""
        return range(len(self.random_draws) if variant == "random" else 1)
