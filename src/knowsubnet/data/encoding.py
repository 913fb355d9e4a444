"""Facts -> tensors (`FactSet`), text -> ControlLM blocks, and the blocks files.

A fact is a sentence `prompt + tail_text`; only the tail's tokens are scored. Prompt and tail are
tokenised without special tokens and concatenated, the last tail token is dropped from the inputs,
and `targets` holds, at every position that predicts a tail token, the id of that token (-100
elsewhere). Rows are right-padded with the pad id: a causal LM never lets a real token attend to
the padding after it, so no attention mask is needed.

The tail boundary. For byte-level BPE (GPT-2, SmolLM2) tokenising the tail (" apple") on its own
gives exactly the tokens the whole sentence has after the prompt. SentencePiece-style tokenizers
that prepend a word-boundary marker ("▁") to every text they see would give the separately
tokenised tail a stray leading "▁" token. So the tail's tokens are taken from the tokenised
sentence after the prompt's tokens whenever the sentence's tokens start with the prompt's (the two
agree for byte-level BPE); only when a token merges across the boundary are prompt and tail
tokenised separately and concatenated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from knowsubnet.core.errors import InputError
from knowsubnet.core.io import write_safetensors

IGNORE = -100
# Which tail tokens are scored: every one (default: a multi-token tail is known only when all its
# tokens are) or only the last one (the paper's code labels the last object token only).
SCORED_POSITIONS = ("all_tail_tokens", "last_token")


def check_scored_positions(value: str) -> str:
    if value not in SCORED_POSITIONS:
        raise InputError(
            f"params key 'verbalize.scored_positions' = {value!r}: expected one of {', '.join(SCORED_POSITIONS)}"
        )
    return value


def row_lengths(targets: torch.Tensor) -> torch.LongTensor:
    """Real (unpadded) length of every row of a `targets` tensor: one past its last tail position."""
    pos = torch.arange(targets.shape[1], device=targets.device).expand_as(targets)
    return torch.where(targets != IGNORE, pos + 1, 0).amax(dim=1)


@dataclass
class FactSet:
    input_ids: torch.LongTensor  # [N, T] prompt + tail tokens except the last, right-padded
    targets: torch.LongTensor  # [N, T] next-token id at positions that predict a tail token, -100 elsewhere
    uuids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def lengths(self) -> torch.LongTensor:
        """Real (unpadded) length of every row: one past its last tail-predicting position."""
        return row_lengths(self.targets)

    @property
    def tail_lengths(self) -> torch.LongTensor:
        return (self.targets != IGNORE).sum(dim=1)

    def subset(self, index: Sequence[int] | torch.Tensor) -> FactSet:
        """Rows `index` (in that order), trimmed to their longest row."""
        index = torch.as_tensor(index, dtype=torch.long)
        sub = FactSet(self.input_ids[index], self.targets[index], [self.uuids[i] for i in index.tolist()])
        width = int(sub.lengths.max()) if len(sub) else 0
        return FactSet(sub.input_ids[:, :width].contiguous(), sub.targets[:, :width].contiguous(), sub.uuids)


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, else its eos id, else 0."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    # verbose=False: no "longer than the maximum sequence length" warning for long text chunks
    return tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]


def tokenize_facts(
    tokenizer, prompts: Sequence[str], tails: Sequence[str], uuids: Sequence[str] | None = None
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, tail ids) per fact; see the module docstring for the boundary rule."""
    prompts, tails = list(prompts), list(tails)
    if len(prompts) != len(tails):
        raise ValueError(f"{len(prompts)} prompts but {len(tails)} tails")
    uuids = [str(u) for u in uuids] if uuids is not None else [f"#{i}" for i in range(len(prompts))]
    if len(uuids) != len(prompts):
        raise ValueError(f"{len(uuids)} uuids for {len(prompts)} facts")
    for i, (prompt, tail) in enumerate(zip(prompts, tails)):
        if not isinstance(prompt, str) or not isinstance(tail, str):
            raise InputError(
                f"fact {uuids[i]}: prompt and tail_text must be strings, "
                f"got {type(prompt).__name__} and {type(tail).__name__}"
            )
    prompt_ids = _ids(tokenizer, prompts)
    tail_ids = _ids(tokenizer, tails)
    full_ids = _ids(tokenizer, [p + t for p, t in zip(prompts, tails)])
    out = []
    for i, (p, t, f) in enumerate(zip(prompt_ids, tail_ids, full_ids)):
        if len(f) > len(p) and f[: len(p)] == p:
            t = f[len(p) :]
        if not p:
            raise InputError(
                f"fact {uuids[i]}: the prompt {prompts[i]!r} tokenises to zero tokens; "
                f"a tail needs a prompt to be predicted from"
            )
        if not t:
            raise InputError(
                f"fact {uuids[i]}: the tail {tails[i]!r} tokenises to zero tokens "
                f"(prompt {prompts[i]!r}); expected a non-empty tail such as ' apple'"
            )
        out.append((list(p), list(t)))
    return out


def encode_facts(
    tokenizer,
    prompts: Sequence[str],
    tails: Sequence[str],
    uuids: Sequence[str] | None = None,
    *,
    max_length: int | None = None,
    scored_positions: str,
) -> FactSet:
    """Encode facts for tail scoring (contract: docs/ARCHITECTURE.md, `encoding.FactSet`).

    `max_length`: the model's context (positions); a longer sentence raises InputError.
    `scored_positions`: `all_tail_tokens` labels every tail token; `last_token` only the last one
    (the inputs still hold the whole tail before it, so the sentence the model reads is the same).
    """
    check_scored_positions(scored_positions)
    uuids = [str(u) for u in uuids] if uuids is not None else [f"#{i}" for i in range(len(prompts))]
    pairs = tokenize_facts(tokenizer, prompts, tails, uuids)
    if max_length is not None:
        for uuid, (p, t) in zip(uuids, pairs):
            if len(p) + len(t) - 1 > max_length:
                raise InputError(
                    f"fact {uuid}: prompt + tail is {len(p) + len(t)} tokens, longer than the "
                    f"model's context of {max_length} tokens"
                )
    width = max((len(p) + len(t) - 1 for p, t in pairs), default=0)
    n = len(pairs)
    input_ids = torch.full((n, width), pad_id(tokenizer), dtype=torch.long)
    targets = torch.full((n, width), IGNORE, dtype=torch.long)
    for i, (p, t) in enumerate(pairs):
        seq = p + t
        length = len(seq) - 1
        input_ids[i, :length] = torch.tensor(seq[:-1], dtype=torch.long)
        if scored_positions == "last_token":
            targets[i, length - 1] = t[-1]
        else:
            targets[i, len(p) - 1 : length] = torch.tensor(t, dtype=torch.long)
    return FactSet(input_ids=input_ids, targets=targets, uuids=uuids)


# -- ControlLM blocks ---------------------------------------------------------------------------


def controllm_blocks(
    tokenizer, text: str, block_size: int, max_blocks: int | None = None, *, lines_per_chunk: int = 64
) -> torch.LongTensor:
    """Token ids of raw text cut into full blocks: LongTensor [n_blocks, block_size].

    The text is tokenised in chunks of whole lines (fast, batched; newlines kept), the ids are
    concatenated with no special tokens, cut into consecutive blocks of `block_size` tokens and
    the remainder dropped; `max_blocks` keeps the first blocks. Deterministic.
    """
    if block_size < 2:
        raise InputError(f"params key 'controllm.block_size' = {block_size}: expected at least 2")
    lines = text.splitlines(keepends=True)
    chunks = ["".join(lines[i : i + lines_per_chunk]) for i in range(0, len(lines), lines_per_chunk)]
    need = None if max_blocks is None else max_blocks * block_size
    ids: list[int] = []
    step = 256  # chunks tokenised per batch call
    for start in range(0, len(chunks), step):
        for row in _ids(tokenizer, chunks[start : start + step]):
            ids.extend(row)
        if need is not None and len(ids) >= need:
            break
    n_blocks = len(ids) // block_size
    if max_blocks is not None:
        n_blocks = min(n_blocks, max_blocks)
    if n_blocks == 0:
        raise InputError(
            f"the text has {len(ids)} tokens, fewer than one block of {block_size}; expected WikiText-2 raw text"
        )
    return torch.tensor(ids[: n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size)


def text_head(text: str, fraction: float) -> str:
    """The first `fraction` of the text's lines (at least one): the paper evaluates ControlLM on
    the first 20 % of WikiText-2 test. 1.0 keeps the whole text."""
    if not 0 < fraction <= 1:
        raise InputError(f"params key 'controllm.test_fraction' = {fraction!r}: expected a number in (0, 1]")
    if fraction == 1:
        return text
    lines = text.splitlines(keepends=True)
    return "".join(lines[: max(1, math.ceil(len(lines) * fraction))])


def save_blocks(path: str | Path, blocks: torch.Tensor, metadata: dict[str, str] | None = None) -> None:
    """Write blocks atomically as safetensors, key `blocks` (int64 [n, block_size])."""
    write_safetensors(path, {"blocks": blocks.to(torch.long).contiguous()}, metadata)


def load_blocks(path: str | Path) -> torch.LongTensor:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such ControlLM blocks file; run the tokenize_controllm stage")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable safetensors file ({err})") from None
    blocks = tensors.get("blocks")
    if blocks is None or blocks.dim() != 2 or blocks.dtype != torch.long:
        raise InputError(f"{path}: expected key 'blocks' holding an int64 [n_blocks, block_size] tensor")
    return blocks
