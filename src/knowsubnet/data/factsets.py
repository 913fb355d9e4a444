"""Fact sets for a model: a split's facts joined with the model's verbalisations (its best template
per fact), kept when the model knows them, and encoded as a FactSet; and the union of fact files or split folders."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from knowsubnet.core.config import Known
from knowsubnet.core.errors import InputError
from knowsubnet.data import relations
from knowsubnet.data.encoding import FactSet, encode_facts


def read_verbalized(path: str | Path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    missing = {"uuid", "prompt", "tail_text"} - set(frame.columns)
    if missing:
        raise InputError(f"{path}: missing columns {sorted(missing)}; expected a verbalize output")
    return frame.set_index("uuid")


def known_mask(rows: pd.DataFrame, known: Known | None, source: str) -> pd.Series:
    """Which verbalised facts the model knows (params section `known`; None: all).

    max_tail_ppl: best-template tail perplexity at most this (absolute);
    min_head_gain: the tail at least this many times more likely with the fact's head than with
    other heads (relative to the model's own distribution; needs verbalize.other_heads > 0).
    A model cannot lose knowledge it never had.
    """
    keep = pd.Series(True, index=rows.index)
    if known is None:
        return keep
    if known.max_tail_ppl is not None:
        keep &= rows["tail_ppl"] <= float(known.max_tail_ppl)
    if known.min_head_gain is not None:
        if "head_gain" not in rows.columns:
            raise InputError(
                f"{source}: no head_gain column; params key 'known.min_head_gain' needs "
                f"'verbalize.other_heads' > 0 (re-run verbalize)"
            )
        keep &= rows["head_gain"] >= float(known.min_head_gain)
    return keep


def split_rows(split_path: str | Path, verbalized: pd.DataFrame, known: Known | None = None) -> pd.DataFrame:
    """The verbalised rows (best template, indexed by uuid) of every fact of a split, in split
    order, with a bool column `known` (`known_mask`)."""
    split = pd.read_parquet(split_path)
    unknown = split.loc[~split["uuid"].isin(verbalized.index), "uuid"]
    if len(unknown):
        raise InputError(
            f"{split_path}: {len(unknown)} facts have no verbalisation for this model "
            f"(first uuid {unknown.iloc[0]}); re-run verbalize on the same triplets"
        )
    rows = verbalized.loc[split["uuid"]]
    return rows.assign(known=known_mask(rows, known, str(split_path)).to_numpy())


def known_rows(split_path: str | Path, verbalized: pd.DataFrame, known: Known | None = None) -> pd.DataFrame:
    """The verbalised rows (best template, indexed by uuid) of a split's facts the model knows."""
    rows = split_rows(split_path, verbalized, known)
    return rows[rows["known"].to_numpy()].drop(columns="known")


def encode_rows(rows: pd.DataFrame, tokenizer, scored_positions: str) -> FactSet:
    """Verbalised rows (indexed by uuid) encoded in their order: each fact's prompt and tail_text."""
    return encode_facts(
        tokenizer,
        rows["prompt"].tolist(),
        rows["tail_text"].tolist(),
        uuids=rows.index.tolist(),
        scored_positions=scored_positions,
    )


def load_split_factset(
    split_path: str | Path,
    verbalized: pd.DataFrame,
    tokenizer,
    known: Known | None = None,
    *,
    scored_positions: str,
    templates: str = "best",
) -> FactSet:
    """The facts of one split parquet, verbalised with this model's best templates, encoded;
    only the facts the model knows (`known_mask`) when `known` sets a criterion.
    `scored_positions` (params `verbalize.scored_positions`): see `encoding.encode_facts`.
    `templates="all"`: every known fact in every template of its relation (one row per sentence,
    the uuid repeated), not only its best one."""
    rows = known_rows(split_path, verbalized, known)
    if rows.empty:
        raise InputError(
            f"{split_path}: no fact passes the known-facts filter {known} under this model (params section 'known')"
        )
    if templates == "all":
        sentences = [
            (uuid, prompt, tail)
            for uuid, fact in rows.iterrows()
            for _, prompt, tail in relations.all_verbalizations(fact["rel"], fact["head"], fact["tail"])
        ]
        uuids, prompts, tails = map(list, zip(*sentences))
        return encode_facts(tokenizer, prompts, tails, uuids=uuids, scored_positions=scored_positions)
    if templates != "best":
        raise InputError(f"params key 'train.targetkg_templates' = {templates!r}: expected best or all")
    return encode_rows(rows, tokenizer, scored_positions)


def read_facts(paths: list[Path]) -> pd.DataFrame:
    """The union of fact parquet files (uuid, head, rel, tail), one row per uuid, sorted by uuid.
    A folder stands for every parquet file in it (a target's split folder)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.glob("*.parquet"))
            if not found:
                raise InputError(f"{path}: no parquet files; expected a split folder (run split_controls)")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    frames = []
    for file in files:
        try:
            frame = pd.read_parquet(file)
        except (OSError, ValueError) as err:
            raise InputError(f"{file}: cannot read the facts file ({err})") from None
        missing = {"uuid", "head", "rel", "tail"} - set(frame.columns)
        if missing:
            raise InputError(f"{file}: missing columns {sorted(missing)}; expected uuid, head, rel, tail")
        frames.append(frame[["uuid", "head", "rel", "tail"]])
    facts = pd.concat(frames, ignore_index=True).drop_duplicates("uuid")
    return facts.sort_values("uuid", kind="mergesort").reset_index(drop=True)
