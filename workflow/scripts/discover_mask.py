"""Stage discover_mask: learn the knowledge-critical subnetwork mask of one (model, target, seed).

Params: verbalize.max_tail_ppl, verbalize.scored_positions, mask.* (granularity, top_k_blocks, sampler, init_prob, tau, hard_concrete) and train.* (steps,
lr, warmup_frac, lambda_*, sparsity_weight, batch, log_every, checkpoint_every, device, bf16).
Writes into --out-dir: mask.safetensors, meta.json, train_log.csv, metrics.json. A checkpoint
(checkpoint.pt) lives there while training runs; a re-run resumes from it; it is deleted once the
outputs are written.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import pandas as pd
import torch

from knowsubnet.method import masking

from knowsubnet.method import training
from knowsubnet.core.errors import InputError, cli_entry
from knowsubnet.core.io import write_json, write_text
from knowsubnet.core.provenance import stamp
from stage_params import load_params, stage_parser

log = logging.getLogger("discover_mask")


def log_csv(rows: list[dict]) -> str:
    columns = list(training.LOG_COLUMNS) + list(training.VAL_COLUMNS)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        # validation columns stay empty on the rows where no validation ran
        writer.writerow({k: (int(row[k]) if k == "step" else "" if row.get(k) is None else repr(float(row[k])))
                         for k in columns})
    return buffer.getvalue()


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", required=True, help="model name (the {model} wildcard)")
    parser.add_argument("--target", required=True, help="target name (the {target} wildcard)")
    parser.add_argument("--seed", type=int, required=True, help="seed of the mask's noise and batches")
    parser.add_argument("--model-dir", type=Path, required=True, help="results/models/<model>")
    parser.add_argument("--verbalized", type=Path, required=True, help="results/verbalized/<model>.parquet")
    parser.add_argument("--splits", type=Path, required=True, help="data/processed/splits/<target>")
    parser.add_argument("--controllm", type=Path, required=True, help="results/controllm/<model> (train.safetensors)")
    parser.add_argument("--out-dir", type=Path, required=True, help="results/masks/<model>/<target>/seed<seed>")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    params = load_params(args)
    mask_cfg, train_cfg = training.configs_from_params(params)
    select_cfg = training.select_config_from_params(params)

    from knowsubnet.data import encoding  # the data layer

    from knowsubnet.data import factsets
    from knowsubnet.models.prepare import load_model, pick_device  # the model layer; heavy imports only when run

    device = pick_device(train_cfg.device, key="train.device")
    train_cfg.device = str(device)

    model, tokenizer = load_model(args.model_dir, device, torch.float32)
    verbalized = factsets.read_verbalized(args.verbalized)
    sets = {}
    known = params.get("known")
    # Keeping the original distribution can be asked of every ControlKG fact, known or not.
    control_known = known if params["train"].get("controlkg_known_only", True) else None
    for name, max_ppl in (("targetkg_train", known), ("controlkg_train", control_known),
                          ("targetkg_val", known), ("controlkg_val", known)):
        path = args.splits / f"{name}.parquet"
        if not path.is_file():
            raise InputError(f"{path}: no such split file; run the split_controls stage for target {args.target}")
        sets[name] = factsets.load_split_factset(path, verbalized, tokenizer, max_ppl,
                                                 scored_positions=params["verbalize"].get("scored_positions", "all_tail_tokens"))
    blocks = encoding.load_blocks(args.controllm / "train.safetensors")
    val_path = args.controllm / "val.safetensors"  # held-out WikiText blocks (tokenize_controllm)
    val_blocks = encoding.load_blocks(val_path) if val_path.is_file() else None
    validation = training.ValidationSets(sets["targetkg_val"], sets["controlkg_val"], val_blocks)
    log.info("%s / %s / seed %d: %d TargetKG, %d ControlKG facts, %d ControlLM blocks of %d tokens on %s",
             args.model, args.target, args.seed, len(sets["targetkg_train"].uuids),
             len(sets["controlkg_train"].uuids), blocks.shape[0], blocks.shape[1], device)

    trainer = training.MaskTrainer(model, sets["targetkg_train"], sets["controlkg_train"], blocks, mask_cfg,
                                   train_cfg, seed=args.seed, checkpoint_path=args.out_dir / "checkpoint.pt",
                                   progress=not args.no_progress, validation=validation, select=select_cfg)
    result = trainer.train()

    binary = masking.binary_masks(result.logits)
    top_k = len({layer.block for layer in trainer.layers})  # resolved: a share of blocks becomes a count
    sparsity = masking.sparsity(model, trainer.layers, binary, mask_cfg.granularity)
    masking.save_mask(args.out_dir / "mask.safetensors", result.logits,
                      {"granularity": mask_cfg.granularity, "model": args.model, "target": args.target,
                       "seed": args.seed, "top_k_blocks": top_k, "sampler": mask_cfg.sampler})
    write_text(args.out_dir / "train_log.csv", log_csv(result.log))
    final = {k: round(v, 6) for k, v in result.final_losses.items()}
    meta = {
        "model": args.model, "target": args.target, "seed": args.seed,
        "granularity": mask_cfg.granularity, "top_k_blocks": top_k,
        "layers": [layer.name for layer in trainer.layers],
        "sparsity": sparsity,
        "subnetwork_weights": masking.subnetwork_size(trainer.layers, binary, mask_cfg.granularity),
        "final_losses": final,
        "selection": result.selection,
        "last_logged_step": result.log[-1] if result.log else None,
        "n_facts": {**{name: len(facts.uuids) for name, facts in sets.items()},
                    "controllm_blocks": int(blocks.shape[0])},
        "n_facts_before_known_filter": {name: len(pd.read_parquet(args.splits / f"{name}.parquet")) for name in sets},
        "steps": result.steps, "wall_time_s": round(result.wall_time_s, 3), "device": result.device,
        "provenance": stamp({"mask": params.get("mask"), "train": params.get("train"), "known": params.get("known")},
                            model_dir=str(args.model_dir)),
    }
    write_json(args.out_dir / "meta.json", meta)
    chosen = (result.selection or {}).get("chosen", {})
    write_json(args.out_dir / "metrics.json", {"sparsity_masked_layers": sparsity["masked_layers"],
                                               "sparsity_all_weights": sparsity["all_weights"], **final,
                                               "selected_step": chosen.get("step", result.steps)})
    trainer.discard_checkpoint()  # only once every output is in place
    log.info("sparsity %.4f of masked layers; final suppress %.4f, ControlKG KL %.4f, ControlLM KL %.4f; %.1f s",
             sparsity["masked_layers"], final["suppress"], final["controlkg"], final["controllm"],
             result.wall_time_s)


if __name__ == "__main__":
    main()
