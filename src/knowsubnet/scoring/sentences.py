"""Sentences scored under several versions of one model: each sentence's mean tail cross-entropy
under every version (`score_sentences`), the lower blocks run once for all (`scoring.cached`).
The versions are any object with the `ModelVariants` interface (`evaluation.variants.Variants`:
the original, removed and random-removed models). The robustness probes and CommonsenseQA's
suppressed facts score their sentences here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from knowsubnet.data.encoding import encode_facts
from knowsubnet.scoring.cached import CachedFacts

log = logging.getLogger(__name__)


class ModelVariants(Protocol):
    """Versions of one model that share its lower blocks, entered one at a time by name."""

    model: torch.nn.Module
    layers: list  # the masked layers (`method.masking.MaskableLayer`)

    def entered(self, variant: str, draw: int = 0) -> contextlib.AbstractContextManager: ...

    def draws(self, variant: str) -> range: ...


def score_sentences(
    variants: ModelVariants,
    tokenizer,
    sentences: pd.DataFrame,
    batch_size: int,
    device,
    scored_positions: str,
    names: Sequence[str],
) -> pd.DataFrame:
    """`sentences` with nll_<variant> columns for the variants `names` (mean tail cross-entropy of
    each sentence; for random, its mean over the draws). The blocks below the mask are the same in
    every variant: they run once (`CachedFacts`)."""
    out = sentences.reset_index(drop=True).copy()
    if out.empty:
        for variant in names:
            out[f"nll_{variant}"] = pd.Series(dtype=np.float64)
        return out
    labels = [f"{u} ({p}, template {t})" for u, p, t in zip(out["uuid"], out["probe"], out["template_id"])]
    encoded = encode_facts(
        tokenizer, out["prompt"].tolist(), out["tail_text"].tolist(), labels, scored_positions=scored_positions
    )
    cached = CachedFacts(variants.model, variants.layers, encoded, device)
    for variant in names:
        nll = []
        for draw in variants.draws(variant):
            with variants.entered(variant, draw):
                nll.append(cached.nll(batch_size).numpy())
        out[f"nll_{variant}"] = np.mean(nll, axis=0)
        log.info("scored %d sentences under the %s model", len(out), variant)
    return out
