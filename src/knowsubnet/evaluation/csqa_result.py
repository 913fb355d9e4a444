"""The finetune_csqa result file as a type (`core.records.Record`): `CsqaResult` is
results/csqa/{model}/{target}/seed{seed}/{mode}.json, written by `downstream.csqa.finetune.run_stage`
and read by the report. It lives here, not beside its writer: downstream and report are peer top
layers that do not import each other, and evaluation is the highest layer both import. Groups,
variants and intervals: `downstream.csqa` and docs/METHOD.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from knowsubnet.core.records import Record, part


@dataclass(frozen=True, kw_only=True)
class GroupAccuracy(Record):
    """Accuracy over the finetuning seeds on one question group (null, n 0, for an empty group)."""

    acc: float | None
    ci95: list[float | None]
    n: int


@dataclass(frozen=True, kw_only=True)
class Difference(Record):
    """A paired difference (`stats.paired_delta`) or difference of differences (`stats.diff_of_diffs`,
    with `n_reference`); null where there was nothing to compare."""

    diff: float | None
    ci95: list[float | None]
    se: float | None
    mde: float | None
    n: int
    n_reference: int | None = None


@dataclass(frozen=True, kw_only=True)
class LengthCheck(Record):
    """The answer-length check of one variant on one group (`stats.length_bias`)."""

    picked_multiword: float | None
    answer_multiword: float | None
    options_multiword: float | None
    acc_one_word: float | None
    n_one_word: int
    acc_multiword: float | None
    n_multiword: int
    biased: bool


@dataclass(frozen=True, kw_only=True)
class CsqaResult(Record):
    """{mode}.json; groups, per-seed accuracies, runs, fact counts and provenance stay in `extra`."""

    WHAT = "a finetune_csqa result"
    model: str
    target: str
    seed: int
    mode: str
    finetune_seeds: list[int]
    accuracy: Mapping[str, Mapping[str, GroupAccuracy]] = part(GroupAccuracy, "map2")  # {variant: {group: }}
    delta: Mapping[str, Mapping[str, Difference]] = part(Difference, "map2")  # {"a - b": {group: }}
    diff_of_diffs: Mapping[str, Mapping[str, Difference]] = part(Difference, "map2")  # {"a - b": {"g vs ref": }}
    length: Mapping[str, Mapping[str, LengthCheck]] = part(LengthCheck, "map2")  # {variant: {group: }}
    provenance: Mapping[str, Any] | None = None

    def main_effect(self) -> Difference:
        """The main contrast: (remaining − original) on the removed, known and suppressed questions
        minus the same on the other half's."""
        return self.diff_of_diffs["remaining - original"]["removed_known vs kept"]

    def dev_length(self, variant: str) -> LengthCheck:
        """The answer-length check of `variant` on CSQA dev."""
        return self.length[variant]["dev"]
