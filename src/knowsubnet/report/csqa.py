"""The report section "CommonsenseQA after finetuning": accuracy of the original, remaining and
random-removed models per question group, and their differences to the original, from the
finetune_csqa results (results/csqa/{model}/{target}/seed{seed}/{mode}.json).

Writes tables/csqa.csv, csqa.md, csqa_delta.md and figures/csqa.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from knowsubnet.core.errors import InputError
from knowsubnet.core.io import write_text
from knowsubnet.report.format import Section, markdown_table, read_record, save_figure, write_csv

CSQA_VARIANTS = ("original", "remaining", "random")
CSQA_GROUPS = ("removed", "kept", "dev")
CSQA_GROUP_LABELS = {"removed": "removed target's questions", "kept": "other half's questions", "dev": "CSQA dev"}
CSQA_GROUP_TICKS = {"removed": "removed\ntarget's", "kept": "other\nhalf's", "dev": "CSQA\ndev"}


def load_csqa_results(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The finetune_csqa result files, checked for the keys the report reads."""
    records = []
    for path in paths:
        data = read_record(path, ("model", "target", "seed", "mode", "variants", "delta_vs_original"),
                           "a finetune_csqa result")
        for variant in CSQA_VARIANTS:
            groups = (data["variants"].get(variant) or {}).get("groups") or {}
            if set(CSQA_GROUPS) - set(groups):
                raise InputError(f"{path}: expected groups {', '.join(CSQA_GROUPS)} for variant {variant!r}")
        records.append(data)
    return records


def csqa_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per model x target x seed x mode x variant x group: accuracy, 95 % CI, n, and the
    difference to the original model on the same questions (paired bootstrap CI)."""
    rows = []
    for rec in records:
        for variant in CSQA_VARIANTS:
            for group in CSQA_GROUPS:
                g = rec["variants"][variant]["groups"][group]
                delta = rec["delta_vs_original"].get(variant, {}).get(group) if variant != "original" else None
                rows.append({"model": rec["model"], "target": rec["target"], "seed": rec["seed"], "mode": rec["mode"],
                             "variant": variant, "group": group, "acc": g["acc"], "ci_low": g["ci95"][0],
                             "ci_high": g["ci95"][1], "n": g["n"],
                             "diff_vs_original": delta["diff"] if delta else 0.0,
                             "diff_ci_low": delta["ci95"][0] if delta else 0.0,
                             "diff_ci_high": delta["ci95"][1] if delta else 0.0})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.sort_values(["model", "target", "mode", "seed"], kind="stable").reset_index(drop=True)


def _acc_ci(row: pd.Series) -> str:
    return f"{100 * row['acc']:.1f} % [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"


def _diff_ci(row: pd.Series) -> str:
    return (f"{100 * row['diff_vs_original']:+.1f} pts [{100 * row['diff_ci_low']:+.1f}, "
            f"{100 * row['diff_ci_high']:+.1f}]")


def csqa_markdown(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(accuracy per variant per group, differences to the original per group) as display tables."""
    acc_rows, diff_rows = [], []
    for (model, target, mode, seed), run in table.groupby(["model", "target", "mode", "seed"], sort=True):
        for variant in CSQA_VARIANTS:
            part = run[run["variant"] == variant].set_index("group")
            row = {"model": model, "target": target, "mode": mode, "seed": seed, "variant": variant}
            for group in CSQA_GROUPS:
                row[f"{CSQA_GROUP_LABELS[group]} (n={int(part.loc[group, 'n'])})"] = _acc_ci(part.loc[group])
            acc_rows.append(row)
        for variant in ("remaining", "random"):
            part = run[run["variant"] == variant].set_index("group")
            row = {"model": model, "target": target, "mode": mode, "seed": seed,
                   "difference": f"{variant} − original"}
            for group in CSQA_GROUPS:
                row[CSQA_GROUP_LABELS[group]] = _diff_ci(part.loc[group])
            removed, kept = part.loc["removed", "diff_vs_original"], part.loc["kept", "diff_vs_original"]
            row["removed − kept"] = f"{100 * (removed - kept):+.1f} pts"
            diff_rows.append(row)
    acc = pd.DataFrame(acc_rows)
    # group columns carry their n, which can differ between runs: fill missing cells
    return acc.fillna(""), pd.DataFrame(diff_rows)


def figure_csqa(table: pd.DataFrame, path: Path, dpi: int) -> Path:
    """Top: accuracy per variant per group (95 % CI, mean over seeds); bottom: remaining − original
    and random − original per group (paired 95 % CI). One column per model x target x mode."""
    runs = sorted({(m, t, mode) for m, t, mode in table[["model", "target", "mode"]].itertuples(index=False)})
    fig = Figure(figsize=(4.2 * len(runs), 6.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(2, len(runs), squeeze=False))
    colors = {"original": "tab:blue", "remaining": "tab:red", "random": "tab:gray"}
    x = np.arange(len(CSQA_GROUPS))
    for c, (model, target, mode) in enumerate(runs):
        sub = table[(table["model"] == model) & (table["target"] == target) & (table["mode"] == mode)]
        mean = sub.groupby(["variant", "group"]).mean(numeric_only=True)
        ax = axes[0, c]
        for k, variant in enumerate(CSQA_VARIANTS):
            acc = np.array([mean.loc[(variant, g), "acc"] for g in CSQA_GROUPS])
            low = np.array([mean.loc[(variant, g), "ci_low"] for g in CSQA_GROUPS])
            high = np.array([mean.loc[(variant, g), "ci_high"] for g in CSQA_GROUPS])
            ax.bar(x + (k - 1) * 0.27, 100 * acc, 0.27, yerr=100 * np.clip(np.vstack([acc - low, high - acc]), 0, None), capsize=2,
                   color=colors[variant], label=variant)
        ax.axhline(20, color="black", linewidth=0.6, linestyle=":")  # chance: 1 in 5
        ax.set_xticks(x, [CSQA_GROUP_TICKS[g] for g in CSQA_GROUPS], fontsize=7)
        ax.set_title(f"{model} / {target} / {mode}", fontsize=9)
        if c == 0:
            ax.set_ylabel("accuracy % (95 % CI; dotted: chance)")
            ax.legend(fontsize=7)
        ax = axes[1, c]
        for k, variant in enumerate(("remaining", "random")):
            diff = np.array([mean.loc[(variant, g), "diff_vs_original"] for g in CSQA_GROUPS])
            low = np.array([mean.loc[(variant, g), "diff_ci_low"] for g in CSQA_GROUPS])
            high = np.array([mean.loc[(variant, g), "diff_ci_high"] for g in CSQA_GROUPS])
            ax.bar(x + (k - 0.5) * 0.4, 100 * diff, 0.4, yerr=100 * np.clip(np.vstack([diff - low, high - diff]), 0, None), capsize=2,
                   color=colors[variant], label=f"{variant} − original")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(x, [CSQA_GROUP_TICKS[g] for g in CSQA_GROUPS], fontsize=7)
        if c == 0:
            ax.set_ylabel("accuracy difference, points (paired 95 % CI)")
            ax.legend(fontsize=7)
    return save_figure(fig, path, dpi)


def csqa_section(csqa_paths: Sequence[str | Path], tables_dir: Path, figures_dir: Path, dpi: int) -> Section | None:
    """Tables, figure and text of the CommonsenseQA finetuning results; None without any result."""
    table = csqa_table(load_csqa_results(csqa_paths))
    if table.empty:
        return None
    files = {"csqa_csv": write_csv(tables_dir / "csqa.csv", table)}
    acc, diff = csqa_markdown(table)
    acc_md, diff_md = markdown_table(acc), markdown_table(diff)
    write_text(tables_dir / "csqa.md", acc_md)
    write_text(tables_dir / "csqa_delta.md", diff_md)
    files["csqa_md"], files["csqa_delta_md"] = tables_dir / "csqa.md", tables_dir / "csqa_delta.md"
    files["fig_csqa"] = figure_csqa(table, figures_dir / "csqa.png", dpi)
    return Section.from_lines([
        "## CommonsenseQA after finetuning", "",
        "The original model, the remaining model (subnetwork removed, its weights held at zero) and a "
        "random-removed model, finetuned alike on CSQA train without any CSQA-linked question, then scored on "
        "the questions linked to the removed target, on those linked to the other half, and on dev. "
        "Accuracy with a 95 % bootstrap interval; chance is 20 %.", "", acc_md, "",
        "Difference to the original model on the same questions (paired bootstrap 95 % interval). If the "
        "removed knowledge matters downstream, remaining − original is lower on the removed target's questions "
        "than on the other half's and on dev (last column: removed − kept).", "", diff_md, "",
        "![CSQA accuracy](figures/csqa.png)", ""], files)
