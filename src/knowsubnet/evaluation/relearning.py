"""Relearning as Deeb & Roger (2024) measure it: finetune the remaining model and the original the
same way, then ask how much of the removal's gap on facts the finetuning never saw is closed.

Finetuning data (`robustness.relearn.data`), each scored on the held-out TargetKG facts:
- targetkg: the TargetKG train facts, which share no head or tail with the scored test facts
  (the entity-disjoint split; in-sample runs use two seeded halves of the test facts);
- controlkg: unrelated facts (ControlKG train);
- wikitext: unrelated text (the ControlLM training blocks, cut into rows of `text_tokens`);
- unknown: the control. TargetKG train facts the original model does *not* know, scored on the
  unknown test facts: how much this budget teaches from scratch. A removal "relearned" no faster
  than the original learns facts it never knew was not hiding them.

Each point of `robustness.relearn.points` (scope masked or whole, lr, steps; optionally its own
`data` list) runs for every data, model and seed. Recovered = 1 - gap_after / gap_before, gap =
mean over facts of NLL(remaining) - NLL(original), both finetuned identically; its interval
resamples facts and seeds together.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any

import numpy as np
import torch

from knowsubnet.core import bootstrap
from knowsubnet.data.encoding import FactSet
from knowsubnet.evaluation import relearn
from knowsubnet.scoring.cached import CachedFacts
from knowsubnet.scoring.facts import score_facts

log = logging.getLogger(__name__)

# model name -> (variant whose edit is the start, removed weights held at zero)
MODELS = {
    "original": (None, True),
    "removed_held": ("removed", True),
    "removed_free": ("removed", False),
    "random_held": ("random", True),
}
TEXT = "wikitext"  # the relearning data that is unrelated text (the goal's relearning part)
DATA = ("targetkg", "controlkg", TEXT, "unknown")


def recovered_interval(
    before: dict[str, np.ndarray], after: dict[str, list[np.ndarray]], removed: str, n_boot: int, seed: int
) -> dict[str, Any]:
    """Recovered fraction of `removed` with a 95 % interval that resamples facts and seeds together.
    before[m]: per-fact NLL [F]; after[m]: one per-fact NLL array [F] per seed."""
    gap_before = before[removed] - before["original"]
    gaps_after = np.stack([a - o for a, o in zip(after[removed], after["original"])])  # [S, F]
    value = relearn.recovered_fraction(float(gap_before.mean()), float(gaps_after.mean()))
    per_seed = [relearn.recovered_fraction(float(gap_before.mean()), float(g.mean())) for g in gaps_after]
    if value is None:
        return {"recovered": None, "low": None, "high": None, "per_seed": per_seed}
    n_seeds, n_facts = gaps_after.shape
    draws = []
    for seeds, facts in bootstrap.seed_unit_draws(n_seeds, n_facts, n_boot, seed, units_first=True):
        before_gap = gap_before[facts].mean()
        if before_gap > 0:
            draws.append(1.0 - gaps_after[np.ix_(seeds, facts)].mean() / before_gap)
    low, high = bootstrap.interval(draws) if draws else (None, None)
    return {"recovered": value, "low": low, "high": high, "per_seed": per_seed}


def run(
    model,
    layers,
    variants,
    sets: dict[str, tuple[FactSet, FactSet] | None],
    cfg,
    device,
    dtype: torch.dtype,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Every (point, data, model, seed) finetune; `sets[data]` = (train, scored) FactSets or None
    (nothing to train on). `variants` gives the edits (`evaluation.variants.Variants`)."""
    out: dict[str, Any] = {"points": []}
    # Per data, made once for every point: the scored facts with their lower blocks cached (masked-
    # layer finetunes leave those blocks alone), the train facts cached for the masked steps, and
    # each model's scores before any finetune.
    scored, train_cached, before = {}, {}, {}
    for data, pair in sets.items():
        if pair is None:
            continue
        scored[data] = CachedFacts(model, layers, pair[1], device)
        before[data] = {}
        for name in cfg.models:
            with variants.entered(MODELS[name][0] or "original"):
                before[data][name] = scored[data].nll(cfg.batch).numpy()
    for point in cfg.points:
        scope, lr, steps = point["scope"], float(point["lr"]), int(point["steps"])
        entry: dict[str, Any] = {"scope": scope, "lr": lr, "steps": steps, "data": {}}
        for data in point.get("data", cfg.data):  # a point may name fewer data (a costly whole-model one)
            if sets.get(data) is None:
                entry["data"][data] = None
                continue
            train = sets[data][0]
            if scope == "masked" and data not in train_cached:
                train_cached[data] = CachedFacts(model, layers, train, device, compute_dtype=dtype)
            facts = train_cached[data] if scope == "masked" else train
            after: dict[str, list[np.ndarray]] = {name: [] for name in cfg.models}
            start = time.monotonic()
            for name in cfg.models:
                variant, hold = MODELS[name]
                edit = variants.edits[variant or "original"]
                # A mask's zeroed weights are the start (held at zero or free); new weights (a
                # finetuning baseline) are entered first and relearning starts from them.
                removed = edit.tensors if edit is not None and edit.kind == "mask" else None
                for run_seed in cfg.seeds:
                    entered = (
                        variants.entered(variant) if removed is None and edit is not None else contextlib.nullcontext()
                    )
                    with (
                        entered,
                        relearn.finetuned(
                            layers,
                            facts,
                            removed=removed,
                            granularity=edit.granularity if edit else "weight",
                            hold_zero=hold,
                            steps=steps,
                            lr=lr,
                            batch=cfg.batch,
                            seed=run_seed,
                            scope=scope,
                            model=model,
                            compute_dtype=dtype,
                        ),
                    ):
                        # masked: the lower blocks are unchanged, their cache holds; whole: a full forward
                        after[name].append(
                            scored[data].nll(cfg.batch).numpy()
                            if scope == "masked"
                            else score_facts(model, sets[data][1], cfg.batch, device, progress=False)["nll"].numpy()
                        )
            results: dict[str, Any] = {
                "n_train": len(train),
                "n_scored": len(scored[data]),
                "wall_time_s": round(time.monotonic() - start, 2),
            }
            for name in cfg.models:
                mean_after = np.mean([a.mean() for a in after[name]])
                results[name] = {
                    "ppl_before": math.exp(before[data][name].mean()),
                    "ppl_after": math.exp(mean_after),
                    "ppl_after_per_seed": [math.exp(a.mean()) for a in after[name]],
                }
                if name != "original" and "original" in cfg.models:
                    results[name].update(recovered_interval(before[data], after, name, n_boot, seed))
            entry["data"][data] = results
            log.info(
                "relearning %s lr %g x %d steps on %s: %s (%.0f s)",
                scope,
                lr,
                steps,
                data,
                {n: round(r["ppl_after"], 1) for n, r in results.items() if isinstance(r, dict)},
                results["wall_time_s"],
            )
        out["points"].append(entry)
    return out
