"""One discovery run, from files to files: learn the knowledge-critical subnetwork of one
(model, target, seed) and write it with its training log, metadata and headline metrics.

Reads: the model directory, the model's verbalisations, the target's split folder and the model's
ControlLM blocks. Writes into `out_dir`: mask.safetensors, meta.json, train_log.csv, metrics.json.
A checkpoint (checkpoint.pt) lives there while training runs; a re-run resumes from it when its
fingerprint matches (`MaskTrainer.load_checkpoint`); it is deleted once the outputs are written.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import pandas as pd
import torch

from knowsubnet.core.config import Params
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import write_json, write_text
from knowsubnet.core.provenance import stamp
from knowsubnet.data import encoding, factsets
from knowsubnet.method import masking, selection, training
from knowsubnet.models import precision
from knowsubnet.models.prepare import load_model, pick_device

log = logging.getLogger(__name__)

TRAIN_SETS = ("targetkg_train", "controlkg_train", "targetkg_val", "controlkg_val")


def log_csv(rows: list[dict]) -> str:
    columns = list(training.LOG_COLUMNS) + list(selection.VAL_COLUMNS)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        # validation columns stay empty on the rows where no validation ran
        writer.writerow(
            {k: (int(row[k]) if k == "step" else "" if row.get(k) is None else repr(float(row[k]))) for k in columns}
        )
    return buffer.getvalue()


def load_training_sets(splits_dir: Path, verbalized: pd.DataFrame, tokenizer, params: Params, target: str):
    """TargetKG / ControlKG train and val FactSets (known facts only, params `known`)."""
    # Keeping the original distribution can be asked of every ControlKG fact, known or not.
    control_known = params.known if params.train.controlkg_known_only else None
    sets = {}
    for name in TRAIN_SETS:
        path = splits_dir / f"{name}.parquet"
        if not path.is_file():
            raise InputError(f"{path}: no such split file; run the split_controls stage for target {target}")
        known = control_known if name == "controlkg_train" else params.known
        # the checkpoint is selected on the facts in their best template, as the test measures them
        templates = params.train.targetkg_templates if name == "targetkg_train" else "best"
        sets[name] = factsets.load_split_factset(
            path, verbalized, tokenizer, known, scored_positions=params.verbalize.scored_positions, templates=templates
        )
    return sets


def discover(
    params: Params,
    *,
    model: str,
    target: str,
    seed: int,
    model_dir: Path,
    verbalized: Path,
    splits_dir: Path,
    controllm_dir: Path,
    out_dir: Path,
    progress: bool = True,
) -> dict:
    """Train the mask and write the outputs (see module doc); returns meta.json's content."""
    lm, tokenizer = load_model(model_dir, pick_device(params.train.device, key="train.device"), torch.float32)
    sets = load_training_sets(splits_dir, factsets.read_verbalized(verbalized), tokenizer, params, target)
    blocks = encoding.load_blocks(controllm_dir / "train.safetensors")
    val_path = controllm_dir / "val.safetensors"  # held-out WikiText blocks (tokenize_controllm)
    val_blocks = encoding.load_blocks(val_path) if val_path.is_file() else None
    validation = selection.ValidationSets(sets["targetkg_val"], sets["controlkg_val"], val_blocks)
    log.info(
        "%s / %s / seed %d: %d TargetKG, %d ControlKG facts, %d ControlLM blocks of %d tokens",
        model,
        target,
        seed,
        len(sets["targetkg_train"].uuids),
        len(sets["controlkg_train"].uuids),
        blocks.shape[0],
        blocks.shape[1],
    )

    trainer = training.MaskTrainer(
        lm,
        sets["targetkg_train"],
        sets["controlkg_train"],
        blocks,
        params.mask,
        params.train,
        seed=seed,
        checkpoint_path=out_dir / "checkpoint.pt",
        progress=progress,
        validation=validation,
    )
    result = trainer.train()

    granularity = params.mask.granularity
    binary = masking.binary_masks(result.logits)
    top_k = len({layer.block for layer in trainer.layers})  # resolved: a share of blocks becomes a count
    sparsity = masking.sparsity(lm, trainer.layers, binary, granularity)
    masking.save_mask(
        out_dir / "mask.safetensors",
        result.logits,
        {
            "granularity": granularity,
            "model": model,
            "target": target,
            "seed": seed,
            "top_k_blocks": top_k,
            "sampler": params.mask.sampler,
            "compute_dtype": precision.name(trainer.dtype),
        },
    )
    write_text(out_dir / "train_log.csv", log_csv(result.log))
    final = {k: round(v, 6) for k, v in result.final_losses.items()}
    meta = {
        "model": model,
        "target": target,
        "seed": seed,
        "granularity": granularity,
        "top_k_blocks": top_k,
        "layers": [layer.name for layer in trainer.layers],
        "sparsity": sparsity,
        "subnetwork_weights": masking.subnetwork_size(trainer.layers, binary, granularity),
        "final_losses": final,
        "selection": result.selection,
        "last_logged_step": result.log[-1] if result.log else None,
        "n_facts": {
            **{name: len(facts.uuids) for name, facts in sets.items()},
            "controllm_blocks": int(blocks.shape[0]),
        },
        "n_facts_before_known_filter": {name: len(pd.read_parquet(splits_dir / f"{name}.parquet")) for name in sets},
        "steps": result.steps,
        "wall_time_s": round(result.wall_time_s, 3),
        "device": result.device,
        "compute": precision.provenance(trainer.dtype, trainer.device),
        "provenance": stamp({k: params.section(k) for k in ("mask", "train", "known")}, model_dir=str(model_dir)),
    }
    write_json(out_dir / "meta.json", meta)
    chosen = (result.selection or {}).get("chosen", {})
    write_json(
        out_dir / "metrics.json",
        {
            "sparsity_masked_layers": sparsity["masked_layers"],
            "sparsity_all_weights": sparsity["all_weights"],
            **final,
            "selected_step": chosen.get("step", result.steps),
        },
    )
    trainer.discard_checkpoint()  # only once every output is in place
    log.info(
        "sparsity %.4f of masked layers; final suppress %.4f, ControlKG KL %.4f, ControlLM KL %.4f; %.1f s",
        sparsity["masked_layers"],
        final["suppress"],
        final["controlkg"],
        final["controllm"],
        result.wall_time_s,
    )
    return meta
