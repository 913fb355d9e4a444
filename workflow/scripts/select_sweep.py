"""Stage sweep_select: the search's table. Every sweep point's validation numbers and cost, the
point kept per method x model x target x seed on validation only, and the kept points' test
numbers in their own columns (knowsubnet.report.sweep; docs/SEARCH.md).

Params: sweep, report.bars, report.dpi. Writes --out-dir/selection.{csv,md} and frontier.png.
"""

from __future__ import annotations

from pathlib import Path

from knowsubnet.core.errors import InputError, cli_entry
from knowsubnet.report.sweep import sweep_table
from stage_params import load_params, stage_parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--names", nargs="+", required=True, help="each point's name, in the order of --metas")
    parser.add_argument("--metas", type=Path, nargs="+", required=True, help="each point's meta.json")
    parser.add_argument("--headlines", type=Path, nargs="+", required=True,
                        help="each point's test headline.json (read for the kept points only)")
    parser.add_argument("--out-dir", type=Path, required=True, help="results/sweep")
    args = parser.parse_args(argv)
    if not len(args.names) == len(args.metas) == len(args.headlines):
        raise InputError(f"--names, --metas and --headlines: {len(args.names)}, {len(args.metas)} and "
                         f"{len(args.headlines)} files; expected one of each per point")
    params = load_params(args)
    sweep_table(list(zip(args.names, args.metas, args.headlines)), params.report.bars, args.out_dir,
                params.report.dpi)


if __name__ == "__main__":
    main()
