"""The report section "Overlap": Jaccard overlap of the subnetworks between seeds (per model ×
target) and between targets (the combined mask of each target's seeds), from `masks.analyse_masks`.

Writes tables/overlap_seeds.csv, overlap_targets.csv, overlap.md and figures/overlap_seeds.png,
overlap_targets.png.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from knowsubnet.core.io import write_text
from knowsubnet.report.format import Section, fmt, markdown_table, save_figure, write_csv
from knowsubnet.report.masks import MaskAnalysis


def overlap_markdown(overlap_seeds: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (model, target), group in overlap_seeds.groupby(["model", "target"], sort=True):
        rows.append(
            {
                "Model": model,
                "Target": target,
                "Seed pairs": str(len(group)),
                "Mean Jaccard": fmt(group["jaccard"].mean()),
                "Min": fmt(group["jaccard"].min()),
                "Max": fmt(group["jaccard"].max()),
            }
        )
    return pd.DataFrame(rows)


def _heatmap(ax, matrix: pd.DataFrame, title: str):
    values = matrix.to_numpy(dtype=float)
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(matrix.columns)), matrix.columns, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(matrix.index)), matrix.index, fontsize=7)
    ax.set_title(title, fontsize=9)
    if len(matrix) <= 8:  # annotate small matrices; large ones would be unreadable
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                ax.text(
                    j,
                    i,
                    fmt(values[i, j]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if values[i, j] < 0.5 else "black",
                )
    return image


def figure_heatmaps(
    matrices: dict[Any, pd.DataFrame], titles: dict[Any, str], path: Path, dpi: int, suptitle: str
) -> Path:
    keys = sorted(matrices)
    ncols = min(4, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(3.4 * ncols + 0.8, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    image = None
    for ax, key in zip(axes, keys):
        image = _heatmap(ax, matrices[key], titles[key])
    for ax in axes[len(keys) :]:
        ax.set_axis_off()
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="Jaccard")
    fig.suptitle(suptitle, fontsize=10)
    return save_figure(fig, path, dpi)


def overlap_section(result: MaskAnalysis, combine: str, tables_dir: Path, figures_dir: Path, dpi: int) -> Section:
    """Overlap tables (CSV, and one Markdown file for the section's text) and the heatmaps; `combine`
    is the seed combination the between-target overlap used (params `report.combine`)."""
    files = {
        "overlap_seeds_csv": write_csv(tables_dir / "overlap_seeds.csv", result.overlap_seeds),
        "overlap_targets_csv": write_csv(tables_dir / "overlap_targets.csv", result.overlap_targets),
    }
    parts = ["### Between seeds", "", markdown_table(overlap_markdown(result.overlap_seeds))]
    for model, matrix in sorted(result.target_matrices.items()):
        shown = matrix.reset_index().rename(columns={"index": "target"})
        parts += [f"### Between targets: {model} ({combine} mask of each target's seeds)", "", markdown_table(shown)]
    text = "\n".join(parts)
    write_text(tables_dir / "overlap.md", text)
    files["overlap_md"] = tables_dir / "overlap.md"
    lines = ["## Overlap", "", text, ""]
    if result.seed_matrices:
        titles = {key: f"{key[0]} / {key[1]}" for key in result.seed_matrices}
        files["fig_overlap_seeds"] = figure_heatmaps(
            result.seed_matrices, titles, figures_dir / "overlap_seeds.png", dpi, "Jaccard overlap between seeds"
        )
        lines += ["![Jaccard between seeds](figures/overlap_seeds.png)", ""]
    if result.target_matrices:
        titles = {model: model for model in result.target_matrices}
        files["fig_overlap_targets"] = figure_heatmaps(
            result.target_matrices,
            titles,
            figures_dir / "overlap_targets.png",
            dpi,
            f"Jaccard overlap between targets ({combine} masks)",
        )
        lines += ["![Jaccard between targets](figures/overlap_targets.png)", ""]
    return Section.from_lines(lines, files)
