"""Stage evaluate_robustness: removed, or only hidden? Held-out facts and wordings, in context,
multiple choice, the logit lens and a linear probe, quantization, relearning and specificity for
one (model, target, seed) (knowsubnet.evaluation.robustness).

Params: robustness, known, verbalize.scored_positions, verbalize.other_heads, eval.dtype,
eval.random_draws, train.targetkg_templates, run.targets (specificity), targets.
Writes into --out-dir: robustness.json, sentences.parquet, headline.json.
"""

from __future__ import annotations

from pathlib import Path

from knowsubnet.core.errors import cli_entry
from knowsubnet.evaluation.robustness import evaluate_robustness
from stage_params import load_params, stage_parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", required=True, help="model name (the {model} wildcard)")
    parser.add_argument("--target", required=True, help="target name (the {target} wildcard)")
    parser.add_argument("--seed", type=int, required=True, help="mask seed; also seeds the random-removed model")
    parser.add_argument("--model-dir", type=Path, required=True, help="results/models/<model>")
    parser.add_argument("--mask", type=Path, required=True, help="mask.safetensors")
    parser.add_argument("--triplets", type=Path, required=True, help="data/processed/triplets.parquet")
    parser.add_argument("--splits-root", type=Path, required=True, help="data/processed/splits")
    parser.add_argument("--verbalized-root", type=Path, required=True, help="results/verbalized/<model>")
    parser.add_argument("--controllm", type=Path, required=True, help="results/controllm/<model>")
    parser.add_argument("--out-dir", type=Path, required=True, help="results/robustness/<model>/<target>/seed<seed>")
    args = parser.parse_args(argv)
    evaluate_robustness(load_params(args), model=args.model, target=args.target, seed=args.seed,
                        model_dir=args.model_dir, mask=args.mask, triplets=args.triplets,
                        splits_root=args.splits_root, verbalized_root=args.verbalized_root, controllm_dir=args.controllm,
                        out_dir=args.out_dir)


if __name__ == "__main__":
    main()
