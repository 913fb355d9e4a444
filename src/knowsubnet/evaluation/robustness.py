"""Removed, or only hidden? Five probes of one subnetwork, each on the original, the remaining
(subnetwork removed) and a random-removed model (the same per-matrix counts; the evaluation's
first random draw):

1. held-out facts: the TargetKG facts that trained the mask (in-sample) beside test facts that no
   training, selection or template choice of the removal read (with `split.targetkg_holdout`);
2. paraphrases: test facts in every other sentence form of their relation, including wordings no
   stage before this one has seen (`data.relations.PARAPHRASES`);
3. a second format: the true tail ranked among `candidates` tails of the relation (top-1 accuracy);
4. relearning: a short finetune on other TargetKG facts or on unrelated facts, scored on facts it
   did not see (`evaluation.relearn`);
5. specificity: the mask on the other targets' facts, the target's templates with false tails and
   foreign heads, facts about the same heads in other relations, and the KL divergence of the
   ControlKG next-token distributions (a two-sided control: a lower PPL is a change too).

Ratios are PPL(variant) / PPL(original) = exp(mean over facts of the NLL difference), with 95 %
bootstrap intervals over facts. Sentence scores go to sentences.parquet (one row per sentence,
NLL under every variant), so any number here can be recomputed or broken down.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from knowsubnet.core.config import Params
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import write_json, write_parquet
from knowsubnet.core.provenance import stamp
from knowsubnet.data import factsets
from knowsubnet.data.encoding import encode_facts
from knowsubnet.evaluation import probes, relearn
from knowsubnet.scoring.facts import DTYPES
from knowsubnet.method import edits
from knowsubnet.models import precision
from knowsubnet.models.prepare import load_model, pick_device

log = logging.getLogger(__name__)

VARIANTS = ("original", "removed", "random")


# ----------------------------------------------------------------------------------------------
# statistics


def ratio_ci(frame: pd.DataFrame, variant: str, n_boot: int, seed: int) -> dict[str, Any]:
    """PPL ratio variant / original over the frame's sentences, averaged per fact first, with a
    95 % bootstrap interval over facts. None values when the frame is empty."""
    if frame.empty:
        return {"ratio": None, "low": None, "high": None, "n_facts": 0}
    diff = (frame[f"nll_{variant}"] - frame["nll_original"]).groupby(frame["uuid"]).mean().to_numpy()
    generator = np.random.default_rng(seed)
    boot = diff[generator.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"ratio": math.exp(diff.mean()), "low": math.exp(low), "high": math.exp(high), "n_facts": len(diff)}


def share_ci(values: pd.Series, n_boot: int, seed: int) -> dict[str, Any]:
    """Mean of per-fact values in [0, 1] with a 95 % bootstrap interval over facts."""
    if values.empty:
        return {"share": None, "low": None, "high": None, "n_facts": 0}
    x = values.to_numpy(dtype=np.float64)
    boot = x[np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"share": float(x.mean()), "low": float(low), "high": float(high), "n_facts": len(x)}


def suppressed_share(frame: pd.DataFrame, variant: str, threshold: float) -> pd.Series:
    """Per fact: the share of its sentences whose PPL under `variant` is >= threshold x the original's."""
    hit = (frame[f"nll_{variant}"] - frame["nll_original"]) >= math.log(threshold)
    return hit.groupby(frame["uuid"]).mean()


def top1(frame: pd.DataFrame, variant: str) -> pd.Series:
    """Per fact: 1 when the true tail has a strictly lower NLL than every false candidate."""
    nll = frame[f"nll_{variant}"]
    true = nll[frame["is_true"]].groupby(frame.loc[frame["is_true"], "uuid"]).min()
    false = nll[~frame["is_true"]].groupby(frame.loc[~frame["is_true"], "uuid"]).min()
    return (true < false.reindex(true.index).fillna(np.inf)).astype(float)


# ----------------------------------------------------------------------------------------------
# scoring under the model variants


class Variants:
    """The original, remaining and random-removed versions of one model, entered one at a time."""

    def __init__(self, model, layers, edit: edits.Edit, seed: int):
        self.model, self.layers = model, layers
        # the evaluation's first random draw (evaluate_ablation seeds its generator the same way)
        self.edits = {"original": None, "removed": edit,
                      "random": edits.random_like(edit, layers, torch.Generator().manual_seed(int(seed)))}

    def entered(self, variant: str):
        edit = self.edits[variant]
        return contextlib.nullcontext() if edit is None else edits.applied(self.layers, edit)


def score_sentences(variants: Variants, tokenizer, sentences: pd.DataFrame, batch_size: int, device,
                    scored_positions: str, names: Sequence[str] = VARIANTS) -> pd.DataFrame:
    """`sentences` with nll_<variant> columns for the variants `names` (mean tail cross-entropy of
    each sentence). The blocks below the mask are the same in every variant: they run once
    (`relearn.CachedFacts`)."""
    out = sentences.reset_index(drop=True).copy()
    if out.empty:
        for variant in names:
            out[f"nll_{variant}"] = pd.Series(dtype=np.float64)
        return out
    labels = [f"{u} ({p}, template {t})" for u, p, t in zip(out["uuid"], out["probe"], out["template_id"])]
    encoded = encode_facts(tokenizer, out["prompt"].tolist(), out["tail_text"].tolist(), labels,
                           scored_positions=scored_positions)
    cached = relearn.CachedFacts(variants.model, variants.layers, encoded, device)
    for variant in names:
        with variants.entered(variant):
            out[f"nll_{variant}"] = cached.nll(batch_size).numpy()
        log.info("scored %d sentences under the %s model", len(out), variant)
    return out


@torch.no_grad()
def controlkg_kl(variants: Variants, facts: relearn.CachedFacts, batch_size: int) -> dict[str, float]:
    """Mean over ControlKG facts of the mean over their tail positions of KL(p_original || p_variant)."""
    def log_probs() -> list[tuple[torch.Tensor, torch.Tensor]]:
        parts = []
        for start in range(0, len(facts), batch_size):
            logits, rows, _ = facts.tail_logits(torch.arange(start, min(start + batch_size, len(facts))))
            parts.append((torch.log_softmax(logits, dim=-1).cpu(), rows.cpu() + start))
        return parts

    variants.model.eval()
    original = log_probs()
    out = {}
    for variant in ("removed", "random"):
        with variants.entered(variant):
            changed = log_probs()
        per_position = torch.cat([(o.exp() * (o - c)).sum(dim=-1) for (o, _), (c, _) in zip(original, changed)])
        rows = torch.cat([r for _, r in original])
        per_fact = torch.zeros(len(facts), dtype=torch.float64).index_add_(0, rows, per_position.double())
        per_fact /= torch.bincount(rows, minlength=len(facts)).double()
        out[variant] = float(per_fact.mean())
    return out


# ----------------------------------------------------------------------------------------------
# the probes' inputs


def target_relation(spec: dict) -> str | None:
    return spec.get("rel") if isinstance(spec, dict) else None


def known_split(splits_dir: Path, name: str, verbalized: pd.DataFrame, params: Params) -> pd.DataFrame:
    """A split's facts the model knows, as their verbalised rows (best template)."""
    path = splits_dir / f"{name}.parquet"
    if not path.is_file():
        raise InputError(f"{path}: no such split file; run split_controls")
    return factsets.known_rows(path, verbalized, params.known).reset_index()


def build_sentences(params: Params, *, target: str, splits_root: Path, verbalized_root: Path,
                    triplets: pd.DataFrame, other_targets: list[str]) -> tuple[pd.DataFrame, dict]:
    """Every sentence the probes score, and what the relearning uses (see `probes`)."""
    cfg = params.robustness
    n, seed = cfg.max_facts, cfg.seed
    verbalized = factsets.read_verbalized(verbalized_root / f"{target}.parquet")
    splits_dir = splits_root / target
    train = known_split(splits_dir, "targetkg_train", verbalized, params)
    test = known_split(splits_dir, "targetkg_test", verbalized, params)
    control = known_split(splits_dir, "controlkg_test", verbalized, params)
    holdout = not set(train["uuid"]) & set(test["uuid"])
    test_sample = probes.sample(test, n, seed)
    control_sample = probes.sample(control, n, seed)
    all_target = pd.concat([pd.read_parquet(splits_dir / f"targetkg_{s}.parquet") for s in ("train", "val", "test")])

    parts = [probes.best_template("targetkg_train", train), probes.best_template("targetkg_test", test),
             probes.best_template("controlkg_test", control),
             probes.paraphrases("paraphrase_targetkg", test_sample),
             probes.paraphrases("paraphrase_controlkg", control_sample),
             probes.choices("choice_targetkg", test_sample, triplets, cfg.candidates, seed),
             probes.choices("choice_controlkg", control_sample, triplets, cfg.candidates, seed),
             probes.foreign_heads("foreign_heads", test_sample, sorted(set(control["head"])), seed),
             probes.same_head_facts(triplets, all_target, target_relation(params.targets[target]), n, seed)]
    for other in other_targets:
        other_rows = factsets.read_verbalized(verbalized_root / f"{other}.parquet")
        facts = probes.sample(known_split(splits_root / other, "targetkg_test", other_rows, params), n, seed)
        parts.append(probes.best_template(f"other:{other}", facts))
    sentences = pd.concat(parts, ignore_index=True)

    # Relearning: on TargetKG facts it is not scored on (held out: the train facts; in-sample, where
    # train = test: one half of the test facts, scoring the other), or on unrelated ControlKG facts.
    if holdout:
        relearn_on, scored_on = train, test
    else:
        first, second = probes.halves(sorted(test["uuid"]), seed)
        relearn_on, scored_on = test[test["uuid"].isin(first)], test[test["uuid"].isin(second)]
    control_train = known_split(splits_dir, "controlkg_train", verbalized, params)
    relearning = {"targetkg": relearn_on, "unrelated": control_train, "scored": scored_on}
    return sentences, {"holdout": holdout, "relearning": relearning}


def _factset(tokenizer, rows: pd.DataFrame, scored_positions: str):
    return encode_facts(tokenizer, rows["prompt"].tolist(), rows["tail_text"].tolist(), rows["uuid"].tolist(),
                        scored_positions=scored_positions)


# ----------------------------------------------------------------------------------------------
# the analyses


def summarize(scored: pd.DataFrame, cfg, holdout: bool, other_targets: list[str]) -> dict[str, Any]:
    """The numbers of probes 1, 2, 3 and 5 from the scored sentences."""
    n_boot, seed, bar = cfg.bootstrap, cfg.seed, cfg.suppressed_ratio

    def probe(name: str, true_only: bool = False) -> pd.DataFrame:
        frame = scored[scored["probe"] == name]
        return frame[frame["is_true"]] if true_only else frame

    def ratios(frame: pd.DataFrame) -> dict[str, Any]:
        return {variant: ratio_ci(frame, variant, n_boot, seed) for variant in ("removed", "random")}

    out: dict[str, Any] = {
        "held_out": {
            "holdout": holdout,
            "in_sample": ratios(probe("targetkg_train")),
            "held_out": ratios(probe("targetkg_test")) if holdout else None,
            "note": None if holdout else "split.targetkg_holdout is false: train = val = test, nothing is held out",
            "controlkg": ratios(probe("controlkg_test")),
        },
    }
    paraphrase = probe("paraphrase_targetkg")
    by_template = {int(t): ratio_ci(group, "removed", n_boot, seed)["ratio"]
                   for t, group in paraphrase.groupby("template_id")}
    out["paraphrases"] = {
        "targetkg": ratios(paraphrase),
        "controlkg": ratios(probe("paraphrase_controlkg")),
        "targetkg_by_template": by_template,
        "suppressed_share": {v: share_ci(suppressed_share(paraphrase, v, bar), n_boot, seed)
                             for v in ("removed", "random")},
        "threshold": bar,
    }
    out["multiple_choice"] = {
        kind: {variant: share_ci(top1(probe(f"choice_{kind}"), variant), n_boot, seed) for variant in VARIANTS}
        for kind in ("targetkg", "controlkg")
    }
    candidates = probe("choice_targetkg")
    out["multiple_choice"]["candidates_per_fact"] = float(candidates.groupby("uuid").size().mean()) if len(candidates) else None
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


def relearning(layers, variants: Variants, tokenizer, sets: dict[str, pd.DataFrame], cfg, device,
               scored_positions: str, dtype: torch.dtype) -> dict[str, Any]:
    """Probe 4: every (model variant, finetuning data) pair, scored on the facts it did not see."""
    model = variants.model
    scored = relearn.CachedFacts(model, layers, _factset(tokenizer, sets["scored"], scored_positions), device)
    before = {}
    for variant in VARIANTS:
        with variants.entered(variant):
            before[variant] = scored.mean_nll()
    runs: dict[str, Any] = {"n_scored": len(scored), "before_ppl": {v: math.exp(x) for v, x in before.items()}}
    setups = [("original", None, True), ("removed_held", "removed", True), ("removed_free", "removed", False),
              ("random_held", "random", True)]
    for data in ("targetkg", "unrelated"):
        if sets[data].empty:
            runs[data] = None
            continue
        train = relearn.CachedFacts(model, layers, _factset(tokenizer, sets[data], scored_positions), device,
                                    compute_dtype=dtype)
        runs[data] = {"n_train": len(train)}
        after_nll = {}
        for name, variant, hold in setups:
            edit = variants.edits[variant or "original"]
            start = time.monotonic()
            # A mask's zeroed weights are the start (held at zero or free); new weights (a finetuning
            # baseline) are entered first and relearning starts from them, with nothing to hold.
            removed = edit.tensors if edit is not None and edit.kind == "mask" else None
            entered = variants.entered(variant) if removed is None and edit is not None else contextlib.nullcontext()
            with entered, relearn.finetuned(layers, train, removed=removed,
                                            granularity=edit.granularity if edit else "weight", hold_zero=hold,
                                            steps=cfg.relearn.steps, lr=cfg.relearn.lr, batch=cfg.relearn.batch,
                                            seed=cfg.seed) as losses:
                after = after_nll[name] = scored.mean_nll()
            base = before[variant or "original"]
            runs[data][name] = {
                "ppl_after": math.exp(after),
                "ratio_to_original": math.exp(after - before["original"]),
                # the gap to the original finetuned the same way ("original", the first setup)
                "ratio_to_original_finetuned": math.exp(after - after_nll["original"]),
                "recovered_fraction": (relearn.recovered_fraction(base - before["original"],
                                                                  after - after_nll["original"])
                                       if variant == "removed" else None),
                "final_loss": losses[-1] if losses else None,
                "wall_time_s": round(time.monotonic() - start, 2),
            }
            log.info("relearning %s on %s facts: TargetKG PPL %.1f -> %.1f (%.1f s)", name, data,
                     math.exp(base), math.exp(after), time.monotonic() - start)
    return runs


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The few numbers of `dvc metrics show` (None where undefined)."""
    def r(x, digits=4):
        return None if x is None else round(float(x), digits)

    held = result["held_out"]
    para = result["paraphrases"]
    choice = result["multiple_choice"]["targetkg"]
    spec = result["specificity"]
    out = {
        "in_sample_ratio": r(held["in_sample"]["removed"]["ratio"]),
        "held_out_ratio": r(held["held_out"]["removed"]["ratio"]) if held["held_out"] else None,
        "paraphrase_ratio": r(para["targetkg"]["removed"]["ratio"]),
        "paraphrase_suppressed_share": r(para["suppressed_share"]["removed"]["share"]),
        "choice_acc_original": r(choice["original"]["share"]),
        "choice_acc_removed": r(choice["removed"]["share"]),
        "choice_acc_random": r(choice["random"]["share"]),
        "false_tail_ratio": r(spec["false_tails"]["removed"]["ratio"]),
        "foreign_head_ratio": r(spec["foreign_heads"]["removed"]["ratio"]),
        "same_head_ratio": r(spec["same_head_other_facts"]["removed"]["ratio"]),
        "controlkg_kl_removed": r(result["controlkg_kl"]["removed"], 6),
        "controlkg_kl_random": r(result["controlkg_kl"]["random"], 6),
    }
    for data in ("targetkg", "unrelated"):
        runs = result["relearning"].get(data)
        out[f"relearn_{data}_recovered"] = r(runs["removed_held"]["recovered_fraction"]) if runs else None
    return out


# ----------------------------------------------------------------------------------------------
# the stage, from files to files


def evaluate_robustness(params: Params, *, model: str, target: str, seed: int, model_dir: Path, mask: Path,
                        triplets: Path, splits_root: Path, verbalized_root: Path, out_dir: Path) -> dict[str, Any]:
    """Run the five probes for one (model, target, seed); write robustness.json, sentences.parquet
    and headline.json into `out_dir`. Returns robustness.json's content."""
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
    variants = Variants(lm, layers, edit, seed)
    others = [t for t in params.run.targets if t != target]
    try:
        facts_table = pd.read_parquet(triplets, columns=["uuid", "head", "rel", "tail"])
    except (OSError, ValueError) as err:
        raise InputError(f"{triplets}: cannot read the triplets table ({err})") from None
    sentences, extra = build_sentences(params, target=target, splits_root=splits_root,
                                       verbalized_root=verbalized_root, triplets=facts_table, other_targets=others)
    lap("load")
    scored_positions = params.verbalize.scored_positions
    scored = score_sentences(variants, tokenizer, sentences, cfg.batch_size, device, scored_positions)
    lap("score_sentences")
    control = scored[scored["probe"] == "controlkg_test"]
    kl = controlkg_kl(variants, relearn.CachedFacts(lm, layers, _factset(tokenizer, control, scored_positions), device),
                      cfg.batch_size)
    lap("controlkg_kl")
    relearn_dtype = precision.resolve(cfg.relearn.dtype, device, key="robustness.relearn.dtype")
    relearned = relearning(layers, variants, tokenizer, extra["relearning"], cfg, device, scored_positions,
                           relearn_dtype)
    lap("relearning")

    result = {"model": model, "target": target, "seed": int(seed), "method": edit.metadata.get("method", "mask"),
              **summarize(scored, cfg, extra["holdout"], others),
              "controlkg_kl": kl, "relearning": relearned,
              "counts": scored.groupby("probe").agg(sentences=("uuid", "size"), facts=("uuid", "nunique"))
                              .to_dict(orient="index"),
              "wall_time_s": timings,
              "provenance": stamp({"robustness": params.section("robustness"), "known": params.section("known")},
                                  model_dir=str(model_dir), mask=str(mask), device=str(device),
                                  relearn_dtype=precision.name(relearn_dtype))}
    summary = headline(result)
    write_parquet(out_dir / "sentences.parquet", scored)
    write_json(out_dir / "headline.json", summary)
    write_json(out_dir / "robustness.json", result)  # last: its presence means the stage finished
    log.info("%s / %s / seed %d: in-sample x%s, held-out x%s, paraphrases x%s; %s", model, target, seed,
             summary["in_sample_ratio"], summary["held_out_ratio"], summary["paraphrase_ratio"], timings)
    return result
