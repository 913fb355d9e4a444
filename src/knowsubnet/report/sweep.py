"""The search's table (the `sweep_select` stage; docs/SEARCH.md): every sweep point's validation
numbers and cost (with the validation-wording check, `evaluation.val_wordings`, where given), the point
kept per method x model x target x seed (`method.sweep.choose_point`, validation only, params
sweep.choose_by), and the kept points' test numbers in their own columns.

The choice is made before any test file is opened, and only the kept points' test headlines are
read: a test file of a point not kept is never opened.

Files: `selection.csv` (one row per point), `selection.md` (the kept points with their test
numbers, then every point), `frontier.png` (per model x target x seed: validation TargetKG x
against ControlKG x, one marker per point, the kept ones ringed, the bars drawn), and
`comparison.{csv,md,png}`: the kept points pooled over seeds with intervals (`report.seed_comparison`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from knowsubnet.core.config import Bars
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import write_text
from knowsubnet.method.sweep import SETS, WORDING_COLUMNS, choose_point, val_bars, val_row, wording_row
from knowsubnet.report.format import band, draw_bars, markdown_table, read_record, save_figure, write_csv
from knowsubnet.report.seed_comparison import seed_comparison

KEY = ("model", "target", "seed", "method")
TEST_COLUMNS = [f"test_{s}_x" for s in SETS] + ["test_verdict"]
COLUMNS = [
    "model",
    "target",
    "seed",
    "method",
    "point",
    "kept",
    "val_sparsity",
    *(f"val_{s}_x" for s in SETS),
    *WORDING_COLUMNS,
    "val_bars",
    "wall_s",
    "code_version",
    "chosen",
    "chosen_by",
    *TEST_COLUMNS,
]


def sweep_from_params(
    params,
    *,
    names: Sequence[str],
    metas: Sequence[Path],
    headlines: Sequence[Path],
    facts: Sequence[Path],
    wordings: Sequence[Path],
    out_dir: Path,
) -> pd.DataFrame:
    """The sweep_select stage: `sweep_table` over the points given as five parallel lists, one entry
    each per point, with the bars and dpi of params `report` and sweep.choose_by; then the kept
    points' comparison across seeds (`report.seed_comparison`, report.bootstrap resamples)."""
    if not len(names) == len(metas) == len(headlines) == len(facts) == len(wordings):
        raise InputError(
            f"--names, --metas, --headlines, --facts and --wordings: {len(names)}, {len(metas)}, {len(headlines)}, "
            f"{len(facts)} and {len(wordings)} files; expected one of each per point"
        )
    bars = params.report.bars
    frame = sweep_table(
        list(zip(names, metas, headlines)),
        bars,
        out_dir,
        params.report.dpi,
        wordings=wordings,
        choose_by=params.sweep.choose_by,
    )
    kept = frame[frame["chosen"]]
    # the frame's index is each point's position in the inputs (sweep_table): its facts file
    seed_comparison(kept, {i: facts[i] for i in kept.index}, bars, params.report.bootstrap, out_dir, params.report.dpi)
    return frame


def point_rows(
    points: Sequence[tuple[str, str | Path]], wordings: Sequence[str | Path] | None = None
) -> list[dict[str, Any]]:
    """One row per (point name, meta.json path): its identity and validation numbers (`val_row`),
    and its validation-wording check from the parallel list `wordings` (`wording_row`; NaN without)."""
    rows = []
    for i, (name, meta_path) in enumerate(points):
        meta = read_record(meta_path, ("model", "target", "seed"), "a sweep point's meta.json")
        check = (
            read_record(wordings[i], ("targetkg_val", "controlkg_val"), "a validation-wording check")
            if wordings
            else None
        )
        rows.append(
            {
                "model": meta["model"],
                "target": meta["target"],
                "seed": int(meta["seed"]),
                "point": name,
                **val_row(meta),
                **wording_row(check),
                # which code made the point: a table may pool points made at several commits
                "code_version": (meta.get("provenance") or {}).get("code_version", ""),
            }
        )
    return rows


def choose(rows: list[dict[str, Any]], bars: Bars, by: str) -> list[dict[str, Any]]:
    """`rows` with `val_bars`, `chosen` and `chosen_by`: one point kept per method x model x target
    x seed, from the validation columns alone."""
    out = [dict(row) for row in rows]
    for row in out:
        met = val_bars(row, bars)
        missed = [bar for bar, ok in met.items() if not ok]
        row.update(val_bars="all met" if not missed else ", ".join(missed), chosen=False, chosen_by="")
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(out):
        groups.setdefault(tuple(row[k] for k in KEY), []).append(i)
    for members in groups.values():
        kept, why = choose_point([rows[i] for i in members], bars, by)
        out[members[kept]].update(chosen=True, chosen_by=why)
    return out


def _test_numbers(path: str | Path) -> dict[str, Any]:
    headline = read_record(path, [f"ratio_removed_{s}" for s in SETS] + ["verdict"], "an evaluation headline")
    return {**{f"test_{s}_x": headline[f"ratio_removed_{s}"] for s in SETS}, "test_verdict": headline["verdict"]}


def _frontier(frame: pd.DataFrame, bars: Bars, path: Path, dpi: int) -> Path:
    groups = list(frame.groupby(["model", "target", "seed"], sort=True))
    fig = Figure(figsize=(5.0 * len(groups), 4.2))
    FigureCanvasAgg(fig)
    methods = sorted(frame["method"].unique())
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    for k, ((model, target, seed), group) in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), k + 1)
        for method, rows in group.groupby("method", sort=True):
            ax.scatter(rows["val_controlkg_x"], rows["val_targetkg_x"], color=colours[method], label=method, s=28)
            kept = rows[rows["chosen"]]
            ax.scatter(kept["val_controlkg_x"], kept["val_targetkg_x"], facecolors="none", edgecolors="black", s=110)
            for row in rows.itertuples():
                ax.annotate(
                    row.point,
                    (row.val_controlkg_x, row.val_targetkg_x),
                    fontsize=6,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        draw_bars(ax, bars, "validation")
        positive = group["val_targetkg_x"][group["val_targetkg_x"] > 0]
        if len(positive) and positive.max() / positive.min() > 20:
            ax.set_yscale("log")
        ax.set_title(f"{model} / {target} / seed {seed}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def sweep_table(
    points: Sequence[tuple[str, str | Path, str | Path]],
    bars: Bars,
    out_dir: str | Path,
    dpi: int,
    *,
    choose_by: str,
    wordings: Sequence[str | Path] | None = None,
) -> pd.DataFrame:
    """Choose on validation and write the files (module doc). `points`: (name, meta.json, test
    headline.json) per point; only the kept points' headlines are read, after the choice.
    `wordings`: each point's val_wordings.json, in the same order (None: no check)."""
    out_dir = Path(out_dir)
    rows = choose(point_rows([(name, meta) for name, meta, _ in points], wordings), bars, choose_by)
    headlines = [headline for _, _, headline in points]
    for row, headline in zip(rows, headlines):  # the choice is made: test numbers of the kept points only
        row.update(
            _test_numbers(headline)
            if row["chosen"]
            else {c: math.nan for c in TEST_COLUMNS[:-1]} | {"test_verdict": ""}
        )
    # sorted, its index kept: each row's position in `points` (sweep_from_params finds its facts by it)
    frame = pd.DataFrame(rows, columns=COLUMNS).sort_values(
        ["model", "target", "seed", "method", "point"], kind="stable"
    )
    write_csv(out_dir / "selection.csv", frame)
    kept = frame[frame["chosen"]]
    show = [
        "model",
        "target",
        "seed",
        "method",
        "point",
        "kept",
        *(f"val_{s}_x" for s in SETS),
        "val_wordings_suppressed",
        "val_relearn_text",
        "val_bars",
        "chosen_by",
        *TEST_COLUMNS,
    ]
    lines = [
        "# The search on validation",
        "",
        f"Bars (report.bars): TargetKG ≥ ×{bars.min_target_ratio:g}, sparsity ≥ {bars.min_sparsity:g} "
        f"(masks), ControlKG within {band(bars.max_controlkg_ratio)}, ControlLM within "
        f"{band(bars.max_controllm_ratio)}. Each method's point is chosen on the validation sets "
        f"(`method.sweep.choose_point`, sweep.choose_by: {choose_by}); `val_wordings_suppressed`: the share "
        "of known validation-fact sentences in the validation wordings (never the test's) that the removal "
        "suppresses (`val_wordings_random`: a random removal of its size); `val_relearn_text`: the share of "
        "the validation facts' removal that finetuning on the ControlLM validation text brings back. The "
        "`test_` columns are the test splits of the kept points only, read after the choice.",
        "",
        "## Kept per method (test columns marked test_)",
        "",
        markdown_table(kept[show]),
        "## Every point (validation)",
        "",
        markdown_table(frame[[c for c in COLUMNS if c not in TEST_COLUMNS]]),
    ]
    if len(frame):
        _frontier(frame, bars, out_dir / "frontier.png", dpi)
        lines += ["![validation frontier](frontier.png)", ""]
    write_text(out_dir / "selection.md", "\n".join(lines))
    return frame
