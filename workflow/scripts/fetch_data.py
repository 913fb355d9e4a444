"""Stage fetch_data: copy the raw datasets from the local mirror (or download them) into data/raw.

Params: data.mirror, data.verify_checksums, triplets.lama_path; triplets.sources and
controllm.train_text decide whether the WordNet noun files and WikiText-2 train are fetched.
"""

from __future__ import annotations

from pathlib import Path

from knowsubnet.core.errors import cli_entry
from knowsubnet.data.fetch import fetch_data, optional_files
from knowsubnet.core.provenance import stamp
from stage_params import load_params, stage_parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("data/raw"))
    args = parser.parse_args(argv)
    params = load_params(args)
    data = params.get("data") or {}
    triplets = params.get("triplets") or {}
    lama_path = triplets.get("lama_path")
    optional = optional_files(params)
    fetch_data(args.out, data.get("mirror"), verify=bool(data.get("verify_checksums", True)),
               lama_path=lama_path, optional=optional,
               provenance=stamp({"data": data, "triplets": {"lama_path": lama_path},
                                 "optional": optional}))


if __name__ == "__main__":
    main()
