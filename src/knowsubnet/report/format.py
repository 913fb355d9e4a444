"""What the report's sections share: `Section` (a section's Markdown and the files it wrote),
numbers for Markdown cells, Markdown tables, and the one writer of CSV tables and PNG figures
(atomic, byte-reproducible)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from knowsubnet.core.config import Bars
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import atomic_path, read_json, write_text

# The three sets every metric is reported on, and how tables and figures name them.
SETS = ("targetkg", "controlkg", "controllm")
SET_LABELS = {"targetkg": "TargetKG", "controlkg": "ControlKG", "controllm": "ControlLM"}


@dataclass(frozen=True)
class Section:
    """One part of report.md: its Markdown and the files it wrote, {name: path} (the names are the
    keys of `build_report`'s result). A section function returns None when it has nothing to show."""

    markdown: str
    files: Mapping[str, Path] = field(default_factory=dict)

    @classmethod
    def from_lines(cls, lines: Sequence[str], files: Mapping[str, Path] | None = None) -> Section:
        return cls("\n".join(lines), dict(files or {}))


def fmt(value: Any) -> str:
    """A number for a Markdown cell: few digits, readable across magnitudes."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if not isinstance(value, (float, np.floating)):
        return str(value)
    value = float(value)
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    magnitude = abs(value)
    if magnitude >= 1e6:  # a removal with NPO's loss reaches x10^30: 3 significant digits, not 31
        return f"{value:.3g}"
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.01 or magnitude == 0:
        return f"{value:.3f}"
    return f"{value:.2e}"


def pm(mean: float, std: float) -> str:
    """mean ± std; the std is left out when undefined (a single seed)."""
    if isinstance(std, float) and math.isnan(std):
        return fmt(mean)
    return f"{fmt(mean)} ± {fmt(std)}"


def with_interval(value: float | None, low: float | None, high: float | None, digits: int = 3) -> str:
    """`value [low, high]` to `digits` significant digits; the value alone without an interval, "–" without a value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if low is None or high is None or (isinstance(low, float) and math.isnan(low)):
        return f"{value:.{digits}g}"
    return f"{value:.{digits}g} [{low:.{digits}g}, {high:.{digits}g}]"


def band(bar: float) -> str:
    """A two-sided control bar as its range: 1.1 -> "0.909–1.1" (core.config.within)."""
    return f"{1 / bar:.3g}–{bar:g}"


def pct(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.{digits}f} %"


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table; cells already strings are kept, numbers go through `fmt`."""
    if frame.empty:
        return "_(no rows)_\n"
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    lines = [header, rule]
    for row in frame.itertuples(index=False):
        cells = [cell if isinstance(cell, str) else fmt(cell) for cell in row]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    write_text(path, frame.to_csv(index=False))
    return path


def draw_bars(ax, bars: Bars, split: str) -> None:
    """On a plot of TargetKG x (y) against ControlKG x (x): the TargetKG bar, the two-sided ControlKG band,
    and the axes named for `split` ("validation", "test")."""
    ax.axhline(bars.min_target_ratio, color="grey", lw=0.8, ls="--")
    for x in (1 / bars.max_controlkg_ratio, bars.max_controlkg_ratio):
        ax.axvline(x, color="grey", lw=0.8, ls=":")
    ax.set_xlabel(f"ControlKG PPL × ({split})")
    ax.set_ylabel(f"TargetKG PPL × ({split})")


def save_figure(fig: Figure, path: Path, dpi: int) -> Path:
    with atomic_path(path) as tmp:
        # No "Software" entry: the PNG bytes depend only on the data and the drawing code.
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    return path


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text))


def read_record(path: str | Path, keys: Sequence[str], what: str) -> dict[str, Any]:
    """A stage's result file, with one InputError naming the file when it cannot be read or lacks
    one of the `keys` the report reads."""
    try:
        data = read_json(path)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read {what} ({err})") from None
    for key in keys:
        if key not in data:
            raise InputError(f"{path}: expected key {key!r} in {what}")
    return data
