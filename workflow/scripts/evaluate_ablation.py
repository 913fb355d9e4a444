"""Stage evaluate_ablation: original / removed / random-removed / kept metrics for one mask.

Params: eval, known, verbalize.scored_positions, report.bars (the headline's verdict)
(knowsubnet.evaluation.ablation.evaluate_mask).
"""

from __future__ import annotations

from pathlib import Path

from knowsubnet.core.errors import cli_entry
from knowsubnet.evaluation.ablation import evaluate_mask
from stage_params import load_params, stage_parser


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
    parser.add_argument("--headline", type=Path,
                        help="headline.json to write: the few numbers of `dvc metrics show`, with the verdict")
    parser.add_argument("--facts", type=Path,
                        help="facts.parquet to write: per test fact (known or not) its NLL and rank per variant")
    args = parser.parse_args(argv)
    evaluate_mask(load_params(args), model=args.model, target=args.target, seed=args.seed, model_dir=args.model_dir,
                  verbalized=args.verbalized, splits_dir=args.splits, controllm_dir=args.controllm,
                  mask=args.mask, out=args.out, headline_out=args.headline, facts_out=args.facts)


if __name__ == "__main__":
    main()
