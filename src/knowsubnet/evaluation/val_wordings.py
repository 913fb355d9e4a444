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
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from knowsubnet.core.config import Params
from knowsubnet.core.io import write_json
from knowsubnet.core.provenance import stamp
from knowsubnet.data import factsets
from knowsubnet.evaluation import probes
from knowsubnet.evaluation import robustness_stats as stats
from knowsubnet.evaluation.robustness import known_split, score_probes
from knowsubnet.evaluation.variants import Variants
from knowsubnet.method import edits
from knowsubnet.models.prepare import load_model, pick_device
from knowsubnet.scoring.facts import DTYPES

log = logging.getLogger(__name__)

# summary name -> probe: validation TargetKG facts, and the validation ControlKG facts (the control)
PROBES = {"targetkg_val": "wording:targetkg_val:validation", "controlkg_val": "wording:controlkg_val:validation"}


def build_sentences(params: Params, splits_dir: Path, verbalized: pd.DataFrame) -> pd.DataFrame:
    """The sentences the check scores (`evaluation.probes` rows): each known validation fact (a seeded
    sample of robustness.max_facts per set) in each validation wording of its relation, and, where
    params known.min_head_gain is set, the same wordings with other heads (the per-wording `known`
    test's baseline)."""
    cfg = params.robustness
    parts = []
    for name, probe in PROBES.items():
        facts = probes.sample(known_split(splits_dir, name, verbalized, params), cfg.max_facts, cfg.seed)
        wordings = probes.validation_wordings(sorted(set(facts["rel"])))
        parts.append(probes.in_wordings(probe, facts, wordings))
        if params.known.min_head_gain is not None:
            parts.append(probes.other_heads(probe, facts, wordings, max(params.verbalize.other_heads, 1), cfg.seed))
    return pd.concat(parts, ignore_index=True)


def evaluate_val_wordings(
    params: Params, *, model_dir: Path, mask: Path, splits_dir: Path, verbalized: Path, out: Path
) -> dict[str, Any]:
    """The evaluate_val_wordings stage: the check for one removal (a mask or a baseline's
    removal.safetensors), written to `out` (JSON, with provenance). Returns what it wrote."""
    start = time.monotonic()
    device = pick_device(params.robustness.device, key="robustness.device")
    lm, tokenizer = load_model(model_dir, device, DTYPES[params.eval.dtype])
    edit = edits.load_edit(mask)
    layers = edits.edit_layers(lm, edit, source=str(mask))
    variants = Variants(lm, layers, edit, params.robustness.seed, draws=params.eval.random_draws)
    sentences = build_sentences(params, splits_dir, factsets.read_verbalized(verbalized))
    scored = score_probes(variants, tokenizer, sentences, params, device)
    cfg = params.robustness
    result = {
        "method": edit.metadata.get("method", "mask"),
        # per probe: the PPL ratios (removed, random) and the shares of known sentences suppressed
        **stats.wording_summary(scored, cfg.bootstrap, cfg.seed, cfg.suppressed_ratio, PROBES),
        "wall_time_s": round(time.monotonic() - start, 2),
        "provenance": stamp(
            {"robustness": params.section("robustness"), "known": params.section("known")},
            model_dir=str(model_dir),
            mask=str(mask),
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
