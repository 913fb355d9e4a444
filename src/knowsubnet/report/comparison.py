"""The section "Other ways of removing the same knowledge": the learned mask beside the baselines
(`method.baselines`), per target, on the same test facts, metrics and robustness probes.

Files: tables/comparison.{csv,md} (one row per model x target x method x seed) and
figures/comparison_tradeoff.png (per target: TargetKG PPL x against ControlKG PPL x on the
validation sets, one line per method over its budget or training steps, and each method's test
result as a filled marker).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from knowsubnet.evaluation.bars import check_bars
from knowsubnet.core.io import write_text
from knowsubnet.evaluation.robustness import headline as robustness_headline
from knowsubnet.method import registry
from knowsubnet.report.format import Section, markdown_table, read_record, save_figure, write_csv

MASK = registry.MASK
# the order of rows and legend entries (the registry's: the reference, then the baselines from
# simplest to finetuning) and their labels
METHOD_ORDER = tuple(registry.names())
METHOD_LABELS = registry.labels()
Y_CLIP = 1e4  # the figure's TargetKG axis ends here
ROBUSTNESS_COLUMNS = {"test_heldout_wording_ratio": "held-out wordings ×",
                      "choice_acc_removed": "multiple choice (removed)",
                      "quantized_4bit_targetkg_ratio": "4-bit TargetKG ×",
                      "relearn_targetkg_recovered": "relearned (TargetKG)",
                      "relearn_controlkg_recovered": "relearned (unrelated facts)"}


def _key(record: dict[str, Any]) -> tuple:
    return record["model"], record["target"], int(record["seed"])


def _by_run(paths: Sequence[str | Path], keys: Sequence[str], what: str) -> dict[tuple, dict[str, Any]]:
    """{(model, target, method, seed): record} of result files (a record without `method` is the mask's)."""
    out = {}
    for path in paths:
        record = read_record(path, keys, what)
        out[(*_key(record)[:2], record.get("method") or MASK, int(record["seed"]))] = record
    return out


def comparison_rows(metrics: dict[tuple, dict], metas: dict[tuple, dict], robustness: dict[tuple, dict],
                    bars: dict[str, float]) -> pd.DataFrame:
    """One row per run with metrics: what each method changed, its test ratios, robustness, time."""
    rows = []
    for (model, target, method, seed), result in metrics.items():
        checked = check_bars(result, bars)
        meta = metas.get((model, target, method, seed), {})
        changed = result.get("changed") or {}
        row = {"model": model, "target": target, "method": method, "seed": seed,
               "changed_weights": changed.get("changed_weights", result.get("subnetwork_size")),
               "changed_share": changed.get("changed_share_masked_layers", 1.0 - checked["sparsity"]),
               "delta_l2": changed.get("delta_l2"),
               "targetkg_x": checked["ratio_removed_targetkg"], "random_targetkg_x": checked["ratio_random_targetkg"],
               "controlkg_x": checked["ratio_removed_controlkg"], "controllm_x": checked["ratio_removed_controllm"],
               "targetkg_acc_original": result["original"]["targetkg"]["acc"],
               "targetkg_acc_removed": result["removed"]["targetkg"]["acc"],
               "wall_time_s": meta.get("wall_time_s"), "verdict": checked["verdict"]}
        probes = robustness.get((model, target, method, seed))
        summary = robustness_headline(probes) if probes else {}
        row.update({column: summary.get(column) for column in ROBUSTNESS_COLUMNS})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["order"] = frame["method"].map({m: i for i, m in enumerate(METHOD_ORDER)})
    return frame.sort_values(["model", "target", "order", "seed"]).drop(columns="order").reset_index(drop=True)


def validation_curves(metas: dict[tuple, dict]) -> list[dict[str, Any]]:
    """Per run, its validation points as PPL ÷ original: the mask's validated checkpoints, a
    baseline's sweep or validated steps."""
    out = []
    for (model, target, method, seed), meta in metas.items():
        if method == MASK:
            selection = meta.get("selection") or {}
            original, curve = selection.get("original", {}), selection.get("curve", [])
        else:
            original, curve = meta["validation"]["original"], meta["validation"]["curve"]
        if not original.get("targetkg") or not original.get("controlkg"):
            continue
        points = [(row["val_controlkg_ppl"] / original["controlkg"], row["val_targetkg_ppl"] / original["targetkg"])
                  for row in curve if math.isfinite(row["val_targetkg_ppl"]) and math.isfinite(row["val_controlkg_ppl"])]
        out.append({"model": model, "target": target, "method": method, "seed": seed, "points": points})
    return out


def tradeoff_figure(rows: pd.DataFrame, curves: list[dict], path: Path, dpi: int) -> Path:
    panels = sorted({(r["model"], r["target"]) for _, r in rows.iterrows()})
    fig = Figure(figsize=(5.0 * len(panels), 4.4))
    FigureCanvasAgg(fig)
    colors = {m: f"C{i}" for i, m in enumerate(METHOD_ORDER)}
    for index, (model, target) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), index + 1)
        for curve in curves:
            if (curve["model"], curve["target"]) == (model, target) and curve["points"]:
                xs, ys = zip(*sorted(curve["points"]))
                ax.plot(xs, ys, "-", color=colors[curve["method"]], alpha=0.5, linewidth=1, marker=".")
        here = rows[(rows["model"] == model) & (rows["target"] == target)]
        for method, group in here.groupby("method", sort=False):
            ax.plot(group["controlkg_x"], group["targetkg_x"], "o", color=colors[method], markersize=8,
                    markeredgecolor="black", label=METHOD_LABELS.get(method, method))
        ax.set_xscale("log")
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        ax.set_ylim(low, min(high, Y_CLIP))  # finetuning runs to x1e14 would flatten everything else
        ax.axhline(1.0, color="grey", linewidth=0.5)
        ax.axvline(1.0, color="grey", linewidth=0.5)
        ax.set_xlabel("ControlKG PPL ÷ original (damage)")
        ax.set_ylabel("TargetKG PPL ÷ original (removal)")
        ax.set_title(f"{target} ({model})")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Lines: validation sets over each method's budget or steps (TargetKG axis cut at ×10⁴); "
                 "markers: test result")
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def comparison_section(mask_records: Sequence[dict[str, Any]], mask_metas: Sequence[str | Path],
                       mask_robustness: Sequence[str | Path], baseline_metrics: Sequence[str | Path],
                       baseline_metas: Sequence[str | Path], baseline_robustness: Sequence[str | Path],
                       bars: dict[str, float], tables: Path, figures: Path, dpi: int) -> Section | None:
    """The section (module doc); None without baselines. `mask_records`: the mask's metrics as
    `report.ablation.load_metrics` read them (seed combinations are left out)."""
    if not baseline_metrics:
        return None
    keys = ("model", "target", "seed", "original", "removed", "random")
    metrics = {(*_key(r)[:2], MASK, int(r["seed"])): r for r in mask_records if not r.get("combination")}
    metrics.update(_by_run(baseline_metrics, keys, "baseline ablation metrics"))
    metas = {**_by_run(mask_metas, ("model", "target", "seed"), "discovery meta"),
             **_by_run(baseline_metas, ("model", "target", "seed", "method", "validation"), "baseline meta")}
    robustness = {**_by_run(mask_robustness, ("model", "target", "seed"), "robustness results"),
                  **_by_run(baseline_robustness, ("model", "target", "seed"), "baseline robustness results")}
    rows = comparison_rows(metrics, metas, robustness, bars)
    files = {"comparison_csv": write_csv(tables / "comparison.csv", rows)}
    shown = pd.DataFrame({
        "target": rows["target"], "method": rows["method"].map(lambda m: METHOD_LABELS.get(m, m)),
        "seed": rows["seed"], "weights changed": rows["changed_weights"],
        "share": rows["changed_share"].map(lambda v: f"{100 * v:.2f} %"),
        "TargetKG ×": rows["targetkg_x"], "random ×": rows["random_targetkg_x"],
        "ControlKG ×": rows["controlkg_x"], "ControlLM ×": rows["controllm_x"],
        **{label: rows[column] for column, label in ROBUSTNESS_COLUMNS.items()},
        "time (s)": rows["wall_time_s"], "verdict": rows["verdict"]})
    table = markdown_table(shown)
    files["comparison_md"] = tables / "comparison.md"
    write_text(files["comparison_md"], table)
    files["comparison_tradeoff"] = tradeoff_figure(rows, validation_curves(metas), figures / "comparison_tradeoff.png",
                                                   dpi)
    lines = [
        "## Other ways of removing the same knowledge", "",
        "The learned mask beside the baselines (docs/BASELINES.md), on the same test facts. **×** is test "
        "PPL ÷ the original's; **random ×** is the same-size random counterpart of each method (for the "
        "finetuning methods: a change of the same norm per matrix in a random direction). "
        "**weights changed** counts every weight whose value differs from the original; the "
        "finetuning methods change all of them. Robustness columns as in \"Removed, or only hidden?\" "
        "(relearned: share of the removal's gap to the original closed by the first relearning setting, both "
        "finetuned the same way; 4-bit: TargetKG × after rounding every block weight to 4 bits). Time: discovery or "
        "the baseline's stage, wall clock. The verdict applies the same bars to every method.", "",
        table, "",
        f"![trade-off per method]({Path('figures') / 'comparison_tradeoff.png'})", ""]
    return Section.from_lines(lines, files)

