"""The report's section "Removed, or only hidden?": tables and figures of the evaluate_robustness
results (`evaluation.robustness`), one row per model x target x seed.

`section` returns (lines, files); `robustness_section` gives the same as a `format.Section`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from knowsubnet.core.io import write_text
from knowsubnet.report.format import Section, fmt, markdown_table, pct, read_record, save_figure, write_csv

# (column, label) of the ratios drawn in the figure, removed beside random
RATIO_PROBES = [("in_sample", "in-sample"), ("held_out", "held-out"), ("paraphrases", "paraphrases"),
                ("false_tails", "false tails"), ("foreign_heads", "foreign heads"), ("same_head", "same heads")]


def load(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    keys = ("model", "target", "seed", "held_out", "paraphrases", "multiple_choice", "relearning", "specificity",
            "controlkg_kl")
    return [read_record(path, keys, "an evaluate_robustness result") for path in paths]


def _ratio(section: dict | None, variant: str = "removed") -> dict[str, Any]:
    empty = {"ratio": None, "low": None, "high": None, "n_facts": 0}
    return (section or {}).get(variant) or empty


def runs_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per model x target x seed, every headline number with its interval."""
    rows = []
    for rec in records:
        held, para, spec = rec["held_out"], rec["paraphrases"], rec["specificity"]
        choice = rec["multiple_choice"]["targetkg"]
        row: dict[str, Any] = {"model": rec["model"], "target": rec["target"], "seed": rec["seed"],
                               "holdout": held["holdout"]}
        sources = {"in_sample": held["in_sample"], "held_out": held["held_out"], "paraphrases": para["targetkg"],
                   "false_tails": spec["false_tails"], "foreign_heads": spec["foreign_heads"],
                   "same_head": spec["same_head_other_facts"], "controlkg": held["controlkg"],
                   "paraphrases_controlkg": para["controlkg"]}
        for name, section in sources.items():
            for variant in ("removed", "random"):
                value = _ratio(section, variant)
                row[f"{name}_{variant}"] = value["ratio"]
                row[f"{name}_{variant}_low"], row[f"{name}_{variant}_high"] = value["low"], value["high"]
            row[f"{name}_facts"] = _ratio(section)["n_facts"]
        shares = para["suppressed_share"]
        row.update(paraphrase_share_removed=shares["removed"]["share"], paraphrase_share_removed_low=shares["removed"]["low"],
                   paraphrase_share_removed_high=shares["removed"]["high"], paraphrase_share_random=shares["random"]["share"])
        for variant in ("original", "removed", "random"):
            row[f"choice_acc_{variant}"] = choice[variant]["share"]
        row["choice_acc_removed_low"], row["choice_acc_removed_high"] = choice["removed"]["low"], choice["removed"]["high"]
        row["choice_candidates"] = rec["multiple_choice"].get("candidates_per_fact")
        for data in ("targetkg", "unrelated"):
            runs = rec["relearning"].get(data) or {}
            for setup in ("removed_held", "removed_free"):
                row[f"relearn_{data}_{setup}"] = (runs.get(setup) or {}).get("recovered_fraction")
            for setup in ("original", "random_held"):
                row[f"relearn_{data}_{setup}_ratio"] = (runs.get(setup) or {}).get("ratio_to_original")
        row["controlkg_kl_removed"], row["controlkg_kl_random"] = rec["controlkg_kl"]["removed"], rec["controlkg_kl"]["random"]
        for other, section in spec["other_targets"].items():
            row[f"other:{other}"] = _ratio(section)["ratio"]
        row["wall_time_s"] = sum((rec.get("wall_time_s") or {}).values())
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["model", "target", "seed"], kind="stable").reset_index(drop=True)


def _x(row: pd.Series, name: str, variant: str = "removed") -> str:
    value = row.get(f"{name}_{variant}")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    low, high = row.get(f"{name}_{variant}_low"), row.get(f"{name}_{variant}_high")
    return f"×{fmt(value)} [{fmt(low)}, {fmt(high)}]"


def _frac(value) -> str:
    return "undefined" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def summary_markdown(table: pd.DataFrame) -> pd.DataFrame:
    """Probes 1-3: TargetKG ratios (removed, 95 % interval over facts; random beside)."""
    out = []
    for _, row in table.iterrows():
        out.append({
            "model / target / seed": f"{row['model']} / {row['target']} / {row['seed']}",
            "in-sample × (random)": f"{_x(row, 'in_sample')} ({fmt(row['in_sample_random'])})",
            "held-out × (random)": (f"{_x(row, 'held_out')} ({fmt(row['held_out_random'])}); {row['held_out_facts']} facts"
                                    if row["holdout"] else "not held out"),
            "paraphrases × (random)": f"{_x(row, 'paraphrases')} ({fmt(row['paraphrases_random'])})",
            "paraphrases suppressed (random)": (f"{pct(row['paraphrase_share_removed'], 0)} [{pct(row['paraphrase_share_removed_low'], 0)}, "
                                                f"{pct(row['paraphrase_share_removed_high'], 0)}] ({pct(row['paraphrase_share_random'], 0)})"),
            "multiple choice top-1: original → removed (random)": (
                f"{pct(row['choice_acc_original'], 0)} → {pct(row['choice_acc_removed'], 0)} ({pct(row['choice_acc_random'], 0)})"),
        })
    return pd.DataFrame(out)


def relearn_markdown(table: pd.DataFrame) -> pd.DataFrame:
    """Probe 4: recovered fraction of the removal after relearning, and what the same finetune does
    to the original and the random-removed model (PPL ÷ original before finetuning)."""
    out = []
    for _, row in table.iterrows():
        entry = {"model / target / seed": f"{row['model']} / {row['target']} / {row['seed']}"}
        for data, label in (("targetkg", "other TargetKG facts"), ("unrelated", "unrelated facts")):
            entry[f"{label}: recovered, held at 0 / free"] = (f"{_frac(row[f'relearn_{data}_removed_held'])} / "
                                                             f"{_frac(row[f'relearn_{data}_removed_free'])}")
            entry[f"{label}: original ×, random ×"] = (f"×{fmt(row[f'relearn_{data}_original_ratio'])}, "
                                                      f"×{fmt(row[f'relearn_{data}_random_held_ratio'])}")
        out.append(entry)
    return pd.DataFrame(out)


def specificity_markdown(table: pd.DataFrame) -> pd.DataFrame:
    """Probe 5: ratios on sentences that are not the target's true facts, and the ControlKG KL."""
    out = []
    for _, row in table.iterrows():
        out.append({
            "model / target / seed": f"{row['model']} / {row['target']} / {row['seed']}",
            "false tails ×": _x(row, "false_tails"),
            "foreign heads ×": _x(row, "foreign_heads"),
            "same heads, other facts ×": _x(row, "same_head"),
            "ControlKG × (random)": f"{_x(row, 'controlkg')} ({fmt(row['controlkg_random'])})",
            "ControlKG paraphrases ×": _x(row, "paraphrases_controlkg"),
            "ControlKG KL removed (random)": f"{row['controlkg_kl_removed']:.4f} ({row['controlkg_kl_random']:.4f})",
        })
    return pd.DataFrame(out)


def specificity_matrix(records: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """Per model: mask target (rows) x scored TargetKG (columns), PPL ratio removed / original,
    geometric mean over seeds (the diagonal is the target's own held-out or in-sample test facts)."""
    cells: dict[str, dict[tuple[str, str], list[float]]] = {}
    for rec in records:
        model_cells = cells.setdefault(rec["model"], {})
        own = rec["held_out"]["held_out"] or rec["held_out"]["in_sample"]
        model_cells.setdefault((rec["target"], rec["target"]), []).append(_ratio(own)["ratio"])
        for other, section in rec["specificity"]["other_targets"].items():
            model_cells.setdefault((rec["target"], other), []).append(_ratio(section)["ratio"])
    out = {}
    for model, values in cells.items():
        names = sorted({a for a, _ in values} | {b for _, b in values})
        matrix = pd.DataFrame(np.nan, index=names, columns=names)
        for (a, b), ratios in values.items():
            ratios = [r for r in ratios if r is not None]
            if ratios:
                matrix.loc[a, b] = math.exp(float(np.mean(np.log(ratios))))
        out[model] = matrix
    return out


def figure(table: pd.DataFrame, matrices: dict[str, pd.DataFrame], path: Path, dpi: int) -> Path:
    """Left: TargetKG PPL ratio per probe, removed vs random (95 % intervals), per run. Right: the
    specificity matrix of the first model."""
    runs = table.assign(label=table["target"] + " s" + table["seed"].astype(str))
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax, mat_ax = fig.subplots(1, 2, width_ratios=[1.6, 1])
    x = np.arange(len(runs))
    width = 0.8 / len(RATIO_PROBES)
    colors = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"]
    for k, (name, label) in enumerate(RATIO_PROBES):
        value = runs[f"{name}_removed"].astype(float).to_numpy()
        low = runs[f"{name}_removed_low"].astype(float).to_numpy()
        high = runs[f"{name}_removed_high"].astype(float).to_numpy()
        err = np.clip(np.vstack([value - low, high - value]), 0, None)
        pos = x + (k - (len(RATIO_PROBES) - 1) / 2) * width
        ax.bar(pos, value, width, yerr=np.nan_to_num(err), capsize=1.5, color=colors[k], label=label)
        ax.scatter(pos, runs[f"{name}_random"].astype(float), marker="_", color="black", s=40, zorder=3)
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.axhline(10.0, color="grey", linewidth=0.6, linestyle="--")
    ax.set_yscale("log")
    ax.set_xticks(x, runs["label"], fontsize=7, rotation=30)
    ax.set_ylabel("TargetKG PPL ÷ original (black: random)")
    ax.set_title("Removed, or only hidden?", fontsize=9)
    ax.legend(fontsize=6, ncols=2)
    if matrices:
        model, matrix = sorted(matrices.items())[0]
        image = mat_ax.imshow(np.log10(matrix.to_numpy(dtype=float)), cmap="viridis")
        mat_ax.set_xticks(range(len(matrix.columns)), matrix.columns, fontsize=7, rotation=30)
        mat_ax.set_yticks(range(len(matrix.index)), matrix.index, fontsize=7)
        mat_ax.set_xlabel("TargetKG scored")
        mat_ax.set_ylabel("mask of target")
        mat_ax.set_title(f"{model}: log10 PPL ratio", fontsize=9)
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                if not math.isnan(matrix.iat[i, j]):
                    mat_ax.text(j, i, f"×{fmt(matrix.iat[i, j])}", ha="center", va="center", fontsize=6, color="white")
        fig.colorbar(image, ax=mat_ax, shrink=0.8)
    return save_figure(fig, path, dpi)


def section(paths: Sequence[str | Path], tables_dir: Path, figures_dir: Path, dpi: int) -> tuple[list[str], dict[str, Path]]:
    """The report lines and the files written (tables/robustness*.{csv,md}, figures/robustness.png)."""
    records = load(paths)
    if not records:
        return [], {}
    table = runs_table(records)
    matrices = specificity_matrix(records)
    written = {"robustness_csv": write_csv(tables_dir / "robustness.csv", table)}
    parts = {"robustness_md": summary_markdown(table), "robustness_relearn_md": relearn_markdown(table),
             "robustness_specificity_md": specificity_markdown(table)}
    texts = {}
    for name, frame in parts.items():
        texts[name] = markdown_table(frame)
        path = tables_dir / f"{name.removesuffix('_md')}.md"
        write_text(path, texts[name])
        written[name] = path
    for model, matrix in matrices.items():
        written[f"specificity_{model}"] = write_csv(tables_dir / f"specificity_{model}.csv", matrix.reset_index(names="mask"))
    written["fig_robustness"] = figure(table, matrices, figures_dir / "robustness.png", dpi)
    matrix_md = [markdown_table(m.map(lambda v: "–" if math.isnan(v) else f"×{fmt(v)}").reset_index(names=f"{model}: mask of"))
                 for model, m in sorted(matrices.items())]
    lines = ["## Removed, or only hidden?", "",
             "The original, remaining and random-removed models on facts and wordings beyond the ones that trained "
             "the mask (stage evaluate_robustness). × = PPL ÷ original, averaged over facts, with a 95 % bootstrap "
             "interval over facts; random-removed in brackets. In-sample: the TargetKG facts that trained the mask. "
             "Held-out: test facts no training, selection or template choice of the removal read "
             "(`split.targetkg_holdout`). Paraphrases: the test facts in every other wording of their relation, two "
             "of them never scored by any earlier stage; suppressed = PPL ≥ `robustness.suppressed_ratio` × the "
             "original's. Multiple choice: the true tail has the lowest NLL among the candidates.", "",
             texts["robustness_md"], "",
             "### Relearning", "",
             "The masked layers finetuned for `robustness.relearn` steps on other TargetKG facts (held out: the train "
             "facts) or on unrelated ControlKG facts, then scored on TargetKG facts they did not see. Recovered = "
             "1 − gap after / gap before, a gap being log PPL remaining − log PPL original, the original finetuned "
             "the same way: 0 = the gap is untouched, 1 = closed; undefined where the removal was under ×2. The "
             "same finetune of the original and of the random-removed model (PPL ÷ the original before "
             "finetuning) is shown beside it.", "", texts["robustness_relearn_md"], "",
             "### Specificity", "",
             "False tails: the test facts' templates with other tails of the relation; foreign heads: with ControlKG "
             "heads. If these degrade as much as the true facts, the removal broke the wording, not the facts. Same "
             "heads: facts about the TargetKG's heads that are not in it (other relations). ControlKG KL: mean "
             "KL(original ‖ variant) of the next-token distributions at the tail positions, a two-sided check.", "",
             texts["robustness_specificity_md"], "", "Each target's mask on every run target's TargetKG test facts "
             "(geometric mean over seeds):", "", *matrix_md, "", "![Robustness](figures/robustness.png)", ""]
    return lines, written


def robustness_section(paths: Sequence[str | Path], tables_dir: Path, figures_dir: Path, dpi: int) -> Section | None:
    """`section` as a Section, like the report's other sections; None without results."""
    lines, files = section(paths, tables_dir, figures_dir, dpi)
    return Section.from_lines(lines, files) if lines else None
