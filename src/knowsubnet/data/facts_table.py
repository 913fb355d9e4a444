"""Building the in-repo facts table (data/facts/conceptnet_facts.tsv) from the local data mirror.

Run once by a maintainer (`knowsubnet build_facts_table`; not a pipeline stage); the table
is committed so the tiny preset runs with no mirror and no network. It reads the know-subnet
derived files (ControlKG train/val, the TargetKGs fruit/sun/swimming with their LAMA uuids, the
CSQA-linked files), checks their sha256 against the published sums, and keeps only facts: uuid,
head, rel, tail, and `lists`, the paper's TargetKG lists a fact is on (`targetkg/fruit`, ...), so
`facts: know_subnet/targetkg/fruit` targets work from the table alone. No sentences from the
datasets are written. The output is sorted, so a rebuild is byte-identical.
"""

from __future__ import annotations

import logging
from pathlib import Path

from knowsubnet.core.errors import InputError
from knowsubnet.core.io import sha256_file, write_text
from knowsubnet.data.fetch import RAW_FILES
from knowsubnet.data.triplets import (
    FACTS_TABLE_COLUMNS,
    KNOW_SUBNET_DIR,
    KNOW_SUBNET_FILES,
    merge_facts,
    read_source_files,
)

LISTS = ("targetkg/fruit", "targetkg/sun", "targetkg/swimming")
log = logging.getLogger(__name__)


def verify_inputs(mirror: Path) -> None:
    """The derived files must be the published ones, or the table would not be reproducible."""
    wanted = {f"{KNOW_SUBNET_DIR}/{rel}" for rel in KNOW_SUBNET_FILES.values()}
    for spec in RAW_FILES:
        if spec.path not in wanted:
            continue
        path = mirror / spec.path
        if not path.is_file():
            raise InputError(f"--mirror: {path} is missing")
        actual = sha256_file(path)
        if actual != spec.sha256:
            raise InputError(f"{path}: sha256 mismatch: expected {spec.sha256}, got {actual}")


def facts_table(mirror: Path) -> str:
    """The table's TSV text."""
    # the ConceptNet files only: the WordNet lists are not part of the ConceptNet facts table
    table = merge_facts(read_source_files(mirror, list(KNOW_SUBNET_FILES)))
    lines = ["\t".join(FACTS_TABLE_COLUMNS)]
    for row in table.itertuples(index=False):
        tags = row.source.split(";")
        lists = ";".join(name for name in LISTS if f"know_subnet/{name}" in tags)
        fields = (row.uuid, row.head, row.rel, row.tail, lists)
        if any(ch in field for field in fields for ch in "\t\r\n"):
            raise InputError(f"fact {fields!r} holds a tab or newline; cannot write it as TSV")
        lines.append("\t".join(fields))
    log.info("%d facts, %d on the TargetKG lists", len(table), sum(1 for line in lines[1:] if line.split("\t")[4]))
    return "\n".join(lines) + "\n"


def build_facts_table(mirror: Path, out: Path) -> None:
    """Check the mirror's derived files, then write the table to `out` (atomically)."""
    verify_inputs(mirror)
    write_text(out, facts_table(mirror))
    log.info("wrote %s", out)
