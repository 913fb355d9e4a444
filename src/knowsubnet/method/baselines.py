"""One baseline removal, from files to files (the `remove_baseline` stage): another way of removing
the same target's knowledge from the same layers, to compare with the learned mask.

Methods (`registry`: each one's kind and fit; params `run.baselines`, settings under
`baselines.<method>`; docs/BASELINES.md):

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
from knowsubnet.method import attribution, discover, edits, masking, registry, selection, unlearning
from knowsubnet.method.training import MaskTrainer
from knowsubnet.models import precision
from knowsubnet.models.prepare import load_model, pick_device

log = logging.getLogger(__name__)

# kept for callers: the registry's lists
SIZED_BY_MASK = tuple(registry.names(registry.SIZED_BY_MASK))
METHODS = tuple(registry.baselines())


def choose(rows: list[dict[str, float]], original: dict[str, float], min_target_ratio: float) -> int:
    """Index of the setting kept, chosen on validation as the mask's checkpoint is (`train.select`):
    among the rows whose TargetKG PPL is at least `min_target_ratio` x the original's, the least
    damage (log ControlKG ratio + log ControlLM ratio); when none qualifies, the largest log TargetKG
    ratio minus that damage."""

    def log_ratio(row, key):
        value = row[f"val_{key}_ppl"] / original[key] if original.get(key) else 1.0
        return math.log(value) if value > 0 and math.isfinite(value) else math.inf

    damage = [
        log_ratio(row, "controlkg") + (log_ratio(row, "controllm") if "controllm" in original else 0.0) for row in rows
    ]
    qualified = [i for i, row in enumerate(rows) if log_ratio(row, "targetkg") >= math.log(min_target_ratio)]
    if qualified:
        return min(qualified, key=lambda i: damage[i])
    return max(range(len(rows)), key=lambda i: log_ratio(rows[i], "targetkg") - damage[i])


@dataclasses.dataclass
class FitInputs:
    """What every baseline's fit gets (`registry`): the model and its training / validation sets,
    loaded once by `run_baseline`."""

    name: str
    params: Params
    lm: Any
    sets: dict[str, Any]  # discover.load_training_sets
    validation: selection.ValidationSets
    seed: int
    mask: Path | None  # the seed's learned mask (sized_by_mask methods)
    controllm_dir: Path
    out_dir: Path  # for a finetuning checkpoint
    progress: bool
    metadata: dict[str, str]  # the edit's metadata so far


@dataclasses.dataclass
class Fitted:
    """A fit's result: the edit (a mask or new weights) on `layers`, the trainer that measured it
    (its compute dtype and device, its checkpoint), and the choices made on validation."""

    edit: edits.Edit
    layers: list
    trainer: MaskTrainer
    top_k: int
    curve: list[dict[str, float]]
    original: dict[str, float]
    selected: float
    tuning: dict[str, Any] | None


def _tuned(inputs: FitInputs, trainer: MaskTrainer, candidates: list[tuple[dict, dict]], at, score) -> tuple:
    """(removal_at, tried, kept): the candidate settings scored at the mask's size, one kept by `choose`."""
    tried = [{**setting, **score(at(scores)(1.0))} for setting, scores in candidates]
    kept = choose(tried, trainer.val_original, getattr(inputs.params.baselines, inputs.name).min_target_ratio)
    log.info("%s: kept %s of %d settings tried on validation", inputs.name, candidates[kept][0], len(tried))
    return at(candidates[kept][1]), tried, kept


def _random_magnitude(inputs: FitInputs, trainer: MaskTrainer, reference: dict[str, torch.Tensor], score) -> tuple:
    cfg, layers = inputs.params.baselines.random_magnitude, trainer.layers
    return (
        (
            lambda f: attribution.magnitude_matched(
                layers, reference, cfg.bins, torch.Generator().manual_seed(inputs.seed), f
            )
        ),
        [],
        None,
    )


def _attribution(inputs: FitInputs, trainer: MaskTrainer, reference: dict[str, torch.Tensor], score) -> tuple:
    """Attribution over `signed` x `contrast`; the gradients run once."""
    cfg = inputs.params.baselines.attribution
    counts = {name: int(m.sum()) for name, m in reference.items()}
    sizes = {layer.name: layer.weight.numel() for layer in trainer.layers}
    target = attribution.taylor_terms(trainer, "target", cfg.batch)
    control = attribution.taylor_terms(trainer, "control", cfg.batch) if any(cfg.contrast) else None
    candidates = [
        ({"signed": signed, "contrast": contrast}, attribution.attribution_scores(target, control, contrast, signed))
        for signed in cfg.signed
        for contrast in cfg.contrast
    ]

    def at(scores):
        return lambda f: attribution.top_counts(scores, attribution.scaled_counts(counts, f, sizes))

    return _tuned(inputs, trainer, candidates, at, score)


def _neurons(inputs: FitInputs, trainer: MaskTrainer, reference: dict[str, torch.Tensor], score) -> tuple:
    """Knowledge neurons over `contrast`; the integrated gradients run once."""
    cfg, layers = inputs.params.baselines.neurons, trainer.layers
    target = attribution.neuron_scores(trainer, cfg.ig_steps, cfg.batch)
    control = (
        attribution.control_neuron_scores(trainer, cfg.ig_steps, cfg.batch, torch.Generator().manual_seed(inputs.seed))
        if any(cfg.contrast)
        else None
    )
    candidates = [
        ({"contrast": c}, {k: target[k] - c * control[k] if c else target[k] for k in target}) for c in cfg.contrast
    ]

    def at(scores):
        return lambda f: attribution.neuron_masks(layers, scores, attribution.neuron_count(reference, layers, f))

    return _tuned(inputs, trainer, candidates, at, score)


def _curve_row(point: float, removed: int, ppls: dict[str, float]) -> dict[str, float]:
    return {
        "point": point,
        "removed_weights": removed,
        **{f"val_{key}_ppl": ppls.get(key, float("nan")) for key in ("targetkg", "controlkg", "controllm")},
    }


def _fit_sized(inputs: FitInputs, sizer) -> Fitted:
    """A sized_by_mask method: `sizer(inputs, trainer, reference masks, score)` gives a function
    factor -> weight masks, `factor` x the reference mask's size, and the settings tried on
    validation ({setting, val PPLs} rows; empty when there is nothing to choose) with the index of
    the one kept. The curve is traced at `sweep` multiples of the mask's counts."""
    params, mask = inputs.params, inputs.mask
    reference = edits.load_edit(mask)
    if reference.kind != "mask":
        raise InputError(f"{mask}: expected a learned mask (kind 'mask'), got kind {reference.kind!r}")
    top_k = int(reference.metadata.get("top_k_blocks", 0))
    # the trainer's caches only (lower blocks once per fact, validation); nothing is trained
    trainer = MaskTrainer(
        inputs.lm,
        inputs.sets["targetkg_train"],
        inputs.sets["controlkg_train"],
        None,
        dataclasses.replace(params.mask, top_k_blocks=top_k),
        params.train,
        inputs.seed,
        progress=False,
        validation=inputs.validation,
    )
    layers = edits.edit_layers(inputs.lm, reference, source=str(mask))
    reference_masks = {
        layer.name: masking.expand_to_weight(reference.tensors[layer.name], layer, reference.granularity)
        for layer in layers
    }

    def score(masks):
        return _curve_row(
            1.0,
            sum(int(m.sum()) for m in masks.values()),
            trainer.validation_ppls(masking.apply_mask(layers, masks, "weight")),
        )

    removal_at, tried, kept = sizer(inputs, trainer, reference_masks, score)
    curve = []
    for factor in getattr(params.baselines, inputs.name).sweep:
        curve.append({**score(removal_at(factor)), "point": factor})
        log.info("%s x%.2f of the mask's size: %s", inputs.name, factor, curve[-1])
    edit = edits.mask_edit(
        removal_at(1.0),
        "weight",
        {
            **inputs.metadata,
            "top_k_blocks": str(top_k),
            "unit": "input_neuron" if inputs.name == "neurons" else "weight",
        },
    )
    return Fitted(
        edit,
        layers,
        trainer,
        top_k,
        curve,
        trainer.val_original,
        1.0,
        {"tried": tried, "kept": kept} if tried else None,
    )


def fit_random_magnitude(inputs: FitInputs) -> Fitted:
    return _fit_sized(inputs, _random_magnitude)


def fit_attribution(inputs: FitInputs) -> Fitted:
    return _fit_sized(inputs, _attribution)


def fit_neurons(inputs: FitInputs) -> Fitted:
    return _fit_sized(inputs, _neurons)


def fit_unlearning(inputs: FitInputs) -> Fitted:
    """A finetuning method (GradDiff, NPO, RMU: `unlearning`), its checkpoint selected on validation;
    the curve is every validated step."""
    cfg = getattr(inputs.params.baselines, inputs.name)
    blocks = encoding.load_blocks(inputs.controllm_dir / "train.safetensors")
    trainer = unlearning.UnlearningTrainer(
        inputs.lm,
        inputs.sets["targetkg_train"],
        inputs.sets["controlkg_train"],
        blocks,
        inputs.params.mask,
        inputs.params.train,
        inputs.name,
        cfg,
        inputs.seed,
        progress=inputs.progress,
        checkpoint_path=inputs.out_dir / "checkpoint.pt",
        validation=inputs.validation,
    )
    result = trainer.train()
    layers = trainer.layers
    top_k = len({layer.block for layer in layers})
    edit = edits.Edit("weights", result.logits, {**inputs.metadata, "top_k_blocks": str(top_k)})
    curve = [
        _curve_row(row["step"], 0, {k: row[f"val_{k}_ppl"] for k in ("targetkg", "controlkg", "controllm")})
        for row in result.selection["curve"]
    ]
    return Fitted(edit, layers, trainer, top_k, curve, result.selection["original"], result.selection["step"], None)


def run_baseline(
    params: Params,
    *,
    method: str,
    model: str,
    target: str,
    seed: int,
    model_dir: Path,
    verbalized: Path,
    splits_dir: Path,
    controllm_dir: Path,
    mask: Path | None,
    out_dir: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Run `method` (its `registry` fit) and write its outputs (module doc); returns meta.json's content."""
    if method not in METHODS:
        raise InputError(f"baseline method {method!r}: expected one of {', '.join(METHODS)}")
    if registry.get(method).kind == registry.SIZED_BY_MASK and mask is None:
        raise InputError(f"baseline {method}: needs the learned mask of the same seed (--mask) for its size")
    start = time.monotonic()
    device = pick_device(params.baselines.device, key="baselines.device")
    lm, tokenizer = load_model(model_dir, device, torch.float32)
    sets = discover.load_training_sets(splits_dir, factsets.read_verbalized(verbalized), tokenizer, params, target)
    val_path = controllm_dir / "val.safetensors"
    validation = selection.ValidationSets(
        sets["targetkg_val"], sets["controlkg_val"], encoding.load_blocks(val_path) if val_path.is_file() else None
    )
    metadata = {"model": model, "target": target, "seed": str(seed), "method": method, "granularity": "weight"}

    fitted = registry.fit_function(method)(
        FitInputs(method, params, lm, sets, validation, seed, mask, controllm_dir, out_dir, progress, metadata)
    )
    edit, trainer = fitted.edit, fitted.trainer
    if edit.kind == "mask":
        masking.save_mask(
            out_dir / "removal.safetensors",
            {k: torch.where(v, 1.0, -1.0) for k, v in edit.tensors.items()},
            edit.metadata,
        )
    else:
        edits.save_weights_edit(out_dir / "removal.safetensors", edit.tensors, edit.metadata)

    meta = {
        "model": model,
        "target": target,
        "seed": seed,
        "method": method,
        "kind": edit.kind,
        "top_k_blocks": fitted.top_k,
        "changed": edits.change_stats(lm, fitted.layers, edit),
        "n_facts": {name: len(facts.uuids) for name, facts in sets.items()},
        "validation": {
            "original": fitted.original,
            "curve": fitted.curve,
            "selected": fitted.selected,
            "tuning": fitted.tuning,
        },
        "wall_time_s": round(time.monotonic() - start, 3),
        "device": str(device),
        "compute": precision.provenance(trainer.dtype, trainer.device),
        "provenance": stamp(
            {
                "baselines": {
                    "device": params.baselines.device,
                    method: dataclasses.asdict(getattr(params.baselines, method)),
                },
                "known": params.section("known"),
            },
            model_dir=str(model_dir),
            mask=str(mask) if mask else None,
        ),
    }
    write_json(out_dir / "meta.json", meta)
    trainer.discard_checkpoint()
    log.info(
        "%s / %s / seed %d / %s: changed %d weights (%.4f of the masked layers) in %.1f s",
        model,
        target,
        seed,
        method,
        meta["changed"]["changed_weights"],
        meta["changed"]["changed_share_masked_layers"],
        meta["wall_time_s"],
    )
    return meta
