"""Stage evaluate_ablation: original / removed / random-removed / kept metrics for one mask.

Params: eval, known, verbalize.scored_positions.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from knowsubnet.core.errors import cli_entry
from knowsubnet.core.io import write_json
from knowsubnet.core.provenance import stamp
from knowsubnet.data.factsets import read_verbalized
from knowsubnet.evaluation import ablation, scoring
from knowsubnet.method import masking
from knowsubnet.models.prepare import load_model, pick_device
from stage_params import load_params, stage_parser

log = logging.getLogger("evaluate_ablation")


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", required=True, help="model name (the {model} wildcard)")
    parser.add_argument("--target", required=True, help="target name (the {target} wildcard)")
    parser.add_argument("--seed", type=int, required=True, help="mask seed; also seeds the random baseline")
    parser.add_argument("--model-dir", type=Path, required=True, help="results/models/<model>")
    parser.add_argument("--verbalized", type=Path, required=True, help="verbalize output parquet of this model")
    parser.add_argument("--splits", type=Path, required=True, help="data/processed/splits/<target>")
    parser.add_argument("--controllm", type=Path, required=True, help="results/controllm/<model> (test.safetensors)")
    parser.add_argument("--mask", type=Path, required=True, help="mask.safetensors")
    parser.add_argument("--out", type=Path, required=True, help="metrics.json to write")
    parser.add_argument("--headline", type=Path, help="headline.json to write: the few numbers of `dvc metrics show`")
    args = parser.parse_args(argv)

    params = load_params(args)
    settings = params.eval
    device = pick_device(settings.device, key="eval.device")
    start = time.monotonic()

    model, tokenizer = load_model(args.model_dir, device, scoring.DTYPES[settings.dtype])
    logits, metadata = masking.load_mask(args.mask)
    layers, granularity = ablation.mask_layers(model, logits, metadata, source=str(args.mask))
    targetkg, controlkg, blocks = ablation.load_test_sets(
        tokenizer, args.verbalized, args.splits, args.controllm, params.known,
        params.verbalize.scored_positions)
    log.info("%s / %s / seed %d: %d TargetKG, %d ControlKG facts, %d ControlLM blocks on %s", args.model,
             args.target, args.seed, len(targetkg.uuids), len(controlkg.uuids), blocks.shape[0], device)

    relations = read_verbalized(args.verbalized).loc[controlkg.uuids, "rel"].tolist()
    result = ablation.evaluate_ablation(
        model, layers, logits, granularity, targetkg, controlkg, blocks,
        random_draws=settings.random_draws, seed=args.seed, batch_size=settings.batch_size,
        device=device, model_name=args.model, target=args.target, controlkg_relations=relations,
        controllm_ppl=settings.controllm_ppl)
    # how many facts the known-facts filter (params `known`) kept of each test split
    result["counts_before_known_filter"] = {kind: len(pd.read_parquet(args.splits / f"{kind}_test.parquet"))
                                            for kind in ("targetkg", "controlkg")}
    result["mask"] = str(args.mask)
    result["provenance"] = stamp({"eval": params.section("eval")},
                                 device=str(device), wall_time_s=round(time.monotonic() - start, 3))
    write_json(args.out, result)
    if args.headline is not None:
        write_json(args.headline, ablation.headline(result))
    log.info("TargetKG ΔPPL removed %.3f (random %.3f); ControlKG %.3f; ControlLM %.3f",
             result["delta_ppl"]["removed"]["targetkg"], result["delta_ppl"]["random"]["targetkg"],
             result["delta_ppl"]["removed"]["controlkg"], result["delta_ppl"]["removed"]["controllm"])


if __name__ == "__main__":
    main()
