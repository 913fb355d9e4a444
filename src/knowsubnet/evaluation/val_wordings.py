"""The held-out-wording check on validation: what the sweep can choose by for issue 29's goal ("the
knowledge removed, not only its sentences") without reading a test number or a test wording.

The validation TargetKG facts the original knows, in their relations' VALIDATION_WORDINGS
(`data.relations`: no training, template choice or test probe writes a sentence in them), scored
under the original, the removal and random removals of its size (`evaluation.variants`); the share
of those sentences the removal suppresses (PPL >= robustness.suppressed_ratio x the original's),
beside the random removal's. The validation ControlKG facts in the same wordings are the control: a
ratio that moves either way is damage. Each sentence counts only where the original knows the fact
in that wording (params `known` applied per sentence, as the robustness stage's wording probes).

The robustness stage (`evaluation.robustness`) measures the same on test facts in the test's
held-out wordings, for the report; this is its validation twin, for the choice.

Beside it, relearning on unrelated text on validation (`relearn_on_text`): the goal's relearning part,
which a choice between relearning-aware recipes needs, measured without the test. The remaining model and
the original are finetuned alike on the ControlLM validation blocks (text no training step sees: the
mask, its adversary and the robustness stage's relearning all use the training blocks), and the share of
the removal's gap on the known validation TargetKG facts that the finetune closes is read.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from knowsubnet.core.config import Params
from knowsubnet.core.io import write_json
from knowsubnet.core.provenance import stamp
from knowsubnet.data import factsets
from knowsubnet.data.encoding import load_blocks
from knowsubnet.evaluation import probes, relearn, relearning
from knowsubnet.evaluation import robustness_stats as stats
from knowsubnet.evaluation.robustness import factset, known_split, score_probes
from knowsubnet.evaluation.variants import Variants
from knowsubnet.method import edits
from knowsubnet.models.precision import resolve
from knowsubnet.models.prepare import load_model, pick_device
from knowsubnet.scoring.facts import DTYPES

log = logging.getLogger(__name__)

# summary name -> probe: validation TargetKG facts, and the validation ControlKG facts (the control)
PROBES = {"targetkg_val": "wording:targetkg_val:validation", "controlkg_val": "wording:controlkg_val:validation"}


def known_facts(params: Params, splits_dir: Path, verbalized: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per PROBES name, the split's facts the original knows (verbalised rows, best template)."""
    return {name: known_split(splits_dir, name, verbalized, params) for name in PROBES}


def build_sentences(params: Params, known: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The sentences the check scores (`evaluation.probes` rows): each known validation fact (`known_facts`;
    a seeded sample of robustness.max_facts per set) in each validation wording of its relation, and,
    where params known.min_head_gain is set, the same wordings with other heads (the per-wording `known`
    test's baseline)."""
    cfg = params.robustness
    parts = []
    for name, probe in PROBES.items():
        facts = probes.sample(known[name], cfg.max_facts, cfg.seed)
        wordings = probes.validation_wordings(sorted(set(facts["rel"])))
        parts.append(probes.in_wordings(probe, facts, wordings))
        if params.known.min_head_gain is not None:
            parts.append(probes.other_heads(probe, facts, wordings, max(params.verbalize.other_heads, 1), cfg.seed))
    return pd.concat(parts, ignore_index=True)


def relearn_on_text(lm, layers, variants, tokenizer, params: Params, facts: pd.DataFrame, blocks, device):
    """The first robustness.relearn point that trains on unrelated text (as the goal table's
    `relearn_text_recovered`), run on `blocks` and scored on `facts` (known validation TargetKG facts,
    best template), for the original and the remaining model with its removed weights held at zero.
    `relearning.run`'s result for that data; None where there is no such point, no fact or no text."""
    cfg = params.robustness.relearn
    point = next((p for p in cfg.points if relearning.TEXT in p.get("data", cfg.data)), None)
    if point is None or not len(facts) or not len(blocks):
        return None
    check = dataclasses.replace(cfg, points=[{**point, "data": [relearning.TEXT]}], models=["original", "removed_held"])
    sets = {
        relearning.TEXT: (
            relearn.text_rows(blocks, cfg.text_tokens),
            factset(tokenizer, facts, params.verbalize.scored_positions),
        )
    }
    dtype = resolve(cfg.dtype, device, key="robustness.relearn.dtype")
    result = relearning.run(
        lm, layers, variants, sets, check, device, dtype, params.robustness.bootstrap, params.robustness.seed
    )
    return {"point": {k: point[k] for k in ("scope", "lr", "steps")}, **result["points"][0]["data"][relearning.TEXT]}


def evaluate_val_wordings(
    params: Params, *, model_dir: Path, mask: Path, splits_dir: Path, verbalized: Path, controllm_val: Path, out: Path
) -> dict[str, Any]:
    """The evaluate_val_wordings stage: the check for one removal (a mask or a baseline's
    removal.safetensors), written to `out` (JSON, with provenance). Returns what it wrote."""
    start = time.monotonic()
    device = pick_device(params.robustness.device, key="robustness.device")
    lm, tokenizer = load_model(model_dir, device, DTYPES[params.eval.dtype])
    edit = edits.load_edit(mask)
    layers = edits.edit_layers(lm, edit, source=str(mask))
    variants = Variants(lm, layers, edit, params.robustness.seed, draws=params.eval.random_draws)
    known = known_facts(params, splits_dir, factsets.read_verbalized(verbalized))
    scored = score_probes(variants, tokenizer, build_sentences(params, known), params, device)
    blocks = load_blocks(controllm_val)
    relearned = relearn_on_text(lm, layers, variants, tokenizer, params, known["targetkg_val"], blocks, device)
    cfg = params.robustness
    result = {
        "method": edit.metadata.get("method", "mask"),
        # per probe: the PPL ratios (removed, random) and the shares of known sentences suppressed
        **stats.wording_summary(scored, cfg.bootstrap, cfg.seed, cfg.suppressed_ratio, PROBES),
        # relearning on the ControlLM validation text, scored on the known validation TargetKG facts
        "relearn_text": relearned,
        "wall_time_s": round(time.monotonic() - start, 2),
        "provenance": stamp(
            {"robustness": params.section("robustness"), "known": params.section("known")},
            model_dir=str(model_dir),
            mask=str(mask),
            controllm_val=str(controllm_val),
            device=str(device),
        ),
    }
    write_json(out, result)
    target = result["targetkg_val"]
    log.info(
        "validation wordings: %s of %s known sentences suppressed (random %s)",
        target["suppressed_share"]["removed"]["share"],
        target["known_sentences"],
        target["suppressed_share"]["random"]["share"],
    )
    return result
