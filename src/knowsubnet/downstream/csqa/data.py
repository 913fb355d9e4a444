"""Reading CommonsenseQA: the question files (every line checked), which questions are linked to
which facts (the `removed` / `kept` groups), the training pool and the evaluation groups, and the
questions' token ids."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from knowsubnet.core.errors import InputError
from knowsubnet.core.io import jsonl_rows
from knowsubnet.data.splits import SPLITS, csqa_ids, select_target
from knowsubnet.data.triplets import CSQA_IDS

N_CHOICES = 5
LABELS = "ABCDE"
# Evaluation groups. removed_known: questions linked to a removed fact the model knew and the removal
# suppressed (what the experiment is about); removed: every question linked to the target's facts;
# kept: the questions of the other CSQA half; dev: CSQA dev; dev_matched: the dev questions shaped
# like the linked ones (a one-word answer and at least one multi-word distractor: `length_matched`).
GROUPS = ("removed_known", "removed", "kept", "dev", "dev_matched")

# ----------------------------------------------------------------------------------------------
# reading CSQA


@dataclass(frozen=True)
class Question:
    id: str
    stem: str
    choices: tuple[str, ...]  # five answer texts, in label order A..E
    label: int  # index of the answer in `choices`
    concept: str = ""  # the ConceptNet concept the question was written about (question_concept)


def read_questions(path: str | Path) -> list[Question]:
    """A CSQA jsonl file (the official release format); every line checked.

    Each line: {"id", "answerKey", "question": {"stem", "choices": [{"label", "text"} x 5]}}.
    """
    path = Path(path)
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for where, lineno, row in jsonl_rows(path, "a JSON object (a CSQA question)"):
        question = _parse_question(row, where)
        if question.id in seen:
            raise InputError(f"{where}: question id {question.id!r} repeats line {seen[question.id]}")
        seen[question.id] = lineno
        questions.append(question)
    if not questions:
        raise InputError(f"{path}: expected CSQA questions, got none")
    return questions


def _parse_question(row: Any, where: str) -> Question:
    what = 'a CSQA question {"id", "answerKey", "question": {"stem", "choices"}}'
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object ({what}), got {type(row).__name__}")
    for key in ("id", "answerKey", "question"):
        if key not in row:
            raise InputError(f"{where}: expected key {key!r} in {what}, got keys {sorted(map(str, row))}")
    qid, answer, body = row["id"], row["answerKey"], row["question"]
    if not isinstance(qid, str) or not qid.strip():
        raise InputError(f"{where}: expected a non-empty string 'id', got {qid!r}")
    if not isinstance(body, dict) or not isinstance(body.get("stem"), str) or not body["stem"].strip():
        raise InputError(f"{where}: expected 'question' to be an object with a non-empty 'stem'")
    choices = body.get("choices")
    if not isinstance(choices, list) or len(choices) != N_CHOICES:
        got = len(choices) if isinstance(choices, list) else type(choices).__name__
        raise InputError(f"{where}: expected {N_CHOICES} choices (labels {', '.join(LABELS)}), got {got}")
    texts = []
    for i, choice in enumerate(choices):
        if (
            not isinstance(choice, dict)
            or choice.get("label") != LABELS[i]
            or not isinstance(choice.get("text"), str)
            or not choice["text"].strip()
        ):
            raise InputError(
                f'{where}: choice {i + 1}: expected {{"label": "{LABELS[i]}", "text": '
                f"<non-empty string>}}, got {choice!r}"
            )
        texts.append(choice["text"])
    if not isinstance(answer, str) or answer not in LABELS:
        raise InputError(f"{where}: expected 'answerKey' to be one of {', '.join(LABELS)}, got {answer!r}")
    concept = body.get("question_concept", "")
    if not isinstance(concept, str):
        raise InputError(f"{where}: expected 'question_concept' to be a string, got {concept!r}")
    return Question(qid.strip(), body["stem"], tuple(texts), LABELS.index(answer), concept.strip().lower())


# ----------------------------------------------------------------------------------------------
# which questions go where


def question_groups(triplets, target_facts, selected_facts=None) -> dict[str, set[str]]:
    """Question ids per role, from the triplets table and a target's facts.

    - `linked`:  every question linked to a fact of the triplets table (both CSQA halves);
    - `removed`: the questions linked to `target_facts` (the TargetKG the mask removed);
    - `kept`:    `linked` minus the questions of `selected_facts` (every fact the target's selector
                 picks, before any cap; defaults to `target_facts`): for csqa1, the csqa2 half.
    Questions linked to selected facts that a cap left out of the TargetKG are in neither group
    (and never trained on).
    """
    for name, frame in (("triplets table", triplets), ("target facts", target_facts)):
        if CSQA_IDS not in frame.columns:
            raise InputError(f"{name}: no '{CSQA_IDS}' column; re-run extract_triplets and split_controls")
    linked = csqa_ids(triplets)
    removed = csqa_ids(target_facts)
    if not removed:
        raise InputError(
            "target facts: no fact of the target is linked to a CSQA question; finetune_csqa "
            "needs a CSQA-linked target (selector csqa: csqa1 | csqa2 | [question ids])"
        )
    selected = csqa_ids(selected_facts) if selected_facts is not None else removed
    return {"linked": linked, "removed": removed, "kept": linked - selected - removed}


def _read_parquet(path: Path, what: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read {what} ({err})") from None


def read_linked_facts(
    triplets: Path, splits_dir: Path, target: str, spec: Mapping[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The arguments of `question_groups` from files: the triplets table, the target's TargetKG facts
    (every split of `splits_dir`) and every fact the target's selector `spec` picks."""
    table = _read_parquet(triplets, "the triplets table")
    target_facts = pd.concat(
        [_read_parquet(splits_dir / f"targetkg_{s}.parquet", "a TargetKG split") for s in SPLITS]
    ).drop_duplicates()
    return table, target_facts, select_target(table, target, spec)


def _subsample(items: list, n: int | None, seed: int, stream: int) -> list:
    if n is None or n >= len(items):
        return list(items)
    order = np.random.default_rng([seed, stream]).permutation(len(items))[:n]
    return [items[i] for i in sorted(order)]


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def siblings(pool: list[Question], linked: list[Question], min_shared: int = 2) -> set[str]:
    """Ids of `pool` questions that are siblings of a linked question: the same question concept and
    at least `min_shared` shared choices. CSQA writes several questions per concept from one set of
    candidate answers, so a sibling's answer is often a linked question's answer or distractor;
    training on it leaks the answer (or its opposite) at full CSQA scale."""
    by_concept: dict[str, list[set[str]]] = {}
    for q in linked:
        by_concept.setdefault(q.concept, []).append({_norm(c) for c in q.choices})
    out = set()
    for q in pool:
        choices = {_norm(c) for c in q.choices}
        if any(len(choices & other) >= min_shared for other in by_concept.get(q.concept, ())):
            out.add(q.id)
    return out


def words(text: str) -> int:
    return len(text.split())


def length_matched(q: Question) -> bool:
    """Shaped like the linked questions: a one-word answer and at least one multi-word distractor."""
    return words(q.choices[q.label]) == 1 and any(words(c) > 1 for i, c in enumerate(q.choices) if i != q.label)


def assemble_data(
    train: list[Question],
    dev: list[Question],
    groups: Mapping[str, set[str]],
    n_train: int | None,
    n_dev: int | None,
    seed: int,
    *,
    train_source: str = "CSQA train",
) -> tuple[list[Question], dict[str, list[Question]], dict[str, int]]:
    """Training questions, the evaluation groups (`GROUPS`) and how many questions were held out.

    Training: CSQA train minus every linked question and every sibling of one (`siblings`), then
    subsampled to `n_train`. `groups["removed_known"]` (optional; default: all of `removed`) names
    the removed questions whose fact was known and suppressed. A linked question id absent from
    CSQA train is an InputError naming it.
    """
    by_id = {q.id: q for q in train}
    for role in ("removed", "kept", "linked"):
        missing = sorted(groups[role] - set(by_id))
        if missing:
            raise InputError(
                f"{train_source}: question id {missing[0]!r} (linked to a fact, group {role}) is "
                f"not in the file ({len(missing)} such ids); expected every CSQA-linked id there"
            )
    linked_ids = set(groups["linked"]) | set(groups["removed"]) | set(groups["kept"])
    pool = [q for q in train if q.id not in linked_ids]
    held = siblings(pool, [by_id[i] for i in sorted(linked_ids)])
    pool = [q for q in pool if q.id not in held]
    if not pool:
        raise InputError(
            f"{train_source}: no question is left for training once the linked ones and their siblings are removed"
        )
    train_set = _subsample(pool, n_train, seed, 0)
    dev_set = _subsample(list(dev), n_dev, seed, 1)
    removed_known = groups.get("removed_known", groups["removed"])
    eval_groups = {
        "removed_known": [by_id[i] for i in sorted(removed_known)],
        "removed": [by_id[i] for i in sorted(groups["removed"])],
        "kept": [by_id[i] for i in sorted(groups["kept"])],
        "dev": dev_set,
        "dev_matched": [q for q in dev_set if length_matched(q)],
    }
    for name, items in eval_groups.items():
        # removed_known may be empty (the removal suppressed no linked fact), dev_matched too
        if not items and name not in ("removed_known", "dev_matched"):
            raise InputError(f"CSQA group {name!r} is empty; expected at least one question to evaluate")
    return train_set, eval_groups, {"linked": len(linked_ids), "siblings": len(held)}


# ----------------------------------------------------------------------------------------------
# encoding: one packed sequence per question


def question_text(stem: str, choice: str) -> str:
    """What the model reads for one (question, choice): `question_prefix` + `choice_suffix`."""
    return question_prefix(stem) + choice_suffix(choice)


def question_prefix(stem: str) -> str:
    return f"Question: {stem}\nAnswer:"


def choice_suffix(choice: str) -> str:
    return f" {choice}"


@dataclass
class Encoded:
    """Each question as one packed sequence: the question prefix once, then its five choices, each
    ending with the end-of-text token. Choice k's tokens see the prefix and themselves only
    (segment k; `model.packed_inputs` builds that attention mask) and continue the prefix's
    positions, so the state at choice k's last token equals that of the sequence
    `question_text(stem, choice_k)` + end-of-text, computed for ~1/3 of the tokens (the prefix once)."""

    ids: list[torch.Tensor]  # per question: [T_q] long
    positions: list[torch.Tensor]  # per question: [T_q] long, position ids
    segments: list[torch.Tensor]  # per question: [T_q] long, 0 = question prefix, k = choice k (1..5)
    last: list[torch.Tensor]  # per question: [5] index of each choice's classification (last) token
    labels: torch.Tensor  # [N] long
    qids: list[str]


def encode_questions(tokenizer, questions: list[Question], max_length: int) -> Encoded:
    """Each question packed (`Encoded`). A question prefix + choice longer than `max_length` tokens
    is cut from the prefix's left, so every choice and its classification token survive."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise InputError("tokenizer: no end-of-text token to score a choice at")
    ids, positions, segments, last = [], [], [], []
    for q in questions:
        prefix = tokenizer(question_prefix(q.stem), add_special_tokens=False)["input_ids"]
        choices = [tokenizer(choice_suffix(c), add_special_tokens=False)["input_ids"] + [eos] for c in q.choices]
        longest = max(map(len, choices))
        if longest >= max_length:
            raise InputError(
                f"CSQA question {q.id}: a choice takes {longest} tokens; params key 'csqa.max_length' "
                f"= {max_length} leaves no room for the question"
            )
        prefix = prefix[-(max_length - longest) :]
        seq, pos, seg, ends = list(prefix), list(range(len(prefix))), [0] * len(prefix), []
        for k, choice in enumerate(choices, start=1):
            seq += choice
            pos += range(len(prefix), len(prefix) + len(choice))
            seg += [k] * len(choice)
            ends.append(len(seq) - 1)
        ids.append(torch.tensor(seq, dtype=torch.long))
        positions.append(torch.tensor(pos, dtype=torch.long))
        segments.append(torch.tensor(seg, dtype=torch.long))
        last.append(torch.tensor(ends, dtype=torch.long))
    labels = torch.tensor([q.label for q in questions], dtype=torch.long)
    return Encoded(ids, positions, segments, last, labels, [q.id for q in questions])
