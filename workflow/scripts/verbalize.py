"""Stage verbalize: the best template per fact for one model (lowest tail perplexity).

Params: verbalize. Facts come from --triplets (one parquet) or
--splits (split folders or parquet files; their union). Output: one row per fact with uuid, head,
rel, tail, template_id, prompt, tail_text, tail_ppl.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from knowsubnet.core.errors import cli_entry
from knowsubnet.core.io import write_parquet
from knowsubnet.data.factsets import read_facts
from stage_params import load_params, stage_parser

log = logging.getLogger("verbalize")


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model-dir", type=Path, required=True, help="results/models/<model>")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--triplets", type=Path, help="data/processed/triplets.parquet")
    source.add_argument("--splits", type=Path, nargs="+", help="data/processed/splits/<target> (or parquet files)")
    parser.add_argument("--out", type=Path, required=True, help="the output parquet")
    args = parser.parse_args(argv)

    params = load_params(args)
    settings = params.verbalize
    facts = read_facts([args.triplets] if args.triplets else list(args.splits))

    from knowsubnet.models.prepare import context_length, load_model, pick_device  # heavy imports only when run
    from knowsubnet.evaluation.verbalize import best_templates, head_baseline

    device = pick_device(settings.device, key="verbalize.device")
    model, tokenizer = load_model(args.model_dir, device)
    scored_positions = settings.scored_positions
    best = best_templates(model, tokenizer, facts, settings.batch_size, device,
                          max_length=context_length(model), source=str(args.triplets or args.splits[0]),
                          scored_positions=scored_positions)
    other_heads = settings.other_heads
    if other_heads and len(best):
        best = head_baseline(model, tokenizer, best, other_heads, settings.seed,
                             settings.batch_size, device, max_length=context_length(model),
                             scored_positions=scored_positions)
    write_parquet(args.out, best)
    mean_nll = float(best["tail_ppl"].map(math.log).mean()) if len(best) else float("nan")
    log.info("%d facts -> %s; tail PPL of the set %.3f; templates used %s", len(best), args.out,
             math.exp(mean_nll), best["template_id"].value_counts().sort_index().to_dict())


if __name__ == "__main__":
    main()
