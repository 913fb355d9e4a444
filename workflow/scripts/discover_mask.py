"""Stage discover_mask: learn the knowledge-critical subnetwork mask of one (model, target, seed).

Params: known, verbalize.scored_positions, mask, train. Writes into --out-dir: mask.safetensors,
meta.json, train_log.csv, metrics.json (knowsubnet.method.discover). A killed run resumes from its
checkpoint when every input is unchanged, and starts afresh (saying why) when one changed.
"""

from __future__ import annotations

from pathlib import Path

from knowsubnet.core.errors import cli_entry
from knowsubnet.method.discover import discover
from stage_params import load_params, stage_parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", required=True, help="model name (the {model} wildcard)")
    parser.add_argument("--target", required=True, help="target name (the {target} wildcard)")
    parser.add_argument("--seed", type=int, required=True, help="seed of the mask's noise and batches")
    parser.add_argument("--model-dir", type=Path, required=True, help="results/models/<model>")
    parser.add_argument("--verbalized", type=Path, required=True, help="results/verbalized/<model>/<target>.parquet")
    parser.add_argument("--splits", type=Path, required=True, help="data/processed/splits/<target>")
    parser.add_argument("--controllm", type=Path, required=True, help="results/controllm/<model> (train / val.safetensors)")
    parser.add_argument("--out-dir", type=Path, required=True, help="results/masks/<model>/<target>/seed<seed>")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    discover(load_params(args), model=args.model, target=args.target, seed=args.seed, model_dir=args.model_dir,
             verbalized=args.verbalized, splits_dir=args.splits, controllm_dir=args.controllm,
             out_dir=args.out_dir, progress=not args.no_progress)


if __name__ == "__main__":
    main()
