"""The ablation evaluation: what removing a subnetwork does, against removing as many weights at random.

It compares four versions of one model on TargetKG, ControlKG and ControlLM test data:

- original: the pretrained model;
- removed:  the subnetwork zeroed (the *remaining model*, `keep="remaining"`);
- random:   a random subnetwork with exactly the same number of entries per masked matrix zeroed,
            over several seeded draws (the baseline: removing that many weights at random);
- kept:     only the subnetwork kept in the masked layers (`keep="subnetwork"`).

ΔPPL = PPL(variant) − PPL(original). Every forward pass runs without gradients in eval mode; the
model's weights are restored after each variant (`masking.masked_weights`).

The stages, from files to files: `evaluate_mask` (evaluate_ablation: one seed's mask; also its
headline with the verdict against the bars, and the per-fact scores `fact_table`) and
`combine_seeds` (the union / intersection / majority of a target's seed masks, each evaluated).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from knowsubnet.core.config import Known, Params
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import write_parquet
from knowsubnet.core.provenance import stamp
from knowsubnet.data import encoding, factsets
from knowsubnet.evaluation.ablation_results import AblationMetrics, Headline
from knowsubnet.evaluation.bars import BARS, SETS, check_bars
from knowsubnet.method import combination, edits, masking
from knowsubnet.models.prepare import load_model, pick_device
from knowsubnet.scoring.facts import DTYPES, ppl_from_nll, score_facts, summarize_facts
from knowsubnet.scoring.text import lm_ppl

log = logging.getLogger(__name__)

FACT_SETS = ("targetkg", "controlkg")
VARIANTS = ("removed", "random", "kept")

# ----------------------------------------------------------------------------------------------
# ablation


def _evaluate_sets(
    model,
    targetkg,
    controlkg,
    blocks,
    batch_size,
    device,
    controllm_ppl: str,
    label: str,
    controlkg_relations: list[str] | None = None,
    unknown: dict[str, Any] | None = None,
) -> tuple[dict[str, dict], dict[str, dict]]:
    """One variant's metrics on the three sets, and the per-fact scores behind them ({set:
    `score_facts` output}). `unknown` ({set: FactSet} of facts the known filter dropped) are scored
    too, as "<set>_unknown", and count in no metric."""
    log.info("evaluating %s model", label)
    control = score_facts(model, controlkg, batch_size, device, f"{label}/controlkg")
    scores = {"targetkg": score_facts(model, targetkg, batch_size, device, f"{label}/targetkg"), "controlkg": control}
    for name, factset in (unknown or {}).items():
        scores[f"{name}_unknown"] = score_facts(model, factset, batch_size, device, f"{label}/{name} (unknown)")
    out = {
        "targetkg": _fact_metrics(summarize_facts(scores["targetkg"])),
        "controlkg": _fact_metrics(summarize_facts(control)),
        "controllm": {"ppl": lm_ppl(model, blocks, batch_size, device, controllm_ppl)},
    }
    if controlkg_relations is not None:
        # Where collateral damage lands: ControlKG PPL per relation.
        nll = pd.Series(control["nll"].numpy(), index=controlkg_relations)
        out["controlkg_by_relation"] = {rel: ppl_from_nll(float(v)) for rel, v in nll.groupby(level=0).mean().items()}
    return out, scores


def _fact_metrics(summary: dict[str, float]) -> dict[str, float]:
    return {key: summary[key] for key in ("ppl", "rank", "acc", "rank_median")}


def _mean_and_spread(draws: list[dict[str, dict[str, float]]]) -> tuple[dict, dict]:
    """Per metric: mean over draws, and sample standard deviation (0 for a single draw)."""
    mean: dict[str, dict[str, float]] = {}
    spread: dict[str, dict[str, float]] = {}
    for set_name, metrics in draws[0].items():
        mean[set_name], spread[set_name] = {}, {}
        for metric in metrics:
            values = np.array([d[set_name][metric] for d in draws], dtype=np.float64)
            mean[set_name][metric] = float(values.mean())
            spread[set_name][metric] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return mean, spread


def evaluate_ablation(
    model: nn.Module,
    layers: list[masking.MaskableLayer],
    logits: dict[str, torch.Tensor] | edits.Edit,
    granularity: str,
    targetkg,
    controlkg,
    controllm_blocks: torch.Tensor,
    random_draws: int,
    seed: int,
    batch_size: int,
    device: str | torch.device,
    *,
    model_name: str | None = None,
    target: str | None = None,
    controlkg_relations: list[str] | None = None,
    controllm_ppl: str,
    fact_scores: dict | None = None,
    unknown: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Original / removed / random-removed / kept metrics on the three test sets (see module doc).

    `logits` are mask logits (subnetwork = logits > 0) or boolean masks in `granularity`, or any
    removal (`edits.Edit`, whose own granularity counts): a baseline's new weights have no "kept"
    variant (null). The random baseline (`edits.random_like`) draws `random_draws` removals of the
    same size from `torch.Generator().manual_seed(seed)`: deterministic for a fixed seed.
    `controllm_ppl`: how ControlLM perplexity averages (`lm_ppl`).

    `fact_scores`, when given a dict, receives the per-fact scores the metrics are computed from:
    fact_scores[variant][set] (`score_facts` output) for "original", "removed" and "random" = the
    FIRST random draw; with `unknown` ({set: FactSet}: facts the known filter dropped) also under
    "<set>_unknown", scored in the same three variants (they change no metric).
    """
    if random_draws < 1:
        raise InputError(f"params key 'eval.random_draws' = {random_draws}: expected at least 1 draw")
    edit = logits if isinstance(logits, edits.Edit) else edits.mask_edit(logits, granularity)
    masking.check_mask_matches(layers, edit.tensors, edit.granularity, source="evaluate_ablation")
    args = (targetkg, controlkg, controllm_blocks, batch_size, device, controllm_ppl)  # same averaging everywhere
    by_rel = {"controlkg_relations": controlkg_relations}

    # the dropped facts cost forward passes: scored only when the caller keeps per-fact scores
    extra = {"unknown": unknown if fact_scores is not None else None}

    original, original_scores = _evaluate_sets(model, *args, label="original", **by_rel, **extra)
    with edits.applied(layers, edit):
        removed, removed_scores = _evaluate_sets(model, *args, label="removed", **by_rel, **extra)
    kept = None
    if edit.kind == "mask":
        with edits.applied(layers, edit, keep="subnetwork"):
            kept, _ = _evaluate_sets(model, *args, label="kept")

    generator = torch.Generator().manual_seed(int(seed))
    draws = []
    for draw in range(random_draws):
        with edits.applied(layers, edits.random_like(edit, layers, generator)):
            metrics, scores = _evaluate_sets(
                model, *args, label=f"random[{draw}]", **by_rel, **(extra if draw == 0 else {})
            )
        draws.append(metrics)
        if draw == 0:
            first_draw_scores = scores
    random_mean, random_spread = _mean_and_spread(draws)
    if fact_scores is not None:
        fact_scores.update(original=original_scores, removed=removed_scores, random=first_draw_scores)

    variants = {"removed": removed, "random": random_mean, "kept": kept}
    delta = {
        name: {s: result[s]["ppl"] - original[s]["ppl"] for s in SETS}
        for name, result in variants.items()
        if result is not None
    }
    changed = edits.change_stats(model, layers, edit)
    if edit.kind == "mask":
        sparsity = masking.sparsity(model, layers, edit.tensors, edit.granularity)
        size = masking.subnetwork_size(layers, edit.tensors, edit.granularity)
    else:  # new weights: every changed weight counts as removed
        sparsity = {
            "masked_layers": 1.0 - changed["changed_share_masked_layers"],
            "all_weights": 1.0 - changed["changed_share_all_weights"],
        }
        size = changed["changed_weights"]
    return {
        "model": model_name,
        "target": target,
        "seed": int(seed),
        "granularity": edit.granularity,
        "kind": edit.kind,
        "sparsity": sparsity,
        "subnetwork_size": size,
        "changed": changed,
        "counts": {
            "targetkg": int(targetkg.input_ids.shape[0]),
            "controlkg": int(controlkg.input_ids.shape[0]),
            "controllm_blocks": int(controllm_blocks.shape[0]),
            **(
                {"controlkg_by_relation": pd.Series(controlkg_relations).value_counts().sort_index().to_dict()}
                if controlkg_relations is not None
                else {}
            ),
        },
        "original": original,
        "removed": removed,
        "random": random_mean,
        "kept": kept,
        "random_spread": random_spread,
        "random_draws": draws,
        "random_seed": int(seed),
        "controllm_ppl": controllm_ppl,
        "delta_ppl": delta,
        "delta_ppl_random_draws": [{s: d[s]["ppl"] - original[s]["ppl"] for s in SETS} for d in draws],
    }


# ----------------------------------------------------------------------------------------------
# inputs of the evaluate / combine scripts


def mask_layers(
    model: nn.Module, logits: dict[str, torch.Tensor], metadata: dict[str, str], source: str
) -> tuple[list[masking.MaskableLayer], str]:
    """The model's maskable layers for a mask file (its metadata records granularity and the
    resolved `top_k_blocks`), checked to fit it; and its granularity."""
    granularity = metadata.get("granularity")
    if granularity not in masking.GRANULARITIES:
        raise InputError(f"{source}: metadata 'granularity' must be one of {', '.join(masking.GRANULARITIES)}")
    top_k = metadata.get("top_k_blocks")
    if top_k is None:
        raise InputError(f"{source}: metadata has no 'top_k_blocks'; expected a mask written by discover_mask")
    try:
        top_k = int(top_k)
    except ValueError:
        raise InputError(f"{source}: metadata 'top_k_blocks' = {top_k!r}: expected an integer") from None
    layers = masking.find_maskable_layers(model, top_k)
    masking.check_mask_matches(layers, logits, granularity, source=str(source))
    return layers, granularity


def load_test_sets(
    tokenizer,
    verbalized: str | Path,
    splits_dir: str | Path,
    controllm_dir: str | Path,
    known: Known | None = None,
    *,
    scored_positions: str,
) -> tuple[Any, Any, torch.Tensor]:
    """TargetKG test and ControlKG test FactSets (facts the model knows, see
    `factsets.load_split_factset`), and the ControlLM test blocks."""
    verbalized_frame = factsets.read_verbalized(verbalized)
    splits_dir = Path(splits_dir)
    sets = []
    for kind in ("targetkg", "controlkg"):
        path = splits_dir / f"{kind}_test.parquet"
        if not path.exists():
            raise InputError(f"{path}: split file not found; expected the output of split_controls")
        sets.append(
            factsets.load_split_factset(path, verbalized_frame, tokenizer, known, scored_positions=scored_positions)
        )
    blocks_path = Path(controllm_dir) / "test.safetensors"
    if not blocks_path.exists():
        raise InputError(f"{blocks_path}: ControlLM test blocks not found; expected the output of prepare_controllm")
    return sets[0], sets[1], encoding.load_blocks(blocks_path)


def headline(result: AblationMetrics | dict, bars: dict[str, float]) -> Headline:
    """The few numbers that summarise an ablation (`dvc metrics show`, one row per run): sparsity;
    PPL ÷ original (ratio_<variant>_<set>) and ΔPPL (dppl_<variant>_<set>) of the removed and
    random-removed models on TargetKG / ControlKG / ControlLM; the random share; TargetKG accuracy
    before and after; and the verdict against `bars` (params `report.bars`, `bars.check_bars`):
    met_<bar> per bar (true / false) and `verdict`, "all met" or the missed bars' names."""
    metrics = result if isinstance(result, AblationMetrics) else AblationMetrics.from_dict(result)
    checked = check_bars(metrics, bars)  # on the unrounded numbers
    out = {"sparsity": round(checked["sparsity"], 6)}
    for variant in ("removed", "random"):
        for name in SETS:
            out[f"ratio_{variant}_{name}"] = round(checked[f"ratio_{variant}_{name}"], 4)
    out["random_share"] = round(checked["random_share"], 4)
    for variant in ("removed", "random"):
        for name in SETS:
            out[f"dppl_{variant}_{name}"] = round(float(metrics.delta_ppl[variant].on(name)), 4)
    for variant in ("original", "removed"):
        acc = metrics.variant(variant).targetkg.acc
        if acc is not None:
            out[f"targetkg_acc_{variant}"] = round(float(acc), 4)
    out.update({f"met_{bar}": checked[f"met_{bar}"] for bar in BARS})
    out["verdict"] = checked["verdict"]
    return Headline(**out)


# ----------------------------------------------------------------------------------------------
# per-fact scores (facts.parquet)

# Variant name in `fact_scores` -> column suffix. The random columns are the first random draw (the
# draw robustness also uses), so a column's summary over known rows is that draw's metric.
FACT_VARIANTS = {"original": "original", "removed": "removed", "random": "random_draw0"}
FACT_COLUMNS = ["uuid", "head", "rel", "tail", "template_id", "prompt", "tail_text", "known"]


def fact_table(
    rows: dict[str, pd.DataFrame], fact_scores: dict[str, dict[str, dict[str, torch.Tensor]]]
) -> pd.DataFrame:
    """One row per fact of TargetKG test, then ControlKG test (column `set`), each in split order.

    `rows`: {set: `factsets.split_rows` frame}, whose known facts are the evaluated FactSet in
    order; `fact_scores`: filled by `evaluate_ablation` (with the unknown facts). Columns: the fact
    (uuid, head, rel, tail), the sentence scored (template_id; prompt + tail_text, the tail's tokens
    scored), `known` (passed the known filter, so it counts in the metrics), and per variant
    (original, removed, random_draw0 = the first random draw) nll_<variant> (mean cross-entropy of
    the scored tail tokens), rank_<variant> (rank of the first tail token in the vocabulary, 1 =
    top) and correct_<variant> (every tail token top-1): the values behind metrics.json's PPL, rank
    and accuracy."""
    frames = []
    for set_name in FACT_SETS:
        facts = rows[set_name].reset_index()
        frame = facts[FACT_COLUMNS].copy()
        frame.insert(0, "set", set_name)
        known = frame["known"].to_numpy(dtype=bool)
        for variant, suffix in FACT_VARIANTS.items():
            scores = fact_scores[variant]
            for metric in ("nll", "rank", "correct"):
                values = scores[set_name][metric].numpy()
                column = np.empty(len(frame), dtype=values.dtype)
                column[known] = values
                if not known.all():
                    column[~known] = scores[f"{set_name}_unknown"][metric].numpy()
                frame[f"{metric}_{suffix}"] = column
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------------------------
# the evaluate_ablation and combine_seeds stages


def _prepare(
    params: Params,
    model_dir: Path,
    edit: edits.Edit,
    mask_source: str,
    verbalized: Path,
    splits_dir: Path,
    controllm_dir: Path,
):
    """What both stages evaluate with: the device, the model and its tokenizer, the removal's
    layers and granularity, and the test sets (params eval, known, verbalize.scored_positions)."""
    device = pick_device(params.eval.device, key="eval.device")
    lm, tokenizer = load_model(model_dir, device, DTYPES[params.eval.dtype])
    layers, granularity = edits.edit_layers(lm, edit, source=mask_source), edit.granularity
    test_sets = load_test_sets(
        tokenizer,
        verbalized,
        splits_dir,
        controllm_dir,
        params.known,
        scored_positions=params.verbalize.scored_positions,
    )
    return device, lm, tokenizer, layers, granularity, test_sets


def evaluate_mask(
    params: Params,
    *,
    model: str,
    target: str,
    seed: int,
    model_dir: Path,
    verbalized: Path,
    splits_dir: Path,
    controllm_dir: Path,
    mask: Path,
    out: Path,
    headline_out: Path | None = None,
    facts_out: Path | None = None,
) -> dict[str, Any]:
    """The evaluate_ablation stage: `evaluate_ablation` of the removal file `mask` (a discovered
    mask, or a baseline's removal.safetensors: `edits.load_edit`) on the test splits
    (params eval, known, verbalize.scored_positions), written to `out` with provenance; its
    `headline` against params `report.bars` to `headline_out` and its `fact_table` (every test
    fact, known or not) to `facts_out` when given; returns the result."""
    settings = params.eval
    start = time.monotonic()
    edit = edits.load_edit(mask)
    device, lm, tokenizer, layers, granularity, (targetkg, controlkg, blocks) = _prepare(
        params, model_dir, edit, str(mask), verbalized, splits_dir, controllm_dir
    )
    log.info(
        "%s / %s / seed %d: %d TargetKG, %d ControlKG facts, %d ControlLM blocks on %s",
        model,
        target,
        seed,
        len(targetkg.uuids),
        len(controlkg.uuids),
        blocks.shape[0],
        device,
    )

    verbalized_frame = factsets.read_verbalized(verbalized)
    rows = {
        kind: factsets.split_rows(Path(splits_dir) / f"{kind}_test.parquet", verbalized_frame, params.known)
        for kind in FACT_SETS
    }
    fact_scores, unknown = None, None
    if facts_out is not None:
        # the facts the known filter dropped: in the facts table too, though in no metric
        fact_scores = {}
        unknown = {
            kind: factsets.encode_rows(frame[~frame["known"]], tokenizer, params.verbalize.scored_positions)
            for kind, frame in rows.items()
            if not frame["known"].all()
        }
    relations = verbalized_frame.loc[controlkg.uuids, "rel"].tolist()
    result = evaluate_ablation(
        lm,
        layers,
        edit,
        granularity,
        targetkg,
        controlkg,
        blocks,
        random_draws=settings.random_draws,
        seed=seed,
        batch_size=settings.batch_size,
        device=device,
        model_name=model,
        target=target,
        controlkg_relations=relations,
        controllm_ppl=settings.controllm_ppl,
        fact_scores=fact_scores,
        unknown=unknown,
    )
    # how many facts the known-facts filter (params `known`) kept of each test split
    result["counts_before_known_filter"] = {kind: len(frame) for kind, frame in rows.items()}
    result["mask"] = str(mask)
    result["method"] = edit.metadata.get("method", "mask")
    result["provenance"] = stamp(
        {"eval": params.section("eval")}, device=str(device), wall_time_s=round(time.monotonic() - start, 3)
    )
    metrics = AblationMetrics.from_dict(result, source=str(out))
    metrics.write(out)
    if headline_out is not None:
        headline(metrics, dataclasses.asdict(params.report.bars)).write(headline_out)
    if facts_out is not None:
        write_parquet(facts_out, fact_table(rows, fact_scores))
    log.info(
        "TargetKG ΔPPL removed %.3f (random %.3f); ControlKG %.3f; ControlLM %.3f",
        result["delta_ppl"]["removed"]["targetkg"],
        result["delta_ppl"]["random"]["targetkg"],
        result["delta_ppl"]["removed"]["controlkg"],
        result["delta_ppl"]["removed"]["controllm"],
    )
    return result


def combine_seeds(
    params: Params,
    *,
    model: str,
    target: str,
    masks: list[Path],
    model_dir: Path,
    verbalized: Path,
    splits_dir: Path,
    controllm_dir: Path,
    out_masks: Path,
    out_eval: Path,
    combinations: Iterable[str] = tuple(combination.COMBINATIONS),
) -> dict[str, dict]:
    """The combine_seeds stage: for each of `combinations`, the seed masks' combination written to
    `out_masks/<how>.safetensors` (logits +1 in the subnetwork, -1 outside) and its
    `evaluate_ablation` result to `out_eval/<how>.json` (`combination` and `seeds` set, `seed`
    null); params as `evaluate_mask`. Returns the results by combination."""
    settings = params.eval
    start = time.monotonic()
    loaded = [(path, *masking.load_mask(path)) for path in masks]
    granularities = {meta["granularity"] for _, _, meta in loaded}
    if len(granularities) != 1:
        raise InputError(f"{', '.join(map(str, masks))}: masks of different granularities {sorted(granularities)}")
    seeds = sorted(masking.mask_seed(meta, source=str(path)) for path, _, meta in loaded)
    first_meta = loaded[0][2]
    seed_masks = [combination.to_binary(logits) for _, logits, _ in loaded]

    device, lm, _, layers, granularity, (targetkg, controlkg, blocks) = _prepare(
        params,
        model_dir,
        edits.mask_edit(loaded[0][1], first_meta["granularity"], first_meta),
        str(masks[0]),
        verbalized,
        splits_dir,
        controllm_dir,
    )

    results = {}
    for how in combinations:
        combined = combination.combine(seed_masks, how)
        # A mask file holds logits; +1 / -1 keeps the contract "subnetwork = logits > 0".
        logits = {name: torch.where(value, 1.0, -1.0) for name, value in combined.items()}
        metadata = {k: v for k, v in first_meta.items() if k != "seed"}
        metadata.update(model=model, target=target, combination=how, seeds=",".join(map(str, seeds)))
        masking.save_mask(Path(out_masks) / f"{how}.safetensors", logits, metadata)
        # the random baseline is seeded by the smallest seed: same draws for every combination
        result = evaluate_ablation(
            lm,
            layers,
            combined,
            granularity,
            targetkg,
            controlkg,
            blocks,
            random_draws=settings.random_draws,
            seed=seeds[0],
            batch_size=settings.batch_size,
            device=device,
            model_name=model,
            target=target,
            controllm_ppl=settings.controllm_ppl,
        )
        result.update(
            seed=None,
            combination=how,
            seeds=seeds,
            mask=str(Path(out_masks) / f"{how}.safetensors"),
            provenance=stamp(
                {"eval": params.section("eval")},
                device=str(device),
                source_masks=[str(p) for p in masks],
                wall_time_s=round(time.monotonic() - start, 3),
            ),
        )
        AblationMetrics.from_dict(result, source=f"{how}.json").write(Path(out_eval) / f"{how}.json")
        log.info(
            "%s: %d entries, TargetKG ΔPPL removed %.3f (random %.3f)",
            how,
            combination.count(combined),
            result["delta_ppl"]["removed"]["targetkg"],
            result["delta_ppl"]["random"]["targetkg"],
        )
        results[how] = result
    return results
