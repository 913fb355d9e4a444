"""The removal goal of the search (issue 29; docs/SEARCH.md, "The goal"), checked on robustness results.

One row per robustness result (a sweep point, or the run's own mask `preset`, per model x target x seed),
each number of the goal beside its 95 % interval, and the goals it misses. Everything is on test facts
of the entity-disjoint split, except `suppressed_train`: the mask's own training facts (in-sample) in
the held-out wordings, which no training or selection scored.

The goals (params `report.bars` and `report.goals`):

- `targetkg_x` >= bars.min_target_ratio: held-out TargetKG PPL ÷ the original's;
- `controlkg_x`, `controllm_x` within [1 / bar, bar] (bars.max_controlkg_ratio, max_controllm_ratio);
- `suppressed_train`, `suppressed_test` >= goals.min_suppressed: the share of known sentences in the
  held-out wordings whose PPL rose at least `robustness.suppressed_ratio` x;
- `probe_removed` <= `probe_random`: the linear probe's top-1 on the remaining model no better than on
  the random-removed one;
- `relearn_text_recovered` < goals.max_recovered: finetuning on unrelated text (WikiText, the first
  relearning point that trains on it), 1 - gap after / gap before, the removal held at zero;
- `quantized_recovered` < goals.max_recovered: 1 - log(x after 4-bit rounding) / log(x in fp32), the
  share of the removal's log-PPL gap that rounding the weights to 4 bits closes.

Beside the goal, not part of it, specificity (`false_tails_x`, `foreign_heads_x`): the test facts' sentences
with a wrong tail, and with a ControlKG fact's head; a removal of the facts leaves them near x1, a removal
of the tail words in that context raises them as much as the facts. And what each attack leaves
(`relearn_text_x`, `quantized_x`): TargetKG x after relearning on text and after 4-bit rounding; the
recovered shares are shares of the log gap, so a removal far past the bar can recover much of its log and
still hold x10. And where the wordings are missed
(`suppressed_test_trained`, `suppressed_test_by_wording`): the test facts' sentences suppressed in the
trained wordings (how far the removal reaches unseen facts in wordings it knows) and in each held-out
wording apart (one may be reached and another not).

A number that is undefined (no known sentence, no probe, no relearning on text) is left empty and its
goal counted as missed: the goal is not shown to hold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from knowsubnet.core.config import Bars, Goals, within
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import write_text
from knowsubnet.evaluation import relearn, relearning
from knowsubnet.evaluation.robustness_results import RatioCI, RobustnessResult, ShareCI
from knowsubnet.report.format import markdown_table, pct, with_interval, write_csv

QUANTIZED_BITS = "4"
COLUMNS = [
    "model",
    "target",
    "seed",
    "point",
    "method",
    "targetkg_x",
    "controlkg_x",
    "controllm_x",
    "suppressed_train",
    "suppressed_test",
    "probe_removed",
    "probe_random",
    "relearn_text_recovered",
    "quantized_recovered",
    "missed",
    "false_tails_x",
    "foreign_heads_x",
    "relearn_text_x",
    "quantized_x",
    "suppressed_test_trained",
    "suppressed_test_by_wording",
]


def _value(part: RatioCI | ShareCI | None) -> float | None:
    return None if part is None else part.share if isinstance(part, ShareCI) else part.ratio


def _interval(part: RatioCI | ShareCI | None, digits: int) -> str:
    """`x [low, high]`, or "–" where undefined."""
    return "–" if part is None else with_interval(_value(part), part.low, part.high, digits)


def quantized_recovered(result: RobustnessResult) -> float | None:
    """1 - log(TargetKG x after 4-bit rounding) / log(TargetKG x in fp32), as relearning's recovered fraction
    of the log-PPL gap (and undefined, None, where it is: a removal under x2)."""
    plain = result.quantized.get("none")
    before, after = plain.ratio.removed.get("targetkg") if plain else None, quantized_x(result)
    if before is None or after is None or not after > 0.0:
        return None
    return relearn.recovered_fraction(math.log(before), math.log(after))


def relearn_text(result: RobustnessResult):
    """The runs (original, removal held at zero) of the first relearning point that trains on unrelated
    text, or None."""
    for point in result.relearning.points:
        runs = point.data.get(relearning.TEXT)
        if runs is not None and runs.removed_held is not None:
            return runs
    return None


def quantized_x(result: RobustnessResult) -> float | None:
    """TargetKG x after 4-bit rounding (both models rounded), or None."""
    rounded = result.quantized.get(QUANTIZED_BITS)
    return rounded.ratio.removed.get("targetkg") if rounded is not None else None


def relearn_text_x(text) -> float | None:
    """TargetKG x after relearning on text: the removed model's PPL after it ÷ the original's after the same
    finetune. With `quantized_x`, how much removal an attack leaves, where `*_recovered` says what share of
    its log went: a removal of x10^29 that keeps x10^18 has recovered 0.36 and still holds the bar."""
    if text is None or text.original is None or not text.original.ppl_after > 0:
        return None
    return text.removed_held.ppl_after / text.original.ppl_after


def goal_row(point: str, result: RobustnessResult, bars: Bars, goals: Goals) -> dict:
    """One result's numbers (with their intervals as text in `*_ci`) and the goals it misses."""
    held = result.held_out.held_out
    words, probe = result.wordings, result.readouts.linear_probe
    controllm = result.quantized["none"].ratio.removed.get("controllm") if "none" in result.quantized else None
    text = relearn_text(result)
    relearned = text.removed_held if text else None
    parts = {
        "targetkg_x": held.removed if held else None,
        "controlkg_x": result.held_out.controlkg.removed,
        "suppressed_train": words.train_heldout.suppressed_share.get("removed"),
        "suppressed_test": words.test_heldout.suppressed_share.get("removed"),
        "probe_removed": probe.accuracy.get("removed") if probe else None,
        "probe_random": probe.accuracy.get("random") if probe else None,
    }
    row = {"model": result.model, "target": result.target, "seed": result.seed, "point": point}
    row["method"] = result.method
    row |= {name: _value(part) for name, part in parts.items()}
    row["controllm_x"] = controllm
    row["relearn_text_recovered"] = relearned.recovered if relearned else None
    row["quantized_recovered"] = quantized_recovered(result)
    row["missed"] = ", ".join(missed_goals(row, bars, goals))
    row["false_tails_x"] = _value(result.specificity.false_tails.removed)
    row["foreign_heads_x"] = _value(result.specificity.foreign_heads.removed)
    row["relearn_text_x"], row["quantized_x"] = relearn_text_x(text), quantized_x(result)
    row["suppressed_test_trained"] = _value(words.test_trained.suppressed_share.get("removed"))
    row["suppressed_test_by_wording"] = by_wording(words.test_heldout.suppressed_by_template)
    row |= {f"{name}_ci": _interval(part, 3) for name, part in parts.items()}
    if relearned is not None and relearned.recovered is not None and relearned.low is not None:
        row["relearn_text_recovered_ci"] = with_interval(relearned.recovered, relearned.low, relearned.high)
    return row


def by_wording(shares: Mapping[str, float] | None) -> str:
    """`template id: share` for each held-out wording, as text ("5: 66 %, 6: 14 %"); "–" where not recorded."""
    return ", ".join(f"{t}: {pct(share, 0)}" for t, share in shares.items()) if shares else "–"


def missed_goals(row: dict, bars: Bars, goals: Goals) -> list[str]:
    """The goals a row misses, in the module doc's order; an undefined number misses its goal."""

    def at_least(x, bar):
        return x is not None and x >= bar

    def below(x, bar):
        return x is not None and x < bar

    checks = [
        ("targetkg", at_least(row["targetkg_x"], bars.min_target_ratio)),
        ("controlkg", within(row["controlkg_x"], bars.max_controlkg_ratio)),
        ("controllm", within(row["controllm_x"], bars.max_controllm_ratio)),
        ("wordings_train", at_least(row["suppressed_train"], goals.min_suppressed)),
        ("wordings_test", at_least(row["suppressed_test"], goals.min_suppressed)),
        ("probe", row["probe_removed"] is not None and row["probe_random"] is not None
         and row["probe_removed"] <= row["probe_random"]),
        ("relearning", below(row["relearn_text_recovered"], goals.max_recovered)),
        ("quantization", below(row["quantized_recovered"], goals.max_recovered)),
    ]  # fmt: skip
    return [name for name, met in checks if not met]


def goal_table(runs: Sequence[tuple[str, Path]], bars: Bars, goals: Goals, out_dir: Path) -> pd.DataFrame:
    """goals.csv (every number, with `*_ci` text columns) and goals.md (the numbers with intervals) from
    (point name, robustness.json) pairs."""
    rows = [goal_row(name, RobustnessResult.read(path), bars, goals) for name, path in runs]
    table = pd.DataFrame(rows)
    extra = sorted(c for c in table.columns if c not in COLUMNS)
    table = table[COLUMNS + extra] if rows else pd.DataFrame(columns=COLUMNS)
    out_dir = Path(out_dir)
    write_csv(out_dir / "goals.csv", table)
    write_text(out_dir / "goals.md", goals_markdown(table, bars, goals))
    return table


def goals_markdown(table: pd.DataFrame, bars: Bars, goals: Goals) -> str:
    def number(x, digits=3):
        return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"

    def ci(row, name):
        text = row.get(f"{name}_ci")
        return text if isinstance(text, str) else number(row.get(name))

    header = [
        "model / target / seed",
        "point (method)",
        f"TargetKG × (≥ {bars.min_target_ratio:g})",
        f"ControlKG × (≤ {bars.max_controlkg_ratio:g} either way)",
        f"ControlLM × (≤ {bars.max_controllm_ratio:g} either way)",
        f"held-out wordings suppressed, train facts (≥ {goals.min_suppressed:g})",
        f"… test facts (≥ {goals.min_suppressed:g})",
        "linear probe top-1, removed (≤ random)",
        f"relearning on text, recovered (< {goals.max_recovered:g})",
        f"4-bit, recovered (< {goals.max_recovered:g})",
        "missed",
        "specificity: wrong tails × / foreign heads ×",
        "TargetKG × left after relearning / 4-bit",
        "test facts suppressed: trained wordings / each held-out wording",
    ]
    lines = []
    for _, row in table.iterrows():
        lines.append(
            [
                f"{row['model']} / {row['target']} / {row['seed']}",
                f"{row['point']} ({row['method']})",
                ci(row, "targetkg_x"),
                ci(row, "controlkg_x"),
                number(row["controllm_x"], 4),
                ci(row, "suppressed_train"),
                ci(row, "suppressed_test"),
                f"{ci(row, 'probe_removed')} (random {number(row['probe_random'])})",
                ci(row, "relearn_text_recovered"),
                number(row["quantized_recovered"]),
                row["missed"] or "none: every goal met",
                f"{number(row['false_tails_x'])} / {number(row['foreign_heads_x'])}",
                f"{number(row['relearn_text_x'])} / {number(row['quantized_x'])}",
                f"{number(row['suppressed_test_trained'], 2)} / {row['suppressed_test_by_wording']}",
            ]
        )
    frame = pd.DataFrame(lines, columns=header)
    intro = (
        "# The removal goal, on test facts of the entity-disjoint split\n\n"
        "95 % bootstrap intervals over facts in brackets. `train facts` are the mask's own training facts "
        "(in-sample) in wordings no training or selection scored. An undefined number misses its goal.\n\n"
    )
    return intro + markdown_table(frame) + "\n"


def goals_from_params(params, *, names: Sequence[str], results: Sequence[Path], out_dir: Path) -> pd.DataFrame:
    """The sweep_goals stage: `goal_table` over (name, robustness.json) given as two parallel lists."""
    if len(names) != len(results):
        raise InputError(f"--names and --results: {len(names)} names for {len(results)} files; expected one each")
    return goal_table(list(zip(names, results)), params.report.bars, params.report.goals, out_dir)
