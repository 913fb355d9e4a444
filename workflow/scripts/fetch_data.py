"""Stage fetch_data: copy the raw datasets from the local mirror (or download them) into data/raw.

Params: data.mirror, data.verify_checksums, triplets.lama_path; triplets.sources and
controllm.train_text decide whether the WordNet noun files and WikiText-2 train are fetched
(knowsubnet.data.fetch.fetch_from_params).
"""

from __future__ import annotations

from pathlib import Path

from knowsubnet.core.errors import cli_entry
from knowsubnet.data.fetch import fetch_from_params
from stage_params import load_params, stage_parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("data/raw"))
    args = parser.parse_args(argv)
    fetch_from_params(load_params(args), args.out)


if __name__ == "__main__":
    main()
