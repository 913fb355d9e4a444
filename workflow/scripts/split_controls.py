"""Stage split_controls: TargetKG / ControlKG train/val/test parquet files for one target (--target),
or for every target in params when --target is not given (knowsubnet.data.split_stage).

Params: targets (the one target's entry; for a WordNet target the other targets' subtrees too),
split.seed, split.targetkg_holdout, split.fractions, split.max_targetkg, split.max_controlkg,
split.controlkg, split.paper_wordnet_controlkg. With split.controlkg: paper the paper's ControlKG
files are read from --raw for their order (the paper takes the first edges).
"""

from __future__ import annotations

from pathlib import Path

from knowsubnet.core.errors import cli_entry
from knowsubnet.data.split_stage import split_targets
from stage_params import load_params, stage_parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--triplets", type=Path, default=Path("data/processed/triplets.parquet"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="fetch_data's output folder")
    parser.add_argument("--target", help="one target's name: --out is then that target's folder")
    parser.add_argument("--out", type=Path, default=Path("data/processed/splits"))
    args = parser.parse_args(argv)
    split_targets(load_params(args), triplets=args.triplets, raw=args.raw, out=args.out, target=args.target)


if __name__ == "__main__":
    main()
