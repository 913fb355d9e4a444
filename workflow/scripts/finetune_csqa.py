"""Stage finetune_csqa: CommonsenseQA finetuning of the original / remaining / random-removed models.

Params: csqa (every key); targets.<target> (the selector, for the linked questions it picks);
known and robustness.suppressed_ratio (which removed facts were known and suppressed);
verbalize.scored_positions; mask.top_k_blocks (when the mask file's metadata does not record it). See knowsubnet.downstream.csqa.
"""

from __future__ import annotations

from pathlib import Path

from knowsubnet.core.errors import cli_entry
from knowsubnet.downstream.csqa import MODES, run_stage
from stage_params import load_params, stage_parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", required=True, help="model name (the {model} wildcard)")
    parser.add_argument("--target", required=True, help="target name (the {target} wildcard)")
    parser.add_argument("--seed", type=int, required=True, help="mask seed (the finetuning seeds are csqa.seeds)")
    parser.add_argument("--mode", required=True, choices=MODES, help="finetuning mode")
    parser.add_argument("--model-dir", type=Path, required=True, help="results/models/<model>")
    parser.add_argument("--mask", type=Path, required=True, help="mask.safetensors")
    parser.add_argument("--triplets", type=Path, required=True, help="data/processed/triplets.parquet")
    parser.add_argument("--splits", type=Path, required=True, help="data/processed/splits/<target>")
    parser.add_argument("--verbalized", type=Path, required=True, help="results/verbalized/<model>/<target>.parquet")
    parser.add_argument("--csqa-dir", type=Path, required=True, help="folder with {train,dev}_rand_split.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="results json to write")
    args = parser.parse_args(argv)
    run_stage(load_params(args), model=args.model, target=args.target, seed=args.seed, mode=args.mode,
              model_dir=args.model_dir, mask=args.mask, triplets=args.triplets, splits_dir=args.splits,
              verbalized=args.verbalized, csqa_dir=args.csqa_dir, out=args.out)


if __name__ == "__main__":
    main()
