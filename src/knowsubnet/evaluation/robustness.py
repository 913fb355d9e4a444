"""Removed, or only hidden? The probes of one removal, each on the original, the remaining model
(removal applied) and random-removed models (the same per-matrix counts; the evaluation's own
`eval.random_draws` draws, so the summary and this stage read one set of random removals):

1. held-out facts: the TargetKG facts that trained the mask (in-sample) beside test facts that share
   no head or tail with them (`split.holdout: entity`) and that no training or selection read;
2. wordings: train and test facts in held-out wordings (no stage before this one scores them) and
   test facts in the trained wordings, each sentence counted only where the original knows the fact
   in that wording; and test facts after k true facts of their relation in context;
3. other readouts: multiple choice by likelihood, a linear probe on the final hidden state (fit on
   train facts, scored on test facts), the logit lens after each masked block, and the models
   rounded to 8 and 4 bits per group (`evaluation.quantize`);
4. relearning: finetunes of the masked layers or the whole model on other TargetKG facts,
   unrelated facts or text, and the control on facts the original never knew
   (`evaluation.relearning`);
5. specificity: the mask on the other targets' facts, the target's templates with false tails and
   foreign heads, facts about the same heads in other relations, and the KL divergence of the
   ControlKG next-token distributions (a two-sided control: a lower PPL is a change too).

Ratios are PPL(variant) / PPL(original) = exp(mean over facts of the NLL difference), with 95 %
bootstrap intervals over facts (`robustness_stats`). Sentences are scored under the variants
(`evaluation.variants`) by `scoring.sentences`; their scores go to sentences.parquet (one
row per sentence, NLL under every variant), so any number here can be recomputed or broken down.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from knowsubnet.core.config import Params
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import read_json, write_parquet
from knowsubnet.core.provenance import stamp
from knowsubnet.data import factsets
from knowsubnet.data.encoding import encode_facts, load_blocks
from knowsubnet.evaluation import probes, quantize, readouts, relearn, relearning
from knowsubnet.evaluation import robustness_stats as stats
from knowsubnet.evaluation.robustness_results import RobustnessHeadline, RobustnessResult
from knowsubnet.evaluation.robustness_stats import VARIANTS
from knowsubnet.evaluation.variants import Variants
from knowsubnet.method import edits
from knowsubnet.models import precision
from knowsubnet.models.prepare import load_model, pick_device
from knowsubnet.scoring.cached import CachedFacts
from knowsubnet.scoring.facts import DTYPES, score_facts
from knowsubnet.scoring.sentences import score_sentences
from knowsubnet.scoring.text import lm_nll

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# scoring under the model variants


@torch.no_grad()
def controlkg_kl(variants: Variants, facts: CachedFacts, batch_size: int) -> dict[str, float]:
    """Mean over ControlKG facts of the mean over their tail positions of KL(p_original || p_variant)
    (random: the mean over the draws)."""

    def log_probs() -> list[tuple[torch.Tensor, torch.Tensor]]:
        parts = []
        for start in range(0, len(facts), batch_size):
            logits, rows, _ = facts.tail_logits(torch.arange(start, min(start + batch_size, len(facts))))
            parts.append((torch.log_softmax(logits, dim=-1).cpu(), rows.cpu() + start))
        return parts

    variants.model.eval()
    original = log_probs()
    out = {}
    rows = torch.cat([r for _, r in original])
    for variant in ("removed", "random"):
        values = []
        for draw in variants.draws(variant):
            with variants.entered(variant, draw):
                changed = log_probs()
            per_position = torch.cat([(o.exp() * (o - c)).sum(dim=-1) for (o, _), (c, _) in zip(original, changed)])
            per_fact = torch.zeros(len(facts), dtype=torch.float64).index_add_(0, rows, per_position.double())
            values.append(float((per_fact / torch.bincount(rows, minlength=len(facts)).double()).mean()))
        out[variant] = float(np.mean(values))
    return out


# ----------------------------------------------------------------------------------------------
# the probes' inputs


def target_relation(spec: dict) -> str | None:
    return spec.get("rel") if isinstance(spec, dict) else None


def known_split(
    splits_dir: Path, name: str, verbalized: pd.DataFrame, params: Params, known: bool = True
) -> pd.DataFrame:
    """A split's facts the model knows (or, `known=False`, does not know), as their verbalised rows
    (best template)."""
    path = splits_dir / f"{name}.parquet"
    if not path.is_file():
        raise InputError(f"{path}: no such split file; run split_controls")
    rows = factsets.split_rows(path, verbalized, params.known)
    return rows[rows["known"].to_numpy() == known].drop(columns="known").reset_index()


def build_sentences(
    params: Params,
    *,
    target: str,
    splits_root: Path,
    verbalized_root: Path,
    triplets: pd.DataFrame,
    other_targets: list[str],
) -> tuple[pd.DataFrame, dict]:
    """Every sentence the probes score (`probes`), and the fact sets the relearning and readouts use."""
    cfg = params.robustness
    n, seed = cfg.max_facts, cfg.seed
    verbalized = factsets.read_verbalized(verbalized_root / f"{target}.parquet")
    splits_dir = splits_root / target
    split = {
        name: known_split(splits_dir, name, verbalized, params)
        for name in ("targetkg_train", "targetkg_test", "controlkg_train", "controlkg_test")
    }
    train, test, control = split["targetkg_train"], split["targetkg_test"], split["controlkg_test"]
    holdout = not set(train["uuid"]) & set(test["uuid"])
    train_sample, test_sample, control_sample = (probes.sample(x, n, seed) for x in (train, test, control))
    all_target = pd.concat([pd.read_parquet(splits_dir / f"targetkg_{s}.parquet") for s in ("train", "val", "test")])

    trained = probes.trained_wordings(train, params.train.targetkg_templates)
    heldout = probes.heldout_wordings(sorted(set(all_target["rel"]) | set(control["rel"])))
    wording_sets = {
        "wording:train:heldout": (train_sample, heldout),
        "wording:test:heldout": (test_sample, heldout),
        "wording:test:trained": (test_sample, trained),
        "wording:controlkg:heldout": (control_sample, heldout),
    }
    parts = [
        probes.best_template("targetkg_train", train),
        probes.best_template("targetkg_test", test),
        probes.best_template("controlkg_test", control),
        probes.choices("choice_targetkg", test_sample, triplets, cfg.candidates, seed),
        probes.choices("choice_controlkg", control_sample, triplets, cfg.candidates, seed),
        probes.foreign_heads("foreign_heads", test_sample, sorted(set(control["head"])), seed),
        probes.same_head_facts(triplets, all_target, target_relation(params.targets[target]), n, seed),
    ]
    for name, (facts, wordings) in wording_sets.items():
        parts.append(probes.in_wordings(name, facts, wordings))
        if params.known.min_head_gain is not None:
            parts.append(probes.other_heads(name, facts, wordings, max(params.verbalize.other_heads, 1), seed))
    context_pool = pd.concat([train, split["controlkg_train"]], ignore_index=True)
    for k in cfg.in_context:
        parts.append(probes.in_context(f"in_context:{k}", test_sample, context_pool, k, seed))
    for other in other_targets:
        other_rows = factsets.read_verbalized(verbalized_root / f"{other}.parquet")
        facts = probes.sample(known_split(splits_root / other, "targetkg_test", other_rows, params), n, seed)
        parts.append(probes.best_template(f"other:{other}", facts))
    sentences = pd.concat(parts, ignore_index=True)

    # Relearning on TargetKG facts it is not scored on (held out: the train facts; in-sample, where
    # train = test: one half of the test facts, scoring the other); the control on facts the original
    # does not know, split the same way.
    unknown_train = known_split(splits_dir, "targetkg_train", verbalized, params, known=False)
    unknown_test = known_split(splits_dir, "targetkg_test", verbalized, params, known=False)
    if holdout:
        relearn_on, scored_on = train, test
    else:
        first, second = probes.halves(sorted(test["uuid"]), seed)
        relearn_on, scored_on = test[test["uuid"].isin(first)], test[test["uuid"].isin(second)]
        first, second = probes.halves(sorted(unknown_test["uuid"]), seed)
        unknown_train, unknown_test = (unknown_test[unknown_test["uuid"].isin(half)] for half in (first, second))
    facts = {
        "targetkg": relearn_on,
        "controlkg": split["controlkg_train"],
        "scored": scored_on,
        "unknown": unknown_train,
        "unknown_scored": probes.sample(unknown_test, n, seed),
        "probe_train": train_sample,
        "probe_test": test_sample,
    }
    return sentences, {"holdout": holdout, "facts": facts, "wordings": {"trained": trained, "heldout": heldout}}


def factset(tokenizer, rows: pd.DataFrame, scored_positions: str):
    return encode_facts(
        tokenizer,
        rows["prompt"].tolist(),
        rows["tail_text"].tolist(),
        rows["uuid"].tolist(),
        scored_positions=scored_positions,
    )


# ----------------------------------------------------------------------------------------------
# the analyses


def summarize(scored: pd.DataFrame, cfg, holdout: bool, other_targets: list[str]) -> dict[str, Any]:
    """The numbers of the sentence probes, from the scored sentences (with their `known` column)."""
    n_boot, seed = cfg.bootstrap, cfg.seed

    def probe(name: str, true_only: bool = False) -> pd.DataFrame:
        frame = scored[scored["probe"] == name]
        return frame[frame["is_true"]] if true_only else frame

    def ratios(frame: pd.DataFrame) -> dict[str, Any]:
        return {variant: stats.ratio_ci(frame, variant, n_boot, seed) for variant in ("removed", "random")}

    out: dict[str, Any] = {
        "held_out": {
            "holdout": holdout,
            "in_sample": ratios(probe("targetkg_train")),
            "held_out": ratios(probe("targetkg_test")) if holdout else None,
            "note": None if holdout else "split.targetkg_holdout is false: train = val = test, nothing is held out",
            "controlkg": ratios(probe("controlkg_test")),
        },
        "wordings": stats.wording_summary(scored, n_boot, seed, cfg.suppressed_ratio),
        "in_context": stats.in_context_summary(scored, cfg.in_context, n_boot, seed),
    }
    out["multiple_choice"] = {
        kind: {
            variant: stats.share_ci(stats.top1(probe(f"choice_{kind}"), variant), n_boot, seed) for variant in VARIANTS
        }
        for kind in ("targetkg", "controlkg")
    }
    candidates = probe("choice_targetkg")
    out["multiple_choice"]["candidates_per_fact"] = (
        float(candidates.groupby("uuid").size().mean()) if len(candidates) else None
    )
    same_head = probe("same_head")
    if len(same_head):  # each fact in its best template under the original model
        best = same_head.sort_values(["uuid", "nll_original", "template_id"]).drop_duplicates("uuid")
    else:
        best = same_head
    out["specificity"] = {
        "true_facts": ratios(probe("choice_targetkg", true_only=True)),
        "false_tails": ratios(candidates[~candidates["is_true"]]),
        "foreign_heads": ratios(probe("foreign_heads")),
        "same_head_other_facts": ratios(best),
        "other_targets": {other: ratios(probe(f"other:{other}")) for other in other_targets},
    }
    return out


def headline(result: RobustnessResult) -> RobustnessHeadline:
    """The few numbers of `dvc metrics show` (None where undefined)."""

    def r(x, digits=4):
        return None if x is None else round(float(x), digits)

    held, words, spec = result.held_out, result.wordings, result.specificity
    choice = result.multiple_choice.targetkg
    four_bit = result.quantized.get("4")
    points = result.relearning.points
    first = points[0].data if points else {}
    recovered = {}
    for data in ("targetkg", "controlkg"):
        held_runs = first[data].removed_held if first.get(data) else None
        recovered[data] = r(held_runs.recovered) if held_runs else None
    return RobustnessHeadline(
        in_sample_ratio=r(held.in_sample.removed.ratio),
        held_out_ratio=r(held.held_out.removed.ratio) if held.held_out else None,
        train_heldout_wording_ratio=r(words.train_heldout.removed.ratio),
        test_heldout_wording_ratio=r(words.test_heldout.removed.ratio),
        test_heldout_wording_suppressed=r(words.test_heldout.suppressed_share["removed"].share),
        choice_acc_original=r(choice["original"].share),
        choice_acc_removed=r(choice["removed"].share),
        choice_acc_random=r(choice["random"].share),
        false_tail_ratio=r(spec.false_tails.removed.ratio),
        foreign_head_ratio=r(spec.foreign_heads.removed.ratio),
        same_head_ratio=r(spec.same_head_other_facts.removed.ratio),
        controlkg_kl_removed=r(result.controlkg_kl["removed"], 6),
        controlkg_kl_random=r(result.controlkg_kl["random"], 6),
        quantized_4bit_targetkg_ratio=r(four_bit.ratio.removed.get("targetkg")) if four_bit else None,
        relearn_targetkg_recovered=recovered["targetkg"],
        relearn_controlkg_recovered=recovered["controlkg"],
    )


# ----------------------------------------------------------------------------------------------
# readouts of the hidden states, and quantization


def hidden_readouts(
    variants: Variants,
    tokenizer,
    facts: dict[str, pd.DataFrame],
    triplets: pd.DataFrame,
    cfg,
    device,
    scored_positions: str,
) -> dict[str, Any]:
    """The logit lens after each masked block on the test facts, and the linear multiple-choice
    probe fit on train facts and scored on test facts, under each variant (random: first draw)."""
    model, layers = variants.model, variants.layers
    train_rows, test_rows = facts["probe_train"], facts["probe_test"]
    out: dict[str, Any] = {"lens": None, "linear_probe": None}
    if test_rows.empty:
        return out
    test = CachedFacts(model, layers, factset(tokenizer, test_rows, scored_positions), device)
    lens = {}
    for variant in VARIANTS:
        with variants.entered(variant):
            lens[variant] = readouts.logit_lens(test, batch=cfg.batch_size)
    out["lens"] = {
        str(block): {
            "original_ppl": math.exp(float(lens["original"][block].mean())),
            **{v: math.exp(float((lens[v][block] - lens["original"][block]).mean())) for v in ("removed", "random")},
        }
        for block in lens["original"]
    }
    if train_rows.empty:
        return out
    sets = {}
    for name, rows in (("train", train_rows), ("test", test_rows)):
        frame = probes.choices(f"probe_{name}", rows, triplets, cfg.candidates, cfg.seed)
        uuids, prompts, candidates, true_index = readouts.choice_sets(frame)
        if uuids != rows["uuid"].tolist():
            raise AssertionError("choice sets out of the facts' order")
        embeddings, valid = readouts.candidate_embeddings(model, tokenizer, prompts, candidates)
        cached = (
            test if name == "test" else CachedFacts(model, layers, factset(tokenizer, rows, scored_positions), device)
        )
        sets[name] = (cached, embeddings, valid, true_index)
    # a fact with no false candidate would always count as right: only facts with a choice count
    choice = {name: sets[name][2].sum(dim=1) >= 2 for name in sets}

    def accuracy_of(features: dict[str, torch.Tensor]) -> dict[str, Any]:
        train_, test_ = (
            tuple(x[choice[name]] for x in (features[name], *sets[name][1:])) for name in ("train", "test")
        )
        probe = readouts.fit_choice_probe(train_[0], train_[1], train_[3], valid=train_[2], l2=cfg.probe_l2)
        hits = probe.accuracy(test_[0], test_[1], test_[3], valid=test_[2])
        return stats.share_ci(pd.Series(hits.double().numpy()), cfg.bootstrap, cfg.seed)

    accuracy = {}
    for variant in VARIANTS:
        with variants.entered(variant):
            features = {name: readouts.choice_features(sets[name][0]) for name in sets}
        accuracy[variant] = accuracy_of(features)
    # the same probe on zeroed hidden states: what the candidates' embeddings alone (tail frequency) get right
    accuracy["prior_only"] = accuracy_of({name: torch.zeros_like(f) for name, f in features.items()})
    out["linear_probe"] = {
        "accuracy": accuracy,
        "n_train": len(train_rows),
        "n_test": len(test_rows),
        "candidates_per_fact": float(sets["test"][2].sum(dim=1).double().mean()),
    }
    return out


def quantized_scores(
    variants: Variants,
    tokenizer,
    facts: dict[str, pd.DataFrame],
    blocks: torch.Tensor,
    cfg,
    device,
    scored_positions: str,
) -> dict[str, Any]:
    """TargetKG test, ControlKG test and ControlLM under each variant (random: first draw), unrounded
    and rounded to each of `robustness.quantize_bits`, through the whole model: does rounding bring
    removed knowledge back, or break the controls?"""
    sets = {
        name: factset(tokenizer, facts[key], scored_positions)
        for name, key in (("targetkg", "probe_test"), ("controlkg", "control_test"))
        if len(facts[key])
    }
    out: dict[str, Any] = {}
    for bits in [None, *cfg.quantize_bits]:
        scores: dict[str, dict[str, float]] = {}
        rounding: dict[str, Any] = {}
        for variant in VARIANTS:
            with (
                variants.entered(variant),
                quantize.quantized(variants.model, bits) if bits else contextlib.nullcontext({}) as change,
            ):
                rounding[variant] = change
                scores[variant] = {
                    name: float(
                        score_facts(variants.model, factset, cfg.batch_size, device, progress=False)["nll"].mean()
                    )
                    for name, factset in sets.items()
                }
                total, count = lm_nll(variants.model, blocks, max(1, cfg.batch_size // 16), device)
                scores[variant]["controllm"] = total / count
        out[str(bits or "none")] = {
            "ppl": {v: {name: math.exp(x) for name, x in scored.items()} for v, scored in scores.items()},
            "ratio": {
                v: {name: math.exp(scores[v][name] - scores["original"][name]) for name in scores[v]}
                for v in ("removed", "random")
            },
            "rounding": rounding.get("removed") or None,
        }
    return out


# ----------------------------------------------------------------------------------------------
# the stage, from files to files


def _relearning_sets(tokenizer, facts: dict[str, pd.DataFrame], blocks: torch.Tensor, cfg, scored_positions: str):
    """(train, scored) FactSets per relearning data; None where there is nothing to train or score."""

    def fs(rows: pd.DataFrame):
        return factset(tokenizer, rows, scored_positions) if len(rows) else None

    scored = fs(facts["scored"])
    sets = {
        "targetkg": (fs(facts["targetkg"]), scored),
        "controlkg": (fs(facts["controlkg"]), scored),
        relearning.TEXT: (relearn.text_rows(blocks, cfg.relearn.text_tokens) if len(blocks) else None, scored),
        "unknown": (fs(facts["unknown"]), fs(facts["unknown_scored"])),
    }
    return {name: pair if all(x is not None and len(x) for x in pair) else None for name, pair in sets.items()}


def evaluate_robustness(
    params: Params,
    *,
    model: str,
    target: str,
    seed: int,
    model_dir: Path,
    mask: Path,
    triplets: Path,
    splits_root: Path,
    verbalized_root: Path,
    controllm_dir: Path,
    out_dir: Path,
) -> dict[str, Any]:
    """Run the probes for one (model, target, seed); write robustness.json, sentences.parquet and
    headline.json into `out_dir`. Returns robustness.json's content."""
    cfg = params.robustness
    device = pick_device(cfg.device, key="robustness.device")
    timings: dict[str, float] = {}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        timings[name] = round(now - clock, 2)
        clock = now

    lm, tokenizer = load_model(model_dir, device, DTYPES[params.eval.dtype])
    edit = edits.load_edit(mask)
    layers = edits.edit_layers(lm, edit, source=str(mask))
    variants = Variants(lm, layers, edit, seed, draws=params.eval.random_draws)
    others = [t for t in params.run.targets if t != target]
    try:
        facts_table = pd.read_parquet(triplets, columns=["uuid", "head", "rel", "tail"])
    except (OSError, ValueError) as err:
        raise InputError(f"{triplets}: cannot read the triplets table ({err})") from None
    # a fact-file target's facts are in its split folder only: candidate tails and heads come from them too
    facts_table = (
        pd.concat([facts_table, factsets.read_facts([splits_root / target])])
        .drop_duplicates("uuid")
        .reset_index(drop=True)
    )
    sentences, extra = build_sentences(
        params,
        target=target,
        splits_root=splits_root,
        verbalized_root=verbalized_root,
        triplets=facts_table,
        other_targets=others,
    )
    train_blocks, test_blocks = (load_blocks(controllm_dir / f"{part}.safetensors") for part in ("train", "test"))
    lap("load")
    scored_positions = params.verbalize.scored_positions
    scored = score_probes(variants, tokenizer, sentences, params, device)
    lap("score_sentences")
    control = scored[scored["probe"] == "controlkg_test"]
    kl = controlkg_kl(
        variants, CachedFacts(lm, layers, factset(tokenizer, control, scored_positions), device), cfg.batch_size
    )
    lap("controlkg_kl")
    facts = extra["facts"]
    facts["control_test"] = probes.sample(control, cfg.max_facts, cfg.seed)
    hidden = hidden_readouts(variants, tokenizer, facts, facts_table, cfg, device, scored_positions)
    lap("readouts")
    quantized = quantized_scores(variants, tokenizer, facts, test_blocks, cfg, device, scored_positions)
    lap("quantization")
    relearn_dtype = precision.resolve(cfg.relearn.dtype, device, key="robustness.relearn.dtype")
    relearned = relearning.run(
        lm,
        layers,
        variants,
        _relearning_sets(tokenizer, facts, train_blocks, cfg, scored_positions),
        cfg.relearn,
        device,
        relearn_dtype,
        cfg.bootstrap,
        cfg.seed,
    )
    lap("relearning")

    result = {
        "model": model,
        "target": target,
        "seed": int(seed),
        "method": edit.metadata.get("method", "mask"),
        "split": _split_report(splits_root / target),
        **summarize(scored, cfg, extra["holdout"], others),
        "wording_ids": extra["wordings"],
        "controlkg_kl": kl,
        "readouts": hidden,
        "quantized": quantized,
        "relearning": relearned,
        "random_draws": len(variants.random_draws),
        "counts": scored.groupby("probe")
        .agg(sentences=("uuid", "size"), facts=("uuid", "nunique"))
        .to_dict(orient="index"),
        "wall_time_s": timings,
        "provenance": stamp(
            {
                "robustness": params.section("robustness"),
                "known": params.section("known"),
                # which wordings count as trained (a recipe trained on every template has none but the held-out)
                "train": {"targetkg_templates": params.train.targetkg_templates},
            },
            model_dir=str(model_dir),
            mask=str(mask),
            device=str(device),
            relearn_dtype=precision.name(relearn_dtype),
        ),
    }
    typed = RobustnessResult.from_dict(result, source=str(out_dir / "robustness.json"))
    summary = headline(typed)
    write_parquet(out_dir / "sentences.parquet", scored)
    summary.write(out_dir / "headline.json")
    typed.write(out_dir / "robustness.json")  # last: its presence means the stage finished
    log.info(
        "%s / %s / seed %d: in-sample x%s, held-out x%s, held-out wordings x%s; %s",
        model,
        target,
        seed,
        summary.in_sample_ratio,
        summary.held_out_ratio,
        summary.test_heldout_wording_ratio,
        timings,
    )
    return result


def score_probes(variants: Variants, tokenizer, sentences: pd.DataFrame, params: Params, device) -> pd.DataFrame:
    """The probes' sentences scored under every variant (an `other_head:` row under the original only:
    only its score is read), with the per-sentence `known` column (params `known`)."""
    batch, positions = params.robustness.batch_size, params.verbalize.scored_positions
    baselines = sentences["probe"].str.startswith("other_head:")
    scored = pd.concat(
        [
            score_sentences(variants, tokenizer, sentences[~baselines], batch, device, positions, names=VARIANTS),
            score_sentences(variants, tokenizer, sentences[baselines], batch, device, positions, names=("original",)),
        ],
        ignore_index=True,
    )
    scored["known"] = stats.wording_known(scored, params.known.max_tail_ppl, params.known.min_head_gain).to_numpy()
    return scored


def _split_report(splits_dir: Path) -> dict[str, Any] | None:
    """How the target's facts were held out (the split stage's summary.json), None without one."""
    path = splits_dir / "summary.json"
    if not path.is_file():
        return None
    return read_json(path).get("holdout")
