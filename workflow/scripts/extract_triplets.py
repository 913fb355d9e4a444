"""Stage extract_triplets: read every selected fact source into data/processed/triplets.parquet.

Params: triplets.sources, triplets.lama_path (knowsubnet.data.triplets.extract_triplets).
"""

from __future__ import annotations

from pathlib import Path

from knowsubnet.core.errors import cli_entry
from knowsubnet.data.triplets import extract_triplets
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
    extract_triplets(load_params(args), raw_dir=args.raw, facts_table=args.facts, out=args.out)


if __name__ == "__main__":
    main()
