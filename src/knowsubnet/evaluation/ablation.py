"""The ablation evaluation: what removing a subnetwork does, against removing as many weights at random.

It compares four versions of one model on TargetKG, ControlKG and ControlLM test data:

- original: the pretrained model;
- removed:  the subnetwork zeroed (the *remaining model*, `keep="remaining"`);
- random:   a random subnetwork with exactly the same number of entries per masked matrix zeroed,
            over several seeded draws (the baseline: removing that many weights at random);
- kept:     only the subnetwork kept in the masked layers (`keep="subnetwork"`).

ΔPPL = PPL(variant) − PPL(original). Every forward pass runs without gradients in eval mode; the
model's weights are restored after each variant (`masking.masked_weights`).

The stages, from files to files: `evaluate_mask` (evaluate_ablation: one seed's mask) and
`combine_seeds` (the union / intersection / majority of a target's seed masks, each evaluated).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn

from knowsubnet.core.config import Known, Params
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import write_json
from knowsubnet.core.provenance import stamp
from knowsubnet.data import encoding, factsets
from knowsubnet.method import combination, masking
from knowsubnet.models.prepare import load_model, pick_device
from knowsubnet.scoring.facts import DTYPES, ppl_from_nll, score_facts, summarize_facts
from knowsubnet.scoring.text import lm_ppl

log = logging.getLogger(__name__)

SETS = ("targetkg", "controlkg", "controllm")
VARIANTS = ("removed", "random", "kept")

# ----------------------------------------------------------------------------------------------
# ablation


def _evaluate_sets(model, targetkg, controlkg, blocks, batch_size, device, controllm_ppl: str, label: str,
                   controlkg_relations: list[str] | None = None) -> dict[str, dict]:
    log.info("evaluating %s model", label)
    control = score_facts(model, controlkg, batch_size, device, f"{label}/controlkg")
    out = {
        "targetkg": _fact_metrics(summarize_facts(score_facts(model, targetkg, batch_size, device, f"{label}/targetkg"))),
        "controlkg": _fact_metrics(summarize_facts(control)),
        "controllm": {"ppl": lm_ppl(model, blocks, batch_size, device, controllm_ppl)},
    }
    if controlkg_relations is not None:
        # Where collateral damage lands: ControlKG PPL per relation.
        nll = pd.Series(control["nll"].numpy(), index=controlkg_relations)
        out["controlkg_by_relation"] = {rel: ppl_from_nll(float(v)) for rel, v in nll.groupby(level=0).mean().items()}
    return out


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


def evaluate_ablation(model: nn.Module, layers: list[masking.MaskableLayer], logits: dict[str, torch.Tensor],
                      granularity: str, targetkg, controlkg, controllm_blocks: torch.Tensor,
                      random_draws: int, seed: int, batch_size: int, device: str | torch.device, *,
                      model_name: str | None = None, target: str | None = None,
                      controlkg_relations: list[str] | None = None,
                      controllm_ppl: str = "token_mean") -> dict[str, Any]:
    """Original / removed / random-removed / kept metrics on the three test sets (see module doc).

    `logits` are mask logits (subnetwork = logits > 0) or boolean masks. The random baseline draws
    `random_draws` masks from `torch.Generator().manual_seed(seed)`: deterministic for a fixed seed.
    `controllm_ppl`: how ControlLM perplexity averages (`lm_ppl`).
    """
    if random_draws < 1:
        raise InputError(f"params key 'eval.random_draws' = {random_draws}: expected at least 1 draw")
    masks = {name: (v if v.dtype == torch.bool else v > 0).cpu() for name, v in logits.items()}
    masking.check_mask_matches(layers, masks, granularity, source="evaluate_ablation")
    args = (targetkg, controlkg, controllm_blocks, batch_size, device, controllm_ppl)  # same averaging everywhere
    by_rel = {"controlkg_relations": controlkg_relations}

    original = _evaluate_sets(model, *args, label="original", **by_rel)
    with masking.masked_weights(layers, masks, granularity, keep="remaining"):
        removed = _evaluate_sets(model, *args, label="removed", **by_rel)
    with masking.masked_weights(layers, masks, granularity, keep="subnetwork"):
        kept = _evaluate_sets(model, *args, label="kept")

    generator = torch.Generator().manual_seed(int(seed))
    draws = []
    for draw in range(random_draws):
        random_masks = masking.random_masks_like(masks, generator)
        with masking.masked_weights(layers, random_masks, granularity, keep="remaining"):
            draws.append(_evaluate_sets(model, *args, label=f"random[{draw}]", **by_rel))
    random_mean, random_spread = _mean_and_spread(draws)

    variants = {"removed": removed, "random": random_mean, "kept": kept}
    delta = {name: {s: result[s]["ppl"] - original[s]["ppl"] for s in SETS} for name, result in variants.items()}
    return {
        "model": model_name,
        "target": target,
        "seed": int(seed),
        "granularity": granularity,
        "sparsity": masking.sparsity(model, layers, masks, granularity),
        "subnetwork_size": masking.subnetwork_size(layers, masks, granularity),
        "counts": {"targetkg": int(targetkg.input_ids.shape[0]), "controlkg": int(controlkg.input_ids.shape[0]),
                   "controllm_blocks": int(controllm_blocks.shape[0]),
                   **({"controlkg_by_relation": pd.Series(controlkg_relations).value_counts().sort_index().to_dict()}
                      if controlkg_relations is not None else {})},
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


def mask_layers(model: nn.Module, logits: dict[str, torch.Tensor], metadata: dict[str, str],
                source: str) -> tuple[list[masking.MaskableLayer], str]:
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


def load_test_sets(tokenizer, verbalized: str | Path, splits_dir: str | Path, controllm_dir: str | Path,
                   known: Known | None = None,
                   scored_positions: str = "all_tail_tokens") -> tuple[Any, Any, torch.Tensor]:
    """TargetKG test and ControlKG test FactSets (facts the model knows, see
    `factsets.load_split_factset`), and the ControlLM test blocks."""
    verbalized_frame = factsets.read_verbalized(verbalized)
    splits_dir = Path(splits_dir)
    sets = []
    for kind in ("targetkg", "controlkg"):
        path = splits_dir / f"{kind}_test.parquet"
        if not path.exists():
            raise InputError(f"{path}: split file not found; expected the output of split_controls")
        sets.append(factsets.load_split_factset(path, verbalized_frame, tokenizer, known, scored_positions))
    blocks_path = Path(controllm_dir) / "test.safetensors"
    if not blocks_path.exists():
        raise InputError(f"{blocks_path}: ControlLM test blocks not found; expected the output of prepare_controllm")
    return sets[0], sets[1], encoding.load_blocks(blocks_path)


def headline(result: dict) -> dict:
    """The few numbers that summarise an ablation (`dvc metrics show`): sparsity, ΔPPL of the removed
    and random-removed models on TargetKG / ControlKG / ControlLM, TargetKG accuracy before and after."""
    out = {"sparsity": round(float(result["sparsity"]["masked_layers"]), 6)}
    for variant in ("removed", "random"):
        for name, value in result["delta_ppl"][variant].items():
            out[f"dppl_{variant}_{name}"] = round(float(value), 4)
    for variant in ("original", "removed"):
        acc = result.get(variant, {}).get("targetkg", {}).get("acc")
        if acc is not None:
            out[f"targetkg_acc_{variant}"] = round(float(acc), 4)
    return out


# ----------------------------------------------------------------------------------------------
# the evaluate_ablation and combine_seeds stages


def _prepare(params: Params, model_dir: Path, logits: dict[str, torch.Tensor], metadata: dict[str, str],
             mask_source: str, verbalized: Path, splits_dir: Path, controllm_dir: Path):
    """What both stages evaluate with: the device, the model, the mask's layers and granularity,
    and the test sets (params eval, known, verbalize.scored_positions)."""
    device = pick_device(params.eval.device, key="eval.device")
    lm, tokenizer = load_model(model_dir, device, DTYPES[params.eval.dtype])
    layers, granularity = mask_layers(lm, logits, metadata, source=mask_source)
    test_sets = load_test_sets(tokenizer, verbalized, splits_dir, controllm_dir, params.known,
                               params.verbalize.scored_positions)
    return device, lm, layers, granularity, test_sets


def evaluate_mask(params: Params, *, model: str, target: str, seed: int, model_dir: Path, verbalized: Path,
                  splits_dir: Path, controllm_dir: Path, mask: Path, out: Path,
                  headline_out: Path | None = None) -> dict[str, Any]:
    """The evaluate_ablation stage: `evaluate_ablation` of the mask file `mask` on the test splits
    (params eval, known, verbalize.scored_positions), written to `out` with provenance, and its
    `headline` to `headline_out` when given; returns the result."""
    settings = params.eval
    start = time.monotonic()
    logits, metadata = masking.load_mask(mask)
    device, lm, layers, granularity, (targetkg, controlkg, blocks) = _prepare(
        params, model_dir, logits, metadata, str(mask), verbalized, splits_dir, controllm_dir)
    log.info("%s / %s / seed %d: %d TargetKG, %d ControlKG facts, %d ControlLM blocks on %s", model,
             target, seed, len(targetkg.uuids), len(controlkg.uuids), blocks.shape[0], device)

    relations = factsets.read_verbalized(verbalized).loc[controlkg.uuids, "rel"].tolist()
    result = evaluate_ablation(
        lm, layers, logits, granularity, targetkg, controlkg, blocks,
        random_draws=settings.random_draws, seed=seed, batch_size=settings.batch_size,
        device=device, model_name=model, target=target, controlkg_relations=relations,
        controllm_ppl=settings.controllm_ppl)
    # how many facts the known-facts filter (params `known`) kept of each test split
    result["counts_before_known_filter"] = {kind: len(pd.read_parquet(Path(splits_dir) / f"{kind}_test.parquet"))
                                            for kind in ("targetkg", "controlkg")}
    result["mask"] = str(mask)
    result["provenance"] = stamp({"eval": params.section("eval")},
                                 device=str(device), wall_time_s=round(time.monotonic() - start, 3))
    write_json(out, result)
    if headline_out is not None:
        write_json(headline_out, headline(result))
    log.info("TargetKG ΔPPL removed %.3f (random %.3f); ControlKG %.3f; ControlLM %.3f",
             result["delta_ppl"]["removed"]["targetkg"], result["delta_ppl"]["random"]["targetkg"],
             result["delta_ppl"]["removed"]["controlkg"], result["delta_ppl"]["removed"]["controllm"])
    return result


def combine_seeds(params: Params, *, model: str, target: str, masks: list[Path], model_dir: Path,
                  verbalized: Path, splits_dir: Path, controllm_dir: Path, out_masks: Path, out_eval: Path,
                  combinations: Iterable[str] = tuple(combination.COMBINATIONS)) -> dict[str, dict]:
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

    device, lm, layers, granularity, (targetkg, controlkg, blocks) = _prepare(
        params, model_dir, loaded[0][1], first_meta, str(masks[0]), verbalized, splits_dir, controllm_dir)

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
            lm, layers, combined, granularity, targetkg, controlkg, blocks,
            random_draws=settings.random_draws, seed=seeds[0], batch_size=settings.batch_size,
            device=device, model_name=model, target=target,
            controllm_ppl=settings.controllm_ppl)
        result.update(seed=None, combination=how, seeds=seeds,
                      mask=str(Path(out_masks) / f"{how}.safetensors"),
                      provenance=stamp({"eval": params.section("eval")},
                                       device=str(device), source_masks=[str(p) for p in masks],
                                       wall_time_s=round(time.monotonic() - start, 3)))
        write_json(Path(out_eval) / f"{how}.json", result)
        log.info("%s: %d entries, TargetKG ΔPPL removed %.3f (random %.3f)", how, combination.count(combined),
                 result["delta_ppl"]["removed"]["targetkg"], result["delta_ppl"]["random"]["targetkg"])
        results[how] = result
    return results
