"""Build the in-repo facts table data/facts/conceptnet_facts.tsv from the local data mirror.

Run once by a maintainer (not a pipeline stage); the table is committed so the tiny preset runs
with no mirror and no network (knowsubnet.data.facts_table says what it holds):

    python workflow/scripts/build_facts_table.py --mirror ../shared/data \
        --out data/facts/conceptnet_facts.tsv
"""

from __future__ import annotations

import argparse
from pathlib import Path

from knowsubnet.core.errors import cli_entry
from knowsubnet.data.facts_table import build_facts_table

REPO = Path(__file__).resolve().parents[2]


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path, default=REPO.parent / "shared" / "data",
                        help="the local data mirror (layout of ../shared/data)")
    parser.add_argument("--out", type=Path, default=REPO / "data/facts/conceptnet_facts.tsv")
    args = parser.parse_args(argv)
    build_facts_table(args.mirror, args.out)


if __name__ == "__main__":
    main()
