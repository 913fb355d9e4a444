"""Stage split_controls: TargetKG / ControlKG train/val/test parquet files for one target (--target),
or for every target in params when --target is not given.

Params: targets (the one target's entry), split.seed, split.targetkg_holdout, split.fractions, split.max_targetkg,
split.max_controlkg.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from knowsubnet.errors import InputError, cli_entry
from knowsubnet.provenance import stamp
from knowsubnet.splits import splits_from_params, write_splits, write_target_splits
from stage_params import load_params, stage_parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--triplets", type=Path, default=Path("data/processed/triplets.parquet"))
    parser.add_argument("--target", help="one target's name: --out is then that target's folder")
    parser.add_argument("--out", type=Path, default=Path("data/processed/splits"))
    args = parser.parse_args(argv)
    params = load_params(args)
    try:
        triplets = pd.read_parquet(args.triplets)
    except (OSError, ValueError) as err:
        raise InputError(f"{args.triplets}: cannot read the triplets table ({err})") from None
    if args.target is not None:
        splits = splits_from_params(triplets, params, names=[args.target])
        write_target_splits(args.out, args.target, splits[args.target], provenance=stamp(
            {"targets": {args.target: params["targets"][args.target]}, "split": params.get("split")}))
        return
    splits = splits_from_params(triplets, params)
    write_splits(args.out, splits,
                 provenance=stamp({"targets": params.get("targets"), "split": params.get("split")}))


if __name__ == "__main__":
    main()
