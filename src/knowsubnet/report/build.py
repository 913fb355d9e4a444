"""Tables (CSV + Markdown), figures (PNG) and one Markdown report from the pipeline's outputs.

Inputs: the ablation metrics JSON files (required), and when available the mask files (structure
and overlap) and the training logs (training curves). Outputs under `out_dir`:

    tables/ablation.csv, ablation.md            one row per model × target (mean ± std over seeds)
    tables/ablation_runs.csv                    one row per model × target × seed
    tables/metrics_long.csv                     every metric of every run, long form
    tables/seed_combinations.csv, .md           union / intersection / majority masks (if evaluated)
    tables/structure_{matrices,blocks,kinds,heads,neurons}.csv (+ .md summaries)
    tables/overlap_seeds.csv, overlap_targets.csv, overlap.md
    tables/training_final.csv
    figures/delta_ppl.png, density_blocks.png, overlap_seeds.png, overlap_targets.png,
    figures/training_<model>_<target>.png
    tables/csqa.csv, csqa.md, csqa_delta.md, figures/csqa.png   CommonsenseQA finetuning (if run)
    report.md

Figures use matplotlib's object API with the Agg canvas (no pyplot, no global backend switch).
Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from knowsubnet.core.config import Params
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import read_json, write_text
from knowsubnet.core.provenance import code_version, environment
from knowsubnet.method import masking
from knowsubnet.report import analysis, robustness, tradeoff
from knowsubnet.report.format import fmt, markdown_table, pct, pm, save_figure, slug, write_csv

log = logging.getLogger(__name__)

SETS = ("targetkg", "controlkg", "controllm")
FACT_SETS = ("targetkg", "controlkg")
SET_LABELS = {"targetkg": "TargetKG", "controlkg": "ControlKG", "controllm": "ControlLM"}
VARIANTS = ("original", "removed", "random", "kept")
CURVE_COLUMNS = ("loss", "suppress", "controlkg", "controllm", "sparsity_loss", "density")

def _std(values: pd.Series) -> float:
    # Spread over seeds: sample std; undefined (NaN) for a single seed.
    return float(values.std(ddof=1)) if values.count() > 1 else float("nan")


# ----------------------------------------------------------------------------------------------
# metrics


def load_metrics(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Read and check the metrics JSON files (evaluate_ablation / combine_seeds outputs)."""
    if not paths:
        raise InputError("report: no metrics files given; expected results/eval/<model>/<target>/seed<S>/metrics.json")
    records, seen = [], {}
    for path in paths:
        try:
            data = read_json(path)
        except OSError as err:
            raise InputError(f"{path}: cannot read metrics file ({err.strerror})") from None
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        _check_metrics(data, path)
        key = (data["model"], data["target"], data.get("combination") or data["seed"])
        if key in seen:
            raise InputError(f"{path}: same model / target / seed as {seen[key]}")
        seen[key] = path
        records.append({**data, "_path": str(path)})
    return records


def _check_metrics(data: Any, path: str | Path) -> None:
    def need(obj, keys, where):
        for key in keys:
            if not isinstance(obj, dict) or key not in obj:
                raise InputError(f"{path}: missing key '{where}{key}'; expected an evaluate_ablation metrics file")
    need(data, ("model", "target", "seed", "sparsity", "original", "removed", "random", "delta_ppl"), "")
    need(data["sparsity"], ("masked_layers",), "sparsity.")
    for variant in ("original", "removed", "random"):
        need(data[variant], SETS, f"{variant}.")
        for set_name in SETS:
            need(data[variant][set_name], ("ppl",), f"{variant}.{set_name}.")
    for variant in ("removed", "random"):
        need(data["delta_ppl"], (variant,), "delta_ppl.")
        need(data["delta_ppl"][variant], SETS, f"delta_ppl.{variant}.")
    if data["model"] is None or data["target"] is None:
        raise InputError(f"{path}: 'model' and 'target' must be set")


def metrics_long(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per run × variant × set with every metric."""
    rows = []
    for rec in records:
        for variant in VARIANTS:
            if variant not in rec:
                continue
            for set_name in SETS:
                values = rec[variant][set_name]
                delta = rec["delta_ppl"].get(variant, {}).get(set_name) if variant != "original" else 0.0
                spread = rec.get("random_spread", {}).get(set_name, {}).get("ppl") if variant == "random" else None
                rows.append({"model": rec["model"], "target": rec["target"], "seed": rec["seed"],
                             "combination": rec.get("combination"), "variant": variant, "set": set_name,
                             "ppl": values.get("ppl"), "delta_ppl": delta, "rank": values.get("rank"),
                             "rank_median": values.get("rank_median"), "acc": values.get("acc"),
                             "random_spread_ppl": spread, "sparsity": rec["sparsity"]["masked_layers"]})
    return pd.DataFrame(rows)


def ablation_runs(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per run (per-seed runs only; seed combinations are reported separately)."""
    rows = []
    for rec in records:
        if rec.get("combination"):
            continue
        row = {"model": rec["model"], "target": rec["target"], "seed": rec["seed"],
               "sparsity": rec["sparsity"]["masked_layers"],
               "sparsity_all_weights": rec["sparsity"].get("all_weights", float("nan"))}
        row.update(_run_values(rec))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values(["model", "target", "seed"], kind="stable").reset_index(drop=True)
    return frame


def _run_values(rec: dict[str, Any]) -> dict[str, float]:
    nan = float("nan")
    row = {}
    for s in SETS:
        row[f"{s}_ppl_original"] = rec["original"][s]["ppl"]
        for variant in ("removed", "random", "kept"):
            row[f"{s}_dppl_{variant}"] = rec["delta_ppl"].get(variant, {}).get(s, nan)
        row[f"{s}_dppl_random_spread"] = rec.get("random_spread", {}).get(s, {}).get("ppl", nan)
    for s in FACT_SETS:
        for variant in ("original", "removed", "random"):
            row[f"{s}_acc_{variant}"] = rec[variant][s].get("acc", nan)
    return row


def ablation_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per model × target: mean (and std over seeds) of every per-run value."""
    if runs.empty:
        raise InputError("report: no per-seed metrics files among the inputs (only seed combinations)")
    value_columns = [c for c in runs.columns if c not in ("model", "target", "seed")]
    rows = []
    for (model, target), group in runs.groupby(["model", "target"], sort=True):
        row = {"model": model, "target": target, "n_seeds": len(group),
               "seeds": ",".join(str(s) for s in sorted(group["seed"]))}
        for column in value_columns:
            row[f"{column}_mean"] = float(group[column].mean())
            row[f"{column}_std"] = _std(group[column])
        rows.append(row)
    return pd.DataFrame(rows)


def ablation_markdown(table: pd.DataFrame) -> pd.DataFrame:
    """The Markdown view: removed-model ΔPPL (mean ± std over seeds) with the random baseline beside it."""
    rows = []
    for rec in table.to_dict("records"):
        row = {"Model": rec["model"], "Target": rec["target"], "Seeds": str(rec["n_seeds"]),
               "Sparsity": pct(rec["sparsity_mean"])}
        for s in SETS:
            row[f"{SET_LABELS[s]} ΔPPL removed"] = pm(rec[f"{s}_dppl_removed_mean"], rec[f"{s}_dppl_removed_std"])
            row[f"{SET_LABELS[s]} ΔPPL random"] = pm(rec[f"{s}_dppl_random_mean"], rec[f"{s}_dppl_random_std"])
        row["TargetKG acc orig → removed"] = (f"{pct(rec['targetkg_acc_original_mean'], 1)} → "
                                              f"{pct(rec['targetkg_acc_removed_mean'], 1)}")
        rows.append(row)
    return pd.DataFrame(rows)


def combinations_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Union / intersection / majority masks: one row per model × target × combination."""
    rows = []
    for rec in records:
        if not rec.get("combination"):
            continue
        row = {"model": rec["model"], "target": rec["target"], "combination": rec["combination"],
               "seeds": ",".join(str(s) for s in rec.get("seeds", [])),
               "sparsity": rec["sparsity"]["masked_layers"]}
        row.update(_run_values(rec))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        order = {name: i for i, name in enumerate(analysis.COMBINATIONS)}
        frame = frame.sort_values(["model", "target", "combination"], key=lambda c: c.map(order) if
                                  c.name == "combination" else c, kind="stable").reset_index(drop=True)
    return frame


def combinations_markdown(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for rec in frame.to_dict("records"):
        row = {"Model": rec["model"], "Target": rec["target"], "Mask": rec["combination"],
               "Sparsity": pct(rec["sparsity"])}
        for s in SETS:
            row[f"{SET_LABELS[s]} ΔPPL removed"] = fmt(rec[f"{s}_dppl_removed"])
            row[f"{SET_LABELS[s]} ΔPPL random"] = fmt(rec[f"{s}_dppl_random"])
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# masks: structure and overlap


@dataclass
class MaskInfo:
    path: Path
    model: str
    target: str
    seed: int | None
    combination: str | None
    granularity: str


def identify_mask(path: str | Path, metadata: dict[str, str]) -> MaskInfo:
    """Model / target / seed (or seed combination) of a mask file, from its metadata: the library
    never reads them from a results path."""
    combination = metadata.get("combination") or None
    missing = [key for key in ("model", "target", "granularity") if not metadata.get(key)]
    if missing or (combination is None and not str(metadata.get("seed", "")).isdigit()):
        raise InputError(f"{path}: mask metadata lacks {', '.join(missing) or 'seed'}; expected a mask written by "
                         f"discover_mask or combine_seeds")
    seed = int(metadata["seed"]) if combination is None else None
    return MaskInfo(Path(path), metadata["model"], metadata["target"], seed, combination, metadata["granularity"])


@dataclass
class MaskAnalysis:
    matrices: pd.DataFrame
    blocks: pd.DataFrame
    kinds: pd.DataFrame
    heads: pd.DataFrame
    neurons: pd.DataFrame
    overlap_seeds: pd.DataFrame  # long: model, target, a, b, jaccard
    seed_matrices: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)
    target_matrices: dict[str, pd.DataFrame] = field(default_factory=dict)
    overlap_targets: pd.DataFrame = field(default_factory=pd.DataFrame)


def _mask_metadata(path: str | Path) -> dict[str, str]:
    """A mask file's metadata without loading its tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable mask file ({err})") from None
    if metadata.get("granularity") not in masking.GRANULARITIES:
        raise InputError(f"{path}: metadata 'granularity' must be one of {', '.join(masking.GRANULARITIES)}")
    return metadata


def _read_model_config(models_root: Path | None, model: str) -> dict | None:
    if models_root is None:
        return None
    path = models_root / model / "config.json"
    if not path.exists():
        log.info("no %s: per-head structure left out for %s", path, model)
        return None
    return read_json(path)


def analyse_masks(mask_paths: Sequence[str | Path], combine: str = "majority",
                  models_root: str | Path | None = None) -> MaskAnalysis:
    """Structure of every per-seed mask, Jaccard between seeds, and between targets (combined masks).

    Masks are processed one model × target at a time and the per-target combination is kept
    bit-packed, so memory stays bounded for large models.
    """
    models_root = Path(models_root) if models_root is not None else None
    groups: dict[tuple[str, str], list[MaskInfo]] = defaultdict(list)
    for path in mask_paths:
        info = identify_mask(path, _mask_metadata(path))
        if info.combination:
            log.info("%s: a seed combination; structure and overlap use the per-seed masks", path)
            continue
        groups[(info.model, info.target)].append(info)

    tables: dict[str, list[pd.DataFrame]] = defaultdict(list)
    seed_pairs, seed_matrices = [], {}
    packed: dict[str, dict[str, analysis.PackedMask]] = defaultdict(dict)
    configs: dict[str, dict | None] = {}
    for (model, target) in sorted(groups):
        infos = sorted(groups[(model, target)], key=lambda i: i.seed)
        if model not in configs:
            configs[model] = _read_model_config(models_root, model)
        if len({i.granularity for i in infos}) > 1:
            raise InputError(f"masks of {model} / {target} mix granularities: {[str(i.path) for i in infos]}")
        by_seed = {}
        for info in infos:
            masks = analysis.to_binary(masking.load_mask(info.path)[0])
            by_seed[info.seed] = masks
            ident = {"model": model, "target": target, "seed": info.seed, "granularity": info.granularity}
            matrices = analysis.structure_by_matrix(masks)
            tables["matrices"].append(matrices.assign(**ident))
            tables["blocks"].append(analysis.structure_by_block(masks).assign(**ident))
            tables["kinds"].append(analysis.structure_by_kind(masks).assign(**ident))
            if configs[model] is not None:
                tables["heads"].append(analysis.head_structure(masks, configs[model], info.granularity).assign(**ident))
            if info.granularity != "weight":
                tables["neurons"].append(analysis.neuron_summary(masks, info.granularity).assign(**ident))
        if len(by_seed) > 1:
            matrix = analysis.seed_overlap(by_seed)
            seed_matrices[(model, target)] = matrix
            for pair in analysis.pairwise_jaccard({f"seed{s}": m for s, m in by_seed.items()}).to_dict("records"):
                seed_pairs.append({"model": model, "target": target, **pair})
        packed[model][target] = analysis.pack(analysis.combine(list(by_seed.values()), combine))
        del by_seed

    target_matrices, target_pairs = {}, []
    for model in sorted(packed):
        if len(packed[model]) < 2:
            continue
        matrix = _safe_jaccard_matrix(packed[model], model)
        target_matrices[model] = matrix
        names = list(matrix.index)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                target_pairs.append({"model": model, "a": a, "b": b, "jaccard": matrix.loc[a, b]})

    def concat(name, columns_first):
        if not tables[name]:
            return pd.DataFrame()
        frame = pd.concat(tables[name], ignore_index=True)
        return frame[columns_first + [c for c in frame.columns if c not in columns_first]]

    ident_cols = ["model", "target", "seed", "granularity"]
    return MaskAnalysis(
        matrices=concat("matrices", ident_cols), blocks=concat("blocks", ident_cols),
        kinds=concat("kinds", ident_cols), heads=concat("heads", ident_cols),
        neurons=concat("neurons", ident_cols),
        overlap_seeds=pd.DataFrame(seed_pairs, columns=["model", "target", "a", "b", "jaccard"]),
        seed_matrices=seed_matrices, target_matrices=target_matrices,
        overlap_targets=pd.DataFrame(target_pairs, columns=["model", "a", "b", "jaccard"]))


def _safe_jaccard_matrix(named: dict[str, analysis.PackedMask], model: str) -> pd.DataFrame:
    # Targets masked with different layers (e.g. another top_k) have no overlap to compute: NaN.
    labels = sorted(named)
    matrix = pd.DataFrame(np.eye(len(labels)), index=labels, columns=labels)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            try:
                value = analysis.jaccard(named[a], named[b])
            except InputError:
                log.warning("%s: masks of %s and %s cover different layers; overlap left empty", model, a, b)
                value = float("nan")
            matrix.loc[a, b] = matrix.loc[b, a] = value
    return matrix


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
            rows.append({"Model": model, "Target": target, "#": str(rank), "Block": str(rec["block"]),
                         "Matrix": rec["matrix"], "Head": str(rec["head"]), "Density": pct(rec["density"])})
    return pd.DataFrame(rows)


def neurons_markdown(neurons: pd.DataFrame, top_n: int) -> pd.DataFrame:
    """Per model × target, the layers with the most masked neurons (mean over seeds)."""
    mean = _mean_over_seeds(neurons, ["layer", "side"], ["n_masked", "n_neurons", "share_masked"])
    rows = []
    for (model, target), group in mean.groupby(["model", "target"], sort=True):
        top = group.sort_values("n_masked", ascending=False, kind="stable").head(top_n)
        for rec in top.to_dict("records"):
            rows.append({"Model": model, "Target": target, "Layer": rec["layer"], "Side": rec["side"],
                         "Masked neurons": fmt(rec["n_masked"]), "of": fmt(rec["n_neurons"]),
                         "Share": pct(rec["share_masked"])})
    return pd.DataFrame(rows)


def overlap_markdown(overlap_seeds: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (model, target), group in overlap_seeds.groupby(["model", "target"], sort=True):
        rows.append({"Model": model, "Target": target, "Seed pairs": str(len(group)),
                     "Mean Jaccard": fmt(group["jaccard"].mean()), "Min": fmt(group["jaccard"].min()),
                     "Max": fmt(group["jaccard"].max())})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# training logs


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
        frame.insert(0, "seed", int(seed_dir[4:]) if seed_dir[4:].isdigit() and seed_dir.startswith("seed") else seed_dir)
        frame.insert(0, "target", parts[-3] if len(parts) >= 3 else "")
        frame.insert(0, "model", parts[-4] if len(parts) >= 4 else "")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def training_final(logs: pd.DataFrame) -> pd.DataFrame:
    """The last logged step of every run."""
    last = logs.sort_values("step", kind="stable").groupby(["model", "target", "seed"], sort=True).tail(1)
    return last.sort_values(["model", "target", "seed"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# figures


def figure_delta_ppl(table: pd.DataFrame, path: Path, dpi: int) -> Path:
    """ΔPPL per target, removed vs random, error bars = std over seeds; one row of panels per model."""
    models = sorted(table["model"].unique())
    fig = Figure(figsize=(4.2 * len(SETS), 3.2 * len(models)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(models), len(SETS), squeeze=False))
    for r, model in enumerate(models):
        sub = table[table["model"] == model].sort_values("target")
        x = np.arange(len(sub))
        for c, s in enumerate(SETS):
            ax = axes[r, c]
            for offset, variant, color in ((-0.2, "removed", "tab:red"), (0.2, "random", "tab:gray")):
                std = np.nan_to_num(sub[f"{s}_dppl_{variant}_std"].to_numpy(dtype=float))
                ax.bar(x + offset, sub[f"{s}_dppl_{variant}_mean"].to_numpy(dtype=float), 0.4, yerr=std,
                       capsize=2, color=color, label=f"{variant}")
            ax.axhline(0, color="black", linewidth=0.6)
            # ΔPPL spans orders of magnitude between TargetKG and the controls: linear near 0, log beyond.
            ax.set_yscale("symlog", linthresh=1.0)
            ax.set_xticks(x, sub["target"].tolist(), rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{model}: {SET_LABELS[s]}", fontsize=9)
            if c == 0:
                ax.set_ylabel("ΔPPL (mean ± std over seeds)")
            if r == 0 and c == len(SETS) - 1:
                ax.legend(fontsize=7)
    return save_figure(fig, path, dpi)


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


def _heatmap(ax, matrix: pd.DataFrame, title: str):
    values = matrix.to_numpy(dtype=float)
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(matrix.columns)), matrix.columns, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(matrix.index)), matrix.index, fontsize=7)
    ax.set_title(title, fontsize=9)
    if len(matrix) <= 8:  # annotate small matrices; large ones would be unreadable
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                ax.text(j, i, fmt(values[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if values[i, j] < 0.5 else "black")
    return image


def figure_heatmaps(matrices: dict[Any, pd.DataFrame], titles: dict[Any, str], path: Path, dpi: int,
                    suptitle: str) -> Path:
    keys = sorted(matrices)
    ncols = min(4, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(3.4 * ncols + 0.8, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    image = None
    for ax, key in zip(axes, keys):
        image = _heatmap(ax, matrices[key], titles[key])
    for ax in axes[len(keys):]:
        ax.set_axis_off()
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="Jaccard")
    fig.suptitle(suptitle, fontsize=10)
    return save_figure(fig, path, dpi)


def figure_training(logs: pd.DataFrame, model: str, target: str, path: Path, dpi: int) -> Path:
    columns = [c for c in CURVE_COLUMNS if c in logs.columns] or [c for c in logs.columns
                                                                  if c not in ("model", "target", "seed", "step")][:6]
    ncols = min(3, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    fig = Figure(figsize=(3.6 * ncols, 2.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, column in zip(axes, columns):
        for seed, group in logs.groupby("seed", sort=True):
            ax.plot(group["step"], group[column], label=f"seed {seed}", linewidth=1)
        ax.set_title(column, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    for ax in axes[len(columns):]:
        ax.set_axis_off()
    axes[0].legend(fontsize=7)
    fig.suptitle(f"mask training: {model} / {target}", fontsize=10)
    return save_figure(fig, path, dpi)


# ----------------------------------------------------------------------------------------------
# provenance and the report


def _params_digest(params: Any) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def provenance_section(records: list[dict[str, Any]], params: dict, models_root: Path | None) -> str:
    lines = ["## Provenance", ""]
    models = sorted({r["model"] for r in records})
    model_rows = []
    for model in models:
        prov_path = models_root / model / "provenance.json" if models_root else None
        prov = read_json(prov_path) if prov_path and prov_path.exists() else {}
        model_rows.append({"Model": model, "Source": str(prov.get("source", "–")),
                           "Revision / sha256": str(prov.get("revision") or prov.get("file_sha256") or "–"),
                           "Parameters": f"{int(prov['parameters']):,}" if "parameters" in prov else "–"})
    lines += ["Models:", "", markdown_table(pd.DataFrame(model_rows))]
    versions = sorted({(r.get("provenance") or {}).get("code_version", "unknown") for r in records})
    digests = sorted({_params_digest((r.get("provenance") or {}).get("params")) for r in records
                      if (r.get("provenance") or {}).get("params") is not None})
    env = environment()
    lines += [f"- Code version of the evaluations: {', '.join(f'`{v}`' for v in versions)}",
              f"- Code version of this report: `{code_version()}`",
              f"- Environment: python {env['python']}, torch {env['torch']}, transformers {env['transformers']}",
              f"- Distinct params sets among the evaluations (sha256 prefix): "
              f"{', '.join(f'`{d}`' for d in digests) if digests else 'not recorded'}"
              + (" — more than one: runs used different params." if len(digests) > 1 else ""),
              f"- Metrics files: {len(records)}", ""]
    if params is not None:
        lines += ["<details><summary>Params of this report</summary>", "", "```yaml",
                  yaml.safe_dump(params, sort_keys=False).rstrip(), "```", "", "</details>", ""]
    return "\n".join(lines)


HOW_TO_READ = """\
## How to read this

- **Removed** is the model with the discovered subnetwork zeroed; **random** zeroes a random
  subnetwork with exactly as many weights in every masked matrix (mean over several draws);
  **kept** keeps only the subnetwork in the masked layers.
- **ΔPPL** = PPL(variant) − PPL(original). PPL of a fact set = exp(mean over facts of the mean
  cross-entropy of the fact's tail tokens); ControlLM PPL is over every token of WikiText-2 blocks.
- Success looks like: a large **TargetKG ΔPPL removed**, ControlKG and ControlLM ΔPPL near zero,
  and the random baseline near zero everywhere.
- **± std** is the sample standard deviation over mask seeds (left out for a single seed).
- **Sparsity** is the share of the masked layers' weights *not* in the subnetwork.
- **Density** is the share of a block's (matrix's, head's) mask entries in the subnetwork; **share** is
  the part of the whole subnetwork that lies there.
- **Jaccard** = |A ∩ B| / |A ∪ B| of two subnetworks over all masked layers (1 = identical).
"""

# ----------------------------------------------------------------------------------------------
# CommonsenseQA finetuning (results/csqa/{model}/{target}/seed{seed}/{mode}.json)

CSQA_VARIANTS = ("original", "remaining", "random")
CSQA_GROUPS = ("removed", "kept", "dev")
CSQA_GROUP_LABELS = {"removed": "removed target's questions", "kept": "other half's questions", "dev": "CSQA dev"}
CSQA_GROUP_TICKS = {"removed": "removed\ntarget's", "kept": "other\nhalf's", "dev": "CSQA\ndev"}


def load_csqa_results(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The finetune_csqa result files, checked for the keys the report reads."""
    records = []
    for path in paths:
        try:
            data = read_json(path)
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: cannot read CSQA results ({err})") from None
        for key in ("model", "target", "seed", "mode", "variants", "delta_vs_original"):
            if key not in data:
                raise InputError(f"{path}: expected key {key!r} in a finetune_csqa result")
        for variant in CSQA_VARIANTS:
            groups = (data["variants"].get(variant) or {}).get("groups") or {}
            if set(CSQA_GROUPS) - set(groups):
                raise InputError(f"{path}: expected groups {', '.join(CSQA_GROUPS)} for variant {variant!r}")
        records.append(data)
    return records


def csqa_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per model x target x seed x mode x variant x group: accuracy, 95 % CI, n, and the
    difference to the original model on the same questions (paired bootstrap CI)."""
    rows = []
    for rec in records:
        for variant in CSQA_VARIANTS:
            for group in CSQA_GROUPS:
                g = rec["variants"][variant]["groups"][group]
                delta = rec["delta_vs_original"].get(variant, {}).get(group) if variant != "original" else None
                rows.append({"model": rec["model"], "target": rec["target"], "seed": rec["seed"], "mode": rec["mode"],
                             "variant": variant, "group": group, "acc": g["acc"], "ci_low": g["ci95"][0],
                             "ci_high": g["ci95"][1], "n": g["n"],
                             "diff_vs_original": delta["diff"] if delta else 0.0,
                             "diff_ci_low": delta["ci95"][0] if delta else 0.0,
                             "diff_ci_high": delta["ci95"][1] if delta else 0.0})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.sort_values(["model", "target", "mode", "seed"], kind="stable").reset_index(drop=True)


def _acc_ci(row: pd.Series) -> str:
    return f"{100 * row['acc']:.1f} % [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"


def _diff_ci(row: pd.Series) -> str:
    return (f"{100 * row['diff_vs_original']:+.1f} pts [{100 * row['diff_ci_low']:+.1f}, "
            f"{100 * row['diff_ci_high']:+.1f}]")


def csqa_markdown(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(accuracy per variant per group, differences to the original per group) as display tables."""
    acc_rows, diff_rows = [], []
    for (model, target, mode, seed), run in table.groupby(["model", "target", "mode", "seed"], sort=True):
        for variant in CSQA_VARIANTS:
            part = run[run["variant"] == variant].set_index("group")
            row = {"model": model, "target": target, "mode": mode, "seed": seed, "variant": variant}
            for group in CSQA_GROUPS:
                row[f"{CSQA_GROUP_LABELS[group]} (n={int(part.loc[group, 'n'])})"] = _acc_ci(part.loc[group])
            acc_rows.append(row)
        for variant in ("remaining", "random"):
            part = run[run["variant"] == variant].set_index("group")
            row = {"model": model, "target": target, "mode": mode, "seed": seed,
                   "difference": f"{variant} − original"}
            for group in CSQA_GROUPS:
                row[CSQA_GROUP_LABELS[group]] = _diff_ci(part.loc[group])
            removed, kept = part.loc["removed", "diff_vs_original"], part.loc["kept", "diff_vs_original"]
            row["removed − kept"] = f"{100 * (removed - kept):+.1f} pts"
            diff_rows.append(row)
    acc = pd.DataFrame(acc_rows)
    # group columns carry their n, which can differ between runs: fill missing cells
    return acc.fillna(""), pd.DataFrame(diff_rows)


def figure_csqa(table: pd.DataFrame, path: Path, dpi: int) -> Path:
    """Top: accuracy per variant per group (95 % CI, mean over seeds); bottom: remaining − original
    and random − original per group (paired 95 % CI). One column per model x target x mode."""
    runs = sorted({(m, t, mode) for m, t, mode in table[["model", "target", "mode"]].itertuples(index=False)})
    fig = Figure(figsize=(4.2 * len(runs), 6.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(2, len(runs), squeeze=False))
    colors = {"original": "tab:blue", "remaining": "tab:red", "random": "tab:gray"}
    x = np.arange(len(CSQA_GROUPS))
    for c, (model, target, mode) in enumerate(runs):
        sub = table[(table["model"] == model) & (table["target"] == target) & (table["mode"] == mode)]
        mean = sub.groupby(["variant", "group"]).mean(numeric_only=True)
        ax = axes[0, c]
        for k, variant in enumerate(CSQA_VARIANTS):
            acc = np.array([mean.loc[(variant, g), "acc"] for g in CSQA_GROUPS])
            low = np.array([mean.loc[(variant, g), "ci_low"] for g in CSQA_GROUPS])
            high = np.array([mean.loc[(variant, g), "ci_high"] for g in CSQA_GROUPS])
            ax.bar(x + (k - 1) * 0.27, 100 * acc, 0.27, yerr=100 * np.clip(np.vstack([acc - low, high - acc]), 0, None), capsize=2,
                   color=colors[variant], label=variant)
        ax.axhline(20, color="black", linewidth=0.6, linestyle=":")  # chance: 1 in 5
        ax.set_xticks(x, [CSQA_GROUP_TICKS[g] for g in CSQA_GROUPS], fontsize=7)
        ax.set_title(f"{model} / {target} / {mode}", fontsize=9)
        if c == 0:
            ax.set_ylabel("accuracy % (95 % CI; dotted: chance)")
            ax.legend(fontsize=7)
        ax = axes[1, c]
        for k, variant in enumerate(("remaining", "random")):
            diff = np.array([mean.loc[(variant, g), "diff_vs_original"] for g in CSQA_GROUPS])
            low = np.array([mean.loc[(variant, g), "diff_ci_low"] for g in CSQA_GROUPS])
            high = np.array([mean.loc[(variant, g), "diff_ci_high"] for g in CSQA_GROUPS])
            ax.bar(x + (k - 0.5) * 0.4, 100 * diff, 0.4, yerr=100 * np.clip(np.vstack([diff - low, high - diff]), 0, None), capsize=2,
                   color=colors[variant], label=f"{variant} − original")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(x, [CSQA_GROUP_TICKS[g] for g in CSQA_GROUPS], fontsize=7)
        if c == 0:
            ax.set_ylabel("accuracy difference, points (paired 95 % CI)")
            ax.legend(fontsize=7)
    return save_figure(fig, path, dpi)


def csqa_section(csqa_paths: Sequence[str | Path], tables_dir: Path, figures_dir: Path, dpi: int,
                 written: dict[str, Path]) -> list[str]:
    """Tables, figure and report lines of the CommonsenseQA finetuning results."""
    table = csqa_table(load_csqa_results(csqa_paths))
    if table.empty:
        return []
    written["csqa_csv"] = write_csv(tables_dir / "csqa.csv", table)
    acc, diff = csqa_markdown(table)
    acc_md, diff_md = markdown_table(acc), markdown_table(diff)
    write_text(tables_dir / "csqa.md", acc_md)
    write_text(tables_dir / "csqa_delta.md", diff_md)
    written["csqa_md"], written["csqa_delta_md"] = tables_dir / "csqa.md", tables_dir / "csqa_delta.md"
    written["fig_csqa"] = figure_csqa(table, figures_dir / "csqa.png", dpi)
    return ["## CommonsenseQA after finetuning", "",
            "The original model, the remaining model (subnetwork removed, its weights held at zero) and a "
            "random-removed model, finetuned alike on CSQA train without any CSQA-linked question, then scored on "
            "the questions linked to the removed target, on those linked to the other half, and on dev. "
            "Accuracy with a 95 % bootstrap interval; chance is 20 %.", "", acc_md, "",
            "Difference to the original model on the same questions (paired bootstrap 95 % interval). If the "
            "removed knowledge matters downstream, remaining − original is lower on the removed target's questions "
            "than on the other half's and on dev (last column: removed − kept).", "", diff_md, "",
            "![CSQA accuracy](figures/csqa.png)", ""]


def precision_section(records: list[dict[str, Any]], meta_paths: Sequence[str | Path], bars: dict[str, float],
                      tables_dir: Path, figures_dir: Path, dpi: int, written: dict[str, Path]) -> list[str]:
    """Bars, trade-off over checkpoints, ControlKG damage per relation (see knowsubnet.tradeoff)."""
    sections = ["## Precision: does only the target go?", ""]
    table = tradeoff.bars_table(records, bars)
    if not table.empty:
        written["bars_csv"] = write_csv(tables_dir / "bars.csv", table.drop(columns="meets"))
        sections += ["Test splits, PPL of the remaining model / original (×); ✗ marks a missed bar "
                     "(params `report.bars`). Random share = (random ×−1) / (removed ×−1) on TargetKG.", "",
                     markdown_table(tradeoff.bars_markdown(table, bars)), ""]
    curve = tradeoff.tradeoff_table(tradeoff.read_metas(meta_paths)) if meta_paths else pd.DataFrame()
    if not curve.empty:
        written["tradeoff_csv"] = write_csv(tables_dir / "tradeoff.csv", curve)
        text = markdown_table(tradeoff.tradeoff_markdown(curve))
        write_text(tables_dir / "tradeoff.md", text)
        written["tradeoff_md"] = tables_dir / "tradeoff.md"
        written["fig_tradeoff"] = tradeoff.figure_tradeoff(curve, bars, figures_dir / "tradeoff.png", dpi)
        sections += ["### Trade-off over checkpoints (validation splits)", "",
                     "Every validated checkpoint of discovery: sparsity against PPL ratios of the removed "
                     "subnetwork (random subnetwork of the same size in brackets), mean over seeds; the last "
                     "column counts the seeds whose kept mask (`train.select`) is that checkpoint.", "",
                     text, "", "![Trade-off](figures/tradeoff.png)", ""]
    relations = tradeoff.relation_table(records)
    if not relations.empty:
        written["controlkg_relations_csv"] = write_csv(tables_dir / "controlkg_by_relation.csv", relations)
        shown = relations.assign(n=relations["n"].round(1), removed_x=relations["removed_x"].map("{:.3f}".format),
                                 random_x=relations["random_x"].map("{:.3f}".format))
        sections += ["### ControlKG damage per relation (test, mean over seeds)", "",
                     "Where the collateral damage lands: ControlKG PPL × per relation, removed and random.", "",
                     markdown_table(shown), ""]
    return sections


def build_report(metrics_paths: Sequence[str | Path], mask_paths: Sequence[str | Path] = (),
                 log_paths: Sequence[str | Path] = (), *, params: Params, out_dir: str | Path = "results",
                 models_root: str | Path | None = None,
                 meta_paths: Sequence[str | Path] = (), csqa_paths: Sequence[str | Path] = (),
                 robustness_paths: Sequence[str | Path] = ()) -> dict[str, Path]:
    """Write every table, figure and `report.md`; return {name: path} of what was written."""
    settings = params.report
    out_dir = Path(out_dir)
    tables_dir, figures_dir = out_dir / "tables", out_dir / "figures"
    models_root = Path(models_root) if models_root is not None else out_dir / "models"
    dpi, top_n = settings.dpi, settings.top_n
    written: dict[str, Path] = {}
    sections: list[str] = []

    # --- ablation
    records = load_metrics(metrics_paths)
    runs = ablation_runs(records)
    table = ablation_table(runs)
    written["metrics_long"] = write_csv(tables_dir / "metrics_long.csv", metrics_long(records))
    written["ablation_runs"] = write_csv(tables_dir / "ablation_runs.csv", runs)
    written["ablation_csv"] = write_csv(tables_dir / "ablation.csv", table)
    ablation_md = markdown_table(ablation_markdown(table))
    write_text(tables_dir / "ablation.md", ablation_md)
    written["ablation_md"] = tables_dir / "ablation.md"
    written["fig_delta_ppl"] = figure_delta_ppl(table, figures_dir / "delta_ppl.png", dpi)
    sections += ["## Ablation: what removing the subnetwork costs", "",
                 "Mean ± std over seeds; the random baseline removes as many weights at random.", "",
                 ablation_md, "", "![ΔPPL by target](figures/delta_ppl.png)", ""]
    sections += precision_section(records, meta_paths, dataclasses.asdict(settings.bars), tables_dir, figures_dir, dpi, written)
    if robustness_paths:
        lines, files = robustness.section(robustness_paths, tables_dir, figures_dir, dpi)
        sections += lines
        written.update(files)

    combos = combinations_table(records)
    if not combos.empty:
        written["combinations_csv"] = write_csv(tables_dir / "seed_combinations.csv", combos)
        combos_md = markdown_table(combinations_markdown(combos))
        write_text(tables_dir / "seed_combinations.md", combos_md)
        written["combinations_md"] = tables_dir / "seed_combinations.md"
        sections += ["## Seed combinations", "",
                     "Masks combined over seeds (union, intersection, majority = kept by most seeds), "
                     "then evaluated like a single mask.", "", combos_md, ""]

    # --- structure and overlap
    if mask_paths:
        result = analyse_masks(mask_paths, combine=settings.combine, models_root=models_root)
        sections += ["## Structure of the subnetworks", ""]
        for name in ("matrices", "blocks", "kinds", "heads", "neurons"):
            frame = getattr(result, name)
            if not frame.empty:
                written[f"structure_{name}_csv"] = write_csv(tables_dir / f"structure_{name}.csv", frame)
        md_views = [("kinds", "Attention vs MLP (mean over seeds)", lambda f: kinds_markdown(f)),
                    ("blocks", "Density per block (mean over seeds)", lambda f: blocks_markdown(f)),
                    ("heads", f"Densest attention heads (top {top_n}, mean over seeds)",
                     lambda f: heads_markdown(f, top_n)),
                    ("neurons", f"Layers with the most masked neurons (top {top_n})",
                     lambda f: neurons_markdown(f, top_n))]
        for name, title, view in md_views:
            frame = getattr(result, name)
            if frame.empty:
                continue
            text = markdown_table(view(frame))
            write_text(tables_dir / f"structure_{name}.md", text)
            written[f"structure_{name}_md"] = tables_dir / f"structure_{name}.md"
            sections += [f"### {title}", "", text, ""]
        if not result.blocks.empty:
            written["fig_density_blocks"] = figure_density_blocks(result.blocks, figures_dir / "density_blocks.png", dpi)
            sections += ["![Subnetwork density per block](figures/density_blocks.png)", ""]

        sections += ["## Overlap", ""]
        written["overlap_seeds_csv"] = write_csv(tables_dir / "overlap_seeds.csv", result.overlap_seeds)
        written["overlap_targets_csv"] = write_csv(tables_dir / "overlap_targets.csv", result.overlap_targets)
        overlap_parts = ["### Between seeds", "", markdown_table(overlap_markdown(result.overlap_seeds))]
        for model, matrix in sorted(result.target_matrices.items()):
            shown = matrix.reset_index().rename(columns={"index": "target"})
            overlap_parts += [f"### Between targets: {model} ({settings.combine} mask of each target's seeds)",
                              "", markdown_table(shown)]
        overlap_md = "\n".join(overlap_parts)
        write_text(tables_dir / "overlap.md", overlap_md)
        written["overlap_md"] = tables_dir / "overlap.md"
        sections += [overlap_md, ""]
        if result.seed_matrices:
            titles = {key: f"{key[0]} / {key[1]}" for key in result.seed_matrices}
            written["fig_overlap_seeds"] = figure_heatmaps(result.seed_matrices, titles,
                                                           figures_dir / "overlap_seeds.png", dpi,
                                                           "Jaccard overlap between seeds")
            sections += ["![Jaccard between seeds](figures/overlap_seeds.png)", ""]
        if result.target_matrices:
            titles = {model: model for model in result.target_matrices}
            written["fig_overlap_targets"] = figure_heatmaps(result.target_matrices, titles,
                                                             figures_dir / "overlap_targets.png", dpi,
                                                             f"Jaccard overlap between targets ({settings.combine} masks)")
            sections += ["![Jaccard between targets](figures/overlap_targets.png)", ""]

    # --- downstream: CommonsenseQA
    if csqa_paths:
        sections += csqa_section(csqa_paths, tables_dir, figures_dir, dpi, written)

    # --- training curves
    if log_paths:
        logs = read_train_logs(log_paths)
        final = training_final(logs)
        written["training_final_csv"] = write_csv(tables_dir / "training_final.csv", final)
        shown = [c for c in ("model", "target", "seed", "step", "loss", "suppress", "controlkg", "controllm",
                             "density") if c in final.columns]
        sections += ["## Mask training", "", "Last logged step of every run:", "",
                     markdown_table(final[shown]), ""]
        for (model, target), group in logs.groupby(["model", "target"], sort=True):
            name = f"training_{slug(model)}_{slug(target)}.png"
            written[f"fig_{name}"] = figure_training(group, model, target, figures_dir / name, dpi)
            sections += [f"- [{model} / {target}](figures/{name})"]
        sections.append("")

    header = ["# knowsubnet report", "",
              "Knowledge-critical subnetworks (Bayazit et al., EMNLP 2024): what each model loses when "
              "the subnetwork for a target is removed.", "",
              f"Models: {', '.join(sorted(table['model'].unique()))}. "
              f"Targets: {', '.join(sorted(table['target'].unique()))}.", "", HOW_TO_READ]
    text = "\n".join(header + sections + [provenance_section(records, dataclasses.asdict(params), models_root)])
    write_text(out_dir / "report.md", text)
    written["report"] = out_dir / "report.md"
    return written
