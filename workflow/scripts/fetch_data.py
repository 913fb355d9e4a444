"""Stage fetch_data: copy the raw datasets from the local mirror (or download them) into data/raw.

Params: data.mirror, data.verify_checksums, triplets.lama_path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from knowsubnet import params as params_mod
from knowsubnet.errors import cli_entry
from knowsubnet.fetch import fetch_data
from knowsubnet.provenance import stamp

SCHEMA = Path(__file__).resolve().parents[2] / "config" / "params.schema.yaml"


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", nargs="+", required=True,
                        help="params YAML files, merged in order")
    parser.add_argument("--out", type=Path, default=Path("data/raw"))
    args = parser.parse_args(argv)
    params = params_mod.load(args.params, SCHEMA)
    data = params.get("data") or {}
    triplets = params.get("triplets") or {}
    lama_path = triplets.get("lama_path")
    fetch_data(args.out, data.get("mirror"), verify=bool(data.get("verify_checksums", True)),
               lama_path=lama_path,
               provenance=stamp({"data": data, "triplets": {"lama_path": lama_path}}))


if __name__ == "__main__":
    main()
