"""Stage sweep_point: one sweep point's params overlay (params `sweep.points.<point>.set`) as a file,
which the point's stages merge after the run's params (`--params PARAMS POINT_FILE`).

Params: sweep.points.<point>. The overlay is checked first: merged over the params it must validate
(knowsubnet.method.sweep.point_overlay), so a bad point stops here with one line naming its key.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from knowsubnet.core import config
from knowsubnet.core.errors import cli_entry
from knowsubnet.core.io import write_text
from knowsubnet.method.sweep import point_overlay
from stage_params import SCHEMA, stage_parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--point", required=True, help="the point's name (the {point} wildcard)")
    parser.add_argument("--out", type=Path, required=True, help="results/sweep/points/<point>.yaml")
    args = parser.parse_args(argv)
    overlay = point_overlay(config.merge_files(args.params), args.point, SCHEMA)
    write_text(args.out, yaml.safe_dump(overlay, sort_keys=True))


if __name__ == "__main__":
    main()
