"""The ablation metrics (evaluate_ablation and combine_seeds outputs) and their report sections.

`load_metrics` reads and checks the metrics files that every other section also reads. Sections:
"Ablation" (tables/metrics_long.csv, ablation_runs.csv, ablation.{csv,md}, figures/delta_ppl.png)
and "Seed combinations" (tables/seed_combinations.{csv,md}).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from knowsubnet.core.errors import InputError
from knowsubnet.core.io import write_text
from knowsubnet.evaluation.ablation_results import AblationMetrics
from knowsubnet.method import combination
from knowsubnet.report.format import SET_LABELS, SETS, Section, fmt, markdown_table, pct, pm, save_figure, write_csv

FACT_SETS = ("targetkg", "controlkg")
VARIANTS = ("original", "removed", "random", "kept")


def _std(values: pd.Series) -> float:
    # Spread over seeds: sample std; undefined (NaN) for a single seed.
    return float(values.std(ddof=1)) if values.count() > 1 else float("nan")


def load_metrics(paths: Sequence[str | Path]) -> list[AblationMetrics]:
    """Read and check the metrics JSON files (evaluate_ablation / combine_seeds outputs)."""
    if not paths:
        raise InputError("report: no metrics files given; expected results/eval/<model>/<target>/seed<S>/metrics.json")
    records, seen = [], {}
    for path in paths:
        record = AblationMetrics.read(path)
        if record.model is None or record.target is None:
            raise InputError(f"{path}: 'model' and 'target' must be set")
        key = (record.model, record.target, record.combination or record.seed)
        if key in seen:
            raise InputError(f"{path}: same model / target / seed as {seen[key]}")
        seen[key] = path
        records.append(record)
    return records


def metrics_long(records: Iterable[AblationMetrics]) -> pd.DataFrame:
    """One row per run × variant × set with every metric."""
    rows = []
    for rec in records:
        for variant in VARIANTS:
            metrics = rec.variant(variant)
            if metrics is None:
                continue
            for set_name in SETS:
                values = metrics.on(set_name)
                delta = rec.delta_ppl[variant].on(set_name) if variant in rec.delta_ppl else None
                if variant == "original":
                    delta = 0.0
                spread = rec.random_spread.on(set_name).ppl if variant == "random" and rec.random_spread else None
                rows.append(
                    {
                        "model": rec.model,
                        "target": rec.target,
                        "seed": rec.seed,
                        "combination": rec.combination,
                        "variant": variant,
                        "set": set_name,
                        "ppl": values.ppl,
                        "delta_ppl": delta,
                        "rank": values.rank,
                        "rank_median": values.rank_median,
                        "acc": values.acc,
                        "random_spread_ppl": spread,
                        "sparsity": rec.sparsity.masked_layers,
                    }
                )
    return pd.DataFrame(rows)


def ablation_runs(records: Iterable[AblationMetrics]) -> pd.DataFrame:
    """One row per run (per-seed runs only; seed combinations are reported separately)."""
    rows = []
    for rec in records:
        if rec.combination:
            continue
        all_weights = rec.sparsity.all_weights
        row = {
            "model": rec.model,
            "target": rec.target,
            "seed": rec.seed,
            "sparsity": rec.sparsity.masked_layers,
            "sparsity_all_weights": float("nan") if all_weights is None else all_weights,
        }
        row.update(_run_values(rec))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values(["model", "target", "seed"], kind="stable").reset_index(drop=True)
    return frame


def _run_values(rec: AblationMetrics) -> dict[str, float]:
    nan = float("nan")
    row = {}
    for s in SETS:
        row[f"{s}_ppl_original"] = rec.original.on(s).ppl
        for variant in ("removed", "random", "kept"):
            row[f"{s}_dppl_{variant}"] = rec.delta_ppl[variant].on(s) if variant in rec.delta_ppl else nan
        row[f"{s}_dppl_random_spread"] = rec.random_spread.on(s).ppl if rec.random_spread else nan
    for s in FACT_SETS:
        for variant in ("original", "removed", "random"):
            acc = rec.variant(variant).on(s).acc
            row[f"{s}_acc_{variant}"] = nan if acc is None else acc
    return row


def ablation_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per model × target: mean (and std over seeds) of every per-run value."""
    if runs.empty:
        raise InputError("report: no per-seed metrics files among the inputs (only seed combinations)")
    value_columns = [c for c in runs.columns if c not in ("model", "target", "seed")]
    rows = []
    for (model, target), group in runs.groupby(["model", "target"], sort=True):
        row = {
            "model": model,
            "target": target,
            "n_seeds": len(group),
            "seeds": ",".join(str(s) for s in sorted(group["seed"])),
        }
        for column in value_columns:
            row[f"{column}_mean"] = float(group[column].mean())
            row[f"{column}_std"] = _std(group[column])
        rows.append(row)
    return pd.DataFrame(rows)


def ablation_markdown(table: pd.DataFrame) -> pd.DataFrame:
    """The Markdown view: removed-model ΔPPL (mean ± std over seeds) with the random baseline beside it."""
    rows = []
    for rec in table.to_dict("records"):
        row = {
            "Model": rec["model"],
            "Target": rec["target"],
            "Seeds": str(rec["n_seeds"]),
            "Sparsity": pct(rec["sparsity_mean"]),
        }
        for s in SETS:
            row[f"{SET_LABELS[s]} ΔPPL removed"] = pm(rec[f"{s}_dppl_removed_mean"], rec[f"{s}_dppl_removed_std"])
            row[f"{SET_LABELS[s]} ΔPPL random"] = pm(rec[f"{s}_dppl_random_mean"], rec[f"{s}_dppl_random_std"])
        row["TargetKG acc orig → removed"] = (
            f"{pct(rec['targetkg_acc_original_mean'], 1)} → {pct(rec['targetkg_acc_removed_mean'], 1)}"
        )
        rows.append(row)
    return pd.DataFrame(rows)


def combinations_table(records: Iterable[AblationMetrics]) -> pd.DataFrame:
    """Union / intersection / majority masks: one row per model × target × combination."""
    rows = []
    for rec in records:
        if not rec.combination:
            continue
        row = {
            "model": rec.model,
            "target": rec.target,
            "combination": rec.combination,
            "seeds": ",".join(str(s) for s in rec.seeds or []),
            "sparsity": rec.sparsity.masked_layers,
        }
        row.update(_run_values(rec))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        order = {name: i for i, name in enumerate(combination.COMBINATIONS)}
        frame = frame.sort_values(
            ["model", "target", "combination"],
            key=lambda c: c.map(order) if c.name == "combination" else c,
            kind="stable",
        ).reset_index(drop=True)
    return frame


def combinations_markdown(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for rec in frame.to_dict("records"):
        row = {
            "Model": rec["model"],
            "Target": rec["target"],
            "Mask": rec["combination"],
            "Sparsity": pct(rec["sparsity"]),
        }
        for s in SETS:
            row[f"{SET_LABELS[s]} ΔPPL removed"] = fmt(rec[f"{s}_dppl_removed"])
            row[f"{SET_LABELS[s]} ΔPPL random"] = fmt(rec[f"{s}_dppl_random"])
        rows.append(row)
    return pd.DataFrame(rows)


def figure_delta_ppl(table: pd.DataFrame, path: Path, dpi: int) -> Path:
    """ΔPPL per target, removed vs random, error bars = std over seeds; one row of panels per model."""
    models = sorted(table["model"].unique())
    fig = Figure(figsize=(4.2 * len(SETS), 3.2 * len(models)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(models), len(SETS), squeeze=False))
    for r, model in enumerate(models):
        sub = table[table["model"] == model].sort_values("target")
        x = np.arange(len(sub))
        for c, s in enumerate(SETS):
            ax = axes[r, c]
            for offset, variant, color in ((-0.2, "removed", "tab:red"), (0.2, "random", "tab:gray")):
                std = np.nan_to_num(sub[f"{s}_dppl_{variant}_std"].to_numpy(dtype=float))
                ax.bar(
                    x + offset,
                    sub[f"{s}_dppl_{variant}_mean"].to_numpy(dtype=float),
                    0.4,
                    yerr=std,
                    capsize=2,
                    color=color,
                    label=f"{variant}",
                )
            ax.axhline(0, color="black", linewidth=0.6)
            # ΔPPL spans orders of magnitude between TargetKG and the controls: linear near 0, log beyond.
            ax.set_yscale("symlog", linthresh=1.0)
            ax.set_xticks(x, sub["target"].tolist(), rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{model}: {SET_LABELS[s]}", fontsize=9)
            if c == 0:
                ax.set_ylabel("ΔPPL (mean ± std over seeds)")
            if r == 0 and c == len(SETS) - 1:
                ax.legend(fontsize=7)
    return save_figure(fig, path, dpi)


def ablation_section(records: list[AblationMetrics], tables_dir: Path, figures_dir: Path, dpi: int) -> Section:
    """ΔPPL of every model × target (mean ± std over seeds), removed beside random."""
    runs = ablation_runs(records)
    table = ablation_table(runs)
    files = {
        "metrics_long": write_csv(tables_dir / "metrics_long.csv", metrics_long(records)),
        "ablation_runs": write_csv(tables_dir / "ablation_runs.csv", runs),
        "ablation_csv": write_csv(tables_dir / "ablation.csv", table),
    }
    text = markdown_table(ablation_markdown(table))
    write_text(tables_dir / "ablation.md", text)
    files["ablation_md"] = tables_dir / "ablation.md"
    files["fig_delta_ppl"] = figure_delta_ppl(table, figures_dir / "delta_ppl.png", dpi)
    return Section.from_lines(
        [
            "## Ablation: what removing the subnetwork costs",
            "",
            "Mean ± std over seeds; the random baseline removes as many weights at random.",
            "",
            text,
            "",
            "![ΔPPL by target](figures/delta_ppl.png)",
            "",
        ],
        files,
    )


def combinations_section(records: list[AblationMetrics], tables_dir: Path) -> Section | None:
    """The seed combinations' metrics (union / intersection / majority masks); None without any."""
    combos = combinations_table(records)
    if combos.empty:
        return None
    files = {"combinations_csv": write_csv(tables_dir / "seed_combinations.csv", combos)}
    text = markdown_table(combinations_markdown(combos))
    write_text(tables_dir / "seed_combinations.md", text)
    files["combinations_md"] = tables_dir / "seed_combinations.md"
    return Section.from_lines(
        [
            "## Seed combinations",
            "",
            "Masks combined over seeds (union, intersection, majority = kept by most seeds), "
            "then evaluated like a single mask.",
            "",
            text,
            "",
        ],
        files,
    )
