"""The ablation evaluation: what removing a subnetwork does, against removing as many weights at random.

It compares four versions of one model on TargetKG, ControlKG and ControlLM test data:

- original: the pretrained model;
- removed:  the subnetwork zeroed (the *remaining model*, `keep="remaining"`);
- random:   a random subnetwork with exactly the same number of entries per masked matrix zeroed,
            over several seeded draws (the baseline: removing that many weights at random);
- kept:     only the subnetwork kept in the masked layers (`keep="subnetwork"`).

ΔPPL = PPL(variant) − PPL(original). Every forward pass runs without gradients in eval mode; the
model's weights are restored after each variant (`masking.masked_weights`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from knowsubnet.core.config import Known
from knowsubnet.core.errors import InputError
from knowsubnet.evaluation.scoring import lm_ppl, ppl_from_nll, score_facts, summarize_facts
from knowsubnet.method import masking

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
    from knowsubnet.data import encoding  # the data layer; imported here to keep this module light
    from knowsubnet.data import factsets

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
