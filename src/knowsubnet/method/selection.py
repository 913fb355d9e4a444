"""Checkpoint selection: which of the masks validated during training to keep (params `train.select`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from knowsubnet.core.config import Select, within

# Validation of the deterministic mask (train.select); None on rows where it did not run.
VAL_COLUMNS = (
    "val_sparsity",
    "val_targetkg_ppl",
    "val_controlkg_ppl",
    "val_controllm_ppl",
    "val_random_targetkg_ppl",
    "val_random_controlkg_ppl",
    "val_random_controllm_ppl",
)


@dataclass
class ValidationSets:
    """Held-out data for checkpoint selection: FactSets of TargetKG / ControlKG val facts, and
    ControlLM blocks never trained on."""

    targetkg: Any
    controlkg: Any
    controllm: torch.Tensor | None = None


def qualifies(row: dict[str, float], original: dict[str, float], cfg: Select) -> bool:
    return (
        row["val_sparsity"] >= cfg.min_sparsity
        and row["val_targetkg_ppl"] >= cfg.min_target_ratio * original["targetkg"]
    )


def controls_within(row: dict[str, float], original: dict[str, float], cfg: Select) -> bool:
    """ControlKG and ControlLM val PPL ratios within `cfg`'s two-sided bars (a control not measured passes)."""
    bars = {"controlkg": cfg.max_controlkg_ratio, "controllm": cfg.max_controllm_ratio}
    return all(within(row[f"val_{s}_ppl"] / original[s], bar) for s, bar in bars.items() if original.get(s))


def select_checkpoint(rows: list[dict[str, float]], original: dict[str, float], cfg: Select) -> int:
    """Index into `rows` (validations) of the mask to keep.

    Every `cfg.every` steps (0: only at the last step) the deterministic mask is scored on TargetKG
    val, ControlKG val and held-out ControlLM blocks, with a same-size random mask beside it. The
    validations that qualify have sparsity >= `min_sparsity` and TargetKG val PPL >= `min_target_ratio`
    x original. `prefer: least_damage` keeps the qualifying one with the least damage to the
    controls, measured as |log(ControlKG PPL ratio)| + |log(ControlLM PPL ratio)|: a control that falls
    is damage as much as one that rises (a falling ControlKG PPL must not buy a checkpoint).
    `prefer: most_removal` keeps, of those whose controls stay within the two-sided bars, the one with
    the highest TargetKG val PPL (least damage when no control holds). When none qualifies, the last one."""

    def damage(row):
        return sum(
            abs(math.log(row[f"val_{s}_ppl"] / original[s]))
            for s in ("controlkg", "controllm")
            if original.get(s) and math.isfinite(row[f"val_{s}_ppl"])
        )

    qualified = [i for i, row in enumerate(rows) if qualifies(row, original, cfg)]
    if not qualified:
        return len(rows) - 1
    if cfg.prefer == "most_removal":
        held = [i for i in qualified if controls_within(rows[i], original, cfg)]
        if held:
            return max(held, key=lambda i: (rows[i]["val_targetkg_ppl"], rows[i]["step"]))
    return min(qualified, key=lambda i: (damage(rows[i]), -rows[i]["step"]))


def selection_summary(
    rows: list[dict[str, float]], index: int, original: dict[str, float], cfg: Select
) -> dict[str, Any]:
    """What meta.json records of the selection: the kept step, whether it met the criterion, the curve."""
    chosen = rows[index]
    return {
        "step": int(chosen["step"]),
        "qualified": qualifies(chosen, original, cfg),
        "criterion": dataclasses.asdict(cfg),
        "original": dict(original),
        "chosen": dict(chosen),
        "curve": [dict(row) for row in rows],
    }
