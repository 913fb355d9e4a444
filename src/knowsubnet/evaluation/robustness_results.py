"""The evaluate_robustness result files as types (`core.records.Record`): `RobustnessResult` is
results/robustness/{model}/{target}/seed{seed}/robustness.json (and a baseline's
robustness/robustness.json), `RobustnessHeadline` the headline.json beside it. Both are written by
`evaluation.robustness`; the report and the model card read them. The nested parts are typed
where the report reads them; the shapes follow `evaluation.robustness_stats` and
`evaluation.relearning`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from knowsubnet.core.records import Record, part


@dataclass(frozen=True, kw_only=True)
class RatioCI(Record):
    """PPL(variant) ÷ PPL(original) over facts with its 95 % interval (`robustness_stats.ratio_ci`);
    all null (n_facts 0) where no fact was scored."""

    ratio: float | None
    low: float | None
    high: float | None
    n_facts: int


@dataclass(frozen=True, kw_only=True)
class ShareCI(Record):
    """A share with its 95 % interval (`robustness_stats.share_ci`, `sentence_share_ci`)."""

    share: float | None
    low: float | None
    high: float | None
    n_facts: int


@dataclass(frozen=True, kw_only=True)
class Ratios(Record):
    """The removed and random models' ratios on one set of sentences."""

    removed: RatioCI | None = part(RatioCI)
    random: RatioCI | None = part(RatioCI)


@dataclass(frozen=True, kw_only=True)
class HeldOut(Record):
    holdout: bool
    in_sample: Ratios = part(Ratios)
    held_out: Ratios | None = part(Ratios)  # null where nothing is held out
    note: str | None
    controlkg: Ratios = part(Ratios)


@dataclass(frozen=True, kw_only=True)
class WordingGroup(Record):
    sentences: int
    known_sentences: int
    removed: RatioCI = part(RatioCI)
    random: RatioCI = part(RatioCI)
    suppressed_share: Mapping[str, ShareCI] = part(ShareCI, "map")  # {removed, random}
    by_template: Mapping[str, float | None]
    suppressed_by_template: Mapping[str, float] | None = None  # absent from files written before it


@dataclass(frozen=True, kw_only=True)
class Wordings(Record):
    threshold: float  # a sentence is suppressed at PPL >= threshold x the original's
    train_heldout: WordingGroup = part(WordingGroup)
    test_heldout: WordingGroup = part(WordingGroup)
    test_trained: WordingGroup = part(WordingGroup)
    controlkg_heldout: WordingGroup = part(WordingGroup)

    def group(self, name: str) -> WordingGroup:
        return {
            "train_heldout": self.train_heldout,
            "test_heldout": self.test_heldout,
            "test_trained": self.test_trained,
            "controlkg_heldout": self.controlkg_heldout,
        }[name]


@dataclass(frozen=True, kw_only=True)
class InContext(Record):
    original_ppl: float | None
    removed: RatioCI = part(RatioCI)
    random: RatioCI = part(RatioCI)


@dataclass(frozen=True, kw_only=True)
class MultipleChoice(Record):
    targetkg: Mapping[str, ShareCI] = part(ShareCI, "map")  # {original, removed, random}
    controlkg: Mapping[str, ShareCI] = part(ShareCI, "map")
    candidates_per_fact: float | None


@dataclass(frozen=True, kw_only=True)
class LensBlock(Record):
    """The logit lens after one block: the original's PPL, the variants' ratios."""

    original_ppl: float
    removed: float
    random: float


@dataclass(frozen=True, kw_only=True)
class LinearProbe(Record):
    accuracy: Mapping[str, ShareCI] = part(ShareCI, "map")  # {original, removed, random, prior_only}
    n_train: int
    n_test: int
    candidates_per_fact: float


@dataclass(frozen=True, kw_only=True)
class Readouts(Record):
    lens: Mapping[str, LensBlock] | None = part(LensBlock, "map")  # {block: ...}
    linear_probe: LinearProbe | None = part(LinearProbe)


@dataclass(frozen=True, kw_only=True)
class ByVariant(Record):
    """{set: value} per model variant (`original` only in the PPLs)."""

    original: Mapping[str, float] | None = None
    removed: Mapping[str, float]
    random: Mapping[str, float]


@dataclass(frozen=True, kw_only=True)
class Quantized(Record):
    """One rounding (or none): PPLs and ratios on targetkg / controlkg / controllm."""

    ppl: ByVariant = part(ByVariant)
    ratio: ByVariant = part(ByVariant)
    rounding: Mapping[str, Any] | None


@dataclass(frozen=True, kw_only=True)
class Relearned(Record):
    """One model finetuned on one data (`evaluation.relearning.run`); the recovered fraction with
    its interval for the removed and random models only."""

    ppl_before: float
    ppl_after: float
    ppl_after_per_seed: list[float]
    recovered: float | None = None
    low: float | None = None
    high: float | None = None
    per_seed: list[float | None] | None = None

    def _left_out(self) -> set[str]:
        # the four recovery keys come together (and may be null); the original's runs have none
        return {"recovered", "low", "high", "per_seed"} if self.per_seed is None else set()


@dataclass(frozen=True, kw_only=True)
class RelearnRuns(Record):
    n_train: int
    n_scored: int
    wall_time_s: float
    original: Relearned | None = part(Relearned, default=None)
    removed_held: Relearned | None = part(Relearned, default=None)
    removed_free: Relearned | None = part(Relearned, default=None)
    random_held: Relearned | None = part(Relearned, default=None)


@dataclass(frozen=True, kw_only=True)
class RelearnPoint(Record):
    scope: str
    lr: float
    steps: int
    data: Mapping[str, RelearnRuns | None] = part(RelearnRuns, "map")  # null: nothing to train on


@dataclass(frozen=True, kw_only=True)
class Relearning(Record):
    points: list[RelearnPoint] = part(RelearnPoint, "list")


@dataclass(frozen=True, kw_only=True)
class Specificity(Record):
    true_facts: Ratios = part(Ratios)
    false_tails: Ratios = part(Ratios)
    foreign_heads: Ratios = part(Ratios)
    same_head_other_facts: Ratios = part(Ratios)
    other_targets: Mapping[str, Ratios] = part(Ratios, "map")


@dataclass(frozen=True, kw_only=True)
class RobustnessResult(Record):
    """robustness.json: every probe's numbers (`evaluation.robustness`); counts, wording ids,
    timings and provenance stay in `extra`."""

    WHAT = "an evaluate_robustness result"
    model: str
    target: str
    seed: int
    method: str
    split: Mapping[str, Any] | None  # how the target's facts were held out (the split's summary)
    held_out: HeldOut = part(HeldOut)
    wordings: Wordings = part(Wordings)
    in_context: Mapping[str, InContext] = part(InContext, "map")  # {k: ...}
    multiple_choice: MultipleChoice = part(MultipleChoice)
    readouts: Readouts = part(Readouts)
    quantized: Mapping[str, Quantized] = part(Quantized, "map")  # {"none" | bits: ...}
    relearning: Relearning = part(Relearning)
    specificity: Specificity = part(Specificity)
    controlkg_kl: Mapping[str, float]  # {removed, random}


@dataclass(frozen=True, kw_only=True)
class RobustnessHeadline(Record):
    """headline.json of evaluate_robustness (`evaluation.robustness.headline`): a DVC metric; null
    where a number is undefined."""

    WHAT = "an evaluate_robustness headline"
    in_sample_ratio: float | None
    held_out_ratio: float | None
    train_heldout_wording_ratio: float | None
    test_heldout_wording_ratio: float | None
    test_heldout_wording_suppressed: float | None
    choice_acc_original: float | None
    choice_acc_removed: float | None
    choice_acc_random: float | None
    false_tail_ratio: float | None
    foreign_head_ratio: float | None
    same_head_ratio: float | None
    controlkg_kl_removed: float | None
    controlkg_kl_random: float | None
    quantized_4bit_targetkg_ratio: float | None
    relearn_targetkg_recovered: float | None
    relearn_controlkg_recovered: float | None
