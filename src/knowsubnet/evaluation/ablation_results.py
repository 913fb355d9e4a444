"""The evaluation's result files as types (`core.records.Record`): `AblationMetrics` is
results/eval/{model}/{target}/seed{seed}/metrics.json (and combined/{how}.json, and a baseline's
eval/metrics.json), `Headline` the headline.json beside it. `evaluation.ablation` writes both;
the report, the model card and the CLI read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from knowsubnet.core.records import Record, part

SETS = ("targetkg", "controlkg", "controllm")


@dataclass(frozen=True, kw_only=True)
class SetMetrics(Record):
    """One set's metrics under one variant: fact sets have all four, ControlLM only `ppl`."""

    ppl: float
    rank: float | None = None
    acc: float | None = None
    rank_median: float | None = None


@dataclass(frozen=True, kw_only=True)
class VariantMetrics(Record):
    """One model variant (original, removed, random, kept) on the three test sets; also the shape
    of `random_spread` (the standard deviation over random draws of each value)."""

    targetkg: SetMetrics = part(SetMetrics)
    controlkg: SetMetrics = part(SetMetrics)
    controllm: SetMetrics = part(SetMetrics)
    controlkg_by_relation: Mapping[str, float] | None = None  # ControlKG PPL per relation (per-seed runs)

    def on(self, set_name: str) -> SetMetrics:
        """The metrics of `set_name` (one of SETS)."""
        return {"targetkg": self.targetkg, "controlkg": self.controlkg, "controllm": self.controllm}[set_name]


@dataclass(frozen=True, kw_only=True)
class SetValues(Record):
    """One number per test set (the ΔPPL of a variant)."""

    targetkg: float
    controlkg: float
    controllm: float

    def on(self, set_name: str) -> float:
        return {"targetkg": self.targetkg, "controlkg": self.controlkg, "controllm": self.controllm}[set_name]


@dataclass(frozen=True, kw_only=True)
class Sparsity(Record):
    masked_layers: float
    all_weights: float | None = None


@dataclass(frozen=True, kw_only=True)
class Changed(Record):
    """What a removal changed (`method.edits.change_stats`)."""

    changed_weights: int
    changed_share_masked_layers: float
    changed_share_all_weights: float | None = None
    delta_l2: float | None = None
    mean_abs_delta: float | None = None


@dataclass(frozen=True, kw_only=True)
class Counts(Record):
    """How many test facts (after the known-facts filter) and ControlLM blocks were evaluated."""

    targetkg: int | None = None
    controlkg: int | None = None
    controllm_blocks: int | None = None
    controlkg_by_relation: Mapping[str, int] | None = None


@dataclass(frozen=True, kw_only=True)
class AblationMetrics(Record):
    """metrics.json of evaluate_ablation (a seed's mask or a baseline's removal) or combine_seeds
    (`combination` and `seeds` set, `seed` null). `kept` is null for a baseline's new weights;
    the keys not named here (granularity, random_draws, ...) stay in `extra`."""

    WHAT = "an evaluate_ablation metrics file"
    model: str | None
    target: str | None
    seed: int | None
    sparsity: Sparsity = part(Sparsity)
    original: VariantMetrics = part(VariantMetrics)
    removed: VariantMetrics = part(VariantMetrics)
    random: VariantMetrics = part(VariantMetrics)
    kept: VariantMetrics | None = part(VariantMetrics)  # null for new weights: always written
    random_spread: VariantMetrics | None = part(VariantMetrics, default=None)
    delta_ppl: Mapping[str, SetValues] = part(SetValues, "map")  # removed, random (and kept)
    changed: Changed | None = part(Changed, default=None)
    subnetwork_size: int | None = None
    counts: Counts | None = part(Counts, default=None)
    counts_before_known_filter: Mapping[str, int] | None = None  # {set: facts in the split}
    method: str | None = None
    combination: str | None = None
    seeds: list[int] | None = None
    provenance: Mapping[str, Any] | None = None

    def variant(self, name: str) -> VariantMetrics | None:
        """original, removed, random or kept (None where not evaluated)."""
        return {"original": self.original, "removed": self.removed, "random": self.random, "kept": self.kept}[name]

    def ppl_ratio(self, variant: str, set_name: str) -> float:
        """PPL of `variant` ÷ PPL of the original on `set_name` (NaN for an original PPL of 0)."""
        original = self.original.on(set_name).ppl
        return float(self.variant(variant).on(set_name).ppl) / original if original else float("nan")


@dataclass(frozen=True, kw_only=True)
class Headline(Record):
    """headline.json of evaluate_ablation (`evaluation.ablation.headline`): a DVC metric, one row
    per run; ratios are test PPL ÷ original, rounded; the met_<bar> flags and the verdict are
    `evaluation.bars.check_bars` on the unrounded numbers."""

    WHAT = "an evaluate_ablation headline"
    sparsity: float
    ratio_removed_targetkg: float
    ratio_removed_controlkg: float
    ratio_removed_controllm: float
    ratio_random_targetkg: float
    ratio_random_controlkg: float
    ratio_random_controllm: float
    random_share: float
    dppl_removed_targetkg: float
    dppl_removed_controlkg: float
    dppl_removed_controllm: float
    dppl_random_targetkg: float
    dppl_random_controlkg: float
    dppl_random_controllm: float
    targetkg_acc_original: float | None = None
    targetkg_acc_removed: float | None = None
    met_min_sparsity: bool
    met_min_target_ratio: bool
    met_max_random_share: bool
    met_max_controlkg_ratio: bool
    met_max_controllm_ratio: bool
    verdict: str

    def ratio(self, variant: str, set_name: str) -> float:
        """ratio_<variant>_<set> (variant removed or random)."""
        return getattr(self, f"ratio_{variant}_{set_name}")
