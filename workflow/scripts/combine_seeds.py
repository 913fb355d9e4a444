"""Stage combine_seeds: union / intersection / majority of a target's seed masks, and their metrics.

Writes `<out-masks>/{union,intersection,majority}.safetensors` (mask logits: +1 in the
subnetwork, -1 outside) and `<out-eval>/{union,intersection,majority}.json` (the
evaluate_ablation shape, with `combination` and `seeds`; `seed` is null).
Params: eval, known, verbalize.scored_positions (as evaluate_ablation).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from knowsubnet.core.errors import InputError, cli_entry
from knowsubnet.core.io import write_json
from knowsubnet.core.provenance import stamp
from knowsubnet.evaluation import ablation, scoring
from knowsubnet.method import masking
from knowsubnet.models.prepare import load_model, pick_device
from knowsubnet.report import analysis
from stage_params import load_params, stage_parser

log = logging.getLogger("combine_seeds")


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--masks", type=Path, nargs="+", required=True, help="the seeds' mask.safetensors")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--verbalized", type=Path, required=True)
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--controllm", type=Path, required=True)
    parser.add_argument("--out-masks", type=Path, required=True, help="results/masks/<model>/<target>/combined")
    parser.add_argument("--out-eval", type=Path, required=True, help="results/eval/<model>/<target>/combined")
    parser.add_argument("--combinations", nargs="+", default=list(analysis.COMBINATIONS),
                        choices=list(analysis.COMBINATIONS))
    args = parser.parse_args(argv)

    params = load_params(args)
    settings = params.eval
    device = pick_device(settings.device, key="eval.device")
    start = time.monotonic()

    loaded = [(path, *masking.load_mask(path)) for path in args.masks]
    granularities = {meta["granularity"] for _, _, meta in loaded}
    if len(granularities) != 1:
        raise InputError(f"{', '.join(map(str, args.masks))}: masks of different granularities {sorted(granularities)}")
    seeds = sorted(masking.mask_seed(meta, source=str(path)) for path, _, meta in loaded)
    first_meta = loaded[0][2]
    seed_masks = [analysis.to_binary(logits) for _, logits, _ in loaded]


    model, tokenizer = load_model(args.model_dir, device, scoring.DTYPES[settings.dtype])
    layers, granularity = ablation.mask_layers(model, loaded[0][1], first_meta, source=str(args.masks[0]))
    targetkg, controlkg, blocks = ablation.load_test_sets(
        tokenizer, args.verbalized, args.splits, args.controllm, params.known,
        params.verbalize.scored_positions)

    for how in args.combinations:
        combined = analysis.combine(seed_masks, how)
        # A mask file holds logits; +1 / -1 keeps the contract "subnetwork = logits > 0".
        logits = {name: torch.where(value, 1.0, -1.0) for name, value in combined.items()}
        metadata = {k: v for k, v in first_meta.items() if k != "seed"}
        metadata.update(model=args.model, target=args.target, combination=how, seeds=",".join(map(str, seeds)))
        masking.save_mask(args.out_masks / f"{how}.safetensors", logits, metadata)
        # the random baseline is seeded by the smallest seed: same draws for every combination
        result = ablation.evaluate_ablation(
            model, layers, combined, granularity, targetkg, controlkg, blocks,
            random_draws=settings.random_draws, seed=seeds[0], batch_size=settings.batch_size,
            device=device, model_name=args.model, target=args.target,
            controllm_ppl=settings.controllm_ppl)
        result.update(seed=None, combination=how, seeds=seeds,
                      mask=str(args.out_masks / f"{how}.safetensors"),
                      provenance=stamp({"eval": params.section("eval")},
                                       device=str(device), source_masks=[str(p) for p in args.masks],
                                       wall_time_s=round(time.monotonic() - start, 3)))
        write_json(args.out_eval / f"{how}.json", result)
        log.info("%s: %d entries, TargetKG ΔPPL removed %.3f (random %.3f)", how, analysis.count(combined),
                 result["delta_ppl"]["removed"]["targetkg"], result["delta_ppl"]["random"]["targetkg"])


if __name__ == "__main__":
    main()
