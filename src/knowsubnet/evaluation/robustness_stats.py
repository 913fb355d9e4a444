"""The statistics of the robustness stage (`evaluation.robustness`), from scored sentences: PPL
ratios and shares with 95 % bootstrap intervals over facts (a fact's sentences move together;
the resampling is `core.bootstrap`),
the per-wording `known` filter, and the summary of every sentence probe.

Ratios are PPL(variant) / PPL(original) = exp(mean over facts of the NLL difference).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from knowsubnet.core import bootstrap

VARIANTS = ("original", "removed", "random")
# the wording probes: (facts, wordings) -> probe name (`evaluation.probes.in_wordings`)
WORDING_PROBES = {
    "train_heldout": "wording:train:heldout",
    "test_heldout": "wording:test:heldout",
    "test_trained": "wording:test:trained",
    "controlkg_heldout": "wording:controlkg:heldout",
}


def ratio_ci(frame: pd.DataFrame, variant: str, n_boot: int, seed: int) -> dict[str, Any]:
    """PPL ratio variant / original over the frame's sentences, averaged per fact first, with a
    95 % bootstrap interval over facts. None values when the frame is empty."""
    if frame.empty:
        return {"ratio": None, "low": None, "high": None, "n_facts": 0}
    diff = (frame[f"nll_{variant}"] - frame["nll_original"]).groupby(frame["uuid"]).mean().to_numpy()
    low, high = bootstrap.interval(bootstrap.means(diff, n_boot, seed))
    return {"ratio": math.exp(diff.mean()), "low": math.exp(low), "high": math.exp(high), "n_facts": len(diff)}


def share_ci(values: pd.Series, n_boot: int, seed: int) -> dict[str, Any]:
    """Mean of per-fact values in [0, 1] with a 95 % bootstrap interval over facts."""
    if values.empty:
        return {"share": None, "low": None, "high": None, "n_facts": 0}
    x = values.to_numpy(dtype=np.float64)
    low, high = bootstrap.interval(bootstrap.means(x, n_boot, seed))
    return {"share": float(x.mean()), "low": low, "high": high, "n_facts": len(x)}


def suppressed(frame: pd.DataFrame, variant: str, threshold: float) -> pd.Series:
    """Per sentence: is its PPL under `variant` >= threshold x the original's?"""
    return (frame[f"nll_{variant}"] - frame["nll_original"]) >= math.log(threshold)


def suppressed_share(frame: pd.DataFrame, variant: str, threshold: float) -> pd.Series:
    """Per fact: the share of its sentences suppressed under `variant`."""
    return suppressed(frame, variant, threshold).groupby(frame["uuid"]).mean()


def top1(frame: pd.DataFrame, variant: str) -> pd.Series:
    """Per fact: 1 when the true tail has a strictly lower NLL than every false candidate."""
    nll = frame[f"nll_{variant}"]
    true = nll[frame["is_true"]].groupby(frame.loc[frame["is_true"], "uuid"]).min()
    false = nll[~frame["is_true"]].groupby(frame.loc[~frame["is_true"], "uuid"]).min()
    return (true < false.reindex(true.index).fillna(np.inf)).astype(float)


def sentence_share_ci(hit: pd.Series, uuid: pd.Series, n_boot: int, seed: int) -> dict[str, Any]:
    """Share of sentences with `hit`, with a 95 % bootstrap interval that resamples facts."""
    if hit.empty:
        return {"share": None, "low": None, "high": None, "n_sentences": 0, "n_facts": 0}
    per_fact = pd.DataFrame({"hit": hit.astype(float).to_numpy(), "uuid": uuid.to_numpy()}).groupby("uuid")["hit"]
    hits, counts = per_fact.sum().to_numpy(), per_fact.size().to_numpy()
    low, high = bootstrap.interval(bootstrap.ratios_of_sums(hits, counts, n_boot, seed))
    return {
        "share": float(hits.sum() / counts.sum()),
        "low": low,
        "high": high,
        "n_sentences": int(counts.sum()),
        "n_facts": len(hits),
    }


def wording_known(scored: pd.DataFrame, max_tail_ppl: float | None, min_head_gain: float | None) -> pd.Series:
    """Per sentence: does the original know the fact in this wording? params `known` applied to
    the sentence itself: its tail PPL, and its head gain against the same wording with other heads
    (`other_head:<probe>` rows). True for sentences of every other probe."""
    known = pd.Series(True, index=scored.index)
    wording = scored["probe"].str.startswith("wording:")
    if max_tail_ppl is not None:
        known &= ~wording | (scored["nll_original"] <= math.log(max_tail_ppl))
    if min_head_gain is not None:
        others = scored[scored["probe"].str.startswith("other_head:")]
        baseline = others.groupby([others["probe"].str.removeprefix("other_head:"), "uuid", "template_id"])[
            "nll_original"
        ].mean()
        keys = pd.MultiIndex.from_frame(scored[["probe", "uuid", "template_id"]])
        gain = baseline.reindex(keys).to_numpy() - scored["nll_original"].to_numpy()  # NaN: no other head
        known &= ~wording | pd.Series(gain >= math.log(min_head_gain), index=scored.index)
    return known


def wording_summary(
    scored: pd.DataFrame, n_boot: int, seed: int, bar: float, wording_probes: dict[str, str] = WORDING_PROBES
) -> dict[str, Any]:
    """Each wording probe ({name: probe}) over the sentences the original knows: PPL ratios and the
    share of sentences suppressed (PPL >= bar x the original's)."""
    out: dict[str, Any] = {"threshold": bar}
    for name, probe in wording_probes.items():
        frame = scored[scored["probe"] == probe]
        known = frame[frame["known"]]
        out[name] = {
            "sentences": int(len(frame)),
            "known_sentences": int(len(known)),
            **{variant: ratio_ci(known, variant, n_boot, seed) for variant in ("removed", "random")},
            "suppressed_share": {
                variant: sentence_share_ci(suppressed(known, variant, bar), known["uuid"], n_boot, seed)
                for variant in ("removed", "random")
            },
            "by_template": {
                int(t): ratio_ci(group, "removed", n_boot, seed)["ratio"] for t, group in known.groupby("template_id")
            },
            # one wording may be reached and another not: the share alone hides which (docs/PRECISION.md)
            "suppressed_by_template": suppressed_by_template(known, bar),
        }
    return out


def suppressed_by_template(known: pd.DataFrame, bar: float) -> dict[int, float]:
    """Per wording (template id): the share of the removed model's known sentences suppressed."""
    hit = suppressed(known, "removed", bar)
    return {int(t): float(group.mean()) for t, group in hit.groupby(known["template_id"])}


def in_context_summary(scored: pd.DataFrame, ks: list[int], n_boot: int, seed: int) -> dict[str, Any]:
    """Per k: the original's PPL (does the context help?) and the removed / random ratios."""
    out = {}
    for k in ks:
        frame = scored[scored["probe"] == f"in_context:{k}"]
        per_fact = frame.groupby("uuid")["nll_original"].mean()
        out[str(k)] = {
            "original_ppl": math.exp(per_fact.mean()) if len(per_fact) else None,
            **{variant: ratio_ci(frame, variant, n_boot, seed) for variant in ("removed", "random")},
        }
    return out


def pooled_ratio_ci(frames: list[pd.DataFrame], variant: str, n_boot: int, seed: int) -> dict[str, Any]:
    """The ratio over several mask seeds' scores of the same sentences (one frame per seed), with a
    95 % interval that resamples seeds and facts together: the seed-to-seed variation of the mask is
    part of the uncertainty. Facts scored under every seed only."""
    per_seed = [(f[f"nll_{variant}"] - f["nll_original"]).groupby(f["uuid"]).mean() for f in frames]
    common = sorted(set.intersection(*(set(d.index) for d in per_seed))) if per_seed else []
    if not common:
        return {"ratio": None, "low": None, "high": None, "n_facts": 0, "n_seeds": len(frames)}
    diff = np.stack([d.reindex(common).to_numpy() for d in per_seed])  # [S, F]
    n_seeds, n_facts = diff.shape
    low, high = bootstrap.interval(
        [
            diff[np.ix_(seeds, facts)].mean()
            for seeds, facts in bootstrap.seed_unit_draws(n_seeds, n_facts, n_boot, seed)
        ]
    )
    return {
        "ratio": math.exp(diff.mean()),
        "low": math.exp(low),
        "high": math.exp(high),
        "n_facts": n_facts,
        "n_seeds": n_seeds,
    }
