"""Stage combine_seeds: union / intersection / majority of a target's seed masks, and their metrics.

Writes `<out-masks>/<how>.safetensors` (mask logits: +1 in the subnetwork, -1 outside) and
`<out-eval>/<how>.json` (the evaluate_ablation shape, with `combination` and `seeds`; `seed` is null).
Params: eval, known, verbalize.scored_positions (knowsubnet.evaluation.ablation.combine_seeds).
"""

from __future__ import annotations

from pathlib import Path

from knowsubnet.core.errors import cli_entry
from knowsubnet.evaluation.ablation import combine_seeds
from knowsubnet.method.combination import COMBINATIONS
from stage_params import load_params, stage_parser


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
    parser.add_argument("--combinations", nargs="+", default=list(COMBINATIONS), choices=list(COMBINATIONS))
    args = parser.parse_args(argv)
    combine_seeds(load_params(args), model=args.model, target=args.target, masks=args.masks,
                  model_dir=args.model_dir, verbalized=args.verbalized, splits_dir=args.splits,
                  controllm_dir=args.controllm, out_masks=args.out_masks, out_eval=args.out_eval,
                  combinations=args.combinations)


if __name__ == "__main__":
    main()
