"""Uncertainty of CSQA accuracies, paired across model versions and finetuning seeds.

Every model version answers the same questions, so differences are paired: one bootstrap draw
resamples the questions of each group once, for every version and seed alike, and resamples the
finetuning seeds (so seed-to-seed variance is inside the interval, not only question sampling):
`core.bootstrap.seed_item_means`, each interval on its own stream of the seed.

The claim of the experiment is a difference of differences (`diff_of_diffs`): how much more the
removal costs the questions linked to the removed facts than the questions of the other half,
    DoD = [acc(a) - acc(b)] on group g  -  [acc(a) - acc(b)] on group h,
with a = remaining and b = original (or random). Its minimal detectable effect (`MDE_Z` x the
bootstrap standard error: 80 % power at a two-sided 5 % level) says how large a true effect a null
result rules out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from knowsubnet.core import bootstrap
from knowsubnet.downstream.csqa.data import N_CHOICES, Question, words

MDE_Z = 1.959964 + 0.841621  # z(0.975) + z(0.80)


def _stream(seed: int, stream: int) -> list[int]:
    """The bootstrap seed of one interval: its own stream of the run's seed."""
    return [seed, 3000 + stream]


def _summary(point: float, draws: np.ndarray, n: Mapping[str, int]) -> dict[str, Any]:
    if np.isnan(point):
        return {"diff": None, "ci95": [None, None], "se": None, "mde": None, **n}
    se = float(draws.std(ddof=1))
    return {"diff": float(point), "ci95": list(bootstrap.interval(draws)), "se": se, "mde": MDE_Z * se, **n}


def paired_delta(a: np.ndarray, b: np.ndarray, samples: int, seed: int, stream: int) -> dict[str, Any]:
    """mean(a) - mean(b) on the same questions ([seeds, questions] or [questions]), paired bootstrap."""
    diff = np.atleast_2d(a).astype(np.float64) - np.atleast_2d(b)
    point = float(diff.mean()) if diff.size else float("nan")
    return _summary(
        point, bootstrap.seed_item_means([diff], samples, _stream(seed, stream))[0], {"n": int(diff.shape[1])}
    )


def diff_of_diffs(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    group: str,
    reference: str,
    samples: int,
    seed: int,
    stream: int,
) -> dict[str, Any]:
    """[mean(a) - mean(b)] on `group` minus the same on `reference`; `a`, `b`: {group: [seeds,
    questions] 0/1}. Paired: a draw takes the same questions and seeds for a and b."""
    d_group = np.atleast_2d(a[group]).astype(np.float64) - np.atleast_2d(b[group])
    d_ref = np.atleast_2d(a[reference]).astype(np.float64) - np.atleast_2d(b[reference])
    point = float(d_group.mean() - d_ref.mean()) if d_group.size else float("nan")
    draws = bootstrap.seed_item_means([d_group, d_ref], samples, _stream(seed, stream))
    return _summary(point, draws[0] - draws[1], {"n": int(d_group.shape[1]), "n_reference": int(d_ref.shape[1])})


def group_accuracies(correct: Mapping[str, np.ndarray], samples: int, seed: int) -> dict[str, dict[str, Any]]:
    """{group: {acc, ci95, n}} of one model version, from its 0/1 `correct` per group ([seeds,
    questions] or [questions])."""
    out = {}
    for i, (group, values) in enumerate(correct.items()):
        values = np.atleast_2d(values)
        if values.shape[1] == 0:
            out[group] = {"acc": None, "ci95": [None, None], "n": 0}
            continue
        lo, hi = bootstrap.mean_interval(values, samples, _stream(seed, i))
        out[group] = {"acc": float(values.mean()), "ci95": [lo, hi], "n": int(values.shape[1])}
    return out


def length_bias(picked: np.ndarray, questions: list[Question]) -> dict[str, Any]:
    """Does a scorer prefer longer answers? From its picked choice per question ([questions], or
    [seeds, questions] pooled).

    - picked_multiword: share of picks that are multi-word options;
    - answer_multiword: share of the questions whose answer is multi-word (an accurate scorer's rate);
    - options_multiword: share of all options that are multi-word (a length-blind guesser's rate);
    - acc_one_word / acc_multiword: accuracy on questions with a one-word / multi-word answer;
    - biased: picked_multiword above both rates by more than 2 binomial standard errors (over the
      questions: seeds answer the same questions, so they do not add independent picks).
    """
    picked = np.atleast_2d(picked)
    multi = np.array([[words(c) > 1 for c in q.choices] for q in questions], dtype=bool).reshape(-1, N_CHOICES)
    labels = np.array([q.label for q in questions], dtype=int)
    answer_multi = multi[np.arange(len(questions)), labels]
    picked_multi = multi[np.arange(len(questions))[None, :], picked]
    correct = picked == labels[None, :]
    n = picked.size
    rate = float(picked_multi.mean()) if n else float("nan")
    bar = max(float(answer_multi.mean()), float(multi.mean())) if n else float("nan")
    se = float(np.sqrt(max(bar * (1 - bar), 1e-12) / max(len(questions), 1)))
    one, many = correct[:, ~answer_multi], correct[:, answer_multi]
    return {
        "picked_multiword": rate,
        "answer_multiword": float(answer_multi.mean()) if n else None,
        "options_multiword": float(multi.mean()) if n else None,
        "acc_one_word": float(one.mean()) if one.size else None,
        "n_one_word": int((~answer_multi).sum()),
        "acc_multiword": float(many.mean()) if many.size else None,
        "n_multiword": int(answer_multi.sum()),
        "biased": bool(n and rate > bar + 2 * se),
    }
