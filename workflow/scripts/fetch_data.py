"""Stage fetch_data: copy the raw datasets from the local mirror (or download them) into data/raw.

Params: data.mirror, data.verify_checksums, triplets.lama_path; triplets.sources and
controllm.train_text decide whether the WordNet noun files and WikiText-2 train are fetched.
"""

from __future__ import annotations

from pathlib import Path

from knowsubnet.core.errors import cli_entry
from knowsubnet.core.provenance import stamp
from knowsubnet.data.fetch import fetch_data, optional_files
from stage_params import load_params, stage_parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("data/raw"))
    args = parser.parse_args(argv)
    params = load_params(args)
    lama_path = params.triplets.lama_path
    optional = optional_files(params)
    fetch_data(args.out, params.data.mirror, verify=params.data.verify_checksums, lama_path=lama_path,
               optional=optional,
               provenance=stamp({"data": params.section("data"), "triplets": {"lama_path": lama_path},
                                 "optional": optional}))


if __name__ == "__main__":
    main()
