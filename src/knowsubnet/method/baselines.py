"""One baseline removal, from files to files (the `remove_baseline` stage): another way of removing
the same target's knowledge from the same layers, to compare with the learned mask.

Methods (params `run.baselines`, settings under `baselines.<method>`; docs/BASELINES.md):

- random_magnitude, attribution, neurons (`method.attribution`): no training; they remove exactly
  as many weights per matrix as the seed's learned mask (neurons: as many weights in whole
  neurons), so they read that mask;
- graddiff, npo, rmu (`method.unlearning`): finetuning of the masked layers' weights on the same
  TargetKG / ControlKG / ControlLM training data, the checkpoint selected on validation as the
  mask's is.

Every choice is made on the validation sets, with the mask's own criterion (`choose`): attribution's
and neurons' settings (`tuning` in meta.json), the finetuning methods' checkpoints. Each method's
trade-off is traced there too (`curve`): the count-sized methods at `sweep` multiples of the mask's
counts, the finetuning ones at every validated step.

Writes into `out_dir`: removal.safetensors (`edits`: a mask, or new weights) and meta.json (what
was changed and by how much, the curve, wall time, provenance).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from knowsubnet.core.config import Params
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import write_json
from knowsubnet.core.provenance import stamp
from knowsubnet.data import encoding, factsets
from knowsubnet.method import attribution, discover, edits, masking, selection, unlearning
from knowsubnet.method.training import MaskTrainer
from knowsubnet.models import precision
from knowsubnet.models.prepare import load_model, pick_device

log = logging.getLogger(__name__)

SIZED_BY_MASK = ("random_magnitude", "attribution", "neurons")
METHODS = SIZED_BY_MASK + unlearning.METHODS


def choose(rows: list[dict[str, float]], original: dict[str, float], min_target_ratio: float) -> int:
    """Index of the setting kept, chosen on validation as the mask's checkpoint is (`train.select`):
    among the rows whose TargetKG PPL is at least `min_target_ratio` x the original's, the least
    damage (log ControlKG ratio + log ControlLM ratio); when none qualifies, the largest log TargetKG
    ratio minus that damage."""
    def log_ratio(row, key):
        value = row[f"val_{key}_ppl"] / original[key] if original.get(key) else 1.0
        return math.log(value) if value > 0 and math.isfinite(value) else math.inf

    damage = [log_ratio(row, "controlkg") + (log_ratio(row, "controllm") if "controllm" in original else 0.0)
              for row in rows]
    qualified = [i for i, row in enumerate(rows) if log_ratio(row, "targetkg") >= math.log(min_target_ratio)]
    if qualified:
        return min(qualified, key=lambda i: damage[i])
    return max(range(len(rows)), key=lambda i: log_ratio(rows[i], "targetkg") - damage[i])


def _candidate_scores(method: str, params: Params, trainer: MaskTrainer, seed: int) -> list[tuple[dict, dict]]:
    """(setting, scores) for every setting of `method` to choose from on validation: attribution
    over `signed` x `contrast`, neurons over `contrast`. The gradients run once."""
    if method == "attribution":
        cfg = params.baselines.attribution
        target = attribution.taylor_terms(trainer, "target", cfg.batch)
        control = attribution.taylor_terms(trainer, "control", cfg.batch) if any(cfg.contrast) else None
        return [({"signed": signed, "contrast": contrast},
                 attribution.attribution_scores(target, control, contrast, signed))
                for signed in cfg.signed for contrast in cfg.contrast]
    cfg = params.baselines.neurons
    target = attribution.neuron_scores(trainer, cfg.ig_steps, cfg.batch)
    control = (attribution.control_neuron_scores(trainer, cfg.ig_steps, cfg.batch, torch.Generator().manual_seed(seed))
               if any(cfg.contrast) else None)
    return [({"contrast": c}, {k: target[k] - c * control[k] if c else target[k] for k in target})
            for c in cfg.contrast]


def _sized_removal(method: str, params: Params, trainer: MaskTrainer, reference: dict[str, torch.Tensor],
                   seed: int, score) -> tuple:
    """A function factor -> weight masks of `method`, `factor` x the reference mask's size, and the
    settings tried on validation ({setting, val PPLs} rows; empty for random_magnitude) with the
    index of the one kept."""
    layers = trainer.layers
    counts = {name: int(m.sum()) for name, m in reference.items()}
    sizes = {l.name: l.weight.numel() for l in layers}
    if method == "random_magnitude":
        cfg = params.baselines.random_magnitude
        return (lambda f: attribution.magnitude_matched(layers, reference, cfg.bins,
                                                        torch.Generator().manual_seed(seed), f)), [], None
    if method == "attribution":
        def at(scores):
            return lambda f: attribution.top_counts(scores, attribution.scaled_counts(counts, f, sizes))
    else:
        def at(scores):
            return lambda f: attribution.neuron_masks(layers, scores, attribution.neuron_count(reference, layers, f))
    candidates = _candidate_scores(method, params, trainer, seed)
    tried = [{**setting, **score(at(scores)(1.0))} for setting, scores in candidates]
    kept = choose(tried, trainer.val_original, getattr(params.baselines, method).min_target_ratio)
    log.info("%s: kept %s of %d settings tried on validation", method, candidates[kept][0], len(tried))
    return at(candidates[kept][1]), tried, kept


def _curve_row(point: float, removed: int, ppls: dict[str, float]) -> dict[str, float]:
    return {"point": point, "removed_weights": removed,
            **{f"val_{key}_ppl": ppls.get(key, float("nan")) for key in ("targetkg", "controlkg", "controllm")}}


def run_baseline(params: Params, *, method: str, model: str, target: str, seed: int, model_dir: Path,
                 verbalized: Path, splits_dir: Path, controllm_dir: Path, mask: Path | None, out_dir: Path,
                 progress: bool = True) -> dict[str, Any]:
    """Run `method` and write its outputs (module doc); returns meta.json's content."""
    if method not in METHODS:
        raise InputError(f"baseline method {method!r}: expected one of {', '.join(METHODS)}")
    if method in SIZED_BY_MASK and mask is None:
        raise InputError(f"baseline {method}: needs the learned mask of the same seed (--mask) for its size")
    start = time.monotonic()
    device = pick_device(params.baselines.device, key="baselines.device")
    lm, tokenizer = load_model(model_dir, device, torch.float32)
    sets = discover.load_training_sets(splits_dir, factsets.read_verbalized(verbalized), tokenizer, params, target)
    val_path = controllm_dir / "val.safetensors"
    validation = selection.ValidationSets(sets["targetkg_val"], sets["controlkg_val"],
                                          encoding.load_blocks(val_path) if val_path.is_file() else None)
    metadata = {"model": model, "target": target, "seed": str(seed), "method": method, "granularity": "weight"}

    if method in SIZED_BY_MASK:
        reference = edits.load_edit(mask)
        if reference.kind != "mask":
            raise InputError(f"{mask}: expected a learned mask (kind 'mask'), got kind {reference.kind!r}")
        top_k = int(reference.metadata.get("top_k_blocks", 0))
        # the trainer's caches only (lower blocks once per fact, validation); nothing is trained
        trainer = MaskTrainer(lm, sets["targetkg_train"], sets["controlkg_train"], None,
                              dataclasses.replace(params.mask, top_k_blocks=top_k), params.train, seed,
                              progress=False, validation=validation)
        layers = edits.edit_layers(lm, reference, source=str(mask))
        reference_masks = {l.name: masking.expand_to_weight(reference.tensors[l.name], l, reference.granularity)
                           for l in layers}
        def score(masks):
            return _curve_row(1.0, sum(int(m.sum()) for m in masks.values()),
                              trainer.validation_ppls(masking.apply_mask(layers, masks, "weight")))

        removal_at, tried, kept = _sized_removal(method, params, trainer, reference_masks, seed, score)
        curve = []
        for factor in getattr(params.baselines, method).sweep:
            curve.append({**score(removal_at(factor)), "point": factor})
            log.info("%s x%.2f of the mask's size: %s", method, factor, curve[-1])
        edit = edits.mask_edit(removal_at(1.0), "weight", {
            **metadata, "top_k_blocks": str(top_k),
            "unit": "input_neuron" if method == "neurons" else "weight"})
        masking.save_mask(out_dir / "removal.safetensors",
                          {k: torch.where(v, 1.0, -1.0) for k, v in edit.tensors.items()}, edit.metadata)
        original, selected = trainer.val_original, 1.0
        tuning = {"tried": tried, "kept": kept} if tried else None
    else:
        cfg = getattr(params.baselines, method)
        blocks = encoding.load_blocks(controllm_dir / "train.safetensors")
        trainer = unlearning.UnlearningTrainer(lm, sets["targetkg_train"], sets["controlkg_train"], blocks, params.mask,
                                               params.train, method, cfg, seed, progress=progress,
                                               checkpoint_path=out_dir / "checkpoint.pt", validation=validation)
        result = trainer.train()
        layers = trainer.layers
        top_k = len({l.block for l in layers})
        edit = edits.Edit("weights", result.logits, {**metadata, "top_k_blocks": str(top_k)})
        edits.save_weights_edit(out_dir / "removal.safetensors", edit.tensors, edit.metadata)
        curve = [_curve_row(row["step"], 0, {k: row[f"val_{k}_ppl"] for k in ("targetkg", "controlkg", "controllm")})
                 for row in result.selection["curve"]]
        original, selected, tuning = result.selection["original"], result.selection["step"], None

    meta = {
        "model": model, "target": target, "seed": seed, "method": method, "kind": edit.kind, "top_k_blocks": top_k,
        "changed": edits.change_stats(lm, layers, edit),
        "n_facts": {name: len(facts.uuids) for name, facts in sets.items()},
        "validation": {"original": original, "curve": curve, "selected": selected, "tuning": tuning},
        "wall_time_s": round(time.monotonic() - start, 3), "device": str(device),
        "compute": precision.provenance(trainer.dtype, trainer.device),
        "provenance": stamp({"baselines": {"device": params.baselines.device,
                                           method: dataclasses.asdict(getattr(params.baselines, method))},
                             "known": params.section("known")},
                            model_dir=str(model_dir), mask=str(mask) if mask else None),
    }
    write_json(out_dir / "meta.json", meta)
    trainer.discard_checkpoint()
    log.info("%s / %s / seed %d / %s: changed %d weights (%.4f of the masked layers) in %.1f s", model, target,
             seed, method, meta["changed"]["changed_weights"], meta["changed"]["changed_share_masked_layers"],
             meta["wall_time_s"])
    return meta
