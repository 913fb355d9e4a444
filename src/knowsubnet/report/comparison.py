"""The section "Other ways of removing the same knowledge": the learned mask beside the baselines
(`method.baselines`), per target, on the same test facts, metrics and robustness probes.

Files: tables/comparison.{csv,md} (one row per model x target x method x seed) and
figures/comparison_tradeoff.png (per target: TargetKG PPL x against ControlKG PPL x on the
validation sets, one line per method over its budget or training steps, and each method's test
result as a filled marker).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from knowsubnet.core.errors import InputError
from knowsubnet.core.io import write_text
from knowsubnet.evaluation.ablation_results import AblationMetrics
from knowsubnet.evaluation.bars import check_bars
from knowsubnet.evaluation.robustness import headline as robustness_headline
from knowsubnet.evaluation.robustness_results import RobustnessResult
from knowsubnet.method import registry
from knowsubnet.report.format import Section, markdown_table, read_record, save_figure, write_csv

MASK = registry.MASK
# the order of rows and legend entries (the registry's: the reference, then the baselines from
# simplest to finetuning) and their labels
METHOD_ORDER = tuple(registry.names())
METHOD_LABELS = registry.labels()
Y_CLIP = 1e4  # the figure's TargetKG axis ends here
ROBUSTNESS_COLUMNS = {
    "test_heldout_wording_ratio": "held-out wordings ×",
    "choice_acc_removed": "multiple choice (removed)",
    "quantized_4bit_targetkg_ratio": "4-bit TargetKG ×",
    "relearn_targetkg_recovered": "relearned (TargetKG)",
    "relearn_controlkg_recovered": "relearned (unrelated facts)",
}


@dataclass(frozen=True)
class ComparisonRow:
    """One run of one method: what it changed, its test ratios and verdict (`evaluation.bars`),
    the robustness headline's columns (ROBUSTNESS_COLUMNS; None without a robustness result) and
    its wall time."""

    model: str
    target: str
    method: str
    seed: int
    changed_weights: int | None
    changed_share: float
    delta_l2: float | None
    targetkg_x: float
    random_targetkg_x: float
    controlkg_x: float
    controllm_x: float
    targetkg_acc_original: float | None
    targetkg_acc_removed: float | None
    wall_time_s: float | None
    verdict: str
    test_heldout_wording_ratio: float | None = None
    choice_acc_removed: float | None = None
    quantized_4bit_targetkg_ratio: float | None = None
    relearn_targetkg_recovered: float | None = None
    relearn_controlkg_recovered: float | None = None


COLUMNS = [f.name for f in dataclasses.fields(ComparisonRow)]


@dataclass(frozen=True)
class Comparison:
    """tables/comparison.csv: one `ComparisonRow` per model x target x method x seed, in the
    section's order (the registry's methods, then seeds)."""

    rows: tuple[ComparisonRow, ...]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([dataclasses.asdict(row) for row in self.rows], columns=COLUMNS)

    def write(self, path: Path) -> Path:
        return write_csv(path, self.frame())

    @classmethod
    def read(cls, path: str | Path) -> Comparison:
        try:
            frame = pd.read_csv(path)
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: cannot read the comparison table ({err})") from None
        missing = [column for column in COLUMNS if column not in frame.columns]
        if missing:
            raise InputError(f"{path}: missing column {missing[0]!r}; expected the report's comparison table")
        # an empty cell is a None (pandas reads it as NaN)
        records = frame[COLUMNS].astype(object).where(frame[COLUMNS].notna(), None).to_dict("records")
        return cls(tuple(ComparisonRow(**record) for record in records))


def _by_run(paths: Sequence[str | Path], keys: Sequence[str], what: str) -> dict[tuple, dict[str, Any]]:
    """{(model, target, method, seed): record} of meta.json files (a record without `method` is the
    mask's). meta.json is not a typed record yet: read as a dict, checked for `keys`."""
    out = {}
    for path in paths:
        record = read_record(path, keys, what)
        out[(record["model"], record["target"], record.get("method") or MASK, int(record["seed"]))] = record
    return out


def _metrics_by_run(paths: Sequence[str | Path]) -> dict[tuple, AblationMetrics]:
    """{(model, target, method, seed): metrics} of baseline metrics files."""
    out = {}
    for path in paths:
        record = AblationMetrics.read(path)
        out[(record.model, record.target, record.method or MASK, int(record.seed))] = record
    return out


def _robustness_by_run(paths: Sequence[str | Path]) -> dict[tuple, RobustnessResult]:
    out = {}
    for path in paths:
        record = RobustnessResult.read(path)
        out[(record.model, record.target, record.method or MASK, int(record.seed))] = record
    return out


def comparison_rows(
    metrics: dict[tuple, AblationMetrics],
    metas: dict[tuple, dict],
    robustness: dict[tuple, RobustnessResult],
    bars: dict[str, float],
) -> Comparison:
    """One row per run with metrics: what each method changed, its test ratios, robustness, time."""
    rows = []
    for (model, target, method, seed), result in metrics.items():
        checked = check_bars(result, bars)
        meta = metas.get((model, target, method, seed), {})
        changed = result.changed
        probes = robustness.get((model, target, method, seed))
        summary = robustness_headline(probes) if probes else None
        rows.append(
            ComparisonRow(
                model=model,
                target=target,
                method=method,
                seed=seed,
                changed_weights=changed.changed_weights if changed else result.subnetwork_size,
                changed_share=changed.changed_share_masked_layers if changed else 1.0 - checked["sparsity"],
                delta_l2=changed.delta_l2 if changed else None,
                targetkg_x=checked["ratio_removed_targetkg"],
                random_targetkg_x=checked["ratio_random_targetkg"],
                controlkg_x=checked["ratio_removed_controlkg"],
                controllm_x=checked["ratio_removed_controllm"],
                targetkg_acc_original=result.original.targetkg.acc,
                targetkg_acc_removed=result.removed.targetkg.acc,
                wall_time_s=meta.get("wall_time_s"),
                verdict=checked["verdict"],
                **{column: getattr(summary, column) if summary else None for column in ROBUSTNESS_COLUMNS},
            )
        )
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return Comparison(tuple(sorted(rows, key=lambda r: (r.model, r.target, order.get(r.method, len(order)), r.seed))))


def validation_curves(metas: dict[tuple, dict]) -> list[dict[str, Any]]:
    """Per run, its validation points as PPL ÷ original: the mask's validated checkpoints, a
    baseline's sweep or validated steps."""
    out = []
    for (model, target, method, seed), meta in metas.items():
        if method == MASK:
            selection = meta.get("selection") or {}
            original, curve = selection.get("original", {}), selection.get("curve", [])
        else:
            validation = meta["validation"]
            original, curve = validation["original"], validation["curve"]
        if not original.get("targetkg") or not original.get("controlkg"):
            continue
        points = [
            (row["val_controlkg_ppl"] / original["controlkg"], row["val_targetkg_ppl"] / original["targetkg"])
            for row in curve
            if math.isfinite(row["val_targetkg_ppl"]) and math.isfinite(row["val_controlkg_ppl"])
        ]
        out.append({"model": model, "target": target, "method": method, "seed": seed, "points": points})
    return out


def tradeoff_figure(rows: pd.DataFrame, curves: list[dict], path: Path, dpi: int) -> Path:
    panels = sorted({(r["model"], r["target"]) for _, r in rows.iterrows()})
    fig = Figure(figsize=(5.0 * len(panels), 4.4))
    FigureCanvasAgg(fig)
    colors = {m: f"C{i}" for i, m in enumerate(METHOD_ORDER)}
    for index, (model, target) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), index + 1)
        for curve in curves:
            if (curve["model"], curve["target"]) == (model, target) and curve["points"]:
                xs, ys = zip(*sorted(curve["points"]))
                ax.plot(xs, ys, "-", color=colors[curve["method"]], alpha=0.5, linewidth=1, marker=".")
        here = rows[(rows["model"] == model) & (rows["target"] == target)]
        for method, group in here.groupby("method", sort=False):
            ax.plot(
                group["controlkg_x"],
                group["targetkg_x"],
                "o",
                color=colors[method],
                markersize=8,
                markeredgecolor="black",
                label=METHOD_LABELS.get(method, method),
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        ax.set_ylim(low, min(high, Y_CLIP))  # finetuning runs to x1e14 would flatten everything else
        ax.axhline(1.0, color="grey", linewidth=0.5)
        ax.axvline(1.0, color="grey", linewidth=0.5)
        ax.set_xlabel("ControlKG PPL ÷ original (damage)")
        ax.set_ylabel("TargetKG PPL ÷ original (removal)")
        ax.set_title(f"{target} ({model})")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(
        "Lines: validation sets over each method's budget or steps (TargetKG axis cut at ×10⁴); markers: test result"
    )
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def comparison_section(
    mask_records: Sequence[AblationMetrics],
    mask_metas: Sequence[str | Path],
    mask_robustness: Sequence[str | Path],
    baseline_metrics: Sequence[str | Path],
    baseline_metas: Sequence[str | Path],
    baseline_robustness: Sequence[str | Path],
    bars: dict[str, float],
    tables: Path,
    figures: Path,
    dpi: int,
) -> Section | None:
    """The section (module doc); None without baselines. `mask_records`: the mask's metrics as
    `report.ablation.load_metrics` read them (seed combinations are left out)."""
    if not baseline_metrics:
        return None
    metrics = {(r.model, r.target, MASK, int(r.seed)): r for r in mask_records if not r.combination}
    metrics.update(_metrics_by_run(baseline_metrics))
    metas = {
        **_by_run(mask_metas, ("model", "target", "seed"), "discovery meta"),
        **_by_run(baseline_metas, ("model", "target", "seed", "method", "validation"), "baseline meta"),
    }
    robustness = {**_robustness_by_run(mask_robustness), **_robustness_by_run(baseline_robustness)}
    comparison = comparison_rows(metrics, metas, robustness, bars)
    files = {"comparison_csv": comparison.write(tables / "comparison.csv")}
    rows = comparison.frame()
    shown = pd.DataFrame(
        {
            "target": rows["target"],
            "method": rows["method"].map(lambda m: METHOD_LABELS.get(m, m)),
            "seed": rows["seed"],
            "weights changed": rows["changed_weights"],
            "share": rows["changed_share"].map(lambda v: f"{100 * v:.2f} %"),
            "TargetKG ×": rows["targetkg_x"],
            "random ×": rows["random_targetkg_x"],
            "ControlKG ×": rows["controlkg_x"],
            "ControlLM ×": rows["controllm_x"],
            **{label: rows[column] for column, label in ROBUSTNESS_COLUMNS.items()},
            "time (s)": rows["wall_time_s"],
            "verdict": rows["verdict"],
        }
    )
    table = markdown_table(shown)
    files["comparison_md"] = tables / "comparison.md"
    write_text(files["comparison_md"], table)
    files["comparison_tradeoff"] = tradeoff_figure(
        rows, validation_curves(metas), figures / "comparison_tradeoff.png", dpi
    )
    lines = [
        "## Other ways of removing the same knowledge",
        "",
        "The learned mask beside the baselines (docs/BASELINES.md), on the same test facts. **×** is test "
        "PPL ÷ the original's; **random ×** is the same-size random counterpart of each method (for the "
        "finetuning methods: a change of the same norm per matrix in a random direction). "
        "**weights changed** counts every weight whose value differs from the original; the "
        'finetuning methods change all of them. Robustness columns as in "Removed, or only hidden?" '
        "(relearned: share of the removal's gap to the original closed by the first relearning setting, both "
        "finetuned the same way; 4-bit: TargetKG × after rounding every block weight to 4 bits). Time: discovery or "
        "the baseline's stage, wall clock. The verdict applies the same bars to every method.",
        "",
        table,
        "",
        f"![trade-off per method]({Path('figures') / 'comparison_tradeoff.png'})",
        "",
    ]
    return Section.from_lines(lines, files)
