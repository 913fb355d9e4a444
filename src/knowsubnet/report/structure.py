"""The report section "Structure of the subnetworks": where each subnetwork lies (attention vs
MLP, per block, densest heads, most-masked neurons), from `masks.analyse_masks`.

Writes tables/structure_{matrices,blocks,kinds,heads,neurons}.csv, the .md views of blocks, kinds,
heads and neurons, and figures/density_blocks.png.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from knowsubnet.core.io import write_text
from knowsubnet.report.format import Section, fmt, markdown_table, pct, save_figure, write_csv
from knowsubnet.report.masks import MaskAnalysis


def _mean_over_seeds(frame: pd.DataFrame, keys: list[str], values: list[str]) -> pd.DataFrame:
    return frame.groupby(["model", "target", *keys], sort=True)[values].mean().reset_index()


def blocks_markdown(blocks: pd.DataFrame) -> pd.DataFrame:
    """Rows model × target; per block the density (mean over seeds) of its entries in the subnetwork."""
    mean = _mean_over_seeds(blocks, ["block"], ["density"])
    wide = mean.pivot(index=["model", "target"], columns="block", values="density").reset_index()
    wide.columns = ["Model", "Target"] + [f"block {b}" for b in wide.columns[2:]]
    for column in wide.columns[2:]:
        wide[column] = wide[column].map(pct)
    return wide


def kinds_markdown(kinds: pd.DataFrame) -> pd.DataFrame:
    mean = _mean_over_seeds(kinds, ["kind"], ["density", "share"])
    rows = []
    for (model, target), group in mean.groupby(["model", "target"], sort=True):
        row = {"Model": model, "Target": target}
        for rec in group.to_dict("records"):
            row[f"{rec['kind']} density"] = pct(rec["density"])
            row[f"{rec['kind']} share of subnetwork"] = pct(rec["share"], 1)
        rows.append(row)
    return pd.DataFrame(rows).fillna("–")


def heads_markdown(heads: pd.DataFrame, top_n: int) -> pd.DataFrame:
    """The `top_n` densest heads per model × target (mean over seeds)."""
    mean = _mean_over_seeds(heads, ["block", "matrix", "head"], ["density"])
    rows = []
    for (model, target), group in mean.groupby(["model", "target"], sort=True):
        top = group.sort_values("density", ascending=False, kind="stable").head(top_n)
        for rank, rec in enumerate(top.to_dict("records"), start=1):
            rows.append(
                {
                    "Model": model,
                    "Target": target,
                    "#": str(rank),
                    "Block": str(rec["block"]),
                    "Matrix": rec["matrix"],
                    "Head": str(rec["head"]),
                    "Density": pct(rec["density"]),
                }
            )
    return pd.DataFrame(rows)


def neurons_markdown(neurons: pd.DataFrame, top_n: int) -> pd.DataFrame:
    """Per model × target, the layers with the most masked neurons (mean over seeds)."""
    mean = _mean_over_seeds(neurons, ["layer", "side"], ["n_masked", "n_neurons", "share_masked"])
    rows = []
    for (model, target), group in mean.groupby(["model", "target"], sort=True):
        top = group.sort_values("n_masked", ascending=False, kind="stable").head(top_n)
        for rec in top.to_dict("records"):
            rows.append(
                {
                    "Model": model,
                    "Target": target,
                    "Layer": rec["layer"],
                    "Side": rec["side"],
                    "Masked neurons": fmt(rec["n_masked"]),
                    "of": fmt(rec["n_neurons"]),
                    "Share": pct(rec["share_masked"]),
                }
            )
    return pd.DataFrame(rows)


def figure_density_blocks(blocks: pd.DataFrame, path: Path, dpi: int) -> Path:
    """Share of each block's mask entries in the subnetwork (mean over seeds), one line per target."""
    mean = _mean_over_seeds(blocks, ["block"], ["density"])
    models = sorted(mean["model"].unique())
    fig = Figure(figsize=(6, 3.2 * len(models)), layout="constrained")
    axes = fig.subplots(len(models), 1, squeeze=False)[:, 0]
    for ax, model in zip(axes, models):
        sub = mean[mean["model"] == model]
        for target, group in sub.groupby("target", sort=True):
            ax.plot(group["block"], 100 * group["density"], marker="o", label=target)
        ax.set_xticks(sorted(sub["block"].unique()))
        ax.set_ylim(bottom=0)
        ax.set_xlabel("transformer block")
        ax.set_ylabel("subnetwork density (%)")
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, path, dpi)


def structure_section(result: MaskAnalysis, top_n: int, tables_dir: Path, figures_dir: Path, dpi: int) -> Section:
    """The structure tables (CSV), their Markdown views and the density-per-block figure."""
    lines = ["## Structure of the subnetworks", ""]
    files = {}
    for name in ("matrices", "blocks", "kinds", "heads", "neurons"):
        frame = getattr(result, name)
        if not frame.empty:
            files[f"structure_{name}_csv"] = write_csv(tables_dir / f"structure_{name}.csv", frame)
    views = [
        ("kinds", "Attention vs MLP (mean over seeds)", kinds_markdown),
        ("blocks", "Density per block (mean over seeds)", blocks_markdown),
        (
            "heads",
            f"Densest attention heads (top {top_n}, mean over seeds)",
            lambda frame: heads_markdown(frame, top_n),
        ),
        ("neurons", f"Layers with the most masked neurons (top {top_n})", lambda frame: neurons_markdown(frame, top_n)),
    ]
    for name, title, view in views:
        frame = getattr(result, name)
        if frame.empty:
            continue
        text = markdown_table(view(frame))
        write_text(tables_dir / f"structure_{name}.md", text)
        files[f"structure_{name}_md"] = tables_dir / f"structure_{name}.md"
        lines += [f"### {title}", "", text, ""]
    if not result.blocks.empty:
        files["fig_density_blocks"] = figure_density_blocks(result.blocks, figures_dir / "density_blocks.png", dpi)
        lines += ["![Subnetwork density per block](figures/density_blocks.png)", ""]
    return Section.from_lines(lines, files)
