"""The report section "CommonsenseQA after finetuning": accuracy of the original, remaining and
random-removed models per question group, the difference of differences that answers whether the
removal costs the questions that need the removed facts (with its paired interval and minimal
detectable effect), and the answer-length check; from the finetune_csqa results
(results/csqa/{model}/{target}/seed{seed}/{mode}.json).

Writes tables/csqa.csv, csqa.md, csqa_effect.md, csqa_length.md and figures/csqa.png.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from knowsubnet.core.errors import InputError
from knowsubnet.core.io import write_text
from knowsubnet.evaluation.csqa_result import CsqaResult, Difference
from knowsubnet.report.format import Section, markdown_table, save_figure, write_csv

CSQA_VARIANTS = ("original", "remaining", "random")
CSQA_GROUPS = ("removed_known", "removed", "kept", "dev", "dev_matched")
CSQA_GROUP_LABELS = {
    "removed_known": "removed, known and suppressed",
    "removed": "removed, all",
    "kept": "other half",
    "dev": "CSQA dev",
    "dev_matched": "dev, length-matched",
}
CSQA_GROUP_TICKS = {
    "removed_known": "removed\nknown",
    "removed": "removed\nall",
    "kept": "other\nhalf",
    "dev": "CSQA\ndev",
    "dev_matched": "dev\nmatched",
}
RUN_KEYS = ["model", "target", "seed", "mode"]
# diff_of_diffs' contrasts and group pairs in the order the tables show them (the JSON's keys are
# sorted, knowsubnet.core.io.write_json); downstream.csqa.finetune's CONTRASTS[:2] and DOD_PAIRS
CSQA_DOD_CONTRASTS = ("remaining - original", "remaining - random")
CSQA_DOD_PAIRS = ("removed_known vs kept", "removed vs kept", "removed_known vs dev_matched")


def load_csqa_results(paths: Sequence[str | Path]) -> list[CsqaResult]:
    """The finetune_csqa result files, checked for the groups the report reads."""
    records = []
    for path in paths:
        record = CsqaResult.read(path)
        for variant in CSQA_VARIANTS:
            if set(CSQA_GROUPS) - set(record.accuracy.get(variant) or {}):
                raise InputError(
                    f"{path}: expected groups {', '.join(CSQA_GROUPS)} for variant {variant!r}; re-run finetune_csqa"
                )
        records.append(record)
    return records


def _run_keys(rec: CsqaResult) -> dict[str, Any]:
    return {"model": rec.model, "target": rec.target, "seed": rec.seed, "mode": rec.mode}


def csqa_table(records: Iterable[CsqaResult]) -> pd.DataFrame:
    """One row per model x target x mask seed x mode x variant x group: accuracy over the finetuning
    seeds with its 95 % interval (questions and seeds resampled), n, and the difference to the
    original and to the random model on the same questions (paired)."""
    rows = []
    for rec in records:
        for variant in CSQA_VARIANTS:
            for group in CSQA_GROUPS:
                g = rec.accuracy[variant][group]
                row = {
                    **_run_keys(rec),
                    "finetune_seeds": len(rec.finetune_seeds),
                    "variant": variant,
                    "group": group,
                    "acc": g.acc,
                    "ci_low": g.ci95[0],
                    "ci_high": g.ci95[1],
                    "n": g.n,
                }
                for other in ("original", "random"):
                    delta = rec.delta.get(f"{variant} - {other}", {}).get(group)
                    row[f"diff_vs_{other}"] = delta.diff if delta else None
                    row[f"diff_vs_{other}_ci_low"], row[f"diff_vs_{other}_ci_high"] = (
                        delta.ci95 if delta else [None, None]
                    )
                rows.append(row)
    frame = pd.DataFrame(rows)
    return frame if frame.empty else frame.sort_values(RUN_KEYS, kind="stable").reset_index(drop=True)


def _pct(value) -> str:
    return "–" if value is None or pd.isna(value) else f"{100 * value:.1f}"


def _acc_ci(row: pd.Series) -> str:
    if row["n"] == 0:
        return "– (n=0)"
    return f"{_pct(row['acc'])} % [{_pct(row['ci_low'])}, {_pct(row['ci_high'])}] (n={int(row['n'])})"


def _effect(d: Difference) -> str:
    if d.diff is None:
        return "–"
    low, high = d.ci95
    return f"{100 * d.diff:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}]"


def accuracy_markdown(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per variant (rows) and group (columns) of each run, n in each cell (it differs
    between targets)."""
    rows = []
    for key, run in table.groupby(RUN_KEYS, sort=True):
        for variant in CSQA_VARIANTS:
            part = run[run["variant"] == variant].set_index("group")
            row = {
                **dict(zip(RUN_KEYS, key)),
                "finetune seeds": int(part["finetune_seeds"].iloc[0]),
                "variant": variant,
            }
            for group in CSQA_GROUPS:
                row[CSQA_GROUP_LABELS[group]] = _acc_ci(part.loc[group])
            rows.append(row)
    return pd.DataFrame(rows)


def _in_order(mapping: dict[str, Any], order: Sequence[str]) -> list[str]:
    """The keys of `mapping`: those of `order` in its order, then any others sorted."""
    return [k for k in order if k in mapping] + sorted(set(mapping) - set(order))


def effect_markdown(records: Iterable[CsqaResult]) -> pd.DataFrame:
    """The differences of differences of each run, with their paired 95 % interval and minimal
    detectable effect (80 % power, 5 % two-sided)."""
    rows = []
    for rec in records:
        for contrast in _in_order(rec.diff_of_diffs, CSQA_DOD_CONTRASTS):
            pairs = rec.diff_of_diffs[contrast]
            for pair in _in_order(pairs, CSQA_DOD_PAIRS):
                d = pairs[pair]
                group, reference = pair.split(" vs ")
                rows.append(
                    {
                        **_run_keys(rec),
                        "difference": contrast,
                        "on": f"{CSQA_GROUP_LABELS[group]} (n={d.n})",
                        "minus on": f"{CSQA_GROUP_LABELS[reference]} (n={d.n_reference})",
                        "difference of differences [95 % CI]": _effect(d),
                        "detectable at 80 % power": "–" if d.mde is None else f"±{100 * d.mde:.1f} pts",
                    }
                )
    return pd.DataFrame(rows)


def length_markdown(records: Iterable[CsqaResult]) -> pd.DataFrame:
    """Per run and variant, on CSQA dev: how often the model picks a multi-word option against how
    often the answer is one, and accuracy by answer length."""
    rows = []
    for rec in records:
        for variant in CSQA_VARIANTS:
            d = rec.dev_length(variant)
            rows.append(
                {
                    **_run_keys(rec),
                    "variant": variant,
                    "picks multi-word %": _pct(d.picked_multiword),
                    "answer multi-word %": _pct(d.answer_multiword),
                    "options multi-word %": _pct(d.options_multiword),
                    "acc, one-word answer %": f"{_pct(d.acc_one_word)} (n={d.n_one_word})",
                    "acc, multi-word answer %": f"{_pct(d.acc_multiword)} (n={d.n_multiword})",
                    "prefers length": "yes" if d.biased else "no",
                }
            )
    return pd.DataFrame(rows)


def detection_lines(records: Iterable[CsqaResult]) -> list[str]:
    """One plain sentence per run: what it found on the main contrast and what it can detect."""
    lines = []
    for rec in records:
        d = rec.main_effect()
        seeds = len(rec.finetune_seeds)
        run = (
            f"{rec.model} / {rec.target} (mask seed {rec.seed}, {rec.mode} mode, "
            f"{seeds} finetuning seed{'s' if seeds != 1 else ''})"
        )
        if d.diff is None:
            lines.append(f"- {run}: no removed fact was both known and suppressed, so there is nothing to test.")
            continue
        low, high = d.ci95
        found = (
            "a cost on the removed questions"
            if high < 0
            else "a gain on the removed questions"
            if low > 0
            else "no difference it can tell from zero"
        )
        lines.append(
            f"- {run}: {found}, {_effect(d)} on {d.n} questions against {d.n_reference}; it "
            f"detects effects of ±{100 * d.mde:.1f} points or more (80 % power) and cannot tell "
            f"smaller ones from zero."
        )
    return lines


def figure_csqa(table: pd.DataFrame, path: Path, dpi: int) -> Path:
    """Top: accuracy per variant per group (95 % CI); bottom: remaining − original and remaining −
    random per group (paired 95 % CI). One column per model x target x mode (first mask seed)."""
    runs = sorted({(m, t, mode) for m, t, mode in table[["model", "target", "mode"]].itertuples(index=False)})
    fig = Figure(figsize=(5.0 * len(runs), 6.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(2, len(runs), squeeze=False))
    colors = {"original": "tab:blue", "remaining": "tab:red", "random": "tab:gray"}
    x = np.arange(len(CSQA_GROUPS))

    def bars(ax, values, low, high, offset, width, color, label):
        values, low, high = (np.array(v, dtype=float) for v in (values, low, high))
        err = np.nan_to_num(np.clip(np.vstack([values - low, high - values]), 0, None))
        ax.bar(x + offset, 100 * np.nan_to_num(values), width, yerr=100 * err, capsize=2, color=color, label=label)

    for c, (model, target, mode) in enumerate(runs):
        sub = table[(table["model"] == model) & (table["target"] == target) & (table["mode"] == mode)]
        sub = sub[sub["seed"] == sub["seed"].min()].set_index(["variant", "group"])
        ax = axes[0, c]
        for k, variant in enumerate(CSQA_VARIANTS):
            part = sub.loc[variant].reindex(CSQA_GROUPS)
            bars(ax, part["acc"], part["ci_low"], part["ci_high"], (k - 1) * 0.27, 0.27, colors[variant], variant)
        ax.axhline(20, color="black", linewidth=0.6, linestyle=":")  # chance: 1 in 5
        ax.set_xticks(x, [CSQA_GROUP_TICKS[g] for g in CSQA_GROUPS], fontsize=7)
        ax.set_title(f"{model} / {target} / {mode}", fontsize=9)
        ax = axes[1, c]
        part = sub.loc["remaining"].reindex(CSQA_GROUPS)
        for k, other in enumerate(("original", "random")):
            bars(
                ax,
                part[f"diff_vs_{other}"],
                part[f"diff_vs_{other}_ci_low"],
                part[f"diff_vs_{other}_ci_high"],
                (k - 0.5) * 0.4,
                0.4,
                colors[other],
                f"remaining − {other}",
            )
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(x, [CSQA_GROUP_TICKS[g] for g in CSQA_GROUPS], fontsize=7)
        if c == 0:
            axes[0, 0].set_ylabel("accuracy % (95 % CI; dotted: chance)")
            axes[0, 0].legend(fontsize=7)
            ax.set_ylabel("accuracy difference, points (paired 95 % CI)")
            ax.legend(fontsize=7)
    return save_figure(fig, path, dpi)


def csqa_section(csqa_paths: Sequence[str | Path], tables_dir: Path, figures_dir: Path, dpi: int) -> Section | None:
    """Tables, figure and text of the CommonsenseQA finetuning results; None without any result."""
    records = load_csqa_results(csqa_paths)
    table = csqa_table(records)
    if table.empty:
        return None
    files = {"csqa_csv": write_csv(tables_dir / "csqa.csv", table)}
    texts = {
        "csqa_md": markdown_table(accuracy_markdown(table)),
        "csqa_effect_md": markdown_table(effect_markdown(records)),
        "csqa_length_md": markdown_table(length_markdown(records)),
    }
    for key, text in texts.items():
        files[key] = tables_dir / f"{key[:-3]}.md"
        write_text(files[key], text)
    files["fig_csqa"] = figure_csqa(table, figures_dir / "csqa.png", dpi)
    return Section.from_lines(
        [
            "## CommonsenseQA after finetuning",
            "",
            "The original model, the remaining model (subnetwork removed, its weights held at zero) and a "
            "random-removed model (one random removal per finetuning seed), finetuned alike on CSQA train without "
            "the CSQA-linked questions and their siblings. Scored on the questions linked to the removed facts "
            "(those the model knew and the removal suppressed, and all of them), on the other half's linked "
            "questions, on CSQA dev and on the dev questions shaped like the linked ones (a one-word answer and a "
            "multi-word distractor). Accuracy over the finetuning seeds with a 95 % bootstrap interval (questions "
            "and seeds resampled); chance is 20 %.",
            "",
            texts["csqa_md"],
            "",
            "Whether the removal costs the questions that need it: the difference of differences, (remaining − "
            "original) on the removed questions minus the same on the other half's, paired across models, with "
            "its 95 % interval. An interval spanning zero rules out only effects larger than the last column "
            "(the minimal detectable effect at this design's group sizes).",
            "",
            texts["csqa_effect_md"],
            "",
            *detection_lines(records),
            "",
            "Answer length on CSQA dev: a scorer that prefers longer options picks multi-word options more "
            "often than both the answers are multi-word and a length-blind guess would.",
            "",
            texts["csqa_length_md"],
            "",
            "![CSQA accuracy](figures/csqa.png)",
            "",
        ],
        files,
    )
