"""The mask files as the report reads them: which model / target / seed each holds (from its
metadata), and `analyse_masks`: the structure of every per-seed mask and the Jaccard overlaps
between seeds and between targets (`MaskAnalysis`), computed with `report.analysis`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors import safe_open

from knowsubnet.core.errors import InputError
from knowsubnet.core.io import read_json
from knowsubnet.method import combination, masking
from knowsubnet.report import analysis

log = logging.getLogger(__name__)


@dataclass
class MaskInfo:
    """Where a mask file is and what it holds."""

    path: Path
    model: str
    target: str
    seed: int | None
    combination: str | None
    granularity: str


def identify_mask(path: str | Path, metadata: dict[str, str]) -> MaskInfo:
    """Model / target / seed (or seed combination) of a mask file, from its metadata: the library
    never reads them from a results path."""
    combination = metadata.get("combination") or None
    missing = [key for key in ("model", "target", "granularity") if not metadata.get(key)]
    if missing or (combination is None and not str(metadata.get("seed", "")).isdigit()):
        raise InputError(
            f"{path}: mask metadata lacks {', '.join(missing) or 'seed'}; expected a mask written by "
            f"discover_mask or combine_seeds"
        )
    seed = int(metadata["seed"]) if combination is None else None
    return MaskInfo(Path(path), metadata["model"], metadata["target"], seed, combination, metadata["granularity"])


@dataclass
class MaskAnalysis:
    """Structure tables (one row per seed's mask and matrix / block / kind / head / layer) and overlaps."""

    matrices: pd.DataFrame
    blocks: pd.DataFrame
    kinds: pd.DataFrame
    heads: pd.DataFrame
    neurons: pd.DataFrame
    overlap_seeds: pd.DataFrame  # long: model, target, a, b, jaccard
    seed_matrices: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)
    target_matrices: dict[str, pd.DataFrame] = field(default_factory=dict)
    overlap_targets: pd.DataFrame = field(default_factory=pd.DataFrame)


def _mask_metadata(path: str | Path) -> dict[str, str]:
    """A mask file's metadata without loading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable mask file ({err})") from None
    if metadata.get("granularity") not in masking.GRANULARITIES:
        raise InputError(f"{path}: metadata 'granularity' must be one of {', '.join(masking.GRANULARITIES)}")
    return metadata


def _read_model_config(models_root: Path | None, model: str) -> dict | None:
    if models_root is None:
        return None
    path = models_root / model / "config.json"
    if not path.exists():
        log.info("no %s: per-head structure left out for %s", path, model)
        return None
    return read_json(path)


def analyse_masks(
    mask_paths: Sequence[str | Path], combine: str, models_root: str | Path | None = None
) -> MaskAnalysis:
    """Structure of every per-seed mask, Jaccard between seeds, and between targets (combined masks).

    Masks are processed one model × target at a time and the per-target combination is kept
    bit-packed, so memory stays bounded for large models.
    """
    models_root = Path(models_root) if models_root is not None else None
    groups: dict[tuple[str, str], list[MaskInfo]] = defaultdict(list)
    for path in mask_paths:
        info = identify_mask(path, _mask_metadata(path))
        if info.combination:
            log.info("%s: a seed combination; structure and overlap use the per-seed masks", path)
            continue
        groups[(info.model, info.target)].append(info)

    tables: dict[str, list[pd.DataFrame]] = defaultdict(list)
    seed_pairs, seed_matrices = [], {}
    packed: dict[str, dict[str, analysis.PackedMask]] = defaultdict(dict)
    configs: dict[str, dict | None] = {}
    for model, target in sorted(groups):
        infos = sorted(groups[(model, target)], key=lambda i: i.seed)
        if model not in configs:
            configs[model] = _read_model_config(models_root, model)
        if len({i.granularity for i in infos}) > 1:
            raise InputError(f"masks of {model} / {target} mix granularities: {[str(i.path) for i in infos]}")
        by_seed = {}
        for info in infos:
            masks = combination.to_binary(masking.load_mask(info.path)[0])
            by_seed[info.seed] = masks
            ident = {"model": model, "target": target, "seed": info.seed, "granularity": info.granularity}
            matrices = analysis.structure_by_matrix(masks)
            tables["matrices"].append(matrices.assign(**ident))
            tables["blocks"].append(analysis.structure_by_block(masks).assign(**ident))
            tables["kinds"].append(analysis.structure_by_kind(masks).assign(**ident))
            if configs[model] is not None:
                tables["heads"].append(analysis.head_structure(masks, configs[model], info.granularity).assign(**ident))
            if info.granularity != "weight":
                tables["neurons"].append(analysis.neuron_summary(masks, info.granularity).assign(**ident))
        if len(by_seed) > 1:
            matrix = analysis.seed_overlap(by_seed)
            seed_matrices[(model, target)] = matrix
            for pair in analysis.pairwise_jaccard({f"seed{s}": m for s, m in by_seed.items()}).to_dict("records"):
                seed_pairs.append({"model": model, "target": target, **pair})
        packed[model][target] = analysis.pack(combination.combine(list(by_seed.values()), combine))
        del by_seed

    target_matrices, target_pairs = {}, []
    for model in sorted(packed):
        if len(packed[model]) < 2:
            continue
        matrix = _safe_jaccard_matrix(packed[model], model)
        target_matrices[model] = matrix
        names = list(matrix.index)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                target_pairs.append({"model": model, "a": a, "b": b, "jaccard": matrix.loc[a, b]})

    def concat(name, columns_first):
        if not tables[name]:
            return pd.DataFrame()
        frame = pd.concat(tables[name], ignore_index=True)
        return frame[columns_first + [c for c in frame.columns if c not in columns_first]]

    ident_cols = ["model", "target", "seed", "granularity"]
    return MaskAnalysis(
        matrices=concat("matrices", ident_cols),
        blocks=concat("blocks", ident_cols),
        kinds=concat("kinds", ident_cols),
        heads=concat("heads", ident_cols),
        neurons=concat("neurons", ident_cols),
        overlap_seeds=pd.DataFrame(seed_pairs, columns=["model", "target", "a", "b", "jaccard"]),
        seed_matrices=seed_matrices,
        target_matrices=target_matrices,
        overlap_targets=pd.DataFrame(target_pairs, columns=["model", "a", "b", "jaccard"]),
    )


def _safe_jaccard_matrix(named: dict[str, analysis.PackedMask], model: str) -> pd.DataFrame:
    # Targets masked with different layers (e.g. another top_k) have no overlap to compute: NaN.
    labels = sorted(named)
    matrix = pd.DataFrame(np.eye(len(labels)), index=labels, columns=labels)
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            try:
                value = analysis.jaccard(named[a], named[b])
            except InputError:
                log.warning("%s: masks of %s and %s cover different layers; overlap left empty", model, a, b)
                value = float("nan")
            matrix.loc[a, b] = matrix.loc[b, a] = value
    return matrix
