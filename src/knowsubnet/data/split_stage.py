"""The split_controls stage from files to files: the triplets table -> TargetKG / ControlKG
train / val / test parquet files for one target (its folder), or for every target in params
(one folder per target and summary.json). Params: targets, split (`splits.splits_from_params`).
Each summary.json records how the TargetKG was held out (`holdout`: mode, facts dropped, shared
entities, the share of held-out facts sharing an entity with train).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from knowsubnet.core.config import Params
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import sha256_file
from knowsubnet.core.provenance import stamp
from knowsubnet.data import user_facts
from knowsubnet.data.splits import PAPER_CONTROLKG, splits_from_params, write_splits, write_target_splits
from knowsubnet.data.triplets import read_source_files


def paper_controlkg_order(raw: Path) -> dict[str, list[tuple[str, str, str]]]:
    """Per source tag of the paper's ControlKG files, their facts (head, rel, tail) in file order:
    `split.controlkg: paper` takes the first edges."""
    tags = sorted({tag for kind in PAPER_CONTROLKG.values() for tag in kind.values()})
    return {tag: [(f.head, f.rel, f.tail) for f in read_source_files(raw, [tag])] for tag in tags}


def split_targets(params: Params, *, triplets: Path, raw: Path, out: Path, target: str | None = None) -> dict:
    """Write the splits of `target` into the folder `out`, or (no target) every params target's
    folder under `out` with summary.json, all or nothing; returns the summary written."""
    try:
        table = pd.read_parquet(triplets)
    except (OSError, ValueError) as err:
        raise InputError(f"{triplets}: cannot read the triplets table ({err})") from None
    paper_order = paper_controlkg_order(raw) if params.split.controlkg == "paper" else None
    reports: dict[str, dict] = {}  # how each TargetKG was held out (heldout.split_target), for the summary
    if target is not None:
        splits = splits_from_params(table, params, names=[target], paper_order=paper_order, reports=reports)
        recorded = {"targets": params.section("targets"), "split": params.section("split")}
        spec = params.targets[target]
        if user_facts.is_user_target(spec):  # a changed file (templates too) changes the split folder
            recorded["files_sha256"] = {
                key: sha256_file(spec[key]) for key in ("facts", "templates", "controls") if spec.get(key)
            }
        return write_target_splits(out, target, splits[target], provenance=stamp(recorded), holdout=reports[target])
    splits = splits_from_params(table, params, paper_order=paper_order, reports=reports)
    return write_splits(
        out,
        splits,
        holdout=reports,
        provenance=stamp({"targets": params.section("targets"), "split": params.section("split")}),
    )
