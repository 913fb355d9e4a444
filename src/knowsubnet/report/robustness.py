"""The report's section "Removed, or only hidden?": one table per question asked of the
evaluate_robustness results (`evaluation.robustness`), one row per model x target x seed (and per
wording set, k, rounding or relearning setting), every ratio with its 95 % interval.

`section` returns (lines, files); `robustness_section` gives the same as a `format.Section`.
tables/robustness.csv has every number in long form (run, question, measure, variant, value,
interval), so a table here can be rebuilt or cut another way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from knowsubnet.core.io import write_text
from knowsubnet.evaluation.relearning import DATA
from knowsubnet.evaluation.robustness_results import (
    InContext,
    RatioCI,
    Ratios,
    Relearned,
    RobustnessResult,
    ShareCI,
    WordingGroup,
)
from knowsubnet.evaluation.robustness_stats import pooled_ratio_ci
from knowsubnet.report.format import Section, fmt, markdown_table, pct, save_figure, write_csv

WORDING_LABELS = {
    "train_heldout": "train facts, held-out wordings (in-sample facts)",
    "test_heldout": "test facts, held-out wordings",
    "test_trained": "test facts, trained wordings",
    "controlkg_heldout": "ControlKG test facts, held-out wordings",
}
# (label, getter) of the TargetKG ratios drawn in the figure, removed beside random
FIGURE_PROBES = [
    ("in-sample", lambda r: r.held_out.in_sample),
    ("held-out", lambda r: r.held_out.held_out),
    ("held-out wordings", lambda r: r.wordings.test_heldout),
    ("trained wordings", lambda r: r.wordings.test_trained),
    ("false tails", lambda r: r.specificity.false_tails),
    ("foreign heads", lambda r: r.specificity.foreign_heads),
]
EMPTY = RatioCI(ratio=None, low=None, high=None, n_facts=0)
# A finetune that raises the original's PPL on the scored facts this much has ruined it there
ORIGINAL_RUINED = 2.0


def load(paths: Sequence[str | Path]) -> list[tuple[RobustnessResult, Path]]:
    """The results, each with its folder (sentences.parquet beside it), sorted by model, target, seed."""
    loaded = [(RobustnessResult.read(path), Path(path).parent) for path in paths]
    return sorted(loaded, key=lambda pair: (pair[0].model, pair[0].target, pair[0].seed))


def _run(rec: RobustnessResult) -> str:
    return f"{rec.model} / {rec.target} / {rec.seed}"


def _x(section: Ratios | InContext | WordingGroup | None, variant: str = "removed") -> str:
    value = (getattr(section, variant) if section else None) or EMPTY
    if value.ratio is None:
        return "–"
    return f"×{fmt(value.ratio)} [{fmt(value.low)}, {fmt(value.high)}]"


def _xr(section: Ratios | InContext | WordingGroup | None) -> str:
    """Removed with its interval, random in brackets."""
    random = ((section.random if section else None) or EMPTY).ratio
    return f"{_x(section)} ({'–' if random is None else '×' + fmt(random)})"


def _share(value: ShareCI | None) -> str:
    if not value or value.share is None:
        return "–"
    return f"{pct(value.share, 0)} [{pct(value.low, 0)}, {pct(value.high, 0)}]"


def _frac(value: Relearned | None, original: Relearned) -> str:
    """A recovered fraction with its interval; "–" for a model not run, "undefined" where nothing
    was removed, and a warning where the finetune itself ruined the original on these facts: the
    gap then closes because both models lost them, which is not recovery."""
    if not value:
        return "–"
    if value.recovered is None:
        return "undefined"
    interval = "" if value.low is None else f" [{value.low:.2f}, {value.high:.2f}]"
    worse = original.ppl_after / original.ppl_before
    warning = f" (original ×{fmt(worse)} worse: not recovery)" if worse >= ORIGINAL_RUINED else ""
    return f"{value.recovered:.2f}{interval}{warning}"


# ----------------------------------------------------------------------------------------------
# one table per question


def held_out_table(records: list[RobustnessResult]) -> pd.DataFrame:
    rows = []
    for rec in records:
        held, split = rec.held_out, rec.split or {}
        shared = ", ".join(split.get("shared") or []) or "none"
        how = (
            f"{split.get('mode', '?')}-disjoint, {split.get('dropped', '?')} facts dropped, shared: {shared}"
            if held.holdout
            else "not held out (train = test)"
        )
        kl = rec.controlkg_kl
        rows.append(
            {
                "model / target / seed": _run(rec),
                "split": how,
                "in-sample × (random)": _xr(held.in_sample),
                "held-out × (random)": _xr(held.held_out) if held.held_out else "–",
                "held-out facts": (held.held_out.removed or EMPTY).n_facts if held.held_out else 0,
                "ControlKG × (random)": _xr(held.controlkg),
                "ControlKG KL removed (random)": f"{kl['removed']:.4f} ({kl['random']:.4f})",
            }
        )
    return pd.DataFrame(rows)


def wordings_table(records: list[RobustnessResult]) -> pd.DataFrame:
    rows = []
    for rec in records:
        words = rec.wordings
        for key, label in WORDING_LABELS.items():
            group = words.group(key)
            removed, random = group.suppressed_share["removed"], group.suppressed_share["random"]
            rows.append(
                {
                    "model / target / seed": _run(rec),
                    "sentences": label,
                    "known / all": f"{group.known_sentences} / {group.sentences}",
                    "× (random)": _xr(group),
                    f"suppressed ≥ ×{fmt(words.threshold)} (random)": (
                        f"{_share(removed)} ({pct(random.share, 0) if random.share is not None else '–'})"
                    ),
                }
            )
    return pd.DataFrame(rows)


def in_context_table(records: list[RobustnessResult]) -> pd.DataFrame:
    rows = []
    for rec in records:
        for k, entry in sorted(rec.in_context.items(), key=lambda kv: int(kv[0])):
            rows.append(
                {
                    "model / target / seed": _run(rec),
                    "k facts in context": int(k),
                    "original PPL": fmt(entry.original_ppl),
                    "× (random)": _xr(entry),
                }
            )
    return pd.DataFrame(rows)


def readouts_table(records: list[RobustnessResult]) -> pd.DataFrame:
    rows = []
    for rec in records:
        choice = rec.multiple_choice.targetkg
        probe = rec.readouts.linear_probe.accuracy if rec.readouts.linear_probe else {}
        lens = rec.readouts.lens or {}
        rows.append(
            {
                "model / target / seed": _run(rec),
                "likelihood top-1: original → removed (random)": (
                    f"{pct(choice['original'].share, 0)} → {_share(choice['removed'])} "
                    f"({pct(choice['random'].share, 0)})"
                ),
                "linear probe top-1: original → removed (random); prior only": (
                    f"{pct(probe['original'].share, 0)} → {_share(probe['removed'])} "
                    f"({pct(probe['random'].share, 0)}); "
                    f"{pct(probe['prior_only'].share, 0)}"
                    if probe
                    else "–"
                ),
                "logit lens × after block (removed / random)": " · ".join(
                    f"{b}: ×{fmt(v.removed)} / ×{fmt(v.random)}"
                    for b, v in sorted(lens.items(), key=lambda kv: int(kv[0]))
                )
                or "–",
            }
        )
    return pd.DataFrame(rows)


def quantization_table(records: list[RobustnessResult]) -> pd.DataFrame:
    rows = []
    for rec in records:
        # full precision first, then fewer and fewer bits (the JSON keys are sorted)
        for bits, entry in sorted(rec.quantized.items(), key=lambda kv: -1e9 if kv[0] == "none" else -int(kv[0])):
            removed, random = entry.ratio.removed, entry.ratio.random
            rows.append(
                {
                    "model / target / seed": _run(rec),
                    "weights": "fp32" if bits == "none" else f"{bits}-bit RTN",
                    **{
                        f"{name} × removed (random)": f"×{fmt(removed[key])} (×{fmt(random[key])})"
                        for key, name in (
                            ("targetkg", "TargetKG test"),
                            ("controlkg", "ControlKG test"),
                            ("controllm", "ControlLM"),
                        )
                        if key in removed
                    },
                }
            )
    return pd.DataFrame(rows)


def relearning_table(records: list[RobustnessResult]) -> pd.DataFrame:
    rows = []
    for rec in records:
        for point in rec.relearning.points:
            for data, runs in sorted(point.data.items(), key=lambda kv: DATA.index(kv[0])):
                if runs is None:
                    continue
                original, held = runs.original, runs.removed_held
                rows.append(
                    {
                        "model / target / seed": _run(rec),
                        "finetune": f"{point.scope}, lr {point.lr:g}, {point.steps} steps",
                        "data": data,
                        "facts scored": runs.n_scored,
                        # unknown: the control, read as the original's PPL before -> after
                        "recovered, held at 0": "control" if data == "unknown" else _frac(held, original),
                        "recovered, free": "control" if data == "unknown" else _frac(runs.removed_free, original),
                        "original PPL before → after": f"{fmt(original.ppl_before)} → {fmt(original.ppl_after)}",
                        "removed PPL before → after": (
                            f"{fmt(held.ppl_before)} → {fmt(held.ppl_after)}" if held else "–"
                        ),
                    }
                )
    return pd.DataFrame(rows)


def specificity_table(records: list[RobustnessResult]) -> pd.DataFrame:
    rows = []
    for rec in records:
        spec = rec.specificity
        rows.append(
            {
                "model / target / seed": _run(rec),
                "false tails ×": _x(spec.false_tails),
                "foreign heads ×": _x(spec.foreign_heads),
                "same heads, other facts ×": _x(spec.same_head_other_facts),
                "ControlKG, held-out wordings ×": _x(rec.wordings.controlkg_heldout),
            }
        )
    return pd.DataFrame(rows)


# (label, probe) of the ratios pooled over seeds
POOLED = [
    ("in-sample ×", "targetkg_train"),
    ("held-out ×", "targetkg_test"),
    ("train facts, held-out wordings ×", "wording:train:heldout"),
    ("test facts, held-out wordings ×", "wording:test:heldout"),
]


def seeds_table(records: list[RobustnessResult], folders: dict[tuple, Path]) -> pd.DataFrame:
    """Per model x target with more than one mask seed: the ratios over every seed's scores of the
    same sentences, the interval resampling seeds and facts together (`pooled_ratio_ci`).
    `folders`: each run's folder (sentences.parquet), by `_key`."""
    groups: dict[tuple[str, str, str], list[RobustnessResult]] = {}
    for rec in records:
        groups.setdefault((rec.model, rec.target, rec.method), []).append(rec)
    rows = []
    for (model, target, _), recs in groups.items():
        if len({r.seed for r in recs}) < 2:
            continue
        frames = [pd.read_parquet(folders[_key(rec)] / "sentences.parquet") for rec in recs]
        row = {"model / target": f"{model} / {target}", "seeds": ", ".join(str(r.seed) for r in recs)}
        for label, probe in POOLED:
            parts = [f[(f["probe"] == probe) & f["known"]] for f in frames]
            row[label] = _x(Ratios(removed=RatioCI.from_dict(pooled_ratio_ci(parts, "removed", 1000, 0)), random=None))
        rows.append(row)
    return pd.DataFrame(rows)


def _key(rec: RobustnessResult) -> tuple:
    return rec.model, rec.target, rec.method, rec.seed


def specificity_matrix(records: list[RobustnessResult]) -> dict[str, pd.DataFrame]:
    """Per model: mask target (rows) x scored TargetKG (columns), PPL ratio removed / original,
    geometric mean over seeds (the diagonal is the target's own held-out or in-sample test facts)."""
    cells: dict[str, dict[tuple[str, str], list[float]]] = {}
    for rec in records:
        model_cells = cells.setdefault(rec.model, {})
        own = rec.held_out.held_out or rec.held_out.in_sample
        model_cells.setdefault((rec.target, rec.target), []).append((own.removed or EMPTY).ratio)
        for other, section in rec.specificity.other_targets.items():
            model_cells.setdefault((rec.target, other), []).append((section.removed or EMPTY).ratio)
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


def _variants(section: Ratios | InContext | WordingGroup | None) -> dict[str, RatioCI | None]:
    return {"random": section.random, "removed": section.removed} if section else {}


def long_table(records: list[RobustnessResult]) -> pd.DataFrame:
    """Every ratio and share: run, question, measure, variant, value, low, high, n."""
    rows = []

    def add(rec, question, measure, estimates: Mapping[str, RatioCI | ShareCI | None], kind="ratio"):
        for variant, value in sorted(estimates.items()):  # variants in the JSON's (sorted) order
            if value is not None:
                rows.append(
                    (
                        rec.model,
                        rec.target,
                        rec.seed,
                        question,
                        measure,
                        variant,
                        getattr(value, kind),
                        value.low,
                        value.high,
                        value.n_facts,
                    )
                )

    for rec in records:
        held = rec.held_out
        for measure, section in (
            ("in_sample", held.in_sample),
            ("held_out", held.held_out),
            ("controlkg", held.controlkg),
        ):
            add(rec, "held_out", measure, _variants(section))
        for key in WORDING_LABELS:
            group = rec.wordings.group(key)
            add(rec, "wordings", key, _variants(group))
            add(rec, "wordings_suppressed", key, group.suppressed_share, "share")
        for k, entry in rec.in_context.items():
            add(rec, "in_context", f"k={k}", _variants(entry))
        add(rec, "multiple_choice", "likelihood", rec.multiple_choice.targetkg, "share")
        probe = rec.readouts.linear_probe
        add(rec, "multiple_choice", "linear_probe", probe.accuracy if probe else {}, "share")
        spec = rec.specificity
        for name, section in (
            ("false_tails", spec.false_tails),
            ("foreign_heads", spec.foreign_heads),
            ("same_head_other_facts", spec.same_head_other_facts),
        ):
            add(rec, "specificity", name, _variants(section))
    return pd.DataFrame(
        rows, columns=["model", "target", "seed", "question", "measure", "variant", "value", "low", "high", "n_facts"]
    )


def figure(records: list[RobustnessResult], matrices: dict[str, pd.DataFrame], path: Path, dpi: int) -> Path:
    """Left: TargetKG PPL ratio per probe, removed vs random (95 % intervals), per run. Right: the
    specificity matrix of the first model."""
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax, mat_ax = fig.subplots(1, 2, width_ratios=[1.6, 1])
    x = np.arange(len(records))
    width = 0.8 / len(FIGURE_PROBES)
    colors = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"]
    for k, (label, get) in enumerate(FIGURE_PROBES):
        sections = [get(r) for r in records]
        removed = [(s.removed if s else None) or EMPTY for s in sections]
        value = np.array([np.nan if r.ratio is None else r.ratio for r in removed], dtype=float)
        low = np.array([np.nan if r.low is None else r.low for r in removed], dtype=float)
        high = np.array([np.nan if r.high is None else r.high for r in removed], dtype=float)
        err = np.clip(np.nan_to_num(np.vstack([value - low, high - value])), 0, None)
        pos = x + (k - (len(FIGURE_PROBES) - 1) / 2) * width
        ax.bar(pos, value, width, yerr=err, capsize=1.5, color=colors[k], label=label)
        random = [((s.random if s else None) or EMPTY).ratio for s in sections]
        ax.scatter(
            pos,
            np.array([np.nan if r is None else r for r in random], dtype=float),
            marker="_",
            color="black",
            s=40,
            zorder=3,
        )
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.axhline(10.0, color="grey", linewidth=0.6, linestyle="--")
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{r.target} s{r.seed}" for r in records], fontsize=7, rotation=30)
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


# ----------------------------------------------------------------------------------------------
# the section

QUESTIONS = [
    (
        "held_out",
        "Held-out facts",
        held_out_table,
        "In-sample: the TargetKG train facts that trained the mask. Held-out: test facts that share no head or tail "
        "with any train or val fact (`split.holdout: entity`; a concept target shares the concept itself, by design) "
        "and that no training or checkpoint selection read. ControlKG test facts in their best template; the KL is "
        "the mean KL(original ‖ variant) at their tail positions: a two-sided control.",
    ),
    (
        "wordings",
        "Held-out wordings",
        wordings_table,
        "Held-out wordings: each relation's two wordings that no template choice, training or selection ever scored "
        "(`data.relations.PARAPHRASES`). Trained wordings: every template a train sentence of the mask was written in. "
        "A sentence counts only where the original knows the fact in that wording (params `known`, per wording). "
        "Train facts in held-out wordings are the direct test of surface form against knowledge.",
    ),
    (
        "in_context",
        "Facts in context",
        in_context_table,
        "Test facts in their best template after k true facts of the same relation that share no head or tail "
        "with them, written the same way. Original PPL: does the context help the original?",
    ),
    (
        "readouts",
        "Other readouts",
        readouts_table,
        "Likelihood: the true tail has the lowest NLL among the candidates. Linear probe: a multiple-choice probe on "
        "the final hidden state over the same candidates, fit on train facts and scored on test facts per model; "
        "prior only: the same probe with the hidden state zeroed (what tail frequency alone gets right). Logit lens: "
        "the hidden state after each masked block through the final norm and head, PPL ÷ the original's lens.",
    ),
    (
        "quantization",
        "Quantization",
        quantization_table,
        "Every block weight rounded to 8 or 4 bits per group of 32 (gguf Q8_0 / Q4_0 rounding; embeddings, norms and "
        "head in full precision), for each model, then ratios against the original rounded the same way.",
    ),
    (
        "relearning",
        "Relearning",
        relearning_table,
        "Finetune the masked layers or the whole model, then score held-out TargetKG facts (unknown: facts the "
        "original never knew, scored on unknown held-out facts: how much the budget teaches from scratch). "
        "Recovered = 1 − gap after / gap before, gap = log PPL remaining − log PPL original, both finetuned "
        "identically; 0 = untouched, 1 = closed; undefined where the removal was under ×2. Interval: facts and "
        "seeds resampled together.",
    ),
    (
        "specificity",
        "Specificity",
        specificity_table,
        "False tails: the test facts' templates with other tails of the relation; foreign heads: with ControlKG heads. "
        "If these degrade as much as the true facts, the removal broke the wording, not the facts.",
    ),
]


def section(
    paths: Sequence[str | Path], tables_dir: Path, figures_dir: Path, dpi: int
) -> tuple[list[str], dict[str, Path]]:
    """The report lines and the files written (tables/robustness*.{csv,md}, figures/robustness.png)."""
    loaded = load(paths)
    if not loaded:
        return [], {}
    records = [record for record, _ in loaded]
    folders = {_key(record): folder for record, folder in loaded}
    matrices = specificity_matrix(records)
    written = {"robustness_csv": write_csv(tables_dir / "robustness.csv", long_table(records))}
    lines = [
        "## Removed, or only hidden?",
        "",
        "The original, remaining and random-removed models (random: the evaluation's draws) on facts and wordings "
        "beyond the ones that trained the mask (stage evaluate_robustness). × = PPL ÷ original, averaged over "
        "facts, 95 % bootstrap interval over facts; random-removed in brackets.",
        "",
    ]
    questions = list(QUESTIONS)
    if len(seeds_table(records, folders)):
        questions.append(
            (
                "seeds",
                "Across seeds",
                lambda recs: seeds_table(recs, folders),
                "The same sentences scored under every mask seed; the interval resamples seeds and facts "
                "together, so the seed-to-seed variation of the mask is in it.",
            )
        )
    for name, title, build, text in questions:
        table = markdown_table(build(records))
        path = tables_dir / f"robustness_{name}.md"
        write_text(path, table)
        written[f"robustness_{name}_md"] = path
        lines += [f"### {title}", "", text, "", table, ""]
    for model, matrix in matrices.items():
        written[f"specificity_{model}"] = write_csv(
            tables_dir / f"specificity_{model}.csv", matrix.reset_index(names="mask")
        )
    written["fig_robustness"] = figure(records, matrices, figures_dir / "robustness.png", dpi)
    matrix_md = [
        markdown_table(m.map(lambda v: "–" if math.isnan(v) else f"×{fmt(v)}").reset_index(names=f"{model}: mask of"))
        for model, m in sorted(matrices.items())
    ]
    lines += [
        "Each target's mask on every run target's TargetKG test facts (geometric mean over seeds):",
        "",
        *matrix_md,
        "",
        "![Robustness](figures/robustness.png)",
        "",
    ]
    return lines, written


def robustness_section(paths: Sequence[str | Path], tables_dir: Path, figures_dir: Path, dpi: int) -> Section | None:
    """`section` as a Section, like the report's other sections; None without results."""
    lines, files = section(paths, tables_dir, figures_dir, dpi)
    return Section.from_lines(lines, files) if lines else None
