"""The section "Summary" at the top of the report: one row per run (model × target × seed) with its
verdict against the bars of params `report.bars`, by the same check as each run's headline.json
(`evaluation.bars.check_bars`). Files: tables/summary.{csv,md}.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from knowsubnet.core.io import write_text
from knowsubnet.evaluation.ablation_results import AblationMetrics
from knowsubnet.evaluation.bars import ALL_MET, BARS, check_bars
from knowsubnet.report.format import SET_LABELS, SETS, Section, band, fmt, markdown_table, pct, write_csv


def summary_table(records: Iterable[AblationMetrics], bars: dict[str, float]) -> pd.DataFrame:
    """One row per per-seed run: sparsity, ratio_<variant>_<set> (test PPL ÷ original, removed and
    random), random_share, met_<bar> per bar and verdict; sorted by model, target, seed."""
    rows = [
        {"model": rec.model, "target": rec.target, "seed": rec.seed, **check_bars(rec, bars)}
        for rec in records
        if not rec.combination
    ]
    frame = pd.DataFrame(rows)
    return frame.sort_values(["model", "target", "seed"], kind="stable").reset_index(drop=True) if rows else frame


def summary_markdown(table: pd.DataFrame, bars: dict[str, float]) -> pd.DataFrame:
    """The Markdown view: each value with its bar in the header, ✗ where the bar is missed, random
    beside removed, and the verdict."""

    def mark(row: dict, bar: str) -> str:
        return "" if row[f"met_{bar}"] else " ✗"

    set_bar = {"targetkg": "min_target_ratio", "controlkg": "max_controlkg_ratio", "controllm": "max_controllm_ratio"}
    out = []
    for row in table.to_dict("records"):
        shown = {
            "Model": row["model"],
            "Target": row["target"],
            "Seed": str(row["seed"]),
            f"Sparsity (≥ {pct(bars['min_sparsity'], 0)})": pct(row["sparsity"]) + mark(row, "min_sparsity"),
        }
        for s in SETS:
            bar = set_bar[s]
            limit = f"≥ {bars[bar]:g}" if s == "targetkg" else band(bars[bar])  # the controls are two-sided
            shown[f"{SET_LABELS[s]} × removed (random) ({limit})"] = (
                f"{fmt(row[f'ratio_removed_{s}'])}{mark(row, bar)} ({fmt(row[f'ratio_random_{s}'])})"
            )
        shown[f"Random share (≤ {bars['max_random_share']:g})"] = fmt(row["random_share"]) + mark(
            row, "max_random_share"
        )
        shown["Verdict"] = row["verdict"]
        out.append(shown)
    return pd.DataFrame(out)


def summary_section(records: list[AblationMetrics], bars: dict[str, float], tables_dir: Path) -> Section | None:
    """Every run's verdict against the bars; None without per-seed runs."""
    table = summary_table(records, bars)
    if table.empty:
        return None
    files = {"summary_csv": write_csv(tables_dir / "summary.csv", table)}
    text = markdown_table(summary_markdown(table, bars))
    write_text(tables_dir / "summary.md", text)
    files["summary_md"] = tables_dir / "summary.md"
    met = int((table["verdict"] == ALL_MET).sum())
    return Section.from_lines(
        [
            "## Summary",
            "",
            f"{met} of {len(table)} runs meet every bar (params `report.bars`: {', '.join(BARS)}). "
            "× = test PPL of the model with the subnetwork removed ÷ the original's (random subnetwork of the "
            "same size in brackets); ✗ marks a missed bar. Each run's headline.json (`dvc metrics show`) "
            "holds the same verdict.",
            "",
            text,
            "",
        ],
        files,
    )
