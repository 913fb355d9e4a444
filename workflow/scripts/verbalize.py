"""Stage verbalize: the best template per fact for one model (lowest tail perplexity).

Params: verbalize. Facts come from --triplets (one parquet) or
--splits (split folders or parquet files; their union). Output: one row per fact with uuid, head,
rel, tail, template_id, prompt, tail_text, tail_ppl (knowsubnet.scoring.templates.verbalize_facts).
"""

from __future__ import annotations

from pathlib import Path

from knowsubnet.core.errors import cli_entry
from knowsubnet.scoring.templates import verbalize_facts
from stage_params import load_params, stage_parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model-dir", type=Path, required=True, help="results/models/<model>")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--triplets", type=Path, help="data/processed/triplets.parquet")
    source.add_argument("--splits", type=Path, nargs="+", help="data/processed/splits/<target> (or parquet files)")
    parser.add_argument("--out", type=Path, required=True, help="the output parquet")
    args = parser.parse_args(argv)
    verbalize_facts(load_params(args), model_dir=args.model_dir,
                    facts=[args.triplets] if args.triplets else args.splits, out=args.out)


if __name__ == "__main__":
    main()
