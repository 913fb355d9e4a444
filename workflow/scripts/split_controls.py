"""Stage split_controls: TargetKG / ControlKG train/val/test parquet files for one target (--target),
or for every target in params when --target is not given.

Params: targets (the one target's entry; for a WordNet target the other targets' subtrees too),
split.seed, split.targetkg_holdout, split.fractions, split.max_targetkg, split.max_controlkg,
split.controlkg, split.paper_wordnet_controlkg. With split.controlkg: paper the paper's ControlKG
files are read from --raw for their order (the paper takes the first edges).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from knowsubnet.core.errors import InputError, cli_entry
from knowsubnet.core.provenance import stamp
from knowsubnet.data.splits import PAPER_CONTROLKG, splits_from_params, write_splits, write_target_splits
from knowsubnet.data.triplets import read_source_files
from stage_params import load_params, stage_parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--triplets", type=Path, default=Path("data/processed/triplets.parquet"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="fetch_data's output folder")
    parser.add_argument("--target", help="one target's name: --out is then that target's folder")
    parser.add_argument("--out", type=Path, default=Path("data/processed/splits"))
    args = parser.parse_args(argv)
    params = load_params(args)
    try:
        triplets = pd.read_parquet(args.triplets)
    except (OSError, ValueError) as err:
        raise InputError(f"{args.triplets}: cannot read the triplets table ({err})") from None
    paper_order = None
    if params.split.controlkg == "paper":
        tags = sorted({tag for kind in PAPER_CONTROLKG.values() for tag in kind.values()})
        paper_order = {tag: [(f.head, f.rel, f.tail) for f in read_source_files(args.raw, [tag])]
                       for tag in tags}
    if args.target is not None:
        splits = splits_from_params(triplets, params, names=[args.target], paper_order=paper_order)
        write_target_splits(args.out, args.target, splits[args.target], provenance=stamp(
            {"targets": params.section("targets"), "split": params.section("split")}))
        return
    splits = splits_from_params(triplets, params, paper_order=paper_order)
    write_splits(args.out, splits,
                 provenance=stamp({"targets": params.section("targets"), "split": params.section("split")}))


if __name__ == "__main__":
    main()
