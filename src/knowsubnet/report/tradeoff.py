"""Precision of a removal: does only the target go?

Three views for the report, all as PPL ratios (PPL of the variant / PPL of the original model):

- `bars_table`: each run's test-set numbers against the bars of params `report.bars` (sparsity,
  TargetKG raised at least x-fold, the random subnetwork of the same size raising it far less,
  ControlKG and ControlLM kept within a few percent), checked by `evaluation.bars.check_bars`;
- `tradeoff_table` + `figure_tradeoff`: the validation curve of every run (each validated
  checkpoint: sparsity against TargetKG / ControlKG / ControlLM ratios, removed and random), with
  the checkpoint that `train.select` kept, from the runs' `meta.json`;
- `relation_table`: ControlKG damage per relation, so a reader sees where collateral damage lands.

`precision_section` is the report section "Precision: does only the target go?" built from them
(tables/bars.csv, tradeoff.{csv,md}, controlkg_by_relation.csv, figures/tradeoff.png).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from knowsubnet.core.io import write_text
from knowsubnet.evaluation.ablation_results import AblationMetrics, Counts
from knowsubnet.evaluation.bars import ALL_MET, BARS, check_bars
from knowsubnet.report.format import (
    SET_LABELS,
    SETS,
    Section,
    band,
    markdown_table,
    read_record,
    save_figure,
    write_csv,
)

COLORS = {"targetkg": "tab:red", "controlkg": "tab:blue", "controllm": "tab:green"}


def _or_unknown(count: int | None) -> str:
    return "?" if count is None else str(count)


def bars_table(records: Iterable[AblationMetrics], bars: dict[str, float]) -> pd.DataFrame:
    """One row per per-seed evaluation: the known / all test facts, the test-set ratios and whether
    each bar is met (`meets`: {bar: bool}; random share: see `evaluation.bars`)."""
    rows = []
    for rec in records:
        if rec.combination:
            continue
        checked = check_bars(rec, bars)
        before = rec.counts_before_known_filter or {}
        counts = rec.counts or Counts()
        row = {
            "model": rec.model,
            "target": rec.target,
            "seed": rec.seed,
            "targetkg_facts": f"{_or_unknown(counts.targetkg)} / {before.get('targetkg', '?')}",
            "controlkg_facts": f"{_or_unknown(counts.controlkg)} / {before.get('controlkg', '?')}",
            "sparsity": checked["sparsity"],
            "targetkg_x": checked["ratio_removed_targetkg"],
            "random_targetkg_x": checked["ratio_random_targetkg"],
            "random_share": checked["random_share"],
            "controlkg_x": checked["ratio_removed_controlkg"],
            "controllm_x": checked["ratio_removed_controllm"],
        }
        row["meets"] = {bar: checked[f"met_{bar}"] for bar in BARS}
        row["all_bars"] = checked["verdict"] == ALL_MET
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.sort_values(["model", "target", "seed"], kind="stable").reset_index(drop=True) if rows else frame


def bars_markdown(table: pd.DataFrame, bars: dict[str, float]) -> pd.DataFrame:
    def mark(ok: bool) -> str:
        return "" if ok else " ✗"

    out = []
    for row in table.itertuples(index=False):
        meets = row.meets
        out.append(
            {
                "model": row.model,
                "target": row.target,
                "seed": row.seed,
                "TargetKG facts (known / all)": row.targetkg_facts,
                "ControlKG facts": row.controlkg_facts,
                f"sparsity (≥ {bars['min_sparsity']:.0%})": f"{row.sparsity:.2%}{mark(meets['min_sparsity'])}",
                f"TargetKG × (≥ {bars['min_target_ratio']:g})": (
                    f"{row.targetkg_x:,.1f}{mark(meets['min_target_ratio'])}"
                ),
                "random TargetKG ×": f"{row.random_targetkg_x:.3f}",
                f"random share (≤ {bars['max_random_share']:g})": (
                    f"{row.random_share:.4f}{mark(meets['max_random_share'])}"
                ),
                f"ControlKG × ({band(bars['max_controlkg_ratio'])})": (
                    f"{row.controlkg_x:.3f}{mark(meets['max_controlkg_ratio'])}"
                ),
                f"ControlLM × ({band(bars['max_controllm_ratio'])})": (
                    f"{row.controllm_x:.3f}{mark(meets['max_controllm_ratio'])}"
                ),
                "all bars": "yes" if row.all_bars else "no",
            }
        )
    return pd.DataFrame(out)


def read_metas(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    return [read_record(path, ("model", "target", "seed"), "a discover_mask meta.json") for path in paths]


def tradeoff_table(metas: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per validated checkpoint of every run: sparsity and the validation PPL ratios of
    the removed and the random subnetwork; `selected` marks the checkpoint kept."""
    rows = []
    for meta in metas:
        selection = meta.get("selection") or {}
        original = selection.get("original") or {}
        for point in selection.get("curve") or []:
            row = {
                "model": meta["model"],
                "target": meta["target"],
                "seed": meta["seed"],
                "step": point["step"],
                "sparsity": point["val_sparsity"],
                "selected": point["step"] == selection.get("step"),
            }
            for s in SETS:
                base = original.get(s)
                for variant, key in (("removed", f"val_{s}_ppl"), ("random", f"val_random_{s}_ppl")):
                    value = point.get(key)
                    row[f"{s}_x_{variant}"] = value / base if base and value is not None else math.nan
                row[f"{s}_dppl_removed"] = point.get(f"val_{s}_ppl", math.nan) - (base or math.nan)
            rows.append(row)
    frame = pd.DataFrame(rows)
    return (
        frame.sort_values(["model", "target", "seed", "step"], kind="stable").reset_index(drop=True) if rows else frame
    )


def tradeoff_markdown(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per model × target × step."""
    columns = ["sparsity"] + [f"{s}_x_{v}" for s in SETS for v in ("removed", "random")]
    grouped = table.groupby(["model", "target", "step"], sort=True)
    means = grouped[columns].mean()
    chosen = grouped["selected"].sum()
    out = []
    for (model, target, step), row in means.iterrows():
        out.append(
            {
                "model": model,
                "target": target,
                "step": step,
                "sparsity": f"{row['sparsity']:.3%}",
                **{f"{SET_LABELS[s]} ×": f"{row[f'{s}_x_removed']:,.3f} ({row[f'{s}_x_random']:.3f})" for s in SETS},
                "kept by seeds": int(chosen[(model, target, step)]),
            }
        )
    return pd.DataFrame(out)


def figure_tradeoff(table: pd.DataFrame, bars: dict[str, float], path: Path, dpi: int) -> Path:
    """Per model × target: PPL ratio against sparsity over the validated checkpoints; solid =
    subnetwork removed, dashed = random subnetwork of the same size; stars = the kept checkpoints."""

    panels = list(table.groupby(["model", "target"], sort=True))
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, ((model, target), group) in zip(axes, panels):
        for seed, run in group.groupby("seed", sort=True):
            run = run.sort_values("step")
            x = 100 * run["sparsity"]
            for s in SETS:
                label = SET_LABELS[s] if seed == group["seed"].min() else None
                ax.plot(x, run[f"{s}_x_removed"], color=COLORS[s], marker=".", linewidth=1, label=label)
                ax.plot(x, run[f"{s}_x_random"], color=COLORS[s], linestyle="--", linewidth=0.8)
                kept = run[run["selected"]]
                ax.plot(
                    100 * kept["sparsity"],
                    kept[f"{s}_x_removed"],
                    color=COLORS[s],
                    marker="*",
                    markersize=11,
                    linestyle="none",
                )
        for value, s in (
            (bars["min_target_ratio"], "targetkg"),
            (bars["max_controlkg_ratio"], "controlkg"),
            (1 / bars["max_controlkg_ratio"], "controlkg"),
            (bars["max_controllm_ratio"], "controllm"),
            (1 / bars["max_controllm_ratio"], "controllm"),
        ):  # the control bars are two-sided
            ax.axhline(value, color=COLORS[s], linestyle=":", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("sparsity of the masked layers (%)", fontsize=8)
        ax.set_ylabel("val PPL / original", fontsize=8)
        ax.set_title(f"{model} / {target}", fontsize=9)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    axes[0].legend(fontsize=7)
    fig.suptitle(
        "Trade-off over checkpoints (solid: subnetwork removed; dashed: random, same size; ★ kept; dotted: bars)",
        fontsize=9,
    )
    return save_figure(fig, path, dpi)


def relation_table(records: Iterable[AblationMetrics]) -> pd.DataFrame:
    """ControlKG PPL ratio per relation (removed and random vs original), mean over seeds."""
    rows = []
    for rec in records:
        original = rec.original.controlkg_by_relation
        if rec.combination or original is None:
            continue
        counts = (rec.counts.controlkg_by_relation if rec.counts else None) or {}
        removed, random = rec.removed.controlkg_by_relation, rec.random.controlkg_by_relation
        for rel, base in original.items():
            rows.append(
                {
                    "model": rec.model,
                    "target": rec.target,
                    "seed": rec.seed,
                    "relation": rel,
                    "n": counts.get(rel, math.nan),
                    "removed_x": removed[rel] / base,
                    "random_x": random[rel] / base,
                }
            )
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    return (
        frame.groupby(["model", "target", "relation"], sort=True)[["n", "removed_x", "random_x"]].mean().reset_index()
    )


def precision_section(
    records: list[AblationMetrics],
    meta_paths: Sequence[str | Path],
    bars: dict[str, float],
    tables_dir: Path,
    figures_dir: Path,
    dpi: int,
) -> Section:
    """Bars, the trade-off over checkpoints (from the discovery runs' meta.json), ControlKG damage per relation."""
    lines = ["## Precision: does only the target go?", ""]
    files = {}
    table = bars_table(records, bars)
    if not table.empty:
        files["bars_csv"] = write_csv(tables_dir / "bars.csv", table.drop(columns="meets"))
        lines += [
            "Test splits, PPL of the remaining model / original (×); ✗ marks a missed bar "
            "(params `report.bars`). Random share = (random ×−1) / (removed ×−1) on TargetKG.",
            "",
            markdown_table(bars_markdown(table, bars)),
            "",
        ]
    curve = tradeoff_table(read_metas(meta_paths)) if meta_paths else pd.DataFrame()
    if not curve.empty:
        files["tradeoff_csv"] = write_csv(tables_dir / "tradeoff.csv", curve)
        text = markdown_table(tradeoff_markdown(curve))
        write_text(tables_dir / "tradeoff.md", text)
        files["tradeoff_md"] = tables_dir / "tradeoff.md"
        files["fig_tradeoff"] = figure_tradeoff(curve, bars, figures_dir / "tradeoff.png", dpi)
        lines += [
            "### Trade-off over checkpoints (validation splits)",
            "",
            "Every validated checkpoint of discovery: sparsity against PPL ratios of the removed "
            "subnetwork (random subnetwork of the same size in brackets), mean over seeds; the last "
            "column counts the seeds whose kept mask (`train.select`) is that checkpoint.",
            "",
            text,
            "",
            "![Trade-off](figures/tradeoff.png)",
            "",
        ]
    relations = relation_table(records)
    if not relations.empty:
        files["controlkg_relations_csv"] = write_csv(tables_dir / "controlkg_by_relation.csv", relations)
        shown = relations.assign(
            n=relations["n"].round(1),
            removed_x=relations["removed_x"].map("{:.3f}".format),
            random_x=relations["random_x"].map("{:.3f}".format),
        )
        lines += [
            "### ControlKG damage per relation (test, mean over seeds)",
            "",
            "Where the collateral damage lands: ControlKG PPL × per relation, removed and random.",
            "",
            markdown_table(shown),
            "",
        ]
    return Section.from_lines(lines, files)
