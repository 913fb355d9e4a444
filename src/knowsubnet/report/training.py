"""The report section "Mask training": the last logged step of every discovery run
(tables/training_final.csv) and its training curves (figures/training_<model>_<target>.png), from
the runs' train_log.csv files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from knowsubnet.core.errors import InputError
from knowsubnet.report.format import Section, markdown_table, save_figure, slug, write_csv

CURVE_COLUMNS = ("loss", "suppress", "controlkg", "controllm", "sparsity_loss", "density")


def read_train_logs(paths: Sequence[str | Path]) -> pd.DataFrame:
    """All train_log.csv files, with model / target / seed taken from `.../{model}/{target}/seed{S}/`."""
    frames = []
    for path in paths:
        path = Path(path)
        try:
            frame = pd.read_csv(path)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise InputError(f"{path}: cannot read training log ({err})") from None
        if "step" not in frame.columns:
            raise InputError(f"{path}: no 'step' column; expected a train_log.csv of discover_mask")
        parts = path.parts
        seed_dir = parts[-2] if len(parts) >= 2 else ""
        frame.insert(
            0, "seed", int(seed_dir[4:]) if seed_dir[4:].isdigit() and seed_dir.startswith("seed") else seed_dir
        )
        frame.insert(0, "target", parts[-3] if len(parts) >= 3 else "")
        frame.insert(0, "model", parts[-4] if len(parts) >= 4 else "")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def training_final(logs: pd.DataFrame) -> pd.DataFrame:
    """The last logged step of every run."""
    last = logs.sort_values("step", kind="stable").groupby(["model", "target", "seed"], sort=True).tail(1)
    return last.sort_values(["model", "target", "seed"], kind="stable").reset_index(drop=True)


def figure_training(logs: pd.DataFrame, model: str, target: str, path: Path, dpi: int) -> Path:
    columns = [c for c in CURVE_COLUMNS if c in logs.columns] or [
        c for c in logs.columns if c not in ("model", "target", "seed", "step")
    ][:6]
    ncols = min(3, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    fig = Figure(figsize=(3.6 * ncols, 2.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, column in zip(axes, columns):
        for seed, group in logs.groupby("seed", sort=True):
            ax.plot(group["step"], group[column], label=f"seed {seed}", linewidth=1)
        ax.set_title(column, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    for ax in axes[len(columns) :]:
        ax.set_axis_off()
    axes[0].legend(fontsize=7)
    fig.suptitle(f"mask training: {model} / {target}", fontsize=10)
    return save_figure(fig, path, dpi)


def training_section(log_paths: Sequence[str | Path], tables_dir: Path, figures_dir: Path, dpi: int) -> Section:
    """The final step of every run as a table, and one figure of curves per model × target."""
    logs = read_train_logs(log_paths)
    final = training_final(logs)
    files = {"training_final_csv": write_csv(tables_dir / "training_final.csv", final)}
    shown = [
        c
        for c in ("model", "target", "seed", "step", "loss", "suppress", "controlkg", "controllm", "density")
        if c in final.columns
    ]
    lines = ["## Mask training", "", "Last logged step of every run:", "", markdown_table(final[shown]), ""]
    for (model, target), group in logs.groupby(["model", "target"], sort=True):
        name = f"training_{slug(model)}_{slug(target)}.png"
        files[f"fig_{name}"] = figure_training(group, model, target, figures_dir / name, dpi)
        lines += [f"- [{model} / {target}](figures/{name})"]
    lines.append("")
    return Section.from_lines(lines, files)
