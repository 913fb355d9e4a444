"""Stage remove_baseline: another method's removal of one (model, target, seed)'s knowledge.

Params: baselines.<method>, baselines.device, known, verbalize.scored_positions, mask.top_k_blocks,
train.controlkg_known_only, train.targetkg_templates. Writes into --out-dir: removal.safetensors and
meta.json (knowsubnet.method.baselines). The finetuning methods resume from their checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from knowsubnet.core.errors import cli_entry
from knowsubnet.method.baselines import METHODS, run_baseline
from stage_params import load_params, stage_parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--method", required=True, choices=METHODS, help="the {baseline} wildcard")
    parser.add_argument("--model", required=True, help="model name (the {model} wildcard)")
    parser.add_argument("--target", required=True, help="target name (the {target} wildcard)")
    parser.add_argument("--seed", type=int, required=True, help="seed (and which learned mask sizes the removal)")
    parser.add_argument("--model-dir", type=Path, required=True, help="results/models/<model>")
    parser.add_argument("--verbalized", type=Path, required=True, help="results/verbalized/<model>/<target>.parquet")
    parser.add_argument("--splits", type=Path, required=True, help="data/processed/splits/<target>")
    parser.add_argument("--controllm", type=Path, required=True, help="results/controllm/<model> (train / val.safetensors)")
    parser.add_argument("--mask", type=Path, help="the learned mask of the same seed (methods sized by it)")
    parser.add_argument("--out-dir", type=Path, required=True,
                        help="results/baselines/<model>/<target>/<method>/seed<seed>")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    run_baseline(load_params(args), method=args.method, model=args.model, target=args.target, seed=args.seed,
                 model_dir=args.model_dir, verbalized=args.verbalized, splits_dir=args.splits,
                 controllm_dir=args.controllm, mask=args.mask, out_dir=args.out_dir, progress=not args.no_progress)


if __name__ == "__main__":
    main()
