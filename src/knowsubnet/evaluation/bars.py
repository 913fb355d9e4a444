"""The bars of params `report.bars`: is a removal precise enough? The one check of an ablation
result against them, read by the evaluate_ablation headline (`dvc metrics show`) and the report.

All ratios are test-set PPL of a variant ÷ PPL of the original model. A run meets

- min_sparsity:        sparsity of the masked layers ≥ the bar;
- min_target_ratio:    TargetKG ratio of the removed model ≥ the bar;
- max_random_share:    random share ≤ the bar, where random share = (random TargetKG ratio − 1) /
                       (removed TargetKG ratio − 1): how much of the subnetwork's effect on TargetKG
                       a random subnetwork of the same size has (∞ when removing the subnetwork
                       does not raise TargetKG PPL);
- max_controlkg_ratio: ControlKG ratio of the removed model within [1 / bar, bar];
- max_controllm_ratio: ControlLM ratio of the removed model within [1 / bar, bar].

The control bars are two-sided: a control that moves either way is damage (a ControlKG PPL that
falls to ×0.89 means the removal changed what the model says about other facts, as much as one
that rises to ×1.12 does). A value that cannot be computed (NaN) misses its bar.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from knowsubnet.core.config import within
from knowsubnet.evaluation.ablation_results import AblationMetrics

BARS = ("min_sparsity", "min_target_ratio", "max_random_share", "max_controlkg_ratio", "max_controllm_ratio")
SETS = ("targetkg", "controlkg", "controllm")
ALL_MET = "all met"


def _metrics(result: AblationMetrics | Mapping[str, Any]) -> AblationMetrics:
    # a result dict (evaluate_ablation's, before it is written) is read as the metrics file's type
    return result if isinstance(result, AblationMetrics) else AblationMetrics.from_dict(result)


def ppl_ratio(result: AblationMetrics | Mapping[str, Any], variant: str, set_name: str) -> float:
    """PPL of `variant` ÷ PPL of the original model on `set_name` (NaN for an original PPL of 0)."""
    return _metrics(result).ppl_ratio(variant, set_name)


def ratios(result: AblationMetrics | Mapping[str, Any]) -> dict[str, float]:
    """sparsity (masked layers), ratio_<variant>_<set> for the removed and random models on every
    set, and random_share, of an evaluate_ablation result (or metrics file)."""
    metrics = _metrics(result)
    out = {"sparsity": float(metrics.sparsity.masked_layers)}
    for variant in ("removed", "random"):
        for set_name in SETS:
            out[f"ratio_{variant}_{set_name}"] = metrics.ppl_ratio(variant, set_name)
    removed, random = out["ratio_removed_targetkg"], out["ratio_random_targetkg"]
    out["random_share"] = (random - 1.0) / (removed - 1.0) if removed > 1.0 else math.inf
    return out


def check_bars(result: AblationMetrics | Mapping[str, Any], bars: Mapping[str, float]) -> dict[str, Any]:
    """`ratios` of an ablation result, `met_<bar>` (bool) for each of BARS, and `verdict`:
    "all met", or the missed bars' names joined by ", " (in BARS order)."""
    values = ratios(result)
    met = {
        "min_sparsity": values["sparsity"] >= bars["min_sparsity"],
        "min_target_ratio": values["ratio_removed_targetkg"] >= bars["min_target_ratio"],
        "max_random_share": values["random_share"] <= bars["max_random_share"],
        "max_controlkg_ratio": within(values["ratio_removed_controlkg"], bars["max_controlkg_ratio"]),
        "max_controllm_ratio": within(values["ratio_removed_controllm"], bars["max_controllm_ratio"]),
    }
    missed = [bar for bar in BARS if not met[bar]]
    return {
        **values,
        **{f"met_{bar}": bool(met[bar]) for bar in BARS},
        "verdict": ", ".join(missed) if missed else ALL_MET,
    }
