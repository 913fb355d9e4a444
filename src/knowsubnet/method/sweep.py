"""The search on validation (params `sweep`; docs/SEARCH.md): a sweep point's params overlay, the
validation numbers of a finished point, and the point kept per method, on validation only.

A point is one run of the learned mask (`method: mask`) or of one baseline with `set`, a params
overlay merged over the run's params. Its stage writes the usual files (`method.discover` or
`method.baselines`); `val_row` reads the validation numbers those files already record (the kept
checkpoint or setting, chosen on the validation sets), and `choose_point` keeps one point of a
method by the same rule, two-sided. Nothing here reads a test number.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from knowsubnet.core import config
from knowsubnet.core.config import Bars, within
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import write_text
from knowsubnet.method import registry

MASK = registry.MASK
PRESET = "preset"  # the run's own mask (results/masks/...), a mask point of every sweep
SETS = ("targetkg", "controlkg", "controllm")
# wording_row's: the validation-wording check, and relearning on validation text (evaluation.val_wordings)
WORDING_COLUMNS = ("val_wordings_suppressed", "val_wordings_random", "val_wordings_controlkg_x", "val_relearn_text")
CHOOSE_BY = ("damage", "wordings", "relearning")


def point_overlay(mapping: dict[str, Any], point: str, schema: str | Path) -> dict[str, Any]:
    """The params overlay of `point` (its `set`), checked: the point is defined, and the params it
    gives, merged over `mapping`, validate and type."""
    points = (mapping.get("sweep") or {}).get("points") or {}
    if point not in points:
        raise InputError(
            f"params key 'sweep.points': no point {point!r}; defined: {', '.join(sorted(points)) or 'none'}"
        )
    overlay = points[point].get("set") or {}
    config.from_mapping(config.deep_merge(mapping, overlay), schema, source=f"params + sweep.points.{point}.set")
    return overlay


def write_point_overlay(params: dict[str, Any], *, point: str, out: Path, schema: str | Path) -> dict[str, Any]:
    """The sweep_point stage: the overlay of `point` (`point_overlay`, checked over the merged params
    `params`), written as YAML to `out` for the point's stages to merge after the run's params."""
    overlay = point_overlay(params, point, schema)
    write_text(out, yaml.safe_dump(overlay, sort_keys=True))
    return overlay


def _ratio(value: Any, original: Any) -> float:
    try:
        return float(value) / float(original) if original else math.nan
    except (TypeError, ValueError):
        return math.nan


def val_row(meta: dict[str, Any]) -> dict[str, Any]:
    """A point's validation numbers from its meta.json: the removal it keeps (a mask's checkpoint, a
    baseline's step or setting), its validation PPL ratios to the original, sparsity (masks only)
    and wall seconds. A mask's meta.json has `selection` (method.discover); a baseline's has
    `validation` (method.baselines)."""
    if "selection" in meta:
        selection = meta.get("selection") or {}
        row, original = selection.get("chosen") or {}, selection.get("original") or {}
        kept = f"step {int(row['step'])}" if "step" in row else "last step"
        sparsity = row.get("val_sparsity", math.nan)
        method = MASK
    else:
        validation = meta["validation"]
        original = validation["original"]
        row = next(r for r in validation["curve"] if r["point"] == validation["selected"])
        tuning = validation.get("tuning")
        if tuning:  # the setting kept among those tried (attribution, neurons)
            setting = tuning["tried"][tuning["kept"]]
            kept = ", ".join(
                f"{k} {v}"
                for k, v in setting.items()
                if not k.startswith("val_") and k not in ("point", "removed_weights")
            )
        else:
            finetuned = meta["method"] in registry.names(registry.FINETUNING)
            kept = f"step {int(validation['selected'])}" if finetuned else "-"
        sparsity, method = math.nan, meta["method"]
    out = {"method": method, "kept": kept, "val_sparsity": float(sparsity if sparsity is not None else math.nan)}
    for s in SETS:
        out[f"val_{s}_x"] = _ratio(row.get(f"val_{s}_ppl"), original.get(s))
    out["wall_s"] = float(meta.get("wall_time_s", math.nan))
    return out


def wording_row(result: dict[str, Any] | None) -> dict[str, float]:
    """A point's validation-wording numbers (WORDING_COLUMNS) from its val_wordings.json
    (`evaluation.val_wordings`): the share of known validation-wording sentences its removal
    suppresses, a random removal's share, the ControlKG validation facts' PPL ratio in the same
    wordings, and the share of the validation facts' removal that relearning on validation text
    recovers. NaN where nothing was known (or nothing removed, or no such check), and all NaN without a
    check (`result` None)."""
    if result is None:
        return dict.fromkeys(WORDING_COLUMNS, math.nan)
    target, control = result["targetkg_val"], result["controlkg_val"]
    relearned = (result.get("relearn_text") or {}).get("removed_held") or {}
    values = (
        target["suppressed_share"]["removed"]["share"],
        target["suppressed_share"]["random"]["share"],
        control["removed"]["ratio"],
        relearned.get("recovered"),
    )
    return {name: float(x) if x is not None else math.nan for name, x in zip(WORDING_COLUMNS, values)}


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def val_bars(row: dict[str, Any], bars: Bars) -> dict[str, bool]:
    """Which of report.bars a point meets on validation: TargetKG ratio (and sparsity where the point
    has one), ControlKG and ControlLM ratios within [1 / bar, bar] (two-sided, as the report's)."""

    sparsity, controllm = row.get("val_sparsity", math.nan), row["val_controllm_x"]
    return {
        "min_target_ratio": _finite(row["val_targetkg_x"]) and row["val_targetkg_x"] >= bars.min_target_ratio,
        "min_sparsity": not _finite(sparsity) or sparsity >= bars.min_sparsity,
        "max_controlkg_ratio": within(row["val_controlkg_x"], bars.max_controlkg_ratio),
        # no ControlLM validation blocks: no bar
        "max_controllm_ratio": not _finite(controllm) or within(controllm, bars.max_controllm_ratio),
    }


def damage(row: dict[str, Any]) -> float:
    """|log ControlKG ratio| + |log ControlLM ratio| on validation: a control that falls is damage as
    much as one that rises (`selection.select_checkpoint`'s measure)."""
    total = 0.0
    for s in ("controlkg", "controllm"):
        x = row[f"val_{s}_x"]
        if s == "controlkg" and not (_finite(x) and x > 0):
            return math.inf
        if _finite(x) and x > 0:
            total += abs(math.log(x))
    return total


def choose_point(rows: list[dict[str, Any]], bars: Bars, by: str) -> tuple[int, str]:
    """Index of the point kept among one method's `rows` (validation numbers only, `val_row`), and
    why. The mask's criterion (`train.select`, two-sided), with report.bars as its thresholds:

    1. among the points that meet every bar on validation, by="damage" (params sweep.choose_by): the
       least damage (`damage`); by="wordings": among those whose ControlKG validation facts in the
       validation wordings also stay within the ControlKG bar (two-sided: a removal that makes other
       facts easier in other wordings has changed them too), the largest share of validation-wording
       sentences suppressed (`wording_row`), then the least damage; by="relearning": among the same,
       the least removal recovered by relearning on validation text, then as by="wordings"; when none
       holds its control there, by damage;
    2. else among those that reach the TargetKG bar (and the sparsity bar where they have one), the
       least damage;
    3. else the largest log TargetKG ratio minus the damage.

    Ties go to the larger TargetKG ratio, then to the earlier row."""
    if not rows:
        raise ValueError("choose_point: no points")
    if by not in CHOOSE_BY:
        raise InputError(f"params key 'sweep.choose_by' = {by!r}: expected one of {', '.join(CHOOSE_BY)}")
    met = [val_bars(row, bars) for row in rows]

    def suppressed(i: int) -> float:  # a point without the check ranks last
        x = rows[i].get("val_wordings_suppressed", math.nan)
        return x if _finite(x) else -math.inf

    def recovered(i: int) -> float:  # a point without the check ranks last
        x = rows[i].get("val_relearn_text", math.nan)
        return x if _finite(x) else math.inf

    if by in ("wordings", "relearning"):
        held = [
            i
            for i in range(len(rows))
            if all(met[i].values())
            and within(rows[i].get("val_wordings_controlkg_x", math.nan), bars.max_controlkg_ratio)
        ]
        if held:
            key = lambda i: (-suppressed(i), damage(rows[i]), -rows[i]["val_targetkg_x"], i)  # noqa: E731
            why = "every bar on validation and ControlKG in the validation wordings, most of their sentences suppressed"
            if by == "relearning":
                key = lambda i, wordings=key: (recovered(i), *wordings(i))  # noqa: E731
                why = "every bar on validation and ControlKG in the validation wordings, least relearned on val text"
            return min(held, key=key), why
    for why, ok in (
        ("every bar on validation", lambda m: all(m.values())),
        ("TargetKG bar on validation, least control damage", lambda m: m["min_target_ratio"] and m["min_sparsity"]),
    ):
        candidates = [i for i in range(len(rows)) if ok(met[i])]
        if candidates:
            return min(candidates, key=lambda i: (damage(rows[i]), -rows[i]["val_targetkg_x"], i)), why

    def score(i):
        x = rows[i]["val_targetkg_x"]
        return (math.log(x) if _finite(x) and x > 0 else -math.inf) - damage(rows[i])

    return max(range(len(rows)), key=lambda i: (score(i), -i)), "no bar met: best log TargetKG ratio - damage"
