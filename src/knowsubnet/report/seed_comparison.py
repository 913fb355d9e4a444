"""The comparison across seeds (the `sweep_select` stage; docs/SEARCH.md, "The comparison across seeds"):
each method at the point it kept on validation, per model x target, its test numbers pooled over its seeds
with 95 % intervals, and its differences from the learned mask with the intervals that decide whether
the data support them.

A method's TargetKG x (ControlKG x) over seeds is exp(mean over seeds and known test facts of NLL removed -
NLL original): the geometric mean of its seeds' headline ratios, since every seed scores the same test
facts. Its interval resamples the seeds and the facts together (`core.bootstrap`). A difference from
the mask resamples the facts once for both (they are the same facts: the pairing that makes the
comparison sharp) and each method's seeds on their own (seed k of one method has nothing to do with
seed k of another):

- `targetkg_vs_mask`: the method's TargetKG x ÷ the mask's;
- `controlkg_vs_mask`: exp(|log ControlKG x of the method| - |log of the mask's|): above 1, the method's
  ControlKG moved further from x1 than the mask's, either way (a control that falls is damage too).

A difference is supported when its interval excludes 1. ControlLM (PPL over WikiText blocks, not facts)
has no fact to resample: the geometric mean over seeds, with the seeds' range.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from knowsubnet.core import bootstrap
from knowsubnet.core.config import Bars, within
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import write_text
from knowsubnet.core.provenance import code_version
from knowsubnet.report.format import band, draw_bars, markdown_table, save_figure, with_interval, write_csv

FACT_SETS = ("targetkg", "controlkg")  # the sets scored per fact in the evaluation's facts.parquet
MASK = "mask"
BOOTSTRAP_SEED = 0  # fixed: the intervals of a table are the same on every machine
COLUMNS = [
    "model",
    "target",
    "method",
    "points",
    "seeds",
    "targetkg_x",
    "targetkg_low",
    "targetkg_high",
    "controlkg_x",
    "controlkg_low",
    "controlkg_high",
    "controllm_x",
    "controllm_min",
    "controllm_max",
    "bars_missed",
    "targetkg_vs_mask",
    "targetkg_vs_mask_low",
    "targetkg_vs_mask_high",
    "controlkg_vs_mask",
    "controlkg_vs_mask_low",
    "controlkg_vs_mask_high",
    "supported",
]


def fact_log_ratios(path: str | Path) -> dict[str, pd.Series]:
    """Per set of FACT_SETS, each known test fact's NLL removed - NLL original (index: the fact's uuid)."""
    try:
        frame = pd.read_parquet(path, columns=["set", "uuid", "known", "nll_original", "nll_removed"])
    except (OSError, ValueError, KeyError) as err:  # missing file or column
        raise InputError(
            f"{path}: cannot read the evaluation's facts table ({err}); expected evaluate_ablation's facts.parquet"
        ) from err
    known = frame[frame["known"]]
    return {
        name: pd.Series((rows["nll_removed"] - rows["nll_original"]).to_numpy(float), index=rows["uuid"].to_numpy())
        for name in FACT_SETS
        for rows in [known[known["set"] == name]]
    }


def _seed_matrix(per_seed: list[tuple[str, pd.Series]], uuids: pd.Index) -> np.ndarray:
    """[seeds, facts] log ratios in the order of `uuids`; a seed scored on other facts stops, naming its file."""
    rows = []
    for path, series in per_seed:
        if len(series) != len(uuids) or not series.index.isin(uuids).all():
            raise InputError(
                f"{path}: scores {len(series)} known facts, not the {len(uuids)} of the other runs of this target; "
                "expected every seed and method evaluated on the same test split"
            )
        rows.append(series.reindex(uuids).to_numpy())
    return np.stack(rows)


def _draw_means(matrix: np.ndarray, seed_idx: np.ndarray, fact_idx: np.ndarray) -> np.ndarray:
    """Bootstrap means of a [seeds, facts] matrix: one mean per row of `seed_idx` [n_boot, seeds] and
    `fact_idx` [n_boot, facts]."""
    if matrix.shape[1] == 0:
        return np.full(len(seed_idx), np.nan)
    return matrix[seed_idx[:, :, None], fact_idx[:, None, :]].mean(axis=(1, 2))


def _interval(draws: np.ndarray) -> tuple[float, float]:
    if np.isnan(draws).any():
        return math.nan, math.nan
    low, high = bootstrap.interval(draws)
    return math.exp(low), math.exp(high)


def _bars_missed(row: dict, verdicts: Sequence[str], bars: Bars) -> list[str]:
    """The bars the pooled numbers of `row` miss, and min_sparsity where any seed's test verdict named it."""
    met = {
        "min_sparsity": not any("min_sparsity" in verdict for verdict in verdicts),
        "min_target_ratio": row["targetkg_x"] >= bars.min_target_ratio,
        "max_controlkg_ratio": within(row["controlkg_x"], bars.max_controlkg_ratio),
        "max_controllm_ratio": within(row["controllm_x"], bars.max_controllm_ratio),
    }
    return [bar for bar, ok in met.items() if not ok]


def compare_group(kept: pd.DataFrame, facts: Mapping[int, str | Path], bars: Bars, n_boot: int, rng_seed) -> list[dict]:
    """One row per method of one model x target: `kept` holds the kept points (one per method x seed, with
    their test columns), `facts` each kept row's facts.parquet by the row's index. The facts' draws are the
    target's (`rng_seed`), shared by every method so that a difference from the mask resamples the same facts."""
    ratios = {i: fact_log_ratios(facts[i]) for i in kept.index}
    first = ratios[kept.index[0]]
    uuids = {name: first[name].index for name in FACT_SETS}
    rng = np.random.default_rng(rng_seed)
    fact_idx = {name: rng.integers(0, len(uuids[name]), size=(n_boot, len(uuids[name]))) for name in FACT_SETS}
    rows, draws = [], {}
    for method, runs in kept.groupby("method", sort=True):
        runs = runs.sort_values("seed")
        n_seeds = len(runs)
        # the seeds' draws from the method's own stream: its row is the same whichever methods share the table
        seed_idx = np.random.default_rng([*rng_seed, _crc(method)]).integers(0, n_seeds, size=(n_boot, n_seeds))
        row = {
            "model": runs["model"].iloc[0],
            "target": runs["target"].iloc[0],
            "method": method,
            "points": ", ".join(dict.fromkeys(runs["point"])),
            "seeds": n_seeds,
            "supported": "",  # filled against the mask below
        }
        for name in FACT_SETS:
            matrix = _seed_matrix([(str(facts[i]), ratios[i][name]) for i in runs.index], uuids[name])
            draws[method, name] = _draw_means(matrix, seed_idx, fact_idx[name])
            row[f"{name}_x"] = math.exp(matrix.mean()) if matrix.size else math.nan
            row[f"{name}_low"], row[f"{name}_high"] = _interval(draws[method, name])
        controllm = runs["test_controllm_x"].to_numpy(float)
        row |= {
            "controllm_x": float(np.exp(np.log(controllm).mean())),
            "controllm_min": controllm.min(),
            "controllm_max": controllm.max(),
        }
        row["bars_missed"] = ", ".join(_bars_missed(row, list(runs["test_verdict"]), bars))
        rows.append(row)
    mask = next((row for row in rows if row["method"] == MASK), None)
    for row in rows:
        if mask is not None and row is not mask:
            _versus_mask(row, mask, draws)
    return rows


def _versus_mask(row: dict, mask: dict, draws: dict) -> None:
    """The method's differences from the mask (module doc) with their intervals, and the supported ones."""
    method = row["method"]
    target = draws[method, "targetkg"] - draws[MASK, "targetkg"]
    control = np.abs(draws[method, "controlkg"]) - np.abs(draws[MASK, "controlkg"])
    row["targetkg_vs_mask"] = row["targetkg_x"] / mask["targetkg_x"]
    row["controlkg_vs_mask"] = math.exp(abs(math.log(row["controlkg_x"])) - abs(math.log(mask["controlkg_x"])))
    row["targetkg_vs_mask_low"], row["targetkg_vs_mask_high"] = _interval(target)
    row["controlkg_vs_mask_low"], row["controlkg_vs_mask_high"] = _interval(control)
    if math.isnan(row["targetkg_vs_mask_low"]) or math.isnan(row["controlkg_vs_mask_low"]):
        row["supported"] = "undefined: no known test fact in a set"
        return
    said = []
    if row["targetkg_vs_mask_low"] > 1.0:
        said.append("removes more TargetKG than the mask")
    elif row["targetkg_vs_mask_high"] < 1.0:
        said.append("removes less TargetKG than the mask")
    if row["controlkg_vs_mask_low"] > 1.0:
        said.append("moves ControlKG more than the mask")
    elif row["controlkg_vs_mask_high"] < 1.0:
        said.append("moves ControlKG less than the mask")
    row["supported"] = "; ".join(said) or "no difference from the mask"


def group_stream(model: str, target: str) -> list[int]:
    """The bootstrap stream of one model x target, from its names: its intervals are the same whichever other
    targets share the table (a stream by position in the table moved them when a target was added)."""
    return [BOOTSTRAP_SEED, _crc(f"{model}/{target}")]


def _crc(name: str) -> int:
    return zlib.crc32(name.encode())


def seed_comparison(
    kept: pd.DataFrame, facts: Mapping[int, str | Path], bars: Bars, n_boot: int, out_dir: str | Path, dpi: int
) -> pd.DataFrame:
    """comparison.csv, comparison.md and comparison.png in `out_dir` from the kept rows of the search's
    table (`kept`, with the test columns) and each kept row's test facts.parquet by the row's index."""
    rows: list[dict] = []
    for (model, target), group in kept.groupby(["model", "target"], sort=True):
        rows += compare_group(group, facts, bars, n_boot, group_stream(model, target))
    table = pd.DataFrame(rows, columns=COLUMNS)
    out_dir = Path(out_dir)
    write_csv(out_dir / "comparison.csv", table)
    lines = comparison_markdown(table, bars) + made_by(kept)
    if len(table):
        _figure(table, bars, out_dir / "comparison.png", dpi)
        lines += "\n![test trade-off, pooled over seeds](comparison.png)\n"
    write_text(out_dir / "comparison.md", lines)
    return table


def made_by(kept: pd.DataFrame) -> str:
    """The table's provenance: the code that pooled it, and the code versions that made its kept points."""
    versions = kept.get("code_version", pd.Series("", index=kept.index)).fillna("").replace("", "unrecorded")
    counts = ", ".join(f"`{v}` ({n})" for v, n in sorted(versions.value_counts().items()))
    return f"\nPooled by knowsubnet `{code_version()}` from {len(kept)} kept points, made by: {counts}.\n"


def _figure(table: pd.DataFrame, bars: Bars, path: Path, dpi: int) -> Path:
    """Per model x target, test TargetKG x against ControlKG x with both intervals, one marker per method."""
    groups = list(table.groupby(["model", "target"], sort=True))
    fig = Figure(figsize=(5.0 * len(groups), 4.2))
    FigureCanvasAgg(fig)
    for k, ((model, target), group) in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), k + 1)
        for i, row in enumerate(group.itertuples(index=False)):
            xerr = [[row.controlkg_x - row.controlkg_low], [row.controlkg_high - row.controlkg_x]]
            yerr = [[row.targetkg_x - row.targetkg_low], [row.targetkg_high - row.targetkg_x]]
            ax.errorbar(row.controlkg_x, row.targetkg_x, xerr=xerr, yerr=yerr, fmt="o", color=f"C{i}", capsize=3,
                        label=f"{row.method} ({row.seeds} seed{'s' if row.seeds > 1 else ''})")  # fmt: skip
        draw_bars(ax, bars, "test")
        ax.set_yscale("log")
        ax.set_title(f"{model} / {target}: kept points, 95 % intervals", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def comparison_markdown(table: pd.DataFrame, bars: Bars) -> str:
    header = [
        "model / target",
        "method (kept points)",
        "seeds",
        f"TargetKG × (≥ {bars.min_target_ratio:g})",
        f"ControlKG × ({band(bars.max_controlkg_ratio)})",
        f"ControlLM × ({band(bars.max_controllm_ratio)}; seeds' range)",
        "bars missed",
        "TargetKG ÷ mask's",
        "ControlKG distance from ×1 ÷ mask's",
        "what the intervals support",
    ]
    lines = []
    for row in table.itertuples(index=False):
        lines.append(
            [
                f"{row.model} / {row.target}",
                f"{row.method} ({row.points})",
                row.seeds,
                with_interval(row.targetkg_x, row.targetkg_low, row.targetkg_high),
                with_interval(row.controlkg_x, row.controlkg_low, row.controlkg_high),
                f"{row.controllm_x:.4g} ({row.controllm_min:.4g}–{row.controllm_max:.4g})",
                row.bars_missed or "none",
                with_interval(row.targetkg_vs_mask, row.targetkg_vs_mask_low, row.targetkg_vs_mask_high),
                with_interval(row.controlkg_vs_mask, row.controlkg_vs_mask_low, row.controlkg_vs_mask_high),
                row.supported or "–",
            ]
        )
    intro = (
        "# Every method at its kept point, pooled over seeds (test splits)\n\n"
        "Each method at the point it kept on validation (per seed), its test numbers pooled over its seeds: "
        "× is the geometric mean over seeds of the PPL ratio to the original's. 95 % intervals in brackets "
        "resample seeds and test facts together; a difference from the mask resamples the same facts for "
        "both, and is supported when its interval excludes 1. One seed: the intervals are over facts only.\n\n"
    )
    return intro + markdown_table(pd.DataFrame(lines, columns=header)) + "\n"
