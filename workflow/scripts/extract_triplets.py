"""Stage extract_triplets: read every selected fact source into data/processed/triplets.parquet.

Params: triplets.sources, triplets.lama_path.
"""

from __future__ import annotations

from pathlib import Path

from knowsubnet.core.errors import cli_entry
from knowsubnet.core.io import write_parquet
from knowsubnet.data.triplets import build_triplets
from stage_params import load_params, stage_parser

REPO = Path(__file__).resolve().parents[2]


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--raw", type=Path, default=Path("data/raw"),
                        help="fetch_data's output folder")
    parser.add_argument("--facts", type=Path, default=REPO / "data/facts/conceptnet_facts.tsv",
                        help="the in-repo facts table (source 'builtin')")
    parser.add_argument("--out", type=Path, default=Path("data/processed/triplets.parquet"))
    args = parser.parse_args(argv)
    params = load_params(args)
    table = build_triplets(args.raw, params.triplets.sources, lama_path=params.triplets.lama_path,
                           facts_table=args.facts)
    write_parquet(args.out, table)


if __name__ == "__main__":
    main()
