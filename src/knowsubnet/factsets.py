"""Join a split (facts) with a model's verbalisations (sentences) and encode them as a FactSet."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from knowsubnet.encoding import FactSet, encode_facts
from knowsubnet.errors import InputError


def read_verbalized(path: str | Path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    missing = {"uuid", "prompt", "tail_text"} - set(frame.columns)
    if missing:
        raise InputError(f"{path}: missing columns {sorted(missing)}; expected a verbalize output")
    return frame.set_index("uuid")


def load_split_factset(split_path: str | Path, verbalized: pd.DataFrame, tokenizer,
                       max_tail_ppl: float | None = None,
                       scored_positions: str = "all_tail_tokens") -> FactSet:
    """The facts of one split parquet, verbalised with this model's best templates, encoded.

    With `max_tail_ppl`, only the facts the model knows are kept: those whose best template's tail
    perplexity is at most that (a model cannot lose knowledge it never had). `scored_positions`
    (params `verbalize.scored_positions`): see `encoding.encode_facts`.
    """
    split = pd.read_parquet(split_path)
    unknown = split.loc[~split["uuid"].isin(verbalized.index), "uuid"]
    if len(unknown):
        raise InputError(f"{split_path}: {len(unknown)} facts have no verbalisation for this model "
                         f"(first uuid {unknown.iloc[0]}); re-run verbalize on the same triplets")
    rows = verbalized.loc[split["uuid"]]
    if max_tail_ppl is not None:
        rows = rows[rows["tail_ppl"] <= max_tail_ppl]
        if rows.empty:
            raise InputError(f"{split_path}: no fact has tail perplexity <= {max_tail_ppl} under this model "
                             f"(params key 'verbalize.max_tail_ppl')")
    return encode_facts(tokenizer, rows["prompt"].tolist(), rows["tail_text"].tolist(), uuids=rows.index.tolist(),
                        scored_positions=scored_positions)
